// adamkit's fused step for plain host arrays, behind a C ABI: what the PyTorch backend calls
// (through ctypes, on its CPU tensors' memory). The same loop as the TensorFlow op and the XLA
// custom calls (adam_update.h): all of a step's variables as one index space, split in equal
// parts over `threads` threads (the caller and threads − 1 helpers started for the call; below
// kMinPerThread parameters per thread, fewer threads, down to the caller alone).
//
//   adamkit_adam_host(kind, rule, n, theta, m, v, vhat, g, sizes, scalars, step, threads)
//
// kind: 0 float32 with float32 state, 1 float32 with bfloat16 state (stochastically rounded as
// adamkit.state does), 2 float64 with float64 state; rule: adam_update.h's Rule (0 Adam,
// 1 AMSGrad, 2 AdaMax); theta, m, v, vhat (AMSGrad only, else null), g: n pointers each; sizes:
// n element counts; scalars: (n, 7) in the parameters' dtype; step: t, for the dither.
// Returns 0, or −1 for an unknown kind or rule.
#include <algorithm>
#include <cstdint>
#include <thread>
#include <vector>

#include "adam_update.h"

namespace adamkit {
namespace {

// A helper thread costs ~20–50 µs to start; below this many parameters each it does not pay.
constexpr int64_t kMinPerThread = 1 << 18;

template <typename T, typename Codec>
void Run(Rule rule, int64_t n, void* const* theta, void* const* m, void* const* v,
         void* const* vhat, const void* const* g, const int64_t* sizes, const void* scalars,
         uint32_t step, int threads) {
  using Stored = typename Codec::Stored;
  std::vector<Arrays<T, Stored>> arrays(n);
  std::vector<int64_t> start(n + 1, 0);
  for (int64_t i = 0; i < n; ++i) {
    arrays[i] = {static_cast<T*>(theta[i]), static_cast<Stored*>(m[i]),
                 static_cast<Stored*>(v[i]),
                 vhat == nullptr ? nullptr : static_cast<Stored*>(vhat[i]),
                 static_cast<const T*>(g[i]), static_cast<const T*>(scalars) + kScalars * i};
    start[i + 1] = start[i] + sizes[i];
  }
  const int64_t total = start[n];
  const int64_t parts =
      std::max<int64_t>(1, std::min<int64_t>(threads, total / kMinPerThread));
  auto part = [&](int64_t p) {
    UpdateRange<T, Codec>(arrays, start, rule, step, total * p / parts,
                          total * (p + 1) / parts);
  };
  std::vector<std::thread> helpers;
  for (int64_t p = 1; p < parts; ++p) helpers.emplace_back(part, p);
  part(0);
  for (auto& helper : helpers) helper.join();
}

}  // namespace
}  // namespace adamkit

extern "C" int adamkit_adam_host(int kind, int rule, int64_t n, void* const* theta,
                                 void* const* m, void* const* v, void* const* vhat,
                                 const void* const* g, const int64_t* sizes, const void* scalars,
                                 int32_t step, int threads) {
  using adamkit::Rule;
  if (rule < 0 || rule > static_cast<int>(Rule::kAdamax)) return -1;
  const Rule chosen = static_cast<Rule>(rule);
  const uint32_t t = static_cast<uint32_t>(step);
  switch (kind) {
    case 0:
      adamkit::Run<float, adamkit::Plain<float>>(chosen, n, theta, m, v, vhat, g, sizes, scalars,
                                                 t, threads);
      return 0;
    case 1:
      adamkit::Run<float, adamkit::StochasticBfloat16>(chosen, n, theta, m, v, vhat, g, sizes,
                                                       scalars, t, threads);
      return 0;
    case 2:
      adamkit::Run<double, adamkit::Plain<double>>(chosen, n, theta, m, v, vhat, g, sizes,
                                                   scalars, t, threads);
      return 0;
    default:
      return -1;
  }
}
