// The exhaustive check of the 8-bit encoder (adam_update.h) over every float32 in [−1, 1]:
// each value is encoded in a block whose absmax is 1 (so it is its own normalised value), by the
// vector encoder it is compiled for (AVX-512 or AVX2; tests/test_state.py builds it both ways),
// alone and as the step encodes m and v together, and by the scalar one; the codes must agree,
// and each code must be one of the two map values that bracket the value (what a search of the
// sorted map gives, rounded down or up), whatever the dither. Also: the AVX-512 store's
// saturation, which clamps the unsigned map's codes.
#include <algorithm>
#include <cstdint>
#include <cstring>

#include "adam_update.h"

namespace {

using adamkit::kBlock;

float FromBits(uint32_t bits) {
  float f;
  std::memcpy(&f, &bits, sizeof f);
  return f;
}

// The map's magnitude of code c (signed: |c|'s; unsigned: c + 128 indexes the ascending map).
template <bool kSigned>
float Magnitude(const float* decode, int index) {
  return kSigned ? decode[128 + index] : decode[index];
}

template <bool kSigned>
bool Brackets(const float* decode, float a, int index, int top) {
  const float here = Magnitude<kSigned>(decode, index);
  if (here == a) return true;
  if (here < a) return index == top || a <= Magnitude<kSigned>(decode, index + 1);
  return index > 0 && Magnitude<kSigned>(decode, index - 1) <= a;
}

template <bool kSigned>
void Check(const float* signed_table, const float* unsigned_table, uint32_t step_mix,
           int64_t* counts) {
  const float* table = kSigned ? signed_table : unsigned_table;
  const adamkit::CodecTable map(table), signed_map(signed_table), unsigned_map(unsigned_table);
  const adamkit::BlockCodec codec(map), signed_codec(signed_map), unsigned_codec(unsigned_map);
  const int top = kSigned ? 127 : 255;
  alignas(64) float block[kBlock];
  int8_t scalar[kBlock], kernel[kBlock], pair[2][kBlock];
  float absmax, pair_absmax[2];
  const uint32_t last = 0x3f800000u;  // 1.0f
  for (uint32_t bits = 0; bits <= last;) {
    block[0] = 1.0f;
    int n = 1;
    for (; n < kBlock && bits <= last; ++n, ++bits) {
      const float value = FromBits(bits);
      block[n] = kSigned && (bits & 1) ? -value : value;
    }
    for (int j = n; j < kBlock; ++j) block[j] = 0.0f;
    const uint32_t position = bits * 7u;  // any: varies the dither from block to block
    adamkit::EncodeBlock<kSigned>(block, scalar, &absmax, map, position, step_mix);
    codec.template Encode<kSigned>(block, kernel, &absmax, position, step_mix);
    adamkit::EncodeMoments(signed_codec, unsigned_codec, block, block, pair[0], pair[1],
                           &pair_absmax[0], &pair_absmax[1], position, step_mix);
    const int8_t* paired = pair[kSigned ? 0 : 1];  // as m (signed map) or as v (unsigned)
    for (int j = 1; j < n; ++j) {
      counts[0] += 1;
      counts[1] += scalar[j] != kernel[j] || scalar[j] != paired[j];
      const int index = kSigned ? (scalar[j] < 0 ? -scalar[j] : scalar[j]) : scalar[j] + 128;
      const bool sign_kept = !kSigned || scalar[j] == 0 || (scalar[j] < 0) == (block[j] < 0);
      counts[2] += !sign_kept || !Brackets<kSigned>(table, block[j] < 0 ? -block[j] : block[j],
                                                   index, top);
    }
  }
}

}  // namespace

// counts: [values checked, scalar ≠ kernel, codes outside the bracket].
extern "C" void adamkit_check_encoder(int is_signed, const float* signed_table,
                                      const float* unsigned_table, uint32_t step_mix,
                                      int64_t* counts) {
  counts[0] = counts[1] = counts[2] = 0;
  if (is_signed) {
    Check<true>(signed_table, unsigned_table, step_mix, counts);
  } else {
    Check<false>(signed_table, unsigned_table, step_mix, counts);
  }
}

// Encodes ``blocks`` blocks of ``x`` as the kernels do (``step_mix``: the step times the dither's
// step multiplier), each at its flat position, into ``codes`` and ``absmax``: for comparing the
// kernels' codes with adamkit.state.quantize's on any values.
extern "C" void adamkit_encode_blocks(int is_signed, const float* table, const float* x,
                                      int64_t blocks, uint32_t step_mix, int8_t* codes,
                                      float* absmax) {
  const adamkit::CodecTable map(table);
  const adamkit::BlockCodec codec(map);
  for (int64_t b = 0; b < blocks; ++b) {
    const auto position = static_cast<uint32_t>(b * kBlock);
    if (is_signed) {
      codec.Encode<true>(x + b * kBlock, codes + b * kBlock, absmax + b, position, step_mix);
    } else {
      codec.Encode<false>(x + b * kBlock, codes + b * kBlock, absmax + b, position, step_mix);
    }
  }
}

// Decodes ``blocks`` blocks of ``codes`` as the kernels do, into ``x``: for comparing the
// kernels' decoder with adamkit.state.dequantize's on every code.
extern "C" void adamkit_decode_blocks(int is_signed, const float* table, const int8_t* codes,
                                      const float* absmax, int64_t blocks, float* x) {
  const adamkit::CodecTable map(table);
  const adamkit::BlockCodec codec(map);
  for (int64_t b = 0; b < blocks; ++b) {
    if (is_signed) {
      codec.Decode<true>(codes + b * kBlock, absmax[b], x + b * kBlock);
    } else {
      codec.Decode<false>(codes + b * kBlock, absmax[b], x + b * kBlock);
    }
  }
}

// Encodes ``blocks`` blocks of m (signed map) and of v (unsigned) together, as the step does.
extern "C" void adamkit_encode_moments(const float* signed_table, const float* unsigned_table,
                                       const float* m, const float* v, int64_t blocks,
                                       uint32_t step_mix, int8_t* m_codes, int8_t* v_codes,
                                       float* m_absmax, float* v_absmax) {
  const adamkit::CodecTable signed_map(signed_table), unsigned_map(unsigned_table);
  const adamkit::BlockCodec signed_codec(signed_map), unsigned_codec(unsigned_map);
  for (int64_t b = 0; b < blocks; ++b) {
    const int64_t first = b * kBlock;
    adamkit::EncodeMoments(signed_codec, unsigned_codec, m + first, v + first, m_codes + first,
                           v_codes + first, m_absmax + b, v_absmax + b,
                           static_cast<uint32_t>(first), step_mix);
  }
}

// How many of the indices −512 … 511 (every value of an int32 shifted right by 22, as Encode16
// takes it) Store64 stores, as index − 128, other than as the index clamped to [0, 255] less 128:
// the unsigned map's clamp, which its encoder leaves to these saturating packs. −1 without the
// AVX-512 encoder.
extern "C" int64_t adamkit_check_saturating_store() {
#if defined(ADAMKIT_CODEC_AVX512)
  int64_t wrong = 0;
  for (int first = -512; first < 512; first += 64) {
    __m512i c[4];
    for (int q = 0; q < 4; ++q) {
      c[q] = _mm512_sub_epi32(
          _mm512_add_epi32(_mm512_set1_epi32(first + 16 * q),
                           _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15)),
          _mm512_set1_epi32(128));
    }
    int8_t stored[64];
    adamkit::Store64(stored, c);
    for (int k = 0; k < 64; ++k) {
      wrong += stored[k] != std::min(std::max(first + k, 0), 255) - 128;
    }
  }
  return wrong;
#else
  return -1;
#endif
}

// Each absmax's BlockScale, as the kernels form it: for comparing with adamkit.state.block_scales.
extern "C" void adamkit_block_scales(const float* absmax, int64_t n, float* prescale,
                                     float* reciprocal) {
  for (int64_t i = 0; i < n; ++i) {
    const adamkit::BlockScale scale(absmax[i]);
    prescale[i] = scale.prescale;
    reciprocal[i] = scale.reciprocal;
  }
}
