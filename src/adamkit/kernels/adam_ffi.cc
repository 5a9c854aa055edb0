// adamkit's fused Adam/AMSGrad step as an XLA FFI custom call ("adamkit_adam"), for code that XLA
// compiles: TensorFlow under jit_compile=True (through an XlaCallModule op) and the JAX backend.
// XLA's own lowering of the ops computes m, v and θ in three loops (40 bytes per parameter where
// 28 suffice); this handler is one pass over all the step's variables, like the TensorFlow op.
//
// Operands: θ₁…θₙ, m₁…mₙ, v₁…vₙ, [v̂max₁…v̂maxₙ with amsgrad], g₁…gₙ, scalars (n, 6) as in
// adam_update.h. Results: θ, m, v, [v̂max], each aliased to its operand, so XLA updates the
// buffers in place where it can; where it copied an operand first, the copy is taken here.
// Attributes: n, amsgrad. Element type float32 or float64 (state in the parameters' dtype).
//
// Built twice from this file: against TensorFlow's headers with ADAMKIT_REGISTER_WITH_TENSORFLOW
// (registered at load with TensorFlow's XLA), and against jaxlib's (registered from Python with
// jax.ffi.register_ffi_target).
#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <cstring>
#include <mutex>
#include <vector>

#include "adam_update.h"
#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace adamkit {
namespace {

template <typename T>
struct Variable {
  T* theta;
  T* m;
  T* v;
  T* vhat;
  const T* g;
  const T* scalars;
  int64_t size;
};

// Runs body(begin, end) over [0, total) in chunks, on the caller and the pool's threads together;
// returns when every chunk is done. A shared counter hands out chunks, so a late or busy thread
// costs nothing but its own share.
template <typename Body>
void ParallelFor(ffi::ThreadPool& pool, int64_t total, const Body& body) {
  constexpr int64_t kChunk = 1 << 16;
  const int64_t chunks = (total + kChunk - 1) / kChunk;
  const int64_t helpers = std::min<int64_t>(pool.num_threads(), chunks - 1);
  std::atomic<int64_t> next{0};
  auto drain = [&] {
    for (int64_t c = next++; c < chunks; c = next++) {
      body(c * kChunk, std::min(total, (c + 1) * kChunk));
    }
  };
  std::mutex mutex;
  std::condition_variable done;
  int64_t running = helpers;
  for (int64_t i = 0; i < helpers; ++i) {
    pool.Schedule([&] {
      drain();
      std::lock_guard<std::mutex> lock(mutex);
      if (--running == 0) done.notify_one();
    });
  }
  drain();
  std::unique_lock<std::mutex> lock(mutex);
  done.wait(lock, [&] { return running == 0; });
}

template <typename T>
ffi::Error Step(ffi::ThreadPool& pool, const ffi::RemainingArgs& args,
                const ffi::RemainingRets& rets, int64_t n, bool amsgrad) {
  const int64_t arrays = amsgrad ? 4 : 3;  // updated per variable: θ, m, v, [v̂max]
  if (n < 1 || args.size() != static_cast<size_t>((arrays + 1) * n + 1) ||
      rets.size() != static_cast<size_t>(arrays * n)) {
    return ffi::Error::InvalidArgument("adamkit_adam: operand or result count does not match n");
  }
  auto scalars = args.get<ffi::AnyBuffer>(args.size() - 1);
  if (!scalars.has_value() || scalars->element_count() != static_cast<size_t>(6 * n)) {
    return ffi::Error::InvalidArgument("adamkit_adam: scalars must be (n, 6)");
  }
  const T* s = static_cast<const T*>(scalars->untyped_data());
  std::vector<Variable<T>> vars(n);
  std::vector<int64_t> start(n + 1, 0);  // variable i holds indices [start[i], start[i + 1])
  for (int64_t i = 0; i < n; ++i) {
    auto grad = args.get<ffi::AnyBuffer>(arrays * n + i);
    if (!grad.has_value()) return ffi::Error::InvalidArgument("adamkit_adam: bad gradient");
    const int64_t size = static_cast<int64_t>(grad->element_count());
    T* updated[4] = {nullptr, nullptr, nullptr, nullptr};
    for (int64_t a = 0; a < arrays; ++a) {
      auto in = args.get<ffi::AnyBuffer>(a * n + i);
      auto out = rets.get<ffi::AnyBuffer>(a * n + i);
      if (!in.has_value() || !out.has_value() || in->element_count() != grad->element_count() ||
          (*out)->element_count() != grad->element_count() ||
          in->element_type() != grad->element_type()) {
        return ffi::Error::InvalidArgument("adamkit_adam: θ, m, v, v̂max and g must match");
      }
      updated[a] = static_cast<T*>((*out)->untyped_data());
      if (in->untyped_data() != updated[a]) {  // not aliased: start from a copy of the operand
        std::memcpy(updated[a], in->untyped_data(), size * sizeof(T));
      }
    }
    vars[i] = {updated[0], updated[1], updated[2], updated[3],
               static_cast<const T*>(grad->untyped_data()), s + 6 * i, size};
    start[i + 1] = start[i] + size;
  }
  // All variables are one index space, as in the TensorFlow op: one launch, one wait.
  ParallelFor(pool, start[n], [&](int64_t begin, int64_t end) {
    int64_t i = std::upper_bound(start.begin(), start.end(), begin) - start.begin() - 1;
    for (; i < n && start[i] < end; ++i) {
      const Variable<T>& a = vars[i];
      const int64_t first = std::max(begin, start[i]) - start[i];
      const int64_t last = std::min(end, start[i + 1]) - start[i];
      if (amsgrad) {
        Update<T, Plain<T>, true>(a.theta, a.m, a.v, a.vhat, a.g, first, last, a.scalars, 0);
      } else {
        Update<T, Plain<T>, false>(a.theta, a.m, a.v, a.vhat, a.g, first, last, a.scalars, 0);
      }
    }
  });
  return ffi::Error::Success();
}

ffi::Error AdamStep(ffi::ThreadPool pool, ffi::RemainingArgs args, ffi::RemainingRets rets,
                    int64_t n, bool amsgrad) {
  auto first = args.get<ffi::AnyBuffer>(0);
  if (!first.has_value()) return ffi::Error::InvalidArgument("adamkit_adam: no operands");
  switch (first->element_type()) {
    case ffi::DataType::F32:
      return Step<float>(pool, args, rets, n, amsgrad);
    case ffi::DataType::F64:
      return Step<double>(pool, args, rets, n, amsgrad);
    default:
      return ffi::Error::InvalidArgument("adamkit_adam: parameters must be float32 or float64");
  }
}

}  // namespace
}  // namespace adamkit

XLA_FFI_DEFINE_HANDLER_SYMBOL(AdamkitAdam, adamkit::AdamStep,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .RemainingArgs()
                                  .RemainingRets()
                                  .Attr<int64_t>("n")
                                  .Attr<bool>("amsgrad"));

#ifdef ADAMKIT_REGISTER_WITH_TENSORFLOW
namespace xla::ffi {
const XLA_FFI_Api* GetXlaFfiApi();  // exported by TensorFlow's libtensorflow_cc
}
XLA_FFI_REGISTER_HANDLER(xla::ffi::GetXlaFfiApi(), "adamkit_adam", "Host", AdamkitAdam);
#endif
