// The Adam/AMSGrad step's inner loop, shared by adamkit's TensorFlow op (adam_op.cc) and its
// XLA FFI handler (adam_ffi.cc): no framework headers, just the arithmetic over plain arrays.
//
//   m ← m + (g − m)(1 − β1)          v ← v + (g² − v)(1 − β2)         [v̂max ← max(v̂max, v)]
//   θ ← θ·decay − (α/(1 − β1ᵗ))·m / (√v·(1/√(1 − β2ᵗ)) + ε)
#ifndef ADAMKIT_ADAM_UPDATE_H_
#define ADAMKIT_ADAM_UPDATE_H_

#include <cmath>
#include <cstdint>
#include <cstring>

namespace adamkit {

// The stochastic-rounding dither of adamkit.state.dither_bits, bit for bit: a Weyl sequence,
// position·φ + step·(√2 − 1) in 32-bit fixed point (mod 2³²).
constexpr uint32_t kPositionMultiplier = 0x9E3779B1u;
constexpr uint32_t kStepMultiplier = 0x6A09E667u;

// How a state value is stored: as T itself, or (for float parameters) as bfloat16 with
// stochastic rounding, as adamkit.state.round_to_bfloat16: the dither's top 16 bits are added to
// the float's bits, then the low 16 bits are dropped.
template <typename T>
struct Plain {
  using Stored = T;
  static T Load(Stored x) { return x; }
  static Stored Store(T x, uint32_t, uint32_t) { return x; }
};

struct StochasticBfloat16 {
  using Stored = uint16_t;
  static float Load(Stored x) {
    const uint32_t bits = static_cast<uint32_t>(x) << 16;
    float f;
    std::memcpy(&f, &bits, sizeof f);
    return f;
  }
  static Stored Store(float x, uint32_t position, uint32_t step_mix) {
    uint32_t bits;
    std::memcpy(&bits, &x, sizeof bits);
    const uint32_t dither = (position * kPositionMultiplier + step_mix) >> 16;
    return static_cast<Stored>((bits + dither) >> 16);
  }
};

// __restrict__: the five arrays never overlap, which lets the compiler vectorise without
// run-time overlap checks (with five pointers it otherwise gives up on the AMSGrad loop).
template <typename T, typename Codec, bool kAmsgrad>
void Update(T* __restrict__ theta, typename Codec::Stored* __restrict__ m,
            typename Codec::Stored* __restrict__ v, typename Codec::Stored* __restrict__ vhat,
            const T* __restrict__ g, int64_t begin, int64_t end, const T* s, uint32_t step) {
  const T decay = s[0], one_minus_b1 = s[1], one_minus_b2 = s[2], step_size = s[3],
          inv_sqrt_bc2 = s[4], eps = s[5];
  const uint32_t step_mix = step * kStepMultiplier;
  for (int64_t i = begin; i < end; ++i) {
    const uint32_t position = static_cast<uint32_t>(i);
    const T gi = g[i];
    const T m_old = Codec::Load(m[i]);
    const T v_old = Codec::Load(v[i]);
    const T mi = m_old + (gi - m_old) * one_minus_b1;
    T vi = v_old + (gi * gi - v_old) * one_minus_b2;
    m[i] = Codec::Store(mi, position, step_mix);
    v[i] = Codec::Store(vi, position, step_mix);
    if (kAmsgrad) {
      const T h = Codec::Load(vhat[i]);
      vi = h > vi ? h : vi;
      vhat[i] = Codec::Store(vi, position, step_mix);
    }
    theta[i] = theta[i] * decay - step_size * mi / (std::sqrt(vi) * inv_sqrt_bc2 + eps);
  }
}

}  // namespace adamkit

#endif  // ADAMKIT_ADAM_UPDATE_H_
