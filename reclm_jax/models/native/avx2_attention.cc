// decode_attention.cc for CPUs with AVX2 and FMA only (avx2_ops.h): the same XLA FFI target, arguments and
// numbers (scores accumulated in f32 and scaled, softmax in f32, probabilities rounded to bf16, values summed in
// f32 and rounded to bf16), in 256-bit registers. Summation orders differ from XLA's: results agree to f32
// rounding.
//
//   q [B, 1, N, H], k_new / v_new [B, 1, K, H], caches [B, K, S, H]: bf16; mask [B, 1, 1, S] bool; end: int32
//   scalar, the slot written now. N = K * G, H a multiple of 32 (at most 256), G at most 16.
#include <cmath>
#include <cstring>
#include <vector>

#include "attention_entry.h"
#include "avx2_ops.h"

namespace reclm::attention {

using namespace reclm::avx2;

// Lanes [s0, s0 + 8) of the softmax numerators: exp(score - top) where the mask allows the slot, else 0.
inline __m256 Numerators(const float* scores, const bool* mask, float top) {
  int64_t m;
  std::memcpy(&m, mask, 8);
  const __m256i allowed = _mm256_cmpgt_epi32(_mm256_cvtepu8_epi32(_mm_cvtsi64_si128(m)), _mm256_setzero_si256());
  const __m256 e = Exp(_mm256_sub_ps(_mm256_loadu_ps(scores), _mm256_set1_ps(top)));
  return _mm256_and_ps(e, _mm256_castsi256_ps(allowed));
}

void Unit(const Step& st, const Head& u, std::vector<float>& scores) {
  const int64_t H = st.h, G = st.g, slots = st.end + 1;
  const uint16_t* keys = u.keys;
  const uint16_t* values = u.values;
  const bool* mask = u.mask;
  const int64_t stride = (slots + 7) / 8 * 8;  // whole groups of 8 lanes, the tail padded
  scores.resize(G * stride);

  alignas(32) float qf[kMaxHead];
  for (int64_t g = 0; g < G; ++g) {
    const uint16_t* qg = u.q + g * H;
    for (int64_t c = 0; c < H; c += 8) _mm256_store_ps(qf + c, Widen8(qg + c));
    float* sg = scores.data() + g * stride;
    // Scores, 4 slots at a time, each slot's 8 partial sums reduced together.
    for (int64_t s0 = 0; s0 < slots; s0 += 4) {
      __m256 acc[4];
      for (int j = 0; j < 4; ++j) {
        acc[j] = _mm256_setzero_ps();
        const uint16_t* kr = keys + std::min(s0 + j, slots - 1) * H;  // past the end: a repeat, never used
        for (int64_t c = 0; c < H; c += 8) acc[j] = _mm256_fmadd_ps(Widen8(kr + c), _mm256_load_ps(qf + c), acc[j]);
      }
      alignas(16) float four[4];
      _mm_store_ps(four, _mm_mul_ps(Sum4(acc[0], acc[1], acc[2], acc[3]), _mm_set1_ps(st.scale)));
      for (int j = 0; j < 4 && s0 + j < stride; ++j) sg[s0 + j] = four[j];
    }
    // Softmax over the allowed slots, in f32; probabilities rounded to bf16 as the XLA path does.
    float top = -INFINITY;
    for (int64_t s = 0; s < slots; ++s)
      if (mask[s]) top = std::max(top, sg[s]);
    __m256 total = _mm256_setzero_ps();
    int64_t s0 = 0;
    for (; s0 + 8 <= slots; s0 += 8) {
      const __m256 e = Numerators(sg + s0, mask + s0, top);
      total = _mm256_add_ps(total, e);
      _mm256_storeu_ps(sg + s0, e);
    }
    if (s0 < slots) {  // the tail through zero-padded copies (the mask's bytes past `slots` are not read)
      alignas(32) float tail[8] = {0, 0, 0, 0, 0, 0, 0, 0};
      bool allowed[8] = {false, false, false, false, false, false, false, false};
      for (int64_t s = s0; s < slots; ++s) {
        tail[s - s0] = sg[s];
        allowed[s - s0] = mask[s];
      }
      const __m256 e = Numerators(tail, allowed, top);
      total = _mm256_add_ps(total, e);
      _mm256_store_ps(tail, e);
      for (int64_t s = s0; s < slots; ++s) sg[s] = tail[s - s0];
    }
    const float sum = Sum8(total);
    for (int64_t s = 0; s < slots; ++s) sg[s] = RoundBf16(sg[s] / sum);
  }

  // Values: out[g, :] = sum_s p[g, s] v[s, :], 32 columns and up to 2 query heads at a time.
  for (int64_t g0 = 0; g0 < G; g0 += 2) {
    const int gn = static_cast<int>(std::min<int64_t>(2, G - g0));
    for (int64_t h0 = 0; h0 < H; h0 += 32) {
      __m256 acc[2][4];
      for (int i = 0; i < 2; ++i)
        for (int j = 0; j < 4; ++j) acc[i][j] = _mm256_setzero_ps();
      for (int64_t s = 0; s < slots; ++s) {
        __m256 v[4];
        for (int j = 0; j < 4; ++j) v[j] = Widen8(values + s * H + h0 + 8 * j);
        for (int i = 0; i < gn; ++i) {
          const __m256 p = _mm256_broadcast_ss(&scores[(g0 + i) * stride + s]);
          for (int j = 0; j < 4; ++j) acc[i][j] = _mm256_fmadd_ps(p, v[j], acc[i][j]);
        }
      }
      for (int i = 0; i < gn; ++i) {
        uint16_t* o = u.out + (g0 + i) * H + h0;
        for (int j = 0; j < 4; ++j) StoreBf16(o + 8 * j, acc[i][j]);
      }
    }
  }
}

}  // namespace reclm::attention
