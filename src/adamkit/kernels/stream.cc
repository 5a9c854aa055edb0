// The benchmark's ceiling (adamkit.bench.stream_step): the memory traffic of an Adam step —
// read θ, g, m, v; write θ, m, v (28 B/param) — with one multiply-add per array, on every core
// (OpenMP keeps its threads between calls). With vhat (AMSGrad's running max) it also reads and
// writes v̂max: 36 B/param. Whatever a step does beyond this is arithmetic or overhead.
#include <cstdint>

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
