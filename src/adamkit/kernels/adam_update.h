// The Adam/AMSGrad step's inner loops — plain (float or bfloat16) state, and 8-bit block-wise
// state — shared by adamkit's TensorFlow ops (adam_op.cc) and its XLA FFI handlers
// (adam_ffi.cc): no framework headers, just the arithmetic over plain arrays.
//
//   m ← m + (g − m)(1 − β1)          v ← v + (g² − v)(1 − β2)         [v̂max ← max(v̂max, v)]
//   θ ← θ·decay − (a·m + b·g) / (√v·s + ε)
//
// with the step's scalars per variable, kScalars of them: decay, 1 − β1, 1 − β2, a, s, ε, b. What
// they are for each rule of the family is stated once, in Python: the rule's own file forms a, b,
// c and ε (adamkit/rule.py), adamkit/kernels/scalars.py turns them into these rows (s = 1/√c).
// AdaMax (Rule::kAdamax) keeps the infinity norm u in v's place, with the third scalar β2 itself
// and ε inside the max:
//
//   u ← max(β2·u, |g| + ε)           θ ← θ·decay − (a·m + b·g) / u
#ifndef ADAMKIT_ADAM_UPDATE_H_
#define ADAMKIT_ADAM_UPDATE_H_

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>
#if defined(__AVX2__)
#include <immintrin.h>
#endif

namespace adamkit {

constexpr int kScalars = 7;

// Which second-moment rule a step runs: Adam's, AMSGrad's (Adam's with v̂max), AdaMax's.
enum class Rule { kAdam, kAmsgrad, kAdamax };

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

// v's update (b2_term: 1 − β2; AdaMax, β2) and the step's denominator, by rule.
template <Rule kRule, typename T>
inline T SecondMoment(T v, T g, T b2_term, T eps) {
  if (kRule == Rule::kAdamax) {
    const T decayed = v * b2_term, bound = std::fabs(g) + eps;
    return decayed > bound ? decayed : bound;
  }
  return v + (g * g - v) * b2_term;
}

template <Rule kRule, typename T>
inline T Denominator(T v, T inv_sqrt_bc2, T eps) {
  return kRule == Rule::kAdamax ? v : std::sqrt(v) * inv_sqrt_bc2 + eps;
}

// Hardware prefetchers stop at each 4 KB page, and with five streams a core keeps stalling on
// memory there: Update prefetches each array kAhead elements ahead of the chunk of kChunk it
// works on (measured with 2 threads, float32: 0.83–0.88× → 0.93–0.97× the bare streaming of
// the same bytes at 10M and 50M parameters; 256–2048 elements ahead did alike).
constexpr int64_t kChunk = 256;
constexpr int64_t kAhead = 512;

template <typename X>
inline void Prefetch(const X* array, int64_t begin, int64_t end) {
  const char* last = reinterpret_cast<const char*>(array + end);
  for (const char* line = reinterpret_cast<const char*>(array + begin); line < last; line += 64) {
    __builtin_prefetch(line, 0, 3);
  }
}

// __restrict__: the five arrays never overlap, which lets the compiler vectorise without
// run-time overlap checks (with five pointers it otherwise gives up on the AMSGrad loop).
// ``first_position``: the dither's position of element 0 (a row's offset in its table).
template <typename T, typename Codec, Rule kRule>
void Update(T* __restrict__ theta, typename Codec::Stored* __restrict__ m,
            typename Codec::Stored* __restrict__ v, typename Codec::Stored* __restrict__ vhat,
            const T* __restrict__ g, int64_t begin, int64_t end, const T* s, uint32_t step,
            uint32_t first_position = 0) {
  constexpr bool kAmsgrad = kRule == Rule::kAmsgrad;
  const T decay = s[0], one_minus_b1 = s[1], b2_term = s[2], step_size = s[3],
          inv_sqrt_bc2 = s[4], eps = s[5], gradient_step = s[6];
  const uint32_t step_mix = step * kStepMultiplier;
  for (int64_t chunk = begin; chunk < end; chunk += kChunk) {
    const int64_t stop = std::min(end, chunk + kChunk);
    const int64_t soon = std::min(end, chunk + kAhead), later = std::min(end, stop + kAhead);
    Prefetch(g, soon, later);
    Prefetch(theta, soon, later);
    Prefetch(m, soon, later);
    Prefetch(v, soon, later);
    if (kAmsgrad) Prefetch(vhat, soon, later);
    for (int64_t i = chunk; i < stop; ++i) {
      const uint32_t position = first_position + static_cast<uint32_t>(i);
      const T gi = g[i];
      const T m_old = Codec::Load(m[i]);
      const T v_old = Codec::Load(v[i]);
      const T mi = m_old + (gi - m_old) * one_minus_b1;
      T vi = SecondMoment<kRule>(v_old, gi, b2_term, eps);
      m[i] = Codec::Store(mi, position, step_mix);
      v[i] = Codec::Store(vi, position, step_mix);
      if (kAmsgrad) {
        const T h = Codec::Load(vhat[i]);
        vi = h > vi ? h : vi;
        vhat[i] = Codec::Store(vi, position, step_mix);
      }
      theta[i] = theta[i] * decay - (step_size * mi + gradient_step * gi) /
                                        Denominator<kRule>(vi, inv_sqrt_bc2, eps);
    }
  }
}

// One variable's arrays, as the kernels see them.
template <typename T, typename Stored>
struct Arrays {
  T* theta;
  Stored* m;
  Stored* v;
  Stored* vhat;
  const T* g;
  const T* scalars;
};

// The indices [begin, end) of variables laid end to end — variable i holds [start[i],
// start[i + 1]) — each updated from its own index 0 (the dither's position): how the kernels
// treat all of a step's variables as one index space, one launch and one wait however many.
template <typename T, typename Codec>
void UpdateRange(const std::vector<Arrays<T, typename Codec::Stored>>& arrays,
                 const std::vector<int64_t>& start, Rule rule, uint32_t step, int64_t begin,
                 int64_t end) {
  const int64_t n = static_cast<int64_t>(arrays.size());
  int64_t i = std::upper_bound(start.begin(), start.end(), begin) - start.begin() - 1;
  for (; i < n && start[i] < end; ++i) {
    const auto& a = arrays[i];
    const int64_t first = std::max(begin, start[i]) - start[i];
    const int64_t last = std::min(end, start[i + 1]) - start[i];
    switch (rule) {
      case Rule::kAdam:
        Update<T, Codec, Rule::kAdam>(a.theta, a.m, a.v, a.vhat, a.g, first, last, a.scalars, step);
        break;
      case Rule::kAmsgrad:
        Update<T, Codec, Rule::kAmsgrad>(a.theta, a.m, a.v, a.vhat, a.g, first, last, a.scalars,
                                         step);
        break;
      case Rule::kAdamax:
        Update<T, Codec, Rule::kAdamax>(a.theta, a.m, a.v, a.vhat, a.g, first, last, a.scalars,
                                        step);
        break;
    }
  }
}

// The touched rows of a table (lazy updates): row rows[j] of θ, m, v (and v̂max), each row_size
// long, takes the gradient row grads[j], for j in [begin, end). Each element keeps its flat
// position in the table for the dither, so a row updates exactly as in the dense step.
template <typename T, typename Codec>
void UpdateRows(const Arrays<T, typename Codec::Stored>& table, const int64_t* rows,
                const T* const* grads, int64_t row_size, Rule rule, uint32_t step, int64_t begin,
                int64_t end) {
  for (int64_t j = begin; j < end; ++j) {
    const int64_t offset = rows[j] * row_size;
    auto* m = table.m + offset;
    auto* v = table.v + offset;
    auto* vhat = table.vhat ? table.vhat + offset : nullptr;
    const auto position = static_cast<uint32_t>(offset);
    switch (rule) {
      case Rule::kAdam:
        Update<T, Codec, Rule::kAdam>(table.theta + offset, m, v, vhat, grads[j], 0, row_size,
                                      table.scalars, step, position);
        break;
      case Rule::kAmsgrad:
        Update<T, Codec, Rule::kAmsgrad>(table.theta + offset, m, v, vhat, grads[j], 0, row_size,
                                         table.scalars, step, position);
        break;
      case Rule::kAdamax:
        Update<T, Codec, Rule::kAdamax>(table.theta + offset, m, v, vhat, grads[j], 0, row_size,
                                        table.scalars, step, position);
        break;
    }
  }
}

// -- 8-bit block-wise state (adamkit.state's codec, bit for bit) --------------------------------

constexpr int kBlock = 256;
constexpr int kDecades = 8;

// adamkit.state.FIXED_POINT: fraction bits of a value's fixed-point position on the map.
constexpr int kFixedPoint = 22;

// The layout of adamkit.state.codec_table: decoded value of code c at c + 128, then per decade
// the thresholds 10^-1…10^-F (padding −1), floor, scale (2^22 / spacing) and point count. A
// normalised value a of decade e has the index (⌊(a − floor_e)·scale_e⌋ + first_e + dither) >> 22,
// first_e = (count_e − 1)·2^22: the float part ends in a multiply, the rest is integer adds.
struct CodecTable {
  const float* decode;
  const float* threshold;
  const float* floor;
  const float* scale;
  int32_t first[kDecades];
  int32_t max_index;  // 2^(F+1) − 1
  explicit CodecTable(const float* t)
      : decode(t), threshold(t + 256), floor(t + 256 + kDecades), scale(t + 256 + 2 * kDecades),
        max_index(2 * static_cast<int32_t>(t[256 + 3 * kDecades]) - 1) {
    for (int e = 0; e < kDecades; ++e) {
      first[e] = (static_cast<int32_t>(t[256 + 3 * kDecades + e]) - 1) << kFixedPoint;
    }
  }
};

// The dither of a dither word (kPositionMultiplier's sequence): its top 22 bits.
inline uint32_t DitherOf(uint32_t mixed) { return mixed >> (32 - kFixedPoint); }

// How a block's values x normalise, as adamkit.state.block_scales: (x·prescale)·reciprocal, with
// no division (with two per value the 8-bit step took ~1.2× as long). prescale is 2^64 for an
// absmax below 2^-64 and 2^-64 for one above 2^64 (else 1), so absmax·prescale lies in [2^-85,
// 2^64] and its reciprocal is a normal float; that is one ulp larger where absmax·prescale times
// it rounds below 1, so the largest value reaches the top code.
struct BlockScale {
  float prescale, reciprocal;
  explicit BlockScale(float absmax)
      : prescale(absmax < 0x1p-64f ? 0x1p64f : absmax > 0x1p64f ? 0x1p-64f : 1.0f) {
    float scaled = absmax * prescale;
    scaled = scaled > 0.0f ? scaled : 1.0f;
    reciprocal = 1.0f / scaled;
    if (scaled * reciprocal < 1.0f) {
      uint32_t bits;
      std::memcpy(&bits, &reciprocal, sizeof bits);
      ++bits;
      std::memcpy(&reciprocal, &bits, sizeof bits);
    }
  }
};

// The block's absmax: an integer max over the bits with the sign cleared (the same order as the
// floats' magnitudes, and it vectorises).
inline float BlockAbsmax(const float* __restrict__ x) {
  int32_t top = 0;
  for (int j = 0; j < kBlock; ++j) {
    int32_t bits;
    std::memcpy(&bits, x + j, sizeof bits);
    top = std::max(top, bits & 0x7fffffff);
  }
  float absmax;
  std::memcpy(&absmax, &top, sizeof absmax);
  return absmax;
}

// One block's values → codes, rounding stochastically on the map exactly as adamkit.state.quantize
// does: the same float32 and integer operations and the same 22-bit dither, so both write the
// same codes. Written to vectorise: the tables are copied to locals (int8 stores may alias
// anything else) and the decade's constants are picked by a chain of selects rather than gathered.
template <bool kSigned>
void EncodeBlock(const float* __restrict__ x, int8_t* __restrict__ codes,
                 float* __restrict__ absmax_out, const CodecTable& c, uint32_t first_position,
                 uint32_t step_mix) {
  float threshold[kDecades - 1], floor[kDecades], scale_of[kDecades];
  int32_t first[kDecades];
  for (int e = 0; e < kDecades; ++e) {
    if (e < kDecades - 1) threshold[e] = c.threshold[e];
    floor[e] = c.floor[e];
    scale_of[e] = c.scale[e];
    first[e] = c.first[e];
  }
  const int32_t max_index = c.max_index;
  const float absmax = BlockAbsmax(x);
  *absmax_out = absmax;
  const BlockScale scale(absmax);
  for (int j = 0; j < kBlock; ++j) {
    const float normalised = (x[j] * scale.prescale) * scale.reciprocal;
    const float a = std::fabs(normalised);
    // decade e = how many thresholds 10^-1 > 10^-2 > … lie at or above a.
    float low = floor[0], s = scale_of[0];
    int32_t f = first[0];
    for (int e = 0; e < kDecades - 1; ++e) {
      const bool below = a <= threshold[e];
      low = below ? floor[e + 1] : low;
      s = below ? scale_of[e + 1] : s;
      f = below ? first[e + 1] : f;
    }
    const uint32_t mixed = (first_position + static_cast<uint32_t>(j)) * kPositionMultiplier +
                           step_mix;
    const auto fixed = static_cast<int32_t>((a - low) * s);
    const int32_t sum = fixed + f + static_cast<int32_t>(DitherOf(mixed));
    const int32_t index = std::min(std::max(sum >> kFixedPoint, 0), max_index);
    const int32_t code = kSigned ? (normalised < 0.0f ? -index : index) : index - 128;
    codes[j] = static_cast<int8_t>(code);
  }
}

#if defined(__AVX2__)
// The same encoder eight values at a time (AVX2, where -march=native has it): the decade is the
// count of thresholds at or above a, and its constants are looked up with one permute each (the
// tables have eight entries: one vector) instead of the scalar code's chain of 21 selects. The
// same operations in the same order as EncodeBlock, so the same codes, bit for bit.
struct MapVectors {
  __m256 threshold[kDecades - 1], floor, scale;
  __m256i first, max_index;
  explicit MapVectors(const CodecTable& c)
      : floor(_mm256_loadu_ps(c.floor)), scale(_mm256_loadu_ps(c.scale)),
        first(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(c.first))),
        max_index(_mm256_set1_epi32(c.max_index)) {
    for (int e = 0; e < kDecades - 1; ++e) threshold[e] = _mm256_set1_ps(c.threshold[e]);
  }
};

// Eight values → eight codes (as int32), ``mixed`` holding their dither words.
template <bool kSigned>
inline __m256i Encode8(__m256 x, const BlockScale& scale, const MapVectors& t, __m256i mixed) {
  const __m256 sign = _mm256_set1_ps(-0.0f);
  const __m256 normalised = _mm256_mul_ps(_mm256_mul_ps(x, _mm256_set1_ps(scale.prescale)),
                                          _mm256_set1_ps(scale.reciprocal));
  const __m256 a = _mm256_andnot_ps(sign, normalised);
  __m256i decade = _mm256_setzero_si256();
  for (int e = 0; e < kDecades - 1; ++e) {  // a true comparison is −1 as an integer
    const __m256 below = _mm256_cmp_ps(a, t.threshold[e], _CMP_LE_OQ);
    decade = _mm256_sub_epi32(decade, _mm256_castps_si256(below));
  }
  const __m256 low = _mm256_permutevar8x32_ps(t.floor, decade);
  const __m256 scale_of = _mm256_permutevar8x32_ps(t.scale, decade);
  const __m256i first = _mm256_permutevar8x32_epi32(t.first, decade);
  const __m256i fixed = _mm256_cvttps_epi32(_mm256_mul_ps(_mm256_sub_ps(a, low), scale_of));
  const __m256i sum = _mm256_add_epi32(_mm256_add_epi32(fixed, first),
                                       _mm256_srli_epi32(mixed, 32 - kFixedPoint));
  const __m256i index = _mm256_min_epi32(
      _mm256_max_epi32(_mm256_srai_epi32(sum, kFixedPoint), _mm256_setzero_si256()), t.max_index);
  // Signed: negated where the value is (its bits, as an integer, are negative: −0 too, whose
  // index is 0); unsigned: stored as index − 128.
  if (kSigned) {
    const __m256i negative = _mm256_cmpgt_epi32(_mm256_setzero_si256(),
                                                _mm256_castps_si256(normalised));
    return _mm256_sub_epi32(_mm256_xor_si256(index, negative), negative);
  }
  return _mm256_sub_epi32(index, _mm256_set1_epi32(128));
}

template <bool kSigned>
void EncodeBlock8(const float* x, int8_t* codes, float* absmax_out, const MapVectors& t,
                  uint32_t first_position, uint32_t step_mix) {
  const float absmax = BlockAbsmax(x);  // integer max, as everywhere: a NaN stays NaN
  *absmax_out = absmax;
  const BlockScale scale(absmax);
  const __m256i lanes = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
  __m256i mixed = _mm256_add_epi32(
      _mm256_mullo_epi32(_mm256_add_epi32(_mm256_set1_epi32(first_position), lanes),
                         _mm256_set1_epi32(kPositionMultiplier)),
      _mm256_set1_epi32(step_mix));
  const __m256i stride = _mm256_set1_epi32(8u * kPositionMultiplier);
  const __m256i order = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);  // undoes the packs' lanes
  for (int j = 0; j < kBlock; j += 32) {
    __m256i c[4];
    for (int q = 0; q < 4; ++q, mixed = _mm256_add_epi32(mixed, stride)) {
      c[q] = Encode8<kSigned>(_mm256_loadu_ps(x + j + 8 * q), scale, t, mixed);
    }
    const __m256i bytes = _mm256_packs_epi16(_mm256_packs_epi32(c[0], c[1]),
                                             _mm256_packs_epi32(c[2], c[3]));
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(codes + j),
                        _mm256_permutevar8x32_epi32(bytes, order));
  }
}

#endif

#if defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512VBMI__)
#define ADAMKIT_CODEC_AVX512 1
// The encoder sixteen values at a time (AVX-512). The decade comes from a's binary exponent: an
// octave [2^k, 2^(k+1)) holds at most one power of ten, so a 32-entry table by exponent gives the
// thresholds above the octave (``above``) and the one inside it, if any (``inside``, else −1):
// decade = above + (a ≤ inside), the same count as EncodeBlock's seven compares. The table covers
// the 32 octaves [2^-31, 2) that the thresholds (10^-1 … 10^-7) need: a lower exponent saturates
// to the first (every threshold counts); a finite block's normalised values are at most 1 + 2
// ulp, so higher ones are inf and NaN (exponent 255, read mod 32 as the last slot: none counts).
// (A block whose absmax is NaN, a diverged state, gets codes of no meaning on any path.) Then the
// same float32 and integer operations as EncodeBlock, bit for bit. The whole 8-bit step with the
// decoder below, on one thread of a Zen 4 (10M parameters, medians): 13.4 ms against 23.2 with
// the AVX2 encoder and the plain decode loop; since the codec normalises by multiplying and
// takes its position in fixed point (no divisions, no float floor), it takes 0.8× as long.
constexpr int kLowestExponent = 127 - 31;  // of 2^-31: the table's slot is the exponent less it

struct MapVectors16 {
  __m512 inside_lo, inside_hi, floor, scale;
  __m512i above_lo, above_hi, first, max_index;
  explicit MapVectors16(const CodecTable& c) : max_index(_mm512_set1_epi32(c.max_index)) {
    alignas(64) float inside[32], floors[16] = {}, scales[16] = {};
    alignas(64) int32_t above[32], firsts[16] = {};
    for (int slot = 0; slot < 32; ++slot) {
      const int exponent = kLowestExponent + slot;
      const float bottom = std::ldexp(1.0f, exponent - 127), top = 2.0f * bottom;
      above[slot] = 0;
      inside[slot] = -1.0f;
      for (int e = 0; e < kDecades - 1; ++e) {
        above[slot] += c.threshold[e] >= top;
        if (c.threshold[e] >= bottom && c.threshold[e] < top) inside[slot] = c.threshold[e];
      }
    }
    for (int e = 0; e < kDecades; ++e) {
      floors[e] = c.floor[e];
      scales[e] = c.scale[e];
      firsts[e] = c.first[e];
    }
    inside_lo = _mm512_load_ps(inside);
    inside_hi = _mm512_load_ps(inside + 16);
    above_lo = _mm512_load_si512(above);
    above_hi = _mm512_load_si512(above + 16);
    floor = _mm512_load_ps(floors);
    scale = _mm512_load_ps(scales);
    first = _mm512_load_si512(firsts);
  }
};

// Sixteen values, normalised, → sixteen codes (as int32; the unsigned map's unclamped, for
// Store64), ``dither`` holding their 22-bit dither.
template <bool kSigned>
inline __m512i Encode16(__m512 normalised, const MapVectors16& t, __m512i dither) {
  const __m512 a = _mm512_abs_ps(normalised);
  // The exponent less kLowestExponent, saturating at 0: a 16-bit subtract, as the exponent sits
  // in each lane's low half and the high half is 0.
  const __m512i slot = _mm512_subs_epu16(_mm512_srli_epi32(_mm512_castps_si512(a), 23),
                                         _mm512_set1_epi32(kLowestExponent));
  const __m512 inside = _mm512_permutex2var_ps(t.inside_lo, slot, t.inside_hi);
  const __m512i above = _mm512_permutex2var_epi32(t.above_lo, slot, t.above_hi);
  const __mmask16 below = _mm512_cmp_ps_mask(a, inside, _CMP_LE_OQ);
  const __m512i decade = _mm512_mask_add_epi32(above, below, above, _mm512_set1_epi32(1));
  const __m512 distance = _mm512_sub_ps(a, _mm512_permutexvar_ps(decade, t.floor));
  const __m512i fixed = _mm512_cvttps_epi32(
      _mm512_mul_ps(distance, _mm512_permutexvar_ps(decade, t.scale)));
  const __m512i sum = _mm512_add_epi32(
      _mm512_add_epi32(fixed, _mm512_permutexvar_epi32(decade, t.first)), dither);
  const __m512i unclamped = _mm512_srai_epi32(sum, kFixedPoint);
  if (kSigned) {  // negated where the value's bits, as an integer, are negative (−0: index 0)
    const __m512i index = _mm512_min_epi32(_mm512_max_epi32(unclamped, _mm512_setzero_si512()),
                                           t.max_index);
    const __mmask16 negative = _mm512_cmplt_epi32_mask(_mm512_castps_si512(normalised),
                                                       _mm512_setzero_si512());
    return _mm512_mask_sub_epi32(index, negative, _mm512_setzero_si512(), index);
  }
  // Unclamped: index − 128 lies in [−640, 384) (sum is an int32 ≥ INT32_MIN), and Store64's
  // saturating packs clamp it to [−128, 127], which is index clamped to [0, 255]: the unsigned
  // map uses all 256 codes (its max_index is 255; tests/test_state.py checks both).
  return _mm512_sub_epi32(unclamped, _mm512_set1_epi32(128));
}

// The largest magnitude so far, as BlockAbsmax takes it: an integer max over the bits with the
// sign cleared.
inline __m512i Magnitudes16(__m512i top, __m512 x) {
  return _mm512_max_epi32(top, _mm512_and_si512(_mm512_castps_si512(x),
                                                _mm512_set1_epi32(INT32_MAX)));
}

// The absmax of ``top``'s lanes (Magnitudes16's), written to ``absmax_out``; returns its scale.
inline BlockScale ScaleOf16(__m512i top, float* absmax_out) {
  const int32_t bits = _mm512_reduce_max_epi32(top);
  float absmax;
  std::memcpy(&absmax, &bits, sizeof absmax);
  *absmax_out = absmax;
  return BlockScale(absmax);
}

// The block's absmax, as BlockAbsmax takes it, written to ``absmax_out``; returns its scale.
inline BlockScale Scale16(const float* x, float* absmax_out) {
  __m512i top = _mm512_setzero_si512();
  for (int j = 0; j < kBlock; j += 16) top = Magnitudes16(top, _mm512_loadu_ps(x + j));
  return ScaleOf16(top, absmax_out);
}

inline __m512 Normalise16(__m512 x, const BlockScale& scale) {
  // Both multiplies: a branch here on prescale == 1 measured slower; EncodeMoments16 leaves
  // the first out for a whole block at once.
  return _mm512_mul_ps(_mm512_mul_ps(x, _mm512_set1_ps(scale.prescale)),
                       _mm512_set1_ps(scale.reciprocal));
}

// The dither words of positions first_position … + 15, and the step to the next sixteen.
inline __m512i DitherWords16(uint32_t first_position, uint32_t step_mix) {
  const __m512i lanes = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
  return _mm512_add_epi32(
      _mm512_mullo_epi32(_mm512_add_epi32(_mm512_set1_epi32(first_position), lanes),
                         _mm512_set1_epi32(kPositionMultiplier)),
      _mm512_set1_epi32(step_mix));
}
constexpr uint32_t kDitherStride16 = 16u * kPositionMultiplier;

inline __m512i Dither16(__m512i mixed) { return _mm512_srli_epi32(mixed, 32 - kFixedPoint); }

// Sixty-four codes (four vectors of int32) stored as bytes, each saturated to [−128, 127]. The
// packs work within 128-bit lanes: dword k of their result holds codes 4·(k mod 4) + k / 4 of
// each sixteen; a permute reorders.
inline void Store64(int8_t* codes, const __m512i c[4]) {
  const __m512i order = _mm512_setr_epi32(0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15);
  const __m512i bytes = _mm512_packs_epi16(_mm512_packs_epi32(c[0], c[1]),
                                           _mm512_packs_epi32(c[2], c[3]));
  _mm512_storeu_si512(codes, _mm512_permutexvar_epi32(order, bytes));
}

template <bool kSigned>
void EncodeBlock16(const float* x, int8_t* codes, const BlockScale& scale, const MapVectors16& t,
                   uint32_t first_position, uint32_t step_mix) {
  __m512i mixed = DitherWords16(first_position, step_mix);
  for (int j = 0; j < kBlock; j += 64) {
    __m512i c[4];
    for (int q = 0; q < 4; ++q) {
      c[q] = Encode16<kSigned>(Normalise16(_mm512_loadu_ps(x + j + 16 * q), scale), t,
                               Dither16(mixed));
      mixed = _mm512_add_epi32(mixed, _mm512_set1_epi32(kDitherStride16));
    }
    Store64(codes + j, c);
  }
}

// A block of m (signed map) and the same block of v (unsigned map) at once: they share the
// dither, and two independent chains keep more of the core busy (the step: about 3% less time).
// Their scales come from the caller, which has seen every value. ``kPrescaled``: whether either
// scale's prescale differs from 1; where neither does, x·1 is x and that multiply is left out
// (with FTZ alone a subnormal x·1 would be 0, but x·r ≤ 2^-62 takes code 0's place anyway).
template <bool kPrescaled>
void EncodeMoments16(const float* m, const float* v, int8_t* m_codes, int8_t* v_codes,
                     const BlockScale& m_scale, const BlockScale& v_scale,
                     const MapVectors16& signed_map, const MapVectors16& unsigned_map,
                     uint32_t first_position, uint32_t step_mix) {
  const auto normalised = [](const float* x, const BlockScale& scale) {
    return kPrescaled ? Normalise16(_mm512_loadu_ps(x), scale)
                      : _mm512_mul_ps(_mm512_loadu_ps(x), _mm512_set1_ps(scale.reciprocal));
  };
  __m512i mixed = DitherWords16(first_position, step_mix);
  for (int j = 0; j < kBlock; j += 64) {
    __m512i cm[4], cv[4];
    for (int q = 0; q < 4; ++q) {
      const __m512i dither = Dither16(mixed);
      cm[q] = Encode16<true>(normalised(m + j + 16 * q, m_scale), signed_map, dither);
      cv[q] = Encode16<false>(normalised(v + j + 16 * q, v_scale), unsigned_map, dither);
      mixed = _mm512_add_epi32(mixed, _mm512_set1_epi32(kDitherStride16));
    }
    Store64(m_codes + j, cm);
    Store64(v_codes + j, cv);
  }
}

inline void EncodeMoments16(const float* m, const float* v, int8_t* m_codes, int8_t* v_codes,
                            const BlockScale& m_scale, const BlockScale& v_scale,
                            const MapVectors16& signed_map, const MapVectors16& unsigned_map,
                            uint32_t first_position, uint32_t step_mix) {
  if (m_scale.prescale == 1.0f && v_scale.prescale == 1.0f) {
    EncodeMoments16<false>(m, v, m_codes, v_codes, m_scale, v_scale, signed_map, unsigned_map,
                           first_position, step_mix);
  } else {
    EncodeMoments16<true>(m, v, m_codes, v_codes, m_scale, v_scale, signed_map, unsigned_map,
                          first_position, step_mix);
  }
}

// Decoding is a 256-entry lookup: the table's floats as four byte planes, each looked up (for the
// unsigned map) with two 128-entry byte permutes (VBMI; the code's low seven bits, its sign bit
// picks which; the signed map needs one, below) and the bytes interleaved back into floats. The
// step with it against the plain loop (which GCC turns into an emulated gather): 13.9 against
// 18.5 ms for 10M parameters; vgatherdps (19.2 ms) and eight 32-entry vpermi2ps with blends
// (17.4 ms) are slower too.
struct DecodePlanes {
  __m512i plane[4][4];  // byte b of entries [0, 64), [64, 128), [128, 192), [192, 256)
  explicit DecodePlanes(const float* decode) {
    alignas(64) uint8_t bytes[4][256];
    for (int i = 0; i < 256; ++i) {
      uint32_t bits;
      std::memcpy(&bits, decode + i, sizeof bits);
      for (int b = 0; b < 4; ++b) bytes[b][i] = static_cast<uint8_t>(bits >> (8 * b));
    }
    for (int b = 0; b < 4; ++b) {
      for (int q = 0; q < 4; ++q) plane[b][q] = _mm512_load_si512(bytes[b] + 64 * q);
    }
  }
};

// ``kSigned``: the signed map's table is odd (codec_table: code −c decodes to minus code c's
// value, and −128, never written, to −1 as −127 does), so its second half, codes 0 … 127, holds
// every magnitude. A code is looked up there by min(|c|, 127), with one permute a byte where the
// whole table takes two and a blend, and its sign bit becomes the float's. The same floats as
// the whole table's, for all 256 codes (tests/test_state.py); the 8-bit step took 0.97× the time.
template <bool kSigned>
inline void DecodeBlock64(const DecodePlanes& t, const int8_t* codes, float absmax, __m512 out[4]) {
  // The unpacks below interleave within 128-bit lanes: byte 16l + 4q + i must hold code
  // 16q + 4l + i for float vector q to come out in order.
  alignas(64) static constexpr uint8_t kOrder[64] = {
      0,  1,  2,  3,  16, 17, 18, 19, 32, 33, 34, 35, 48, 49, 50, 51,
      4,  5,  6,  7,  20, 21, 22, 23, 36, 37, 38, 39, 52, 53, 54, 55,
      8,  9,  10, 11, 24, 25, 26, 27, 40, 41, 42, 43, 56, 57, 58, 59,
      12, 13, 14, 15, 28, 29, 30, 31, 44, 45, 46, 47, 60, 61, 62, 63};
  const __m512i c = _mm512_permutexvar_epi8(_mm512_load_si512(kOrder), _mm512_loadu_si512(codes));
  __m512i p[4];
  if (kSigned) {
    const __m512i magnitude = _mm512_min_epu8(_mm512_abs_epi8(c), _mm512_set1_epi8(127));
    for (int b = 0; b < 4; ++b) {
      p[b] = _mm512_permutex2var_epi8(t.plane[b][2], magnitude, t.plane[b][3]);
    }
    // the top byte | (c & 0x80): the code's sign bit is the float's
    p[3] = _mm512_ternarylogic_epi32(p[3], c, _mm512_set1_epi8(-128), 0xF8);
  } else {
    const __mmask64 negative = _mm512_movepi8_mask(c);  // code + 128 < 128: the first half
    for (int b = 0; b < 4; ++b) {
      const __m512i first = _mm512_permutex2var_epi8(t.plane[b][0], c, t.plane[b][1]);
      const __m512i second = _mm512_permutex2var_epi8(t.plane[b][2], c, t.plane[b][3]);
      p[b] = _mm512_mask_blend_epi8(negative, second, first);
    }
  }
  const __m512i w01lo = _mm512_unpacklo_epi8(p[0], p[1]), w01hi = _mm512_unpackhi_epi8(p[0], p[1]);
  const __m512i w23lo = _mm512_unpacklo_epi8(p[2], p[3]), w23hi = _mm512_unpackhi_epi8(p[2], p[3]);
  const __m512i f[4] = {_mm512_unpacklo_epi16(w01lo, w23lo), _mm512_unpackhi_epi16(w01lo, w23lo),
                        _mm512_unpacklo_epi16(w01hi, w23hi), _mm512_unpackhi_epi16(w01hi, w23hi)};
  const __m512 scale = _mm512_set1_ps(absmax);
  for (int q = 0; q < 4; ++q) out[q] = _mm512_mul_ps(_mm512_castsi512_ps(f[q]), scale);
}

#endif

// A map's encoder and decoder: the AVX-512 ones where there is AVX-512 (with VBMI's byte
// permutes), else the AVX2 encoder and a plain lookup, else EncodeBlock.
struct BlockCodec {
  CodecTable table;
#if defined(ADAMKIT_CODEC_AVX512)
  MapVectors16 vectors;
  DecodePlanes planes;
  explicit BlockCodec(const CodecTable& c) : table(c), vectors(c), planes(c.decode) {}
  template <bool kSigned>
  void Encode(const float* x, int8_t* codes, float* absmax, uint32_t position,
              uint32_t step_mix) const {
    EncodeBlock16<kSigned>(x, codes, Scale16(x, absmax), vectors, position, step_mix);
  }
  template <bool kSigned>
  void Decode(const int8_t* codes, float absmax, float* out) const {
    for (int j = 0; j < kBlock; j += 64) {
      __m512 values[4];
      DecodeBlock64<kSigned>(planes, codes + j, absmax, values);
      for (int q = 0; q < 4; ++q) _mm512_storeu_ps(out + j + 16 * q, values[q]);
    }
  }
#elif defined(__AVX2__)
  MapVectors vectors;
  explicit BlockCodec(const CodecTable& c) : table(c), vectors(c) {}
  template <bool kSigned>
  void Encode(const float* x, int8_t* codes, float* absmax, uint32_t position,
              uint32_t step_mix) const {
    EncodeBlock8<kSigned>(x, codes, absmax, vectors, position, step_mix);
  }
#else
  explicit BlockCodec(const CodecTable& c) : table(c) {}
  template <bool kSigned>
  void Encode(const float* x, int8_t* codes, float* absmax, uint32_t position,
              uint32_t step_mix) const {
    EncodeBlock<kSigned>(x, codes, absmax, table, position, step_mix);
  }
#endif
#if !defined(ADAMKIT_CODEC_AVX512)
  // A gather (AVX2's vgatherdps) decodes no faster than this loop: measured 0.8–1.0× on Zen 3.
  template <bool kSigned>
  void Decode(const int8_t* codes, float absmax, float* out) const {
    for (int j = 0; j < kBlock; ++j) out[j] = table.decode[codes[j] + 128] * absmax;
  }
#endif
};

// A block of m (``signed_codec``) and of v (``unsigned_codec``), at position ``position``.
inline void EncodeMoments(const BlockCodec& signed_codec, const BlockCodec& unsigned_codec,
                          const float* m, const float* v, int8_t* m_codes, int8_t* v_codes,
                          float* m_absmax, float* v_absmax, uint32_t position, uint32_t step_mix) {
#if defined(ADAMKIT_CODEC_AVX512)
  EncodeMoments16(m, v, m_codes, v_codes, Scale16(m, m_absmax), Scale16(v, v_absmax),
                  signed_codec.vectors, unsigned_codec.vectors, position, step_mix);
#else
  signed_codec.Encode<true>(m, m_codes, m_absmax, position, step_mix);
  unsigned_codec.Encode<false>(v, v_codes, v_absmax, position, step_mix);
#endif
}

// Everything one 8-bit step needs; state s = 0 (m), 1 (v), 2 (v̂max).
struct Adam8bitStep {
  float* theta;
  const float* g;
  int64_t size;
  int8_t* codes[3];
  float* absmax[3];
  const float* scalars;  // kScalars, as Update's
  uint32_t step_mix;
  CodecTable signed_map, unsigned_map;
};

#if defined(ADAMKIT_CODEC_AVX512)
// Block ``b``, a whole one, with AVX-512: the state decoded, updated and θ's step taken in
// registers, sixty-four values at a time, each new state stored once (in m, v, h, for the
// encoder) with its largest magnitude kept as it goes; then the encoder. The same operations in
// the same order as the loops of UpdateBlocks8bit, so the same θ and codes, bit for bit (a NaN's
// payload aside: the compiler may swap an add's operands; tests/test_state.py compares the
// builds). Against decoding into the buffers, reading them back in three loops and taking each
// absmax in a pass of its own, the step took 0.86× the time (one thread, 65,536 parameters in
// the cache: 0.58 → 0.50 ns a parameter), together with the unsigned codes left to the packs'
// saturation and the multiply by a prescale of 1 left out (Encode16, EncodeMoments16).
template <Rule kRule>
void UpdateBlock16(const Adam8bitStep& p, const BlockCodec& signed_codec,
                   const BlockCodec& unsigned_codec, int64_t b, float* __restrict__ m,
                   float* __restrict__ v, float* __restrict__ h) {
  constexpr bool kAmsgrad = kRule == Rule::kAmsgrad;
  const __m512 decay = _mm512_set1_ps(p.scalars[0]), one_minus_b1 = _mm512_set1_ps(p.scalars[1]),
               b2_term = _mm512_set1_ps(p.scalars[2]), step_size = _mm512_set1_ps(p.scalars[3]),
               inv_sqrt_bc2 = _mm512_set1_ps(p.scalars[4]), eps = _mm512_set1_ps(p.scalars[5]),
               gradient_step = _mm512_set1_ps(p.scalars[6]);
  const int64_t first = b * kBlock;
  const float* __restrict__ g = p.g + first;
  float* __restrict__ theta = p.theta + first;
  __m512i top_m = _mm512_setzero_si512(), top_v = top_m, top_h = top_m;
  for (int j = 0; j < kBlock; j += 64) {
    __m512 m_old[4], v_old[4], h_old[4];
    DecodeBlock64<true>(signed_codec.planes, p.codes[0] + first + j, p.absmax[0][b], m_old);
    DecodeBlock64<false>(unsigned_codec.planes, p.codes[1] + first + j, p.absmax[1][b], v_old);
    if (kAmsgrad) {
      DecodeBlock64<false>(unsigned_codec.planes, p.codes[2] + first + j, p.absmax[2][b], h_old);
    }
    for (int q = 0; q < 4; ++q) {
      const int k = j + 16 * q;
      const __m512 gk = _mm512_loadu_ps(g + k);
      const __m512 mk = _mm512_add_ps(m_old[q], _mm512_mul_ps(_mm512_sub_ps(gk, m_old[q]),
                                                              one_minus_b1));
      // SecondMoment's two forms (max_ps(a, b) is its a > b ? a : b, NaN and ±0 alike)
      const __m512 vk = kRule == Rule::kAdamax
          ? _mm512_max_ps(_mm512_mul_ps(v_old[q], b2_term), _mm512_add_ps(_mm512_abs_ps(gk), eps))
          : _mm512_add_ps(v_old[q], _mm512_mul_ps(_mm512_sub_ps(_mm512_mul_ps(gk, gk), v_old[q]),
                                                  b2_term));
      _mm512_store_ps(m + k, mk);
      _mm512_store_ps(v + k, vk);
      top_m = Magnitudes16(top_m, mk);
      top_v = Magnitudes16(top_v, vk);
      __m512 second = vk;
      if (kAmsgrad) {
        second = _mm512_max_ps(h_old[q], vk);
        _mm512_store_ps(h + k, second);
        top_h = Magnitudes16(top_h, second);
      }
      const __m512 denominator = kRule == Rule::kAdamax
          ? second : _mm512_add_ps(_mm512_mul_ps(_mm512_sqrt_ps(second), inv_sqrt_bc2), eps);
      const __m512 step = _mm512_add_ps(_mm512_mul_ps(step_size, mk),
                                        _mm512_mul_ps(gradient_step, gk));
      _mm512_storeu_ps(theta + k, _mm512_sub_ps(_mm512_mul_ps(_mm512_loadu_ps(theta + k), decay),
                                                _mm512_div_ps(step, denominator)));
    }
  }
  const auto position = static_cast<uint32_t>(first);
  EncodeMoments16(m, v, p.codes[0] + first, p.codes[1] + first, ScaleOf16(top_m, p.absmax[0] + b),
                  ScaleOf16(top_v, p.absmax[1] + b), signed_codec.vectors, unsigned_codec.vectors,
                  position, p.step_mix);
  if (kAmsgrad) {
    EncodeBlock16<false>(h, p.codes[2] + first, ScaleOf16(top_h, p.absmax[2] + b),
                         unsigned_codec.vectors, position, p.step_mix);
  }
}
#endif

// Blocks [begin, end): decode, update θ, re-encode — each block's state stays in L1 between.
template <Rule kRule>
void UpdateBlocks8bit(const Adam8bitStep& p, int64_t begin, int64_t end) {
  constexpr bool kAmsgrad = kRule == Rule::kAmsgrad;
  const float decay = p.scalars[0], one_minus_b1 = p.scalars[1], b2_term = p.scalars[2],
              step_size = p.scalars[3], inv_sqrt_bc2 = p.scalars[4], eps = p.scalars[5],
              gradient_step = p.scalars[6];
  const BlockCodec signed_codec(p.signed_map), unsigned_codec(p.unsigned_map);
  alignas(64) float m[kBlock], v[kBlock], h[kBlock];
  for (int64_t b = begin; b < end; ++b) {
    const int64_t first = b * kBlock;
    const int n = static_cast<int>(std::min<int64_t>(kBlock, p.size - first));
#if defined(ADAMKIT_CODEC_AVX512)
    if (n == kBlock) {
      UpdateBlock16<kRule>(p, signed_codec, unsigned_codec, b, m, v, h);
      continue;
    }
#endif
    const float* __restrict__ g = p.g + first;
    float* __restrict__ theta = p.theta + first;
    signed_codec.Decode<true>(p.codes[0] + first, p.absmax[0][b], m);
    unsigned_codec.Decode<false>(p.codes[1] + first, p.absmax[1][b], v);
    for (int j = 0; j < n; ++j) {  // the new state, unrounded, for the update and the encoder
      m[j] = m[j] + (g[j] - m[j]) * one_minus_b1;
      v[j] = SecondMoment<kRule>(v[j], g[j], b2_term, eps);
    }
    const float* denominator = v;
    if (kAmsgrad) {
      unsigned_codec.Decode<false>(p.codes[2] + first, p.absmax[2][b], h);
      for (int j = 0; j < n; ++j) h[j] = h[j] > v[j] ? h[j] : v[j];
      denominator = h;
    }
    for (int j = 0; j < n; ++j) {
      theta[j] = theta[j] * decay - (step_size * m[j] + gradient_step * g[j]) /
                                        Denominator<kRule>(denominator[j], inv_sqrt_bc2, eps);
    }
    for (int j = n; j < kBlock; ++j) m[j] = v[j] = h[j] = 0.0f;  // the padding, as quantize's
    const uint32_t position = static_cast<uint32_t>(first);
    EncodeMoments(signed_codec, unsigned_codec, m, v, p.codes[0] + first, p.codes[1] + first,
                  p.absmax[0] + b, p.absmax[1] + b, position, p.step_mix);
    if (kAmsgrad) {
      unsigned_codec.Encode<false>(h, p.codes[2] + first, p.absmax[2] + b, position, p.step_mix);
    }
  }
}

// Blocks [begin, end) under ``rule``.
inline void UpdateBlocks8bit(const Adam8bitStep& p, Rule rule, int64_t begin, int64_t end) {
  switch (rule) {
    case Rule::kAdam: UpdateBlocks8bit<Rule::kAdam>(p, begin, end); break;
    case Rule::kAmsgrad: UpdateBlocks8bit<Rule::kAmsgrad>(p, begin, end); break;
    case Rule::kAdamax: UpdateBlocks8bit<Rule::kAdamax>(p, begin, end); break;
  }
}

// The blocks [begin, end) of variables laid end to end — variable i holds blocks [start[i],
// start[i + 1]) — each from its own block 0: UpdateRange's one index space for 8-bit state, so
// that a step of many variables is one launch and one wait.
inline void UpdateBlocks8bitRange(const std::vector<Adam8bitStep>& steps,
                                  const std::vector<int64_t>& start, Rule rule, int64_t begin,
                                  int64_t end) {
  const int64_t n = static_cast<int64_t>(steps.size());
  int64_t i = std::upper_bound(start.begin(), start.end(), begin) - start.begin() - 1;
  for (; i < n && start[i] < end; ++i) {
    UpdateBlocks8bit(steps[i], rule, std::max(begin, start[i]) - start[i],
                     std::min(end, start[i + 1]) - start[i]);
  }
}

// The rule an op's attributes ask for (amsgrad and adamax: both true is refused by the callers).
inline Rule RuleOf(bool amsgrad, bool adamax) {
  return adamax ? Rule::kAdamax : amsgrad ? Rule::kAmsgrad : Rule::kAdam;
}

}  // namespace adamkit

#endif  // ADAMKIT_ADAM_UPDATE_H_
