// The 256-bit building blocks of the AVX2 kernels (avx2_dot.cc, avx2_attention.cc): CPUs with AVX2 and FMA but
// no AVX-512 (AMD Zen 1-3, Intel Haswell to Comet Lake and the client cores since).
//
// Such a CPU has no bf16 instruction at all, so each bf16 value is widened to f32 (a 16-bit shift: bf16 is the
// high half of an f32) and multiplied with FMAs. A product of two bf16 values is exact in f32, so an FMA adds
// exactly the term vdpbf16ps would; the kernels add the terms of each (k, k+1) pair high element first, as that
// instruction's definition and XLA:CPU's bf16 dot do, so their sums round alike (the tests check the bits).
#pragma once

#include <immintrin.h>

#include <cstdint>
#include <cstring>

namespace reclm::avx2 {

// 8 bf16 values -> 8 f32.
inline __m256 Widen8(const uint16_t* p) {
  return _mm256_castsi256_ps(
      _mm256_slli_epi32(_mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p))), 16));
}

// 8 (even, odd) bf16 pairs (16 values) -> their odd (high) elements as f32, and their even (low) ones.
inline __m256 HighF32(__m256i v) {
  return _mm256_castsi256_ps(_mm256_and_si256(v, _mm256_set1_epi32(static_cast<int>(0xFFFF0000u))));
}
inline __m256 LowF32(__m256i v) { return _mm256_castsi256_ps(_mm256_slli_epi32(v, 16)); }

inline __m256i Load256(const void* p) { return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)); }

inline float Bf16ToF32(uint16_t v) {
  const uint32_t bits = static_cast<uint32_t>(v) << 16;
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}

// 8 f32 -> 8 bf16 at p, rounded to nearest even as vcvtneps2bf16 (finite inputs).
inline void StoreBf16(uint16_t* p, __m256 x) {
  const __m256i bits = _mm256_castps_si256(x);
  const __m256i odd = _mm256_and_si256(_mm256_srli_epi32(bits, 16), _mm256_set1_epi32(1));
  const __m256i r = _mm256_srli_epi32(_mm256_add_epi32(bits, _mm256_add_epi32(odd, _mm256_set1_epi32(0x7FFF))), 16);
  // packus works within 128-bit lanes: [r0..3, r0..3 | r4..7, r4..7] -> take the low 64 bits of each lane.
  const __m256i packed = _mm256_permute4x64_epi64(_mm256_packus_epi32(r, r), 0x08);
  _mm_storeu_si128(reinterpret_cast<__m128i*>(p), _mm256_castsi256_si128(packed));
}

inline float Sum8(__m256 v) {
  const __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  const __m128 t = _mm_add_ps(s, _mm_movehl_ps(s, s));
  return _mm_cvtss_f32(_mm_add_ss(t, _mm_movehdup_ps(t)));
}

// -> [sum(a), sum(b), sum(c), sum(d)]: four horizontal sums at once.
inline __m128 Sum4(__m256 a, __m256 b, __m256 c, __m256 d) {
  const __m256 ab = _mm256_hadd_ps(a, b), cd = _mm256_hadd_ps(c, d);
  const __m256 s = _mm256_hadd_ps(ab, cd);  // per 128-bit lane: [a, b, c, d] partial sums
  return _mm_add_ps(_mm256_castps256_ps128(s), _mm256_extractf128_ps(s, 1));
}

// The first n (0..8) lanes set, for _mm256_maskload_ps / _mm256_maskstore_ps.
inline __m256i LaneMask(int64_t n) {
  const __m256i idx = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
  return _mm256_cmpgt_epi32(_mm256_set1_epi32(static_cast<int>(n < 0 ? 0 : n > 8 ? 8 : n)), idx);
}

// exp(x) for f32 lanes: Cephes' single-precision range reduction and polynomial (about 1 ulp), as the AVX-512
// kernel's, with 2^n built in the exponent bits (AVX2 has no scalef).
inline __m256 Exp(__m256 x) {
  x = _mm256_min_ps(_mm256_max_ps(x, _mm256_set1_ps(-87.33654f)), _mm256_set1_ps(88.37626f));
  const __m256 n = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(1.44269504088896341f)),
                                   _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693359375f), x);
  r = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.12194440e-4f), r);
  __m256 y = _mm256_set1_ps(1.9875691500e-4f);
  y = _mm256_fmadd_ps(y, r, _mm256_set1_ps(1.3981999507e-3f));
  y = _mm256_fmadd_ps(y, r, _mm256_set1_ps(8.3334519073e-3f));
  y = _mm256_fmadd_ps(y, r, _mm256_set1_ps(4.1665795894e-2f));
  y = _mm256_fmadd_ps(y, r, _mm256_set1_ps(1.6666665459e-1f));
  y = _mm256_fmadd_ps(y, r, _mm256_set1_ps(5.0000001201e-1f));
  y = _mm256_fmadd_ps(y, _mm256_mul_ps(r, r), r);
  y = _mm256_add_ps(y, _mm256_set1_ps(1.0f));
  // n is in [-126, 128] after the clamp: 2^n as an f32 (n = 128 in two halves, as scalef would give).
  const __m256i ni = _mm256_cvtps_epi32(n);
  const __m256i half = _mm256_srai_epi32(ni, 1);
  const __m256 p1 = _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_add_epi32(half, _mm256_set1_epi32(127)), 23));
  const __m256 p2 = _mm256_castsi256_ps(
      _mm256_slli_epi32(_mm256_add_epi32(_mm256_sub_epi32(ni, half), _mm256_set1_epi32(127)), 23));
  return _mm256_mul_ps(_mm256_mul_ps(y, p1), p2);
}

}  // namespace reclm::avx2
