// adamkit's fused Adam/AMSGrad step for TensorFlow on the CPU: one multi-threaded pass that reads
// θ, g, m, v (and v̂max) and writes θ, m, v (and v̂max): the 28 (32) bytes per parameter an Adam step
// must move, nothing more. Built against the installed TensorFlow on first use
// (adamkit/kernels/tensorflow.py); the plain loops below vectorise (-O3, -fno-math-errno).
//
//   m ← m + (g − m)(1 − β1)          v ← v + (g² − v)(1 − β2)         [v̂max ← max(v̂max, v)]
//   θ ← θ·decay − (α/(1 − β1ᵗ))·m / (√v·(1/√(1 − β2ᵗ)) + ε)
//
// The six scalars arrive already formed in double precision and rounded once to T, so 1 − β2 is
// exact to T's precision (TensorFlow's own kernel forms it from T-rounded β2).
#define EIGEN_USE_THREADS
#include <cmath>

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
    .Attr("T: {float, double}")
    .Attr("amsgrad: bool = false")
    .SetShapeFn([](shape_inference::InferenceContext*) { return absl::OkStatus(); });

// __restrict__: the five arrays never overlap, which lets the compiler vectorise without
// run-time overlap checks (with five pointers it otherwise gives up on the AMSGrad loop).
template <typename T, bool kAmsgrad>
void Update(T* __restrict__ theta, T* __restrict__ m, T* __restrict__ v, T* __restrict__ vhat,
            const T* __restrict__ g, int64_t begin, int64_t end, T decay, T one_minus_b1,
            T one_minus_b2, T step_size, T inv_sqrt_bc2, T eps) {
  for (int64_t i = begin; i < end; ++i) {
    const T gi = g[i];
    const T mi = m[i] + (gi - m[i]) * one_minus_b1;
    T vi = v[i] + (gi * gi - v[i]) * one_minus_b2;
    m[i] = mi;
    v[i] = vi;
    if (kAmsgrad) {
      vi = vhat[i] > vi ? vhat[i] : vi;
      vhat[i] = vi;
    }
    theta[i] = theta[i] * decay - step_size * mi / (std::sqrt(vi) * inv_sqrt_bc2 + eps);
  }
}

template <typename T>
class AdamkitApplyAdamOp : public OpKernel {
 public:
  explicit AdamkitApplyAdamOp(OpKernelConstruction* ctx) : OpKernel(ctx) {
    OP_REQUIRES_OK(ctx, ctx->GetAttr("amsgrad", &amsgrad_));
  }

  void Compute(OpKernelContext* ctx) override {
    std::vector<int> inputs = {0, 1, 2};
    if (amsgrad_) inputs.push_back(3);
    auto locks = MaybeLockVariableInputMutexesInOrder<Eigen::ThreadPoolDevice, T>(ctx, true, false, inputs);
    Tensor var, m, v, vhat;
    OP_REQUIRES_OK(ctx, GetInputTensorFromVariable<Eigen::ThreadPoolDevice, T>(ctx, 0, true, false, &var));
    OP_REQUIRES_OK(ctx, GetInputTensorFromVariable<Eigen::ThreadPoolDevice, T>(ctx, 1, true, false, &m));
    OP_REQUIRES_OK(ctx, GetInputTensorFromVariable<Eigen::ThreadPoolDevice, T>(ctx, 2, true, false, &v));
    if (amsgrad_) {
      OP_REQUIRES_OK(ctx, GetInputTensorFromVariable<Eigen::ThreadPoolDevice, T>(ctx, 3, true, false, &vhat));
    }
    const Tensor& grad = ctx->input(4);
    const Tensor& scalars = ctx->input(5);
    OP_REQUIRES(ctx, var.shape().IsSameSize(grad.shape()) && m.shape().IsSameSize(grad.shape()) &&
                     v.shape().IsSameSize(grad.shape()),
                absl::InvalidArgumentError("var, m, v and grad must have the same shape"));
    OP_REQUIRES(ctx, !amsgrad_ || vhat.shape().IsSameSize(grad.shape()),
                absl::InvalidArgumentError("vhat and grad must have the same shape"));
    OP_REQUIRES(ctx, scalars.NumElements() == 6, absl::InvalidArgumentError("6 scalars expected"));
    const auto s = scalars.flat<T>();
    const T decay = s(0), one_minus_b1 = s(1), one_minus_b2 = s(2), step_size = s(3),
            inv_sqrt_bc2 = s(4), eps = s(5);
    T* theta = var.flat<T>().data();
    T* mp = m.flat<T>().data();
    T* vp = v.flat<T>().data();
    T* hp = amsgrad_ ? vhat.flat<T>().data() : nullptr;
    const T* g = grad.flat<T>().data();
    auto work = [=](int64_t begin, int64_t end) {
      if (hp == nullptr) {
        Update<T, false>(theta, mp, vp, hp, g, begin, end, decay, one_minus_b1, one_minus_b2,
                         step_size, inv_sqrt_bc2, eps);
      } else {
        Update<T, true>(theta, mp, vp, hp, g, begin, end, decay, one_minus_b1, one_minus_b2,
                        step_size, inv_sqrt_bc2, eps);
      }
    };
    auto* threads = ctx->device()->tensorflow_cpu_worker_threads();
    Shard(threads->num_threads, threads->workers, grad.NumElements(), /*cost_per_unit=*/20, work);
  }

 private:
  bool amsgrad_;
};

REGISTER_KERNEL_BUILDER(Name("AdamkitApplyAdam").Device(DEVICE_CPU).TypeConstraint<float>("T"),
                        AdamkitApplyAdamOp<float>);
REGISTER_KERNEL_BUILDER(Name("AdamkitApplyAdam").Device(DEVICE_CPU).TypeConstraint<double>("T"),
                        AdamkitApplyAdamOp<double>);

}  // namespace tensorflow
