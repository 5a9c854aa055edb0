// The benchmark's ceiling (adamkit.bench.bandwidth_limit): the memory traffic of an Adam step —
// read θ, g, m, v; write θ, m, v — with one multiply-add per array, on every core (OpenMP keeps
// its threads between calls). Whatever an Adam step does beyond this is arithmetic or overhead.
#include <cstdint>

extern "C" void adamkit_stream(float* __restrict__ theta, float* __restrict__ m,
                               float* __restrict__ v, const float* __restrict__ g, int64_t n,
                               float c) {
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < n; ++i) {
    const float x = c * g[i];
    theta[i] += x;
    m[i] += x;
    v[i] += x;
  }
}
