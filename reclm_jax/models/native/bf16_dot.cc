// Few-row bf16 x bf16 -> f32 products for decoding on AVX-512 CPUs (an XLA FFI custom call; vdpbf16ps where the
// CPU has AVX512-BF16, its two-FMA form elsewhere: bf16_ops.h).
//
// Why it exists: a decoding step multiplies a handful of rows (one per sequence) by every weight matrix.
// XLA:CPU's library kernel streams the weights at 5-7 GB/s there and keeps the second core idle; this kernel
// splits each product's columns over a small pool of spinning worker threads and streams them near the
// memory bandwidth. With two or more rows the products are formed with vdpbf16ps pairs in order along K (the
// order of XLA:CPU's bf16 kernel on most CPUs, not of its YNNPACK kernel on Sapphire Rapids; the tests emulate
// it); one row is split along K instead (KnOneRow), within f32 rounding of it.
//
//   reclm_dot_kn:  out[M, N] = x[M, K] @ w[K, N]     (a Linear's [in, out] kernel)
//   reclm_dot_nk:  out[M, N] = x[M, K] @ w[N, K]^T   (a tied LM head's [vocab, hidden] embedding)
//
// Both take bf16 operands, return f32, and accept any M, K, N (tails are masked).
#include "bf16_ops.h"
#include "pool.h"
#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

using reclm::Pool;
using reclm::Sum4;

struct Dot {
  const uint16_t* x;
  const uint16_t* w;
  float* out;
  int64_t m, k, n;
  float* partial = nullptr;  // one-row products: kOneRowUnits partial rows of N floats
  int64_t kchunk = 0;        // one-row products: rows of w per unit (even)
};

// ---------------------------------------------------------------------------------------------------------
// x @ w with w [K, N]: 64-column strips of w. For each pair of rows (k, k+1) of a strip, the two rows are
// interleaved into [w(k,c), w(k+1,c)] pairs (four permutes), which vdpbf16ps multiplies with the broadcast
// pair (x(m,k), x(m,k+1)) of every row m: lane c of the four accumulators of row m holds out(m, c).

template <int MB, bool kFull>
inline void KnBlock(const Dot& d, int64_t col, __mmask32 lo_cols, __mmask32 hi_cols, int64_t m0) {
  const __m512i lo_idx = reclm::PairsLo(), hi_idx = reclm::PairsHi();
  const int64_t K = d.k, N = d.n;
  const uint16_t* w = d.w + col;
  const uint16_t* x = d.x + m0 * K;
  __m512 acc[MB][4];
  for (int i = 0; i < MB; ++i)
    for (int j = 0; j < 4; ++j) acc[i][j] = _mm512_setzero_ps();
  // Masked loads only in the last, partial strip: on this project's CPUs (AMD Zen 4) they halved the rate.
  auto load = [&](const uint16_t* p, __mmask32 mask) {
    if constexpr (kFull) return _mm512_loadu_si512(p);
    return _mm512_maskz_loadu_epi16(mask, p);
  };
  auto step = [&](const __m512i a0, const __m512i a1, const __m512i b0, const __m512i b1, const int32_t* pairs) {
    const reclm::Bf16x32 v0 = (reclm::Bf16x32)_mm512_permutex2var_epi16(a0, lo_idx, b0);
    const reclm::Bf16x32 v1 = (reclm::Bf16x32)_mm512_permutex2var_epi16(a0, hi_idx, b0);
    const reclm::Bf16x32 v2 = (reclm::Bf16x32)_mm512_permutex2var_epi16(a1, lo_idx, b1);
    const reclm::Bf16x32 v3 = (reclm::Bf16x32)_mm512_permutex2var_epi16(a1, hi_idx, b1);
    for (int i = 0; i < MB; ++i) {
      const reclm::Bf16x32 xb = (reclm::Bf16x32)_mm512_set1_epi32(pairs[i]);
      acc[i][0] = reclm::Dp(acc[i][0], v0, xb);
      acc[i][1] = reclm::Dp(acc[i][1], v1, xb);
      acc[i][2] = reclm::Dp(acc[i][2], v2, xb);
      acc[i][3] = reclm::Dp(acc[i][3], v3, xb);
    }
  };
  int64_t k = 0;
  for (; k + 1 < K; k += 2) {
    const uint16_t* r0 = w + k * N;
    int32_t pairs[MB];
    for (int i = 0; i < MB; ++i) __builtin_memcpy(&pairs[i], x + i * K + k, sizeof(int32_t));
    step(load(r0, lo_cols), load(r0 + 32, hi_cols), load(r0 + N, lo_cols), load(r0 + N + 32, hi_cols), pairs);
  }
  if (k < K) {  // odd K: the last row pairs with zeros, as does its x value
    const uint16_t* r0 = w + k * N;
    int32_t pairs[MB];
    for (int i = 0; i < MB; ++i) pairs[i] = x[i * K + k];
    const __m512i z = _mm512_setzero_si512();
    step(_mm512_maskz_loadu_epi16(lo_cols, r0), _mm512_maskz_loadu_epi16(hi_cols, r0 + 32), z, z, pairs);
  }
  for (int i = 0; i < MB; ++i) {
    float* o = d.out + (m0 + i) * N + col;
    if constexpr (kFull) {
      for (int j = 0; j < 4; ++j) _mm512_storeu_ps(o + 16 * j, acc[i][j]);
    } else {
      const __mmask16 m[4] = {static_cast<__mmask16>(lo_cols), static_cast<__mmask16>(lo_cols >> 16),
                              static_cast<__mmask16>(hi_cols), static_cast<__mmask16>(hi_cols >> 16)};
      for (int j = 0; j < 4; ++j) _mm512_mask_storeu_ps(o + 16 * j, m[j], acc[i][j]);
    }
  }
}

template <bool kFull>
inline void KnRowBlocks(const Dot& d, int64_t col, __mmask32 lo, __mmask32 hi);

constexpr int kMaxRows = reclm::kMaxRowBlock;  // bf16_ops.h: 6 rows with AVX512-BF16, 4 without

inline __mmask32 Cols(int64_t width) {  // the first `width` (0..32) of 32 lanes
  return width >= 32 ? ~__mmask32(0) : width <= 0 ? __mmask32(0) : static_cast<__mmask32>((uint64_t(1) << width) - 1);
}

template <bool kFull>
inline void KnRowBlocks(const Dot& d, int64_t col, __mmask32 lo, __mmask32 hi) {
  // Row blocks of equal size (16 rows -> 6 + 5 + 5, not 6 + 6 + 4); each block re-reads the strip from cache.
  const int64_t blocks = (d.m + kMaxRows - 1) / kMaxRows;
  for (int64_t b = 0; b < blocks; ++b) {
    const int64_t m0 = d.m * b / blocks, rows = d.m * (b + 1) / blocks - m0;
    switch (rows) {
      case 6: KnBlock<6, kFull>(d, col, lo, hi, m0); break;
      case 5: KnBlock<5, kFull>(d, col, lo, hi, m0); break;
      case 4: KnBlock<4, kFull>(d, col, lo, hi, m0); break;
      case 3: KnBlock<3, kFull>(d, col, lo, hi, m0); break;
      case 2: KnBlock<2, kFull>(d, col, lo, hi, m0); break;
      default: KnBlock<1, kFull>(d, col, lo, hi, m0); break;
    }
  }
}

// One masked step of at most 32 columns of KnOneRow: out[0, 32) += the (a, b) row pair times xb, b zero when
// absent (odd K).
inline void OneRowMasked(const uint16_t* a_row, const uint16_t* b_row, float* out, __mmask32 cols, reclm::Bf16x32 xb,
                         __m512i lo_idx, __m512i hi_idx) {
  const __m512i a = _mm512_maskz_loadu_epi16(cols, a_row);
  const __m512i b = b_row ? _mm512_maskz_loadu_epi16(cols, b_row) : _mm512_setzero_si512();
  const __mmask16 ml = static_cast<__mmask16>(cols), mh = static_cast<__mmask16>(cols >> 16);
  __m512 lo = _mm512_maskz_loadu_ps(ml, out), hi = _mm512_maskz_loadu_ps(mh, out + 16);
  lo = reclm::Dp(lo, (reclm::Bf16x32)_mm512_permutex2var_epi16(a, lo_idx, b), xb);
  hi = reclm::Dp(hi, (reclm::Bf16x32)_mm512_permutex2var_epi16(a, hi_idx, b), xb);
  _mm512_mask_storeu_ps(out, ml, lo);
  _mm512_mask_storeu_ps(out + 16, mh, hi);
}

// One row (M = 1): the product is bound by streaming w, so it is split along K, not N: each unit is a contiguous
// block of ceil(K / kOneRowUnits) rows of w (one sequential stream, prefetched ahead), summed into its own f32
// partial row in an L1-resident buffer; the caller adds the partials in unit order. Splitting N instead gives each
// thread short strided segments of every row, and the prefetchers fall behind: measured on AMD Zen 4 (2 cores),
// the 30 layers' 212 MB of SmolLM2 products streamed at 13-14 GB/s split over N, 20 GB/s split over K with the
// prefetch, against about 22 GB/s for a plain two-thread read. The unit count is fixed (not the thread count), so
// the result does not depend on how many threads run; its order along K differs from XLA's (f32 rounding).
constexpr int64_t kOneRowUnits = 4;
constexpr int64_t kPrefetchBytes = 4096;  // how far ahead of the loads each stream is prefetched

void KnOneRow(const void* ctx, int64_t begin, int64_t end) {
  const Dot& d = *static_cast<const Dot*>(ctx);
  const __m512i lo_idx = reclm::PairsLo(), hi_idx = reclm::PairsHi();
  const int64_t K = d.k, N = d.n;
  for (int64_t u = begin; u < end; ++u) {
    float* out = d.partial + u * N;
    for (int64_t c = 0; c < N; ++c) out[c] = 0.0f;
    const int64_t k0 = u * d.kchunk, k1 = std::min(K, k0 + d.kchunk);  // k0 even: kchunk is
    int64_t k = k0;
    for (; k + 1 < k1; k += 2) {
      int32_t pair;
      __builtin_memcpy(&pair, d.x + k, sizeof(pair));
      const reclm::Bf16x32 xb = (reclm::Bf16x32)_mm512_set1_epi32(pair);
      const uint16_t* r0 = d.w + k * N;
      const uint16_t* r1 = r0 + N;
      int64_t c = 0;
      for (; c + 32 <= N; c += 32) {
        _mm_prefetch(reinterpret_cast<const char*>(r0 + c) + kPrefetchBytes, _MM_HINT_T0);
        _mm_prefetch(reinterpret_cast<const char*>(r1 + c) + kPrefetchBytes, _MM_HINT_T0);
        const __m512i a = _mm512_loadu_si512(r0 + c), b = _mm512_loadu_si512(r1 + c);
        __m512 lo = _mm512_loadu_ps(out + c), hi = _mm512_loadu_ps(out + c + 16);
        lo = reclm::Dp(lo, (reclm::Bf16x32)_mm512_permutex2var_epi16(a, lo_idx, b), xb);
        hi = reclm::Dp(hi, (reclm::Bf16x32)_mm512_permutex2var_epi16(a, hi_idx, b), xb);
        _mm512_storeu_ps(out + c, lo);
        _mm512_storeu_ps(out + c + 16, hi);
      }
      if (c < N) OneRowMasked(r0 + c, r1 + c, out + c, Cols(N - c), xb, lo_idx, hi_idx);
    }
    if (k < k1) {  // odd K: the last row pairs with zeros
      const reclm::Bf16x32 xb = (reclm::Bf16x32)_mm512_set1_epi32(static_cast<int32_t>(d.x[k]));
      const uint16_t* r0 = d.w + k * N;
      for (int64_t c = 0; c < N; c += 32) OneRowMasked(r0 + c, nullptr, out + c, Cols(N - c), xb, lo_idx, hi_idx);
    }
  }
}

// out[0, N) = the sum of `units` partial rows of N floats, in unit order.
void SumPartials(const float* partial, int64_t units, int64_t n, float* out) {
  int64_t c = 0;
  for (; c + 16 <= n; c += 16) {
    __m512 s = _mm512_loadu_ps(partial + c);
    for (int64_t u = 1; u < units; ++u) s = _mm512_add_ps(s, _mm512_loadu_ps(partial + u * n + c));
    _mm512_storeu_ps(out + c, s);
  }
  for (; c < n; ++c) {
    float s = partial[c];
    for (int64_t u = 1; u < units; ++u) s += partial[u * n + c];
    out[c] = s;
  }
}

void KnStrips(const void* ctx, int64_t begin, int64_t end) {
  const Dot& d = *static_cast<const Dot*>(ctx);
  for (int64_t s = begin; s < end; ++s) {
    const int64_t col = s * 64;
    if (col + 64 <= d.n) {
      KnRowBlocks<true>(d, col, ~__mmask32(0), ~__mmask32(0));
    } else {
      KnRowBlocks<false>(d, col, Cols(d.n - col), Cols(d.n - col - 32));
    }
  }
}

// ---------------------------------------------------------------------------------------------------------
// x @ w^T with w [N, K]: blocks of 4 rows of w (4 outputs per row of x), 32 K-values per vdpbf16ps, the 16
// partial sums of each output reduced once at the end. Not bit-identical to XLA (another summation order),
// within f32 rounding of it.

constexpr int kNkRows = 4;  // rows of x per block
constexpr int kNkCols = 4;  // rows of w per block

template <int MB>
inline void NkBlock(const Dot& d, int64_t n0, int cols, int64_t m0) {
  const int64_t K = d.k, N = d.n;
  __m512 acc[MB][kNkCols];
  for (int i = 0; i < MB; ++i)
    for (int j = 0; j < kNkCols; ++j) acc[i][j] = _mm512_setzero_ps();
  // Rows of w beyond N (the last block) read row N - 1 again; their sums are never stored.
  const uint16_t* wr[kNkCols];
  for (int j = 0; j < kNkCols; ++j) wr[j] = d.w + std::min<int64_t>(n0 + j, N - 1) * K;
  const uint16_t* xr = d.x + m0 * K;
  int64_t k = 0;
  for (; k + 32 <= K; k += 32) {  // plain loads: masked ones halved the rate on AMD Zen 4
    reclm::Bf16x32 wv[kNkCols];
    for (int j = 0; j < kNkCols; ++j) {
      // A row or two of x is bound by streaming w (a tied LM head at batch 1): keep the prefetchers ahead.
      if constexpr (MB <= 2) _mm_prefetch(reinterpret_cast<const char*>(wr[j] + k) + kPrefetchBytes, _MM_HINT_T0);
      wv[j] = (reclm::Bf16x32)_mm512_loadu_si512(wr[j] + k);
    }
    for (int i = 0; i < MB; ++i) {
      const reclm::Bf16x32 xv = (reclm::Bf16x32)_mm512_loadu_si512(xr + i * K + k);
      for (int j = 0; j < kNkCols; ++j) acc[i][j] = reclm::Dp(acc[i][j], wv[j], xv);
    }
  }
  if (k < K) {
    const __mmask32 mask = static_cast<__mmask32>((uint64_t(1) << (K - k)) - 1);
    reclm::Bf16x32 wv[kNkCols];
    for (int j = 0; j < kNkCols; ++j) wv[j] = (reclm::Bf16x32)_mm512_maskz_loadu_epi16(mask, wr[j] + k);
    for (int i = 0; i < MB; ++i) {
      const reclm::Bf16x32 xv = (reclm::Bf16x32)_mm512_maskz_loadu_epi16(mask, xr + i * K + k);
      for (int j = 0; j < kNkCols; ++j) acc[i][j] = reclm::Dp(acc[i][j], wv[j], xv);
    }
  }
  for (int i = 0; i < MB; ++i) {
    const __m128 s = Sum4(acc[i][0], acc[i][1], acc[i][2], acc[i][3]);
    float* o = d.out + (m0 + i) * N + n0;
    if (cols == kNkCols) {
      _mm_storeu_ps(o, s);
    } else {
      alignas(16) float tmp[4];
      _mm_store_ps(tmp, s);
      for (int j = 0; j < cols; ++j) o[j] = tmp[j];
    }
  }
}

void NkBlocks(const void* ctx, int64_t begin, int64_t end) {
  const Dot& d = *static_cast<const Dot*>(ctx);
  for (int64_t b = begin; b < end; ++b) {
    const int64_t n0 = b * kNkCols;
    const int cols = static_cast<int>(std::min<int64_t>(kNkCols, d.n - n0));
    int64_t m0 = 0;
    for (; m0 + kNkRows <= d.m; m0 += kNkRows) NkBlock<kNkRows>(d, n0, cols, m0);
    switch (d.m - m0) {
      case 3: NkBlock<3>(d, n0, cols, m0); break;
      case 2: NkBlock<2>(d, n0, cols, m0); break;
      case 1: NkBlock<1>(d, n0, cols, m0); break;
      default: break;
    }
  }
}

// ---------------------------------------------------------------------------------------------------------

ffi::Error DotKnImpl(ffi::Buffer<ffi::BF16> x, ffi::Buffer<ffi::BF16> w, ffi::ResultBuffer<ffi::F32> out) {
  const auto xd = x.dimensions(), wd = w.dimensions();
  if (xd.size() != 2 || wd.size() != 2 || xd[1] != wd[0]) return ffi::Error::InvalidArgument("dot_kn: shapes");
  const Dot d{reinterpret_cast<const uint16_t*>(x.untyped_data()), reinterpret_cast<const uint16_t*>(w.untyped_data()),
              out->typed_data(), xd[0], xd[1], wd[1]};
  if (!d.m || !d.n) return ffi::Error::Success();
  if (d.m == 1 && d.k > 0) {
    // The partials live with the calling thread (XLA may run two products at once from two threads).
    thread_local std::vector<float> partial;
    const int64_t kchunk = ((d.k + kOneRowUnits - 1) / kOneRowUnits + 1) & ~int64_t(1);
    const int64_t units = (d.k + kchunk - 1) / kchunk;
    if (static_cast<int64_t>(partial.size()) < units * d.n) partial.resize(units * d.n);
    Dot one = d;
    one.partial = partial.data();
    one.kchunk = kchunk;
    Pool::Get().Run(KnOneRow, &one, units);
    SumPartials(one.partial, units, d.n, d.out);
  } else {
    Pool::Get().Run(KnStrips, &d, (d.n + 63) / 64);
  }
  return ffi::Error::Success();
}

ffi::Error DotNkImpl(ffi::Buffer<ffi::BF16> x, ffi::Buffer<ffi::BF16> w, ffi::ResultBuffer<ffi::F32> out) {
  const auto xd = x.dimensions(), wd = w.dimensions();
  if (xd.size() != 2 || wd.size() != 2 || xd[1] != wd[1]) return ffi::Error::InvalidArgument("dot_nk: shapes");
  const Dot d{reinterpret_cast<const uint16_t*>(x.untyped_data()), reinterpret_cast<const uint16_t*>(w.untyped_data()),
              out->typed_data(), xd[0], xd[1], wd[0]};
  if (d.m && d.n) Pool::Get().Run(NkBlocks, &d, (d.n + kNkCols - 1) / kNkCols);
  return ffi::Error::Success();
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(reclm_dot_kn, DotKnImpl,
                              ffi::Ffi::Bind().Arg<ffi::Buffer<ffi::BF16>>().Arg<ffi::Buffer<ffi::BF16>>().Ret<ffi::Buffer<ffi::F32>>());
XLA_FFI_DEFINE_HANDLER_SYMBOL(reclm_dot_nk, DotNkImpl,
                              ffi::Ffi::Bind().Arg<ffi::Buffer<ffi::BF16>>().Arg<ffi::Buffer<ffi::BF16>>().Ret<ffi::Buffer<ffi::F32>>());

extern "C" void reclm_set_threads(int n) { Pool::Get().SetThreads(n); }
extern "C" int reclm_threads() { return Pool::Get().threads(); }
