// One decoding step's attention over the KV cache, with the new token's key and value written into the cache
// in place (an XLA FFI custom call whose cache outputs alias its cache inputs).
//
// Why it exists: XLA:CPU runs the step's attention as B x K tiny batched products (a few query rows each)
// plus a softmax and two 16-bit cache updates; in a profiled SmolLM2 step at batch 16 they cost about as much
// as all the weight products. Here each (sequence, KV head) is one unit of work for the shared pool: write
// the new slot, score the group's queries against slots [0, end], softmax, and sum the values.
//
// Numbers as the XLA path (models/attention.py cached_attention): scores q.k accumulated in f32 and scaled,
// masked slots excluded, softmax in f32, the probabilities rounded to bf16, the weighted values accumulated
// in f32 and rounded to bf16. Summation orders differ from XLA's, so results agree to f32 rounding.
//
//   q [B, 1, N, H], k_new / v_new [B, 1, K, H], caches [B, K, S, H]: bf16; mask [B, 1, 1, S] bool (slots the
//   new token may see, its own included); end: int32 scalar, the slot written now (mask is False beyond it).
//   N = K * G (query heads grouped by KV head), H a multiple of 32.
#include <cmath>
#include <cstring>

#include "attention_entry.h"
#include "bf16_ops.h"
#include "pool.h"

namespace reclm::attention {

using reclm::Sum4;

// exp(x) for f32 lanes, Cephes' single-precision range reduction and polynomial (about 1 ulp).
inline __m512 Exp(__m512 x) {
  x = _mm512_min_ps(_mm512_max_ps(x, _mm512_set1_ps(-87.33654f)), _mm512_set1_ps(88.37626f));
  const __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)),
                                        _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693359375f), x);
  r = _mm512_fnmadd_ps(n, _mm512_set1_ps(-2.12194440e-4f), r);
  __m512 y = _mm512_set1_ps(1.9875691500e-4f);
  y = _mm512_fmadd_ps(y, r, _mm512_set1_ps(1.3981999507e-3f));
  y = _mm512_fmadd_ps(y, r, _mm512_set1_ps(8.3334519073e-3f));
  y = _mm512_fmadd_ps(y, r, _mm512_set1_ps(4.1665795894e-2f));
  y = _mm512_fmadd_ps(y, r, _mm512_set1_ps(1.6666665459e-1f));
  y = _mm512_fmadd_ps(y, r, _mm512_set1_ps(5.0000001201e-1f));
  y = _mm512_fmadd_ps(y, _mm512_mul_ps(r, r), r);
  return _mm512_scalef_ps(_mm512_add_ps(y, _mm512_set1_ps(1.0f)), n);
}

inline __m512 Bf16ToF32(const uint16_t* p) {  // 16 values
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i*)p)), 16));
}

constexpr int kMaxChunks = kMaxHead / 32;  // 32-value registers per head

void Unit(const Step& st, const Head& u, std::vector<float>& scores) {
  const int64_t H = st.h, G = st.g, slots = st.end + 1;
  const uint16_t* keys = u.keys;
  const uint16_t* values = u.values;
  const bool* mask = u.mask;
  const int chunks = static_cast<int>(H / 32);
  const int64_t stride = (slots + 3) / 4 * 4;
  scores.resize(G * stride);

  // Scores: 4 slots at a time per query head, the 16 partial sums of each reduced together.
  for (int64_t g = 0; g < G; ++g) {
    const uint16_t* qg = u.q + g * H;
    reclm::Bf16x32 qv[kMaxChunks];
    for (int c = 0; c < chunks; ++c) qv[c] = (reclm::Bf16x32)_mm512_loadu_si512(qg + 32 * c);
    float* sg = scores.data() + g * stride;
    for (int64_t s0 = 0; s0 < slots; s0 += 4) {
      __m512 acc[4];
      for (int j = 0; j < 4; ++j) {
        acc[j] = _mm512_setzero_ps();
        const int64_t s = std::min(s0 + j, slots - 1);  // past the end: a repeat, never used
        const uint16_t* kr = keys + s * H;
        for (int c = 0; c < chunks; ++c)
          acc[j] = reclm::Dp(acc[j], (reclm::Bf16x32)_mm512_loadu_si512(kr + 32 * c), qv[c]);
      }
      _mm_storeu_ps(sg + s0, _mm_mul_ps(Sum4(acc[0], acc[1], acc[2], acc[3]), _mm_set1_ps(st.scale)));
    }
    // Softmax over the allowed slots, in f32; probabilities rounded to bf16 as the XLA path does.
    float top = -INFINITY;
    for (int64_t s = 0; s < slots; ++s)
      if (mask[s]) top = std::max(top, sg[s]);
    __m512 total = _mm512_setzero_ps();
    for (int64_t s0 = 0; s0 < slots; s0 += 16) {
      const __mmask16 in = static_cast<__mmask16>(slots - s0 >= 16 ? 0xFFFF : (1u << (slots - s0)) - 1);
      const __mmask16 ok = in & (__mmask16)_mm512_cmpneq_epi8_mask(
                                    _mm512_zextsi128_si512(_mm_maskz_loadu_epi8(in, mask + s0)),
                                    _mm512_setzero_si512());
      const __m512 e = _mm512_maskz_mov_ps(ok, Exp(_mm512_sub_ps(_mm512_maskz_loadu_ps(in, sg + s0),
                                                                 _mm512_set1_ps(top))));
      total = _mm512_add_ps(total, e);
      _mm512_mask_storeu_ps(sg + s0, in, e);
    }
    const float sum = _mm512_reduce_add_ps(total);
    for (int64_t s = 0; s < slots; ++s) sg[s] = RoundBf16(sg[s] / sum);
  }

  // Values: out[g, :] = sum_s p[g, s] v[s, :], 64 columns and up to 4 query heads at a time.
  for (int64_t g0 = 0; g0 < G; g0 += 4) {
    const int gn = static_cast<int>(std::min<int64_t>(4, G - g0));
    for (int64_t h0 = 0; h0 < H; h0 += 64) {
      const int vn = static_cast<int>(std::min<int64_t>(64, H - h0) / 16);
      __m512 acc[4][4];
      for (int i = 0; i < 4; ++i)
        for (int j = 0; j < 4; ++j) acc[i][j] = _mm512_setzero_ps();
      for (int64_t s = 0; s < slots; ++s) {
        __m512 v[4];
        for (int j = 0; j < vn; ++j) v[j] = Bf16ToF32(values + s * H + h0 + 16 * j);
        for (int i = 0; i < gn; ++i) {
          const __m512 p = _mm512_set1_ps(scores[(g0 + i) * stride + s]);
          for (int j = 0; j < vn; ++j) acc[i][j] = _mm512_fmadd_ps(p, v[j], acc[i][j]);
        }
      }
      for (int i = 0; i < gn; ++i) {
        uint16_t* o = u.out + (g0 + i) * H + h0;
        for (int j = 0; j < vn; ++j)
          _mm256_storeu_si256((__m256i*)(o + 16 * j), reclm::ToBf16(acc[i][j]));
      }
    }
  }
}

}  // namespace reclm::attention
