// adamkit's fused Adam/AMSGrad/AdaMax step for TensorFlow on the CPU: one multi-threaded pass that
// reads θ, g, m, v (and v̂max) and writes θ, m, v (and v̂max): the 28 (36) bytes per parameter an
// Adam step must move, nothing more (AdaMax: v is its infinity norm u, adam_update.h). Built against the installed TensorFlow on first use
// (adamkit/kernels/tensorflow.py); the plain loops below vectorise (-O3, -fno-math-errno, and
// -fno-trapping-math: no floating-point traps are used, and it lets floor() vectorise).
//
//   m ← m + (g − m)(1 − β1)          v ← v + (g² − v)(1 − β2)         [v̂max ← max(v̂max, v)]
//   θ ← θ·decay − (a·m + b·g) / (√v·s + ε)        (Adam: a = α/(1 − β1ᵗ), s = 1/√(1 − β2ᵗ), b = 0)
//
// Three ops: AdamkitApplyAdam updates any number of variables in one launch, keeping m, v, v̂max
// as T or (float parameters) bfloat16; AdamkitSparseApplyAdam updates the rows of one table that a
// sparse gradient names (lazy=True); AdamkitApplyAdam8bit (any number of float32 variables in
// one launch) keeps m and v as adamkit.state's 8-bit block-wise codes, decoding, updating and
// re-encoding one block of 256 at a time while it sits in L1.
//
// The scalars (adamkit/kernels/scalars.py) arrive already formed in double precision and rounded once to T, so 1 − β2 is
// exact to T's precision (TensorFlow's own kernel forms it from T-rounded β2). Compiled with
// -ffp-contract=off so that m and v round exactly as the ops path's separate operations do.
#define EIGEN_USE_THREADS
#include <algorithm>
#include <cmath>
#include <cstring>
#include <functional>
#include <numeric>
#include <utility>
#include <vector>

#include "tensorflow/core/framework/op.h"
#include "tensorflow/core/framework/op_kernel.h"
#include "tensorflow/core/framework/shape_inference.h"
#include "tensorflow/core/kernels/training_op_helpers.h"
#include "tensorflow/core/util/work_sharder.h"  // GetPerThreadMaxParallelism

#include "adam_update.h"
#include "parallel.h"

namespace tensorflow {

using adamkit::kPositionMultiplier;
using adamkit::Rule;
using adamkit::RuleOf;
using adamkit::kStepMultiplier;
using adamkit::Plain;
using adamkit::StochasticBfloat16;
using adamkit::Adam8bitStep;
using adamkit::Arrays;
using adamkit::CodecTable;
using adamkit::kBlock;
using adamkit::kDecades;
using adamkit::kScalars;
using adamkit::UpdateRange;
using adamkit::UpdateBlocks8bitRange;

REGISTER_OP("AdamkitApplyAdam")  // N variables of one dtype in one launch
    .Input("var: N * resource")
    .Input("m: N * resource")
    .Input("v: N * resource")
    .Input("vhat: N * resource")  // read only with amsgrad (pass v otherwise)
    .Input("grad: N * T")
    .Input("scalars: T")  // (N, 7): decay, 1 − β1, 1 − β2, a, s, ε, b (adam_update.h)
    .Input("step: int32")  // the iteration t, for the bfloat16 state's dither
    .Attr("N: int >= 1")
    .Attr("T: {float, double}")
    .Attr("S: {float, double, bfloat16}")  // how m, v (and v̂max) are stored
    .Attr("amsgrad: bool = false")
    .Attr("adamax: bool = false")  // v is AdaMax's infinity norm u (scalars: β2 for 1 − β2)
    .SetShapeFn([](shape_inference::InferenceContext*) { return absl::OkStatus(); });

// The threads TensorFlow allows this op's thread: its intra-op threads, and tf.data's
// max_intra_op_parallelism where it is set.
int64_t AllowedThreads(OpKernelContext* ctx) {
  return std::min<int64_t>(ctx->device()->tensorflow_cpu_worker_threads()->num_threads,
                           GetPerThreadMaxParallelism());
}

// work(begin, end) over [0, total) in chunks, on the op's thread and TensorFlow's CPU workers
// (parallel.h: no wait for a worker that has not started), as many as AllowedThreads; on the
// op's thread alone where that is one, as Shard did.

template <typename Work>
void ParallelFor(OpKernelContext* ctx, int64_t total, int64_t chunk, const Work& work) {
  const int64_t allowed = AllowedThreads(ctx);
  if (allowed <= 1) {
    if (total > 0) work(0, total);
    return;
  }
  adamkit::ParallelFor(
      allowed,
      [pool = ctx->device()->tensorflow_cpu_worker_threads()->workers](
          std::function<void()> task) { pool->Schedule(std::move(task)); },
      total, chunk, work);
}

// Both ops' attributes: whether to keep AMSGrad's running maximum, or run AdaMax's rule.
class RuleOpKernel : public OpKernel {
 public:
  explicit RuleOpKernel(OpKernelConstruction* ctx) : OpKernel(ctx) {
    bool adamax = false;
    OP_REQUIRES_OK(ctx, ctx->GetAttr("amsgrad", &amsgrad_));
    OP_REQUIRES_OK(ctx, ctx->GetAttr("adamax", &adamax));
    OP_REQUIRES(ctx, !(amsgrad_ && adamax),
                absl::InvalidArgumentError("amsgrad and adamax cannot both be set"));
    rule_ = RuleOf(amsgrad_, adamax);
  }

 protected:
  bool amsgrad_ = false;
  Rule rule_ = Rule::kAdam;
};

// All N variables are one index space [0, Σ sizes), split across the CPU threads as a whole: one
// launch and one wait per step however many variables there are (per-variable ops cost the
// executor ~20 µs each, 6% of a 10M-parameter step over 20 variables).
template <typename T, typename S, typename Codec>
class AdamkitApplyAdamOp : public RuleOpKernel {
 public:
  explicit AdamkitApplyAdamOp(OpKernelConstruction* ctx) : RuleOpKernel(ctx) {
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
    OP_REQUIRES(ctx, scalars.NumElements() == kScalars * n,
                absl::InvalidArgumentError("scalars must be (N, 7)"));
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
                   scalars.flat<T>().data() + kScalars * i};
      start[i + 1] = start[i] + grad.NumElements();
    }
    const uint32_t t = static_cast<uint32_t>(ctx->input(5 * n + 1).scalar<int32>()());
    auto work = [&](int64_t begin, int64_t end) {
      UpdateRange<T, Codec>(arrays, start, rule_, t, begin, end);
    };
    ParallelFor(ctx, start[n], adamkit::kChunkValues, work);
  }

 private:
  int n_ = 1;
};

// -- lazy updates: the touched rows of one table ------------------------------------------------

REGISTER_OP("AdamkitSparseApplyAdam")  // one table, the rows a sparse gradient names
    .Input("var: resource")
    .Input("m: resource")
    .Input("v: resource")
    .Input("vhat: resource")  // read only with amsgrad (pass v otherwise)
    .Input("indices: Tindices")  // (k,): rows of var, duplicates allowed (their rows are summed)
    .Input("grad: T")  // (k, ...): one gradient row per index
    .Input("scalars: T")  // (1, 7), as AdamkitApplyAdam's
    .Input("step: int32")
    .Attr("T: {float, double}")
    .Attr("S: {float, double, bfloat16}")
    .Attr("Tindices: {int32, int64}")
    .Attr("amsgrad: bool = false")
    .Attr("adamax: bool = false")
    .SetShapeFn([](shape_inference::InferenceContext*) { return absl::OkStatus(); });

// The rows a sparse gradient names, ascending, each with its gradient row: a row named more than
// once gets the sum of its rows in the order given, as TensorFlow's unsorted_segment_sum (which
// densifying the gradient runs) adds them.
template <typename T, typename Index>
struct TouchedRows {
  std::vector<int64_t> rows;
  std::vector<const T*> grads;
  std::vector<T> summed;

  TouchedRows(const Index* index, const T* values, int64_t k, int64_t row_size) {
    std::vector<int64_t> order(k);
    std::iota(order.begin(), order.end(), 0);
    std::stable_sort(order.begin(), order.end(),
                     [index](int64_t a, int64_t b) { return index[a] < index[b]; });
    struct Repeated { size_t entry; int64_t begin, end; };  // a run of one row in order
    std::vector<Repeated> repeated;
    for (int64_t begin = 0; begin < k;) {
      int64_t end = begin + 1;
      while (end < k && index[order[end]] == index[order[begin]]) ++end;
      if (end - begin > 1) repeated.push_back({rows.size(), begin, end});
      rows.push_back(index[order[begin]]);
      grads.push_back(values + order[begin] * row_size);
      begin = end;
    }
    summed.assign(repeated.size() * row_size, T(0));  // sized once: grads point into it
    for (size_t s = 0; s < repeated.size(); ++s) {
      T* total = summed.data() + s * row_size;
      for (int64_t i = repeated[s].begin; i < repeated[s].end; ++i) {
        const T* g = values + order[i] * row_size;
        for (int64_t e = 0; e < row_size; ++e) total[e] += g[e];
      }
      grads[repeated[s].entry] = total;
    }
  }
};

// One launch does what the lazy ops path does in ~25 (unique, segment sum, three gathers, the
// rule, three scatters): duplicates summed in the order given (as unsorted_segment_sum sums
// them, so the result is the densified gradient's), then each touched row updated in place.
template <typename T, typename S, typename Codec, typename Index>
class AdamkitSparseApplyAdamOp : public RuleOpKernel {
 public:
  using RuleOpKernel::RuleOpKernel;

  void Compute(OpKernelContext* ctx) override {
    using Device = Eigen::ThreadPoolDevice;
    using Stored = typename Codec::Stored;
    std::vector<int> resources = {0, 1, 2};
    if (amsgrad_) resources.push_back(3);
    // Sparse access (copy on read) set up for each variable in its own dtype first: the lock
    // below sets it up with T, and where a reader still held bfloat16 m or v it would copy them
    // as T, a check that aborts the process.
    for (int i : resources) {
      core::RefCountPtr<Var> resource;
      OP_REQUIRES_OK(ctx, LookupResource(ctx, HandleFromInput(ctx, i), &resource));
      OP_REQUIRES_OK(ctx, i == 0 ? EnsureSparseVariableAccess<Device, T>(ctx, resource.get())
                                 : EnsureSparseVariableAccess<Device, S>(ctx, resource.get()));
    }
    auto locks = MaybeLockVariableInputMutexesInOrder<Device, T>(ctx, true, true, resources);
    Tensor var, m, v, vhat;
    OP_REQUIRES_OK(ctx, GetInputTensorFromVariable<Device, T>(ctx, 0, true, true, &var));
    OP_REQUIRES_OK(ctx, GetInputTensorFromVariable<Device, S>(ctx, 1, true, true, &m));
    OP_REQUIRES_OK(ctx, GetInputTensorFromVariable<Device, S>(ctx, 2, true, true, &v));
    if (amsgrad_) {
      OP_REQUIRES_OK(ctx, GetInputTensorFromVariable<Device, S>(ctx, 3, true, true, &vhat));
    }
    const Tensor& indices = ctx->input(4);
    const Tensor& grad = ctx->input(5);
    const Tensor& scalars = ctx->input(6);
    OP_REQUIRES(ctx, var.dims() >= 1 && m.shape() == var.shape() && v.shape() == var.shape() &&
                         (!amsgrad_ || vhat.shape() == var.shape()),
                absl::InvalidArgumentError("var, m, v and vhat must have one shape, rank >= 1"));
    OP_REQUIRES(ctx, scalars.NumElements() == kScalars,
                absl::InvalidArgumentError("scalars must be (1, 7)"));
    const int64_t table_rows = var.dim_size(0), k = indices.NumElements();
    const int64_t row_size = table_rows ? var.NumElements() / table_rows : 0;
    OP_REQUIRES(ctx, indices.dims() == 1 && grad.NumElements() == k * row_size,
                absl::InvalidArgumentError("indices must be (k,), grad k rows of var's"));
    const Index* index = indices.flat<Index>().data();
    for (int64_t i = 0; i < k; ++i) {
      OP_REQUIRES(ctx, index[i] >= 0 && index[i] < table_rows,
                  absl::InvalidArgumentError(absl::StrCat("indices[", i, "] = ", index[i],
                                                          " is not in [0, ", table_rows, ")")));
    }
    const TouchedRows<T, Index> touched(index, grad.flat<T>().data(), k, row_size);
    const Arrays<T, Stored> table{var.flat<T>().data(),
                                  reinterpret_cast<Stored*>(m.flat<S>().data()),
                                  reinterpret_cast<Stored*>(v.flat<S>().data()),
                                  amsgrad_ ? reinterpret_cast<Stored*>(vhat.flat<S>().data())
                                           : nullptr,
                                  nullptr, scalars.flat<T>().data()};
    const uint32_t t = static_cast<uint32_t>(ctx->input(7).scalar<int32>()());
    auto work = [&](int64_t begin, int64_t end) {
      adamkit::UpdateRows<T, Codec>(table, touched.rows.data(), touched.grads.data(), row_size,
                                    rule_, t, begin, end);
    };
    ParallelFor(ctx, static_cast<int64_t>(touched.rows.size()),
                std::max<int64_t>(1, adamkit::kChunkValues / std::max<int64_t>(row_size, 1)), work);
  }
};

#define REGISTER_SPARSE(T, S, CODEC, INDEX)                                             \
  REGISTER_KERNEL_BUILDER(Name("AdamkitSparseApplyAdam")                                \
                              .Device(DEVICE_CPU)                                       \
                              .TypeConstraint<T>("T")                                   \
                              .TypeConstraint<S>("S")                                   \
                              .TypeConstraint<INDEX>("Tindices"),                       \
                          AdamkitSparseApplyAdamOp<T, S, CODEC, INDEX>);
REGISTER_SPARSE(float, float, Plain<float>, int32)
REGISTER_SPARSE(float, float, Plain<float>, int64_t)
REGISTER_SPARSE(double, double, Plain<double>, int32)
REGISTER_SPARSE(double, double, Plain<double>, int64_t)
REGISTER_SPARSE(float, bfloat16, StochasticBfloat16, int32)
REGISTER_SPARSE(float, bfloat16, StochasticBfloat16, int64_t)
#undef REGISTER_SPARSE

// -- 8-bit block-wise state (adamkit.state's codec, bit for bit) --------------------------------

REGISTER_OP("AdamkitApplyAdam8bit")  // N float32 variables in one launch
    .Input("var: N * resource")
    .Input("m_codes: N * resource")  // int8 (blocks, 256), with one float32 absmax per block
    .Input("m_absmax: N * resource")
    .Input("v_codes: N * resource")
    .Input("v_absmax: N * resource")
    .Input("vhat_codes: N * resource")  // read only with amsgrad (pass v's otherwise)
    .Input("vhat_absmax: N * resource")
    .Input("grad: N * float")
    .Input("scalars: float")  // (N, 7), as AdamkitApplyAdam's
    .Input("step: int32")
    .Input("signed_codec: float")  // adamkit.state.codec_table(True): decode and encode tables
    .Input("unsigned_codec: float")
    .Attr("N: int >= 1")
    .Attr("amsgrad: bool = false")
    .Attr("adamax: bool = false")
    .SetShapeFn([](shape_inference::InferenceContext*) { return absl::OkStatus(); });

// As AdamkitApplyAdamOp, all N variables' blocks are one index space: one launch and one wait.
class AdamkitApplyAdam8bitOp : public RuleOpKernel {
 public:
  explicit AdamkitApplyAdam8bitOp(OpKernelConstruction* ctx) : RuleOpKernel(ctx) {
    OP_REQUIRES_OK(ctx, ctx->GetAttr("N", &n_));
  }

  void Compute(OpKernelContext* ctx) override {
    using Device = Eigen::ThreadPoolDevice;
    const int n = n_;
    const int states = amsgrad_ ? 3 : 2;
    std::vector<int> resources(n * (1 + 2 * states));
    std::iota(resources.begin(), resources.end(), 0);
    auto locks = MaybeLockVariableInputMutexesInOrder<Device, float>(ctx, true, false, resources);
    const Tensor& scalars = ctx->input(8 * n);
    constexpr int kTable = 256 + 4 * kDecades;
    OP_REQUIRES(ctx, scalars.NumElements() == kScalars * n &&
                         ctx->input(8 * n + 2).NumElements() == kTable &&
                         ctx->input(8 * n + 3).NumElements() == kTable,
                absl::InvalidArgumentError("(N, 7) scalars and two codec tables expected"));
    const uint32_t step_mix =
        static_cast<uint32_t>(ctx->input(8 * n + 1).scalar<int32>()()) * kStepMultiplier;
    const CodecTable signed_map(ctx->input(8 * n + 2).flat<float>().data());
    const CodecTable unsigned_map(ctx->input(8 * n + 3).flat<float>().data());
    std::vector<Adam8bitStep> steps;
    steps.reserve(n);
    std::vector<int64_t> start(n + 1, 0);  // variable i holds blocks [start[i], start[i + 1])
    for (int i = 0; i < n; ++i) {
      Tensor var, codes[3], absmax[3];
      OP_REQUIRES_OK(ctx, GetInputTensorFromVariable<Device, float>(ctx, i, true, false, &var));
      for (int s = 0; s < states; ++s) {
        OP_REQUIRES_OK(ctx, GetInputTensorFromVariable<Device, int8>(ctx, (1 + 2 * s) * n + i,
                                                                    true, false, &codes[s]));
        OP_REQUIRES_OK(ctx, GetInputTensorFromVariable<Device, float>(ctx, (2 + 2 * s) * n + i,
                                                                     true, false, &absmax[s]));
      }
      const Tensor& grad = ctx->input(7 * n + i);
      const int64_t size = grad.NumElements();
      const int64_t blocks = (size + kBlock - 1) / kBlock;
      OP_REQUIRES(ctx, var.NumElements() == size,
                  absl::InvalidArgumentError("var and grad must have the same size"));
      for (int s = 0; s < states; ++s) {
        OP_REQUIRES(ctx, codes[s].NumElements() == blocks * kBlock &&
                             absmax[s].NumElements() == blocks,
                    absl::InvalidArgumentError("codes must be (blocks, 256), absmax (blocks,)"));
      }
      Adam8bitStep& step = steps.emplace_back(Adam8bitStep{
          var.flat<float>().data(), grad.flat<float>().data(), size, {}, {},
          scalars.flat<float>().data() + kScalars * i, step_mix, signed_map, unsigned_map});
      for (int s = 0; s < states; ++s) {
        step.codes[s] = reinterpret_cast<int8_t*>(codes[s].flat<int8>().data());
        step.absmax[s] = absmax[s].flat<float>().data();
      }
      start[i + 1] = start[i] + blocks;
    }
    auto work = [&](int64_t begin, int64_t end) {
      UpdateBlocks8bitRange(steps, start, rule_, begin, end);
    };
    ParallelFor(ctx, start[n], adamkit::BlocksPerChunk(start[n], AllowedThreads(ctx)), work);
  }

 private:
  int n_ = 1;
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
