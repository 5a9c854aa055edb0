// adamkit's fused Adam/AMSGrad step for TensorFlow on the CPU: one multi-threaded pass that reads
// θ, g, m, v (and v̂max) and writes θ, m, v (and v̂max): the 28 (32) bytes per parameter an Adam step
// must move, nothing more. Built against the installed TensorFlow on first use
// (adamkit/kernels/tensorflow.py); the plain loops below vectorise (-O3, -fno-math-errno, and
// -fno-trapping-math: no floating-point traps are used, and it lets floor() vectorise).
//
//   m ← m + (g − m)(1 − β1)          v ← v + (g² − v)(1 − β2)         [v̂max ← max(v̂max, v)]
//   θ ← θ·decay − (α/(1 − β1ᵗ))·m / (√v·(1/√(1 − β2ᵗ)) + ε)
//
// Two ops: AdamkitApplyAdam updates any number of variables in one launch, keeping m, v, v̂max as
// T or (float parameters) bfloat16; AdamkitApplyAdam8bit (one variable) keeps them as
// adamkit.state's 8-bit block-wise codes, decoding, updating and re-encoding one block of 256 at a
// time while it sits in L1.
//
// The six scalars arrive already formed in double precision and rounded once to T, so 1 − β2 is
// exact to T's precision (TensorFlow's own kernel forms it from T-rounded β2). Compiled with
// -ffp-contract=off so that m and v round exactly as the ops path's separate operations do.
#define EIGEN_USE_THREADS
#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>

#include "tensorflow/core/framework/op.h"
#include "tensorflow/core/framework/op_kernel.h"
#include "tensorflow/core/framework/shape_inference.h"
#include "tensorflow/core/kernels/training_op_helpers.h"
#include "tensorflow/core/util/work_sharder.h"

#include "adam_update.h"

namespace tensorflow {

using adamkit::kPositionMultiplier;
using adamkit::kStepMultiplier;
using adamkit::Plain;
using adamkit::StochasticBfloat16;
using adamkit::Update;

REGISTER_OP("AdamkitApplyAdam")  // N variables of one dtype in one launch
    .Input("var: N * resource")
    .Input("m: N * resource")
    .Input("v: N * resource")
    .Input("vhat: N * resource")  // read only with amsgrad (pass v otherwise)
    .Input("grad: N * T")
    .Input("scalars: T")  // (N, 6): decay, 1 − β1, 1 − β2, α/(1 − β1ᵗ), 1/√(1 − β2ᵗ), ε
    .Input("step: int32")  // the iteration t, for the bfloat16 state's dither
    .Attr("N: int >= 1")
    .Attr("T: {float, double}")
    .Attr("S: {float, double, bfloat16}")  // how m, v (and v̂max) are stored
    .Attr("amsgrad: bool = false")
    .SetShapeFn([](shape_inference::InferenceContext*) { return absl::OkStatus(); });

// Both ops' one attribute: whether to keep AMSGrad's running maximum.
class AmsgradOpKernel : public OpKernel {
 public:
  explicit AmsgradOpKernel(OpKernelConstruction* ctx) : OpKernel(ctx) {
    OP_REQUIRES_OK(ctx, ctx->GetAttr("amsgrad", &amsgrad_));
  }

 protected:
  bool amsgrad_ = false;
};

// One variable's arrays, as the kernel sees them.
template <typename T, typename Stored>
struct Arrays {
  T* theta;
  Stored* m;
  Stored* v;
  Stored* vhat;
  const T* g;
  const T* scalars;
};

// All N variables are one index space [0, Σ sizes), split across the CPU threads as a whole: one
// launch and one wait per step however many variables there are (per-variable ops cost the
// executor ~20 µs each, 6% of a 10M-parameter step over 20 variables).
template <typename T, typename S, typename Codec>
class AdamkitApplyAdamOp : public AmsgradOpKernel {
 public:
  explicit AdamkitApplyAdamOp(OpKernelConstruction* ctx) : AmsgradOpKernel(ctx) {
    OP_REQUIRES_OK(ctx, ctx->GetAttr("N", &n_));
  }

  void Compute(OpKernelContext* ctx) override {
    using Device = Eigen::ThreadPoolDevice;
    using Stored = typename Codec::Stored;
    const int n = n_;
    std::vector<int> resources;
    for (int i = 0; i < (amsgrad_ ? 4 : 3) * n; ++i) resources.push_back(i);
    auto locks = MaybeLockVariableInputMutexesInOrder<Device, T>(ctx, true, false, resources);
    const Tensor& scalars = ctx->input(5 * n);
    OP_REQUIRES(ctx, scalars.NumElements() == 6 * n,
                absl::InvalidArgumentError("scalars must be (N, 6)"));
    std::vector<Arrays<T, Stored>> arrays(n);
    std::vector<int64_t> start(n + 1, 0);  // variable i holds indices [start[i], start[i + 1])
    for (int i = 0; i < n; ++i) {
      Tensor var, m, v, vhat;
      OP_REQUIRES_OK(ctx, GetInputTensorFromVariable<Device, T>(ctx, i, true, false, &var));
      OP_REQUIRES_OK(ctx, GetInputTensorFromVariable<Device, S>(ctx, n + i, true, false, &m));
      OP_REQUIRES_OK(ctx, GetInputTensorFromVariable<Device, S>(ctx, 2 * n + i, true, false, &v));
      if (amsgrad_) {
        OP_REQUIRES_OK(ctx,
                       GetInputTensorFromVariable<Device, S>(ctx, 3 * n + i, true, false, &vhat));
      }
      const Tensor& grad = ctx->input(4 * n + i);
      OP_REQUIRES(ctx, var.shape().IsSameSize(grad.shape()) &&
                       m.shape().IsSameSize(grad.shape()) && v.shape().IsSameSize(grad.shape()) &&
                       (!amsgrad_ || vhat.shape().IsSameSize(grad.shape())),
                  absl::InvalidArgumentError("var, m, v, vhat and grad must have the same shape"));
      arrays[i] = {var.flat<T>().data(),
                   reinterpret_cast<Stored*>(m.flat<S>().data()),
                   reinterpret_cast<Stored*>(v.flat<S>().data()),
                   amsgrad_ ? reinterpret_cast<Stored*>(vhat.flat<S>().data()) : nullptr,
                   grad.flat<T>().data(),
                   scalars.flat<T>().data() + 6 * i};
      start[i + 1] = start[i] + grad.NumElements();
    }
    const uint32_t t = static_cast<uint32_t>(ctx->input(5 * n + 1).scalar<int32>()());
    auto work = [&](int64_t begin, int64_t end) {
      // The variables this range overlaps, each from its own index 0 (the dither's position).
      int i = std::upper_bound(start.begin(), start.end(), begin) - start.begin() - 1;
      for (; i < n && start[i] < end; ++i) {
        const Arrays<T, Stored>& a = arrays[i];
        const int64_t first = std::max(begin, start[i]) - start[i];
        const int64_t last = std::min(end, start[i + 1]) - start[i];
        if (amsgrad_) {
          Update<T, Codec, true>(a.theta, a.m, a.v, a.vhat, a.g, first, last, a.scalars, t);
        } else {
          Update<T, Codec, false>(a.theta, a.m, a.v, a.vhat, a.g, first, last, a.scalars, t);
        }
      }
    };
    auto* threads = ctx->device()->tensorflow_cpu_worker_threads();
    Shard(threads->num_threads, threads->workers, start[n], /*cost_per_unit=*/20, work);
  }

 private:
  int n_ = 1;
};

// -- 8-bit block-wise state (adamkit.state's codec, bit for bit) --------------------------------

REGISTER_OP("AdamkitApplyAdam8bit")
    .Input("var: resource")
    .Input("m_codes: resource")  // int8 (blocks, 256), with one float32 absmax per block
    .Input("m_absmax: resource")
    .Input("v_codes: resource")
    .Input("v_absmax: resource")
    .Input("vhat_codes: resource")
    .Input("vhat_absmax: resource")
    .Input("grad: float")
    .Input("scalars: float")  // as AdamkitApplyAdam's
    .Input("step: int32")
    .Input("signed_codec: float")  // adamkit.state.codec_table(True): decode and encode tables
    .Input("unsigned_codec: float")
    .Attr("amsgrad: bool = false")
    .SetShapeFn([](shape_inference::InferenceContext*) { return absl::OkStatus(); });

constexpr int kBlock = 256;
constexpr int kDecades = 8;

// The layout of adamkit.state.codec_table: decoded value of code c at c + 128, then per decade
// the thresholds 10^-1…10^-F (padding −1), floor, spacing and point count.
struct CodecTable {
  const float* decode;
  const float* threshold;
  const float* floor;
  const float* spacing;
  const float* count;
  float max_index;  // 2^(F+1) − 1
  explicit CodecTable(const float* t)
      : decode(t), threshold(t + 256), floor(t + 256 + kDecades),
        spacing(t + 256 + 2 * kDecades), count(t + 256 + 3 * kDecades),
        max_index(2.0f * count[0] - 1.0f) {}
};

// One block's values → codes, rounding stochastically on the map exactly as adamkit.state.quantize
// does: the same float32 divisions and the same 24-bit dither, so both write the same codes.
// Written to vectorise: the tables are copied to locals (int8 stores may alias anything else), the
// decade's constants are picked by a chain of selects rather than gathered, and the absmax is an
// integer max over the bits with the sign cleared (the same order as the floats' magnitudes).
template <bool kSigned>
void EncodeBlock(const float* __restrict__ x, int8_t* __restrict__ codes,
                 float* __restrict__ absmax_out, const CodecTable& c, uint32_t first_position,
                 uint32_t step_mix) {
  float threshold[kDecades - 1], floor[kDecades], spacing[kDecades], count[kDecades];
  for (int e = 0; e < kDecades; ++e) {
    if (e < kDecades - 1) threshold[e] = c.threshold[e];
    floor[e] = c.floor[e];
    spacing[e] = c.spacing[e];
    count[e] = c.count[e];
  }
  const float max_index = c.max_index;
  int32_t top = 0;
  for (int j = 0; j < kBlock; ++j) {
    int32_t bits;
    std::memcpy(&bits, x + j, sizeof bits);
    top = std::max(top, bits & 0x7fffffff);
  }
  float absmax;
  std::memcpy(&absmax, &top, sizeof absmax);
  *absmax_out = absmax;
  const float divisor = absmax > 0.0f ? absmax : 1.0f;
  for (int j = 0; j < kBlock; ++j) {
    const float normalised = x[j] / divisor;
    const float a = std::fabs(normalised);
    // decade e = how many thresholds 10^-1 > 10^-2 > … lie at or above a.
    float low = floor[0], gap = spacing[0], points = count[0];
    for (int e = 0; e < kDecades - 1; ++e) {
      const bool below = a <= threshold[e];
      low = below ? floor[e + 1] : low;
      gap = below ? spacing[e + 1] : gap;
      points = below ? count[e + 1] : points;
    }
    const uint32_t mixed = (first_position + static_cast<uint32_t>(j)) * kPositionMultiplier +
                           step_mix;
    const float dither = static_cast<float>(static_cast<int32_t>(mixed >> 8)) * 0x1p-24f;
    const float position = (a - low) / gap;
    const float k = std::floor(position + dither) - 1.0f;
    const float index = std::min(std::max(points + k, 0.0f), max_index);
    const float code = kSigned ? (normalised < 0.0f ? -index : index) : index - 128.0f;
    codes[j] = static_cast<int8_t>(static_cast<int32_t>(code));
  }
}

// Everything one 8-bit step needs; state s = 0 (m), 1 (v), 2 (v̂max).
struct Adam8bitStep {
  float* theta;
  const float* g;
  int64_t size;
  int8_t* codes[3];
  float* absmax[3];
  const float* scalars;  // decay, 1 − β1, 1 − β2, α/(1 − β1ᵗ), 1/√(1 − β2ᵗ), ε
  uint32_t step_mix;
  CodecTable signed_map, unsigned_map;
};

// Blocks [begin, end): decode, update θ, re-encode — each block's state stays in L1 between.
template <bool kAmsgrad>
void UpdateBlocks8bit(const Adam8bitStep& p, int64_t begin, int64_t end) {
  const float decay = p.scalars[0], one_minus_b1 = p.scalars[1], one_minus_b2 = p.scalars[2],
              step_size = p.scalars[3], inv_sqrt_bc2 = p.scalars[4], eps = p.scalars[5];
  const float* __restrict__ m_decode = p.signed_map.decode;
  const float* __restrict__ v_decode = p.unsigned_map.decode;
  alignas(64) float m[kBlock], v[kBlock], h[kBlock];
  for (int64_t b = begin; b < end; ++b) {
    const int64_t first = b * kBlock;
    const int n = static_cast<int>(std::min<int64_t>(kBlock, p.size - first));
    const int8_t* __restrict__ mc = p.codes[0] + first;
    const int8_t* __restrict__ vc = p.codes[1] + first;
    const float* __restrict__ g = p.g + first;
    float* __restrict__ theta = p.theta + first;
    const float ma = p.absmax[0][b], va = p.absmax[1][b];
    for (int j = 0; j < n; ++j) {  // the new state, unrounded, for the update and the encoder
      const float m_old = m_decode[mc[j] + 128] * ma;
      const float v_old = v_decode[vc[j] + 128] * va;
      m[j] = m_old + (g[j] - m_old) * one_minus_b1;
      v[j] = v_old + (g[j] * g[j] - v_old) * one_minus_b2;
    }
    const float* denominator = v;
    if (kAmsgrad) {
      const int8_t* __restrict__ hc = p.codes[2] + first;
      const float ha = p.absmax[2][b];
      for (int j = 0; j < n; ++j) {
        const float old = v_decode[hc[j] + 128] * ha;
        h[j] = old > v[j] ? old : v[j];
      }
      denominator = h;
    }
    for (int j = 0; j < n; ++j) {
      theta[j] = theta[j] * decay - step_size * m[j] / (std::sqrt(denominator[j]) * inv_sqrt_bc2 + eps);
    }
    for (int j = n; j < kBlock; ++j) m[j] = v[j] = h[j] = 0.0f;  // the padding, as quantize's
    const uint32_t position = static_cast<uint32_t>(first);
    EncodeBlock<true>(m, p.codes[0] + first, p.absmax[0] + b, p.signed_map, position, p.step_mix);
    EncodeBlock<false>(v, p.codes[1] + first, p.absmax[1] + b, p.unsigned_map, position,
                       p.step_mix);
    if (kAmsgrad) {
      EncodeBlock<false>(h, p.codes[2] + first, p.absmax[2] + b, p.unsigned_map, position,
                         p.step_mix);
    }
  }
}

class AdamkitApplyAdam8bitOp : public AmsgradOpKernel {
 public:
  using AmsgradOpKernel::AmsgradOpKernel;

  void Compute(OpKernelContext* ctx) override {
    using Device = Eigen::ThreadPoolDevice;
    std::vector<int> inputs = {0, 1, 2, 3, 4};
    if (amsgrad_) inputs.insert(inputs.end(), {5, 6});
    auto locks = MaybeLockVariableInputMutexesInOrder<Device, float>(ctx, true, false, inputs);
    Tensor var, codes[3], absmax[3];
    OP_REQUIRES_OK(ctx, GetInputTensorFromVariable<Device, float>(ctx, 0, true, false, &var));
    const int states = amsgrad_ ? 3 : 2;
    for (int s = 0; s < states; ++s) {
      OP_REQUIRES_OK(ctx, GetInputTensorFromVariable<Device, int8>(ctx, 1 + 2 * s, true, false,
                                                                  &codes[s]));
      OP_REQUIRES_OK(ctx, GetInputTensorFromVariable<Device, float>(ctx, 2 + 2 * s, true, false,
                                                                   &absmax[s]));
    }
    const Tensor& grad = ctx->input(7);
    const Tensor& scalars = ctx->input(8);
    const int64_t size = grad.NumElements();
    const int64_t blocks = (size + kBlock - 1) / kBlock;
    OP_REQUIRES(ctx, var.NumElements() == size,
                absl::InvalidArgumentError("var and grad must have the same size"));
    for (int s = 0; s < states; ++s) {
      OP_REQUIRES(ctx, codes[s].NumElements() == blocks * kBlock &&
                           absmax[s].NumElements() == blocks,
                  absl::InvalidArgumentError("codes must be (blocks, 256), absmax (blocks,)"));
    }
    constexpr int kTable = 256 + 4 * kDecades;
    OP_REQUIRES(ctx, scalars.NumElements() == 6 && ctx->input(10).NumElements() == kTable &&
                         ctx->input(11).NumElements() == kTable,
                absl::InvalidArgumentError("6 scalars and two codec tables expected"));
    Adam8bitStep step{var.flat<float>().data(), grad.flat<float>().data(), size, {}, {},
                      scalars.flat<float>().data(),
                      static_cast<uint32_t>(ctx->input(9).scalar<int32>()()) * kStepMultiplier,
                      CodecTable(ctx->input(10).flat<float>().data()),
                      CodecTable(ctx->input(11).flat<float>().data())};
    for (int s = 0; s < states; ++s) {
      step.codes[s] = reinterpret_cast<int8_t*>(codes[s].flat<int8>().data());
      step.absmax[s] = absmax[s].flat<float>().data();
    }
    auto work = [&step, this](int64_t begin, int64_t end) {
      if (amsgrad_) {
        UpdateBlocks8bit<true>(step, begin, end);
      } else {
        UpdateBlocks8bit<false>(step, begin, end);
      }
    };
    auto* threads = ctx->device()->tensorflow_cpu_worker_threads();
    Shard(threads->num_threads, threads->workers, blocks, /*cost_per_unit=*/kBlock * 60, work);
  }
};

REGISTER_KERNEL_BUILDER(Name("AdamkitApplyAdam8bit").Device(DEVICE_CPU), AdamkitApplyAdam8bitOp);

#define REGISTER(T, S, CODEC)                                                          \
  REGISTER_KERNEL_BUILDER(                                                             \
      Name("AdamkitApplyAdam").Device(DEVICE_CPU).TypeConstraint<T>("T").TypeConstraint<S>("S"), \
      AdamkitApplyAdamOp<T, S, CODEC>);
REGISTER(float, float, Plain<float>)
REGISTER(double, double, Plain<double>)
REGISTER(float, bfloat16, StochasticBfloat16)
#undef REGISTER

}  // namespace tensorflow
