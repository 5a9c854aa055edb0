// adamkit's fused Adam/AMSGrad/AdaMax step as XLA FFI custom calls ("adamkit_adam"; "adamkit_adam8bit"
// for variables with 8-bit state, as adam_op.cc's AdamkitApplyAdam8bit), for code that XLA
// compiles: TensorFlow under jit_compile=True (through an XlaCallModule op) and the JAX backend.
// XLA's own lowering of the ops computes m, v and θ in three loops (40 bytes per parameter where
// 28 suffice); this handler is one pass over all the step's variables, like the TensorFlow op.
//
// Operands: θ₁…θₙ, m₁…mₙ, v₁…vₙ, [v̂max₁…v̂maxₙ with amsgrad], g₁…gₙ, scalars (n, 7) as in
// adam_update.h, the step t (int32, for the bfloat16 state's dither). Results: θ, m, v, [v̂max],
// each aliased to its operand, so XLA updates the buffers in place where it can; where it copied
// an operand first, the copy is taken here.
// Attributes: n, amsgrad, adamax (v is AdaMax's infinity norm u; adam_update.h). Parameters
// float32 or float64 with state of their dtype, or float32 with bfloat16 state (stochastically
// rounded as adamkit.state does, bit for bit).
//
// Built twice from this file: against TensorFlow's headers with ADAMKIT_REGISTER_WITH_TENSORFLOW
// (registered at load with TensorFlow's XLA), and against jaxlib's (registered from Python with
// jax.ffi.register_ffi_target).
#include <cstdint>
#include <cstring>
#include <functional>
#include <utility>
#include <vector>

#include "adam_update.h"
#include "parallel.h"
#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace adamkit {
namespace {

// The pool's threads, as parallel.h's ParallelFor takes them.
std::function<void(std::function<void()>)> Scheduler(ffi::ThreadPool& pool) {
  return [&pool](std::function<void()> task) { pool.Schedule(std::move(task)); };
}

// The buffer an updated array is written in: XLA's result buffer, which is the operand itself
// where XLA aliased them, else a fresh one that starts as a copy of the operand.
void* Updated(const ffi::AnyBuffer& in, ffi::Result<ffi::AnyBuffer>& out) {
  void* data = out->untyped_data();
  if (in.untyped_data() != data) std::memcpy(data, in.untyped_data(), in.size_bytes());
  return data;
}

template <typename T, typename Codec>
ffi::Error Step(ffi::ThreadPool& pool, const ffi::RemainingArgs& args,
                const ffi::RemainingRets& rets, int64_t n, Rule rule, ffi::DataType param,
                ffi::DataType state) {
  const bool amsgrad = rule == Rule::kAmsgrad;
  using Stored = typename Codec::Stored;
  const int64_t arrays = amsgrad ? 4 : 3;  // updated per variable: θ, m, v, [v̂max]
  if (n < 1 || args.size() != static_cast<size_t>((arrays + 1) * n + 2) ||
      rets.size() != static_cast<size_t>(arrays * n)) {
    return ffi::Error::InvalidArgument("adamkit_adam: operand or result count does not match n");
  }
  auto scalars = args.get<ffi::AnyBuffer>(args.size() - 2);
  auto step = args.get<ffi::AnyBuffer>(args.size() - 1);
  const size_t scalar_count = static_cast<size_t>(adamkit::kScalars * n);
  if (!scalars.has_value() || scalars->element_count() != scalar_count || !step.has_value() ||
      step->element_type() != ffi::DataType::S32) {
    return ffi::Error::InvalidArgument("adamkit_adam: scalars must be (n, 7), step an int32");
  }
  const T* s = static_cast<const T*>(scalars->untyped_data());
  const uint32_t t = static_cast<uint32_t>(*static_cast<const int32_t*>(step->untyped_data()));
  std::vector<Arrays<T, Stored>> vars(n);
  std::vector<int64_t> start(n + 1, 0);  // variable i holds indices [start[i], start[i + 1])
  for (int64_t i = 0; i < n; ++i) {
    auto grad = args.get<ffi::AnyBuffer>(arrays * n + i);
    if (!grad.has_value()) return ffi::Error::InvalidArgument("adamkit_adam: bad gradient");
    void* updated[4] = {nullptr, nullptr, nullptr, nullptr};
    for (int64_t a = 0; a < arrays; ++a) {
      auto in = args.get<ffi::AnyBuffer>(a * n + i);
      auto out = rets.get<ffi::AnyBuffer>(a * n + i);
      if (!in.has_value() || !out.has_value() || in->element_count() != grad->element_count() ||
          (*out)->element_count() != grad->element_count() ||
          in->element_type() != (a == 0 ? param : state) || grad->element_type() != param) {
        return ffi::Error::InvalidArgument(
            "adamkit_adam: θ, m, v, v̂max and g must match in size, the state in dtype");
      }
      updated[a] = Updated(*in, *out);
    }
    vars[i] = {static_cast<T*>(updated[0]), static_cast<Stored*>(updated[1]),
               static_cast<Stored*>(updated[2]), static_cast<Stored*>(updated[3]),
               static_cast<const T*>(grad->untyped_data()), s + adamkit::kScalars * i};
    start[i + 1] = start[i] + static_cast<int64_t>(grad->element_count());
  }
  // All variables are one index space, as in the TensorFlow op: one launch, one wait.
  ParallelFor(pool.num_threads(), Scheduler(pool), start[n], kChunkValues,
              [&](int64_t begin, int64_t end) {
                UpdateRange<T, Codec>(vars, start, rule, t, begin, end);
              });
  return ffi::Error::Success();
}

ffi::Error AdamStep(ffi::ThreadPool pool, ffi::RemainingArgs args, ffi::RemainingRets rets,
                    int64_t n, bool amsgrad, bool adamax) {
  if (amsgrad && adamax) return ffi::Error::InvalidArgument("adamkit_adam: amsgrad or adamax");
  const Rule rule = RuleOf(amsgrad, adamax);
  auto theta = args.get<ffi::AnyBuffer>(0);
  auto m = args.get<ffi::AnyBuffer>(n);
  if (n < 1 || !theta.has_value() || !m.has_value()) {
    return ffi::Error::InvalidArgument("adamkit_adam: no operands");
  }
  const ffi::DataType param = theta->element_type(), state = m->element_type();
  if (param == ffi::DataType::F32 && state == ffi::DataType::F32) {
    return Step<float, Plain<float>>(pool, args, rets, n, rule, param, state);
  }
  if (param == ffi::DataType::F64 && state == ffi::DataType::F64) {
    return Step<double, Plain<double>>(pool, args, rets, n, rule, param, state);
  }
  if (param == ffi::DataType::F32 && state == ffi::DataType::BF16) {
    return Step<float, StochasticBfloat16>(pool, args, rets, n, rule, param, state);
  }
  return ffi::Error::InvalidArgument(
      "adamkit_adam: parameters float32 or float64 with state of their dtype, or float32 with "
      "bfloat16 state");
}

// n float32 variables with 8-bit state, all their blocks one index space (one launch, one wait).
// Operands: θ (n of them), m codes (n), m absmax (n), v codes (n), v absmax (n), [v̂max codes (n),
// v̂max absmax (n)], g (n), scalars (n, 7), step (int32), the signed and unsigned codec tables
// (adamkit.state.codec_table); results: θ and the codes and absmax, aliased to their operands.
ffi::Error Adam8bitCall(ffi::ThreadPool pool, ffi::RemainingArgs args, ffi::RemainingRets rets,
                        int64_t n, bool amsgrad, bool adamax) {
  if (amsgrad && adamax) return ffi::Error::InvalidArgument("adamkit_adam8bit: amsgrad or adamax");
  const Rule rule = RuleOf(amsgrad, adamax);
  const int64_t arrays = amsgrad ? 7 : 5;  // updated per variable: θ, each state's codes, absmax
  if (n < 1 || args.size() != static_cast<size_t>((arrays + 1) * n + 4) ||
      rets.size() != static_cast<size_t>(arrays * n)) {
    return ffi::Error::InvalidArgument("adamkit_adam8bit: operand or result count does not match n");
  }
  auto scalars = args.get<ffi::AnyBuffer>(args.size() - 4);
  auto step = args.get<ffi::AnyBuffer>(args.size() - 3);
  auto signed_table = args.get<ffi::AnyBuffer>(args.size() - 2);
  auto unsigned_table = args.get<ffi::AnyBuffer>(args.size() - 1);
  constexpr size_t kTable = 256 + 4 * kDecades;
  if (!scalars.has_value() || scalars->element_type() != ffi::DataType::F32 ||
      scalars->element_count() != static_cast<size_t>(adamkit::kScalars * n) ||
      !step.has_value() || step->element_type() != ffi::DataType::S32 ||
      !signed_table.has_value() || signed_table->element_count() != kTable ||
      !unsigned_table.has_value() || unsigned_table->element_count() != kTable) {
    return ffi::Error::InvalidArgument(
        "adamkit_adam8bit: (n, 7) float32 scalars, an int32 step and two codec tables expected");
  }
  const uint32_t step_mix =
      static_cast<uint32_t>(*static_cast<const int32_t*>(step->untyped_data())) * kStepMultiplier;
  const CodecTable signed_map(static_cast<const float*>(signed_table->untyped_data()));
  const CodecTable unsigned_map(static_cast<const float*>(unsigned_table->untyped_data()));
  const float* s = static_cast<const float*>(scalars->untyped_data());
  std::vector<Adam8bitStep> steps;
  steps.reserve(n);
  std::vector<int64_t> start(n + 1, 0);  // variable i holds blocks [start[i], start[i + 1])
  for (int64_t i = 0; i < n; ++i) {
    auto grad = args.get<ffi::AnyBuffer>(arrays * n + i);
    if (!grad.has_value() || grad->element_type() != ffi::DataType::F32) {
      return ffi::Error::InvalidArgument("adamkit_adam8bit: float32 gradients expected");
    }
    const int64_t size = static_cast<int64_t>(grad->element_count());
    const int64_t blocks = (size + kBlock - 1) / kBlock;
    void* data[7] = {};
    for (int64_t a = 0; a < arrays; ++a) {
      auto in = args.get<ffi::AnyBuffer>(a * n + i);
      auto out = rets.get<ffi::AnyBuffer>(a * n + i);
      // θ: size float32s; then each state's codes (blocks, 256) and absmax (blocks,)
      const int64_t count = a == 0 ? size : a % 2 == 1 ? blocks * kBlock : blocks;
      if (!in.has_value() || !out.has_value() || in->size_bytes() != (*out)->size_bytes() ||
          static_cast<int64_t>(in->element_count()) != count ||
          (a == 0 && in->element_type() != ffi::DataType::F32)) {
        return ffi::Error::InvalidArgument(
            "adamkit_adam8bit: float32 θ and g of one size, codes (blocks, 256) and absmax "
            "(blocks,) expected, each result its operand's size");
      }
      data[a] = Updated(*in, *out);
    }
    Adam8bitStep& p = steps.emplace_back(Adam8bitStep{
        static_cast<float*>(data[0]), static_cast<const float*>(grad->untyped_data()), size, {},
        {}, s + adamkit::kScalars * i, step_mix, signed_map, unsigned_map});
    for (int64_t state = 0; 1 + 2 * state < arrays; ++state) {
      p.codes[state] = static_cast<int8_t*>(data[1 + 2 * state]);
      p.absmax[state] = static_cast<float*>(data[2 + 2 * state]);
    }
    start[i + 1] = start[i] + blocks;
  }
  const int64_t threads = pool.num_threads();
  ParallelFor(threads, Scheduler(pool), start[n], BlocksPerChunk(start[n], threads),
              [&](int64_t begin, int64_t end) {
                UpdateBlocks8bitRange(steps, start, rule, begin, end);
              });
  return ffi::Error::Success();
}

}  // namespace
}  // namespace adamkit

XLA_FFI_DEFINE_HANDLER_SYMBOL(AdamkitAdam, adamkit::AdamStep,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .RemainingArgs()
                                  .RemainingRets()
                                  .Attr<int64_t>("n")
                                  .Attr<bool>("amsgrad")
                                  .Attr<bool>("adamax"));

XLA_FFI_DEFINE_HANDLER_SYMBOL(AdamkitAdam8bit, adamkit::Adam8bitCall,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .RemainingArgs()
                                  .RemainingRets()
                                  .Attr<int64_t>("n")
                                  .Attr<bool>("amsgrad")
                                  .Attr<bool>("adamax"));

#ifdef ADAMKIT_REGISTER_WITH_TENSORFLOW
namespace xla::ffi {
const XLA_FFI_Api* GetXlaFfiApi();  // exported by TensorFlow's libtensorflow_cc
}
XLA_FFI_REGISTER_HANDLER(xla::ffi::GetXlaFfiApi(), "adamkit_adam", "Host", AdamkitAdam);
XLA_FFI_REGISTER_HANDLER(xla::ffi::GetXlaFfiApi(), "adamkit_adam8bit", "Host", AdamkitAdam8bit);
#endif
