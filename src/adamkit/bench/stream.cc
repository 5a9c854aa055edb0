// The benchmark's ceiling (adamkit.bench.stream.stream_step): the memory traffic of an Adam step —
// read θ, g, m, v; write θ, m, v (28 B/param) — with one multiply-add per array, on every core
// (OpenMP keeps its threads between calls). With vhat (AMSGrad's running max) it also reads and
// writes v̂max: 36 B/param. Whatever a step does beyond this is arithmetic or overhead.
//
// adamkit_adam_loop: adamkit's own Adam loop (adam_update.h, as the kernels run it) over the same
// arrays, split the same way: the kernel's speed with no framework around it, to tell the loop's
// cost from a framework's per-call cost.
#include <cstdint>
#include <vector>

#include <omp.h>

#include "../kernels/adam_update.h"  // the kernels' loop, as they run it

template <bool kAmsgrad>
void Stream(float* __restrict__ theta, float* __restrict__ m, float* __restrict__ v,
            float* __restrict__ vhat, const float* __restrict__ g, int64_t n, float c) {
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < n; ++i) {
    const float x = c * g[i];
    theta[i] += x;
    m[i] += x;
    v[i] += x;
    if (kAmsgrad) vhat[i] += x;
  }
}

extern "C" void adamkit_stream(float* theta, float* m, float* v, float* vhat, const float* g,
                               int64_t n, float c) {
  if (vhat == nullptr) {
    Stream<false>(theta, m, v, vhat, g, n, c);
  } else {
    Stream<true>(theta, m, v, vhat, g, n, c);
  }
}

extern "C" void adamkit_adam_loop(float* theta, float* m, float* v, const float* g, int64_t n,
                                  const float* scalars, int32_t step) {
  const std::vector<adamkit::Arrays<float, float>> arrays = {{theta, m, v, nullptr, g, scalars}};
  const std::vector<int64_t> start = {0, n};
#pragma omp parallel
  {
    const int64_t threads = omp_get_num_threads(), thread = omp_get_thread_num();
    adamkit::UpdateRange<float, adamkit::Plain<float>>(
        arrays, start, adamkit::Rule::kAdam, static_cast<uint32_t>(step), n * thread / threads,
        n * (thread + 1) / threads);
  }
}
