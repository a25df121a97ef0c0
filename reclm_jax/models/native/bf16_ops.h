// The one bf16 instruction pair the kernels use, on CPUs with and without AVX512-BF16.
//
// The kernels are written against vdpbf16ps (a dot product of bf16 pairs accumulated in f32) and vcvtneps2bf16.
// Built with -mavx512bf16 (Zen 4, Sapphire Rapids, Cooper Lake) they are those instructions. Built for plain
// AVX-512 (Skylake-SP, Cascade Lake, Ice Lake: AVX512F/BW/VL, the common cloud CPUs without BF16) each pair is
// widened to f32 by a shift or a mask and multiplied with two FMAs, high element first as in the instruction's
// definition (products of two bf16 values are exact in f32, so the sums round alike; only denormals, which
// vdpbf16ps flushes, can differ). That costs more instructions per product, so the emulated build also uses
// smaller row blocks (kMaxRowBlock): two f32 vectors per weight vector must stay in registers.
#pragma once

#include <immintrin.h>

namespace reclm {

#if defined(__AVX512BF16__)
constexpr bool kNativeBf16 = true;
constexpr int kMaxRowBlock = 6;  // 24 accumulators + 4 weight vectors + 1 broadcast of 32 registers
using Bf16x32 = __m512bh;        // 32 bf16 values: 16 (even, odd) pairs

inline __m512 Dp(__m512 acc, Bf16x32 a, Bf16x32 b) { return _mm512_dpbf16_ps(acc, a, b); }

inline __m256i ToBf16(__m512 x) { return (__m256i)_mm512_cvtneps_pbh(x); }
#else
constexpr bool kNativeBf16 = false;
constexpr int kMaxRowBlock = 4;  // 16 accumulators + 8 widened weight vectors + 2 broadcasts
using Bf16x32 = __m512i;

inline __m512 HighF32(__m512i v) {  // the odd (high) bf16 of each pair, as f32
  return _mm512_castsi512_ps(_mm512_and_si512(v, _mm512_set1_epi32(static_cast<int>(0xFFFF0000u))));
}

inline __m512 LowF32(__m512i v) { return _mm512_castsi512_ps(_mm512_slli_epi32(v, 16)); }

// acc + a.odd * b.odd + a.even * b.even per f32 lane, in vdpbf16ps' order. Inlined, the widening of an operand
// shared by several calls (a weight vector across rows, a broadcast across columns) is computed once.
inline __m512 Dp(__m512 acc, Bf16x32 a, Bf16x32 b) {
  acc = _mm512_fmadd_ps(HighF32(a), HighF32(b), acc);
  return _mm512_fmadd_ps(LowF32(a), LowF32(b), acc);
}

inline __m256i ToBf16(__m512 x) {  // round to nearest even, as vcvtneps2bf16 (finite inputs)
  const __m512i bits = _mm512_castps_si512(x);
  const __m512i odd = _mm512_and_si512(_mm512_srli_epi32(bits, 16), _mm512_set1_epi32(1));
  const __m512i rounded = _mm512_add_epi32(bits, _mm512_add_epi32(odd, _mm512_set1_epi32(0x7FFF)));
  return _mm512_cvtepi32_epi16(_mm512_srli_epi32(rounded, 16));
}
#endif

}  // namespace reclm
