// adamkit's fused Adam/AMSGrad step for TensorFlow on the CPU: one multi-threaded pass that reads
// θ, g, m, v (and v̂max) and writes θ, m, v (and v̂max): the 28 (32) bytes per parameter an Adam step
// must move, nothing more. Built against the installed TensorFlow on first use
// (adamkit/kernels/tensorflow.py); the plain loops below vectorise (-O3, -fno-math-errno).
//
//   m ← m + (g − m)(1 − β1)          v ← v + (g² − v)(1 − β2)         [v̂max ← max(v̂max, v)]
//   θ ← θ·decay − (α/(1 − β1ᵗ))·m / (√v·(1/√(1 − β2ᵗ)) + ε)
//
// The six scalars arrive already formed in double precision and rounded once to T, so 1 − β2 is
// exact to T's precision (TensorFlow's own kernel forms it from T-rounded β2). Compiled with
// -ffp-contract=off so that m and v round exactly as the ops path's separate operations do.
#define EIGEN_USE_THREADS
#include <cmath>
#include <cstring>

#include "tensorflow/core/framework/op.h"
#include "tensorflow/core/framework/op_kernel.h"
#include "tensorflow/core/framework/shape_inference.h"
#include "tensorflow/core/kernels/training_op_helpers.h"
#include "tensorflow/core/util/work_sharder.h"

namespace tensorflow {

REGISTER_OP("AdamkitApplyAdam")
    .Input("var: resource")
    .Input("m: resource")
    .Input("v: resource")
    .Input("vhat: resource")
    .Input("grad: T")
    .Input("scalars: T")  // decay, 1 − β1, 1 − β2, α/(1 − β1ᵗ), 1/√(1 − β2ᵗ), ε
    .Input("step: int32")  // the iteration t, for the bfloat16 state's dither
    .Attr("T: {float, double}")
    .Attr("S: {float, double, bfloat16}")  // how m, v (and v̂max) are stored
    .Attr("amsgrad: bool = false")
    .SetShapeFn([](shape_inference::InferenceContext*) { return absl::OkStatus(); });

// How a state value is stored: as T itself, or (for float parameters) as bfloat16 with
// stochastic rounding — the same dither, bit for bit, as adamkit.state.round_to_bfloat16: the top 16
// bits of position·0x9E3779B1 + step·0x6A09E667 (mod 2³²) are added to the float's bits, then the
// low 16 bits are dropped.
template <typename T>
struct Plain {
  using Stored = T;
  static T Load(Stored x) { return x; }
  static Stored Store(T x, uint32_t, uint32_t) { return x; }
};

struct StochasticBfloat16 {
  using Stored = uint16_t;
  static float Load(Stored x) {
    const uint32_t bits = static_cast<uint32_t>(x) << 16;
    float f;
    std::memcpy(&f, &bits, sizeof f);
    return f;
  }
  static Stored Store(float x, uint32_t position, uint32_t step_mix) {
    uint32_t bits;
    std::memcpy(&bits, &x, sizeof bits);
    const uint32_t dither = (position * 0x9E3779B1u + step_mix) >> 16;
    return static_cast<Stored>((bits + dither) >> 16);
  }
};

// __restrict__: the five arrays never overlap, which lets the compiler vectorise without
// run-time overlap checks (with five pointers it otherwise gives up on the AMSGrad loop).
template <typename T, typename Codec, bool kAmsgrad>
void Update(T* __restrict__ theta, typename Codec::Stored* __restrict__ m,
            typename Codec::Stored* __restrict__ v, typename Codec::Stored* __restrict__ vhat,
            const T* __restrict__ g, int64_t begin, int64_t end, const T* s, uint32_t step) {
  const T decay = s[0], one_minus_b1 = s[1], one_minus_b2 = s[2], step_size = s[3],
          inv_sqrt_bc2 = s[4], eps = s[5];
  const uint32_t step_mix = step * 0x6A09E667u;
  for (int64_t i = begin; i < end; ++i) {
    const uint32_t position = static_cast<uint32_t>(i);
    const T gi = g[i];
    const T m_old = Codec::Load(m[i]);
    const T v_old = Codec::Load(v[i]);
    const T mi = m_old + (gi - m_old) * one_minus_b1;
    T vi = v_old + (gi * gi - v_old) * one_minus_b2;
    m[i] = Codec::Store(mi, position, step_mix);
    v[i] = Codec::Store(vi, position, step_mix);
    if (kAmsgrad) {
      const T h = Codec::Load(vhat[i]);
      vi = h > vi ? h : vi;
      vhat[i] = Codec::Store(vi, position, step_mix);
    }
    theta[i] = theta[i] * decay - step_size * mi / (std::sqrt(vi) * inv_sqrt_bc2 + eps);
  }
}

template <typename T, typename S, typename Codec>
class AdamkitApplyAdamOp : public OpKernel {
 public:
  explicit AdamkitApplyAdamOp(OpKernelConstruction* ctx) : OpKernel(ctx) {
    OP_REQUIRES_OK(ctx, ctx->GetAttr("amsgrad", &amsgrad_));
  }

  void Compute(OpKernelContext* ctx) override {
    using Device = Eigen::ThreadPoolDevice;
    std::vector<int> inputs = {0, 1, 2};
    if (amsgrad_) inputs.push_back(3);
    auto locks = MaybeLockVariableInputMutexesInOrder<Device, T>(ctx, true, false, inputs);
    Tensor var, m, v, vhat;
    OP_REQUIRES_OK(ctx, GetInputTensorFromVariable<Device, T>(ctx, 0, true, false, &var));
    OP_REQUIRES_OK(ctx, GetInputTensorFromVariable<Device, S>(ctx, 1, true, false, &m));
    OP_REQUIRES_OK(ctx, GetInputTensorFromVariable<Device, S>(ctx, 2, true, false, &v));
    if (amsgrad_) {
      OP_REQUIRES_OK(ctx, GetInputTensorFromVariable<Device, S>(ctx, 3, true, false, &vhat));
    }
    const Tensor& grad = ctx->input(4);
    const Tensor& scalars = ctx->input(5);
    const Tensor& step = ctx->input(6);
    OP_REQUIRES(ctx, var.shape().IsSameSize(grad.shape()) && m.shape().IsSameSize(grad.shape()) &&
                     v.shape().IsSameSize(grad.shape()) &&
                     (!amsgrad_ || vhat.shape().IsSameSize(grad.shape())),
                absl::InvalidArgumentError("var, m, v, vhat and grad must have the same shape"));
    OP_REQUIRES(ctx, scalars.NumElements() == 6, absl::InvalidArgumentError("6 scalars expected"));
    using Stored = typename Codec::Stored;
    T* theta = var.flat<T>().data();
    auto* mp = reinterpret_cast<Stored*>(m.flat<S>().data());
    auto* vp = reinterpret_cast<Stored*>(v.flat<S>().data());
    auto* hp = amsgrad_ ? reinterpret_cast<Stored*>(vhat.flat<S>().data()) : nullptr;
    const T* g = grad.flat<T>().data();
    const T* sp = scalars.flat<T>().data();
    const uint32_t t = static_cast<uint32_t>(step.scalar<int32>()());
    auto work = [=](int64_t begin, int64_t end) {
      if (hp == nullptr) {
        Update<T, Codec, false>(theta, mp, vp, hp, g, begin, end, sp, t);
      } else {
        Update<T, Codec, true>(theta, mp, vp, hp, g, begin, end, sp, t);
      }
    };
    auto* threads = ctx->device()->tensorflow_cpu_worker_threads();
    Shard(threads->num_threads, threads->workers, grad.NumElements(), /*cost_per_unit=*/20, work);
  }

 private:
  bool amsgrad_;
};

#define REGISTER(T, S, CODEC)                                                          \
  REGISTER_KERNEL_BUILDER(                                                             \
      Name("AdamkitApplyAdam").Device(DEVICE_CPU).TypeConstraint<T>("T").TypeConstraint<S>("S"), \
      AdamkitApplyAdamOp<T, S, CODEC>);
REGISTER(float, float, Plain<float>)
REGISTER(double, double, Plain<double>)
REGISTER(float, bfloat16, StochasticBfloat16)
#undef REGISTER

}  // namespace tensorflow
