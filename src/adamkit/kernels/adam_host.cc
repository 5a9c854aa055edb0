// adamkit's fused step for plain host arrays, behind a C ABI: what the PyTorch backend calls
// (through ctypes, on its CPU tensors' memory). The same loop as the TensorFlow op and the XLA
// custom calls (adam_update.h): all of a step's variables as one index space, split in equal
// parts over `threads` threads (built with OpenMP, the process's OpenMP team; else the caller and
// threads − 1 helpers started for the call; below kMinPerThread parameters per thread, fewer
// threads, down to the caller alone).
//
//   adamkit_adam_host(kind, rule, n, theta, m, v, vhat, g, sizes, scalars, step, threads)
//
// kind: 0 float32 with float32 state, 1 float32 with bfloat16 state (stochastically rounded as
// adamkit.state does), 2 float64 with float64 state; rule: adam_update.h's Rule (0 Adam,
// 1 AMSGrad, 2 AdaMax); theta, m, v, vhat (AMSGrad only, else null), g: n pointers each; sizes:
// n element counts; scalars: (n, 7) in the parameters' dtype; step: t, for the dither.
// Returns 0, or −1 for an unknown kind or rule (or, for the 8-bit entry, a negative n).
//
//   adamkit_adam8bit_host(rule, n, theta, g, sizes, codes, absmax, scalars, step, signed_table,
//                         unsigned_table, threads)
//
// n float32 variables whose state is adamkit.state's 8-bit block-wise codes (as adam_op.cc's
// AdamkitApplyAdam8bit), all their blocks as one index space: theta, g: n pointers each; sizes:
// n element counts; codes and absmax: n pointers for m, then n for v (then n for AMSGrad's v̂max),
// to int8 (blocks, 256) codes and float32 (blocks,) maxima; scalars: (n, 7) floats; the tables:
// adamkit.state.codec_table.
#include <algorithm>
#include <cstdint>
#include <thread>
#include <vector>

#include "adam_update.h"

namespace adamkit {
namespace {

#ifdef _OPENMP
// Built with OpenMP, the parts run on the process's OpenMP team: PyTorch's own (the library
// links libgomp.so.1, which PyTorch has loaded already). Its threads spin for milliseconds after
// each of PyTorch's parallel ops; threads of our own would have shared the cores with them (the
// wide MLP's update took 8.2 ms in a training step against 3.0 ms alone). A team costs a few µs.
constexpr int64_t kMinPerThread = 1 << 15;

template <typename Part>
void Split(int64_t parts, const Part& part) {
  if (parts == 1) return part(0);
#pragma omp parallel for num_threads(parts) schedule(static, 1)
  for (int64_t p = 0; p < parts; ++p) part(p);
}
#else
// A helper thread costs ~20–50 µs to start; below this many parameters each it does not pay.
constexpr int64_t kMinPerThread = 1 << 18;

// Runs part(p) for p in [0, parts) on the caller and parts − 1 helper threads.
template <typename Part>
void Split(int64_t parts, const Part& part) {
  std::vector<std::thread> helpers;
  for (int64_t p = 1; p < parts; ++p) helpers.emplace_back(part, p);
  part(0);
  for (auto& helper : helpers) helper.join();
}
#endif

// The Rule an entry's `rule` argument names, or false where it names none.
bool ToRule(int rule, Rule* chosen) {
  if (rule < 0 || rule > static_cast<int>(Rule::kAdamax)) return false;
  *chosen = static_cast<Rule>(rule);
  return true;
}

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
  Split(parts, [&](int64_t p) {
    UpdateRange<T, Codec>(arrays, start, rule, step, total * p / parts,
                          total * (p + 1) / parts);
  });
}

}  // namespace
}  // namespace adamkit

extern "C" int adamkit_adam_host(int kind, int rule, int64_t n, void* const* theta,
                                 void* const* m, void* const* v, void* const* vhat,
                                 const void* const* g, const int64_t* sizes, const void* scalars,
                                 int32_t step, int threads) {
  adamkit::Rule chosen;
  if (!adamkit::ToRule(rule, &chosen)) return -1;
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

extern "C" int adamkit_adam8bit_host(int rule, int64_t n, float* const* theta,
                                     const float* const* g, const int64_t* sizes,
                                     int8_t* const* codes, float* const* absmax,
                                     const float* scalars, int32_t step,
                                     const float* signed_table, const float* unsigned_table,
                                     int threads) {
  adamkit::Rule chosen;
  if (!adamkit::ToRule(rule, &chosen) || n < 0) return -1;
  const int states = chosen == adamkit::Rule::kAmsgrad ? 3 : 2;
  const uint32_t step_mix = static_cast<uint32_t>(step) * adamkit::kStepMultiplier;
  const adamkit::CodecTable signed_map(signed_table), unsigned_map(unsigned_table);
  std::vector<adamkit::Adam8bitStep> steps;
  steps.reserve(n);
  std::vector<int64_t> start(n + 1, 0);
  int64_t total = 0;
  for (int64_t i = 0; i < n; ++i) {
    adamkit::Adam8bitStep& p = steps.emplace_back(adamkit::Adam8bitStep{
        theta[i], g[i], sizes[i], {}, {}, scalars + adamkit::kScalars * i, step_mix, signed_map,
        unsigned_map});
    for (int s = 0; s < states; ++s) {
      p.codes[s] = codes[s * n + i];
      p.absmax[s] = absmax[s * n + i];
    }
    start[i + 1] = start[i] + (sizes[i] + adamkit::kBlock - 1) / adamkit::kBlock;
    total += sizes[i];
  }
  // The 8-bit step is compute-bound (~60 operations a parameter): threads pay off sooner (with
  // OpenMP from 2,048 parameters a thread, ~40 µs of work against a team's few µs).
  const int64_t parts = std::max<int64_t>(
      1, std::min<int64_t>(threads, total / (adamkit::kMinPerThread / 16)));
  const int64_t blocks = start[n];
  adamkit::Split(parts, [&](int64_t part) {
    adamkit::UpdateBlocks8bitRange(steps, start, chosen, blocks * part / parts,
                                   blocks * (part + 1) / parts);
  });
  return 0;
}
