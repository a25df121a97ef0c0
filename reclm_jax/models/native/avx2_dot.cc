// The few-row bf16 x bf16 -> f32 products of bf16_dot.cc and packed_dot.cc for CPUs with AVX2 and FMA only
// (avx2_ops.h), exporting the same three XLA FFI targets:
//
//   reclm_dot_kn:      out[M, N] = x[M, K] @ w[K, N]
//   reclm_dot_nk:      out[M, N] = x[M, K] @ w[N, K]^T   (a tied LM head)
//   reclm_dot_packed:  out[M, N] = x[M, K] @ w[K, N], w packed as wp[S, K2, 64, 2] (see packed_dot.cc)
//
// Why: on these CPUs XLA:CPU has no fast bf16 product either, and its kernel leaves the second core idle at a few
// rows. x is widened to f32 once per product; each weight value is widened where it is loaded and multiplied
// with FMAs, eight columns per register. The (k, k+1) terms of each output are added high element first, along
// K in order, as vdpbf16ps adds them: with two or more rows the kn and packed products have the AVX-512
// builds' bits (the tests emulate the order), one row (split along K, as bf16_dot.cc's KnOneRow) and the
// transposed product are within f32 rounding of it.
#include <algorithm>
#include <vector>

#include "avx2_ops.h"
#include "pool.h"
#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

using reclm::Pool;
using namespace reclm::avx2;

constexpr int64_t kPrefetchBytes = 4096;  // how far ahead of the loads a streamed row is prefetched

// x [M, K] bf16 -> f32 with x(i, j) at [i * row + j * col] of a zeroed buffer of `size` floats, kept per
// calling thread (XLA may run two products at once from two threads); M x K is small.
const float* Widen(const uint16_t* x, int64_t m, int64_t k, int64_t row, int64_t col, int64_t size) {
  thread_local std::vector<float> xf;
  xf.assign(size, 0.0f);
  for (int64_t i = 0; i < m; ++i)
    for (int64_t j = 0; j < k; ++j) xf[i * row + j * col] = Bf16ToF32(x[i * k + j]);
  return xf.data();
}

// x [M, K] -> f32 [M, K] (nk's rows, loaded as vectors along K).
const float* WidenRows(const uint16_t* x, int64_t m, int64_t k) { return Widen(x, m, k, k, 1, m * k); }

// x [M, K] -> f32 [kp, M], the transpose (kp >= K, zeros after K): a pair's 2 MB broadcasts of a row block then
// come from two base addresses at constant offsets (row by row, they took a general register each, and the
// spilled registers cost more than the broadcasts).
const float* WidenColumns(const uint16_t* x, int64_t m, int64_t k, int64_t kp) { return Widen(x, m, k, 1, m, kp * m); }

// 8 bf16 values from p, of which only the first n (0..8) are read (zeros after), as f32.
inline __m256 Widen8Tail(const uint16_t* p, int64_t n) {
  alignas(16) uint16_t tmp[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  for (int64_t i = 0; i < n; ++i) tmp[i] = p[i];
  return Widen8(tmp);
}

// One (k, k+1) pair of G 8-column weight registers (hi: the k+1 terms, lo: the k terms) times MB rows' x values
// (x(i, k + 1) at odd[i], x(i, k) at even[i]) into acc, the odd term first as vdpbf16ps. Up to two rows the
// broadcasts are hoisted and the weights widened one register at a time; from three rows on, each row's two
// broadcasts are made once and the G widened registers kept (GCC hoisted the 2 MB broadcasts of the other order
// into registers, and the accumulators went to the stack: a store and a load in every FMA chain).
template <int MB, int G, typename W>
inline void PairStep(__m256 (&acc)[MB][G], const W& weights, const float* odd, const float* even) {
  if constexpr (MB <= 2) {
    __m256 xo[MB], xe[MB];
    for (int i = 0; i < MB; ++i) {
      xo[i] = _mm256_broadcast_ss(odd + i);
      xe[i] = _mm256_broadcast_ss(even + i);
    }
    for (int q = 0; q < G; ++q) {
      __m256 hi, lo;
      weights(q, hi, lo);
      for (int i = 0; i < MB; ++i) {
        acc[i][q] = _mm256_fmadd_ps(hi, xo[i], acc[i][q]);
        acc[i][q] = _mm256_fmadd_ps(lo, xe[i], acc[i][q]);
      }
    }
  } else {
    __m256 hi[G], lo[G];
    for (int q = 0; q < G; ++q) weights(q, hi[q], lo[q]);
    for (int i = 0; i < MB; ++i) {
      const __m256 xo = _mm256_broadcast_ss(odd + i), xe = _mm256_broadcast_ss(even + i);
      for (int q = 0; q < G; ++q) {
        acc[i][q] = _mm256_fmadd_ps(hi[q], xo, acc[i][q]);
        acc[i][q] = _mm256_fmadd_ps(lo[q], xe, acc[i][q]);
      }
    }
  }
}

// acc[i][q] (8 lanes each) -> out(m0 + i, col + 8 q + l), masked past N.
template <int MB, int G>
inline void Store(float* out, int64_t n, int64_t col, int64_t m0, const __m256 (&acc)[MB][G]) {
  for (int i = 0; i < MB; ++i) {
    float* o = out + (m0 + i) * n + col;
    for (int q = 0; q < G; ++q) {
      const int64_t left = n - col - 8 * q;
      if (left >= 8) {
        _mm256_storeu_ps(o + 8 * q, acc[i][q]);
      } else if (left > 0) {
        _mm256_maskstore_ps(o + 8 * q, LaneMask(left), acc[i][q]);
      }
    }
  }
}

// Rows per block, and 8-column registers per row of a block (G). Each accumulator is one chain of dependent FMAs
// (the sums keep XLA's order), so a block wants about 10 of them (FMA latency x 2 pipes) to keep both FMA pipes
// busy; with PairStep's registers (2 G widened weights and two broadcasts from three rows on, 2 MB broadcasts
// and one widened register below) they must fit AVX2's 16: 5 rows x 2 registers at most. (Blocks of up to 12 rows
// of one register each were no faster on a 2-core Zen 2 at 16 rows; that machine was too noisy to rank finer.)
constexpr int kMaxRows = 5;
template <int MB>
constexpr int Cols8() { return MB == 1 ? 8 : MB == 2 ? 4 : 2; }

// Calls f.template operator()<G'>(q0) over a 64-column strip's 8 registers: passes of G, the last one shorter.
template <int G, typename F>
inline void Passes(const F& f) {
  constexpr int kTail = 8 % G;
  for (int q0 = 0; q0 + G <= 8; q0 += G) f.template operator()<G>(q0);
  if constexpr (kTail > 0) f.template operator()<kTail>(8 - kTail);
}

// Splits m rows into blocks of at most kMaxRows of equal size and calls f.template operator()<MB>(m0).
template <typename F>
inline void RowBlocks(int64_t m, const F& f) {
  const int64_t blocks = (m + kMaxRows - 1) / kMaxRows;
  for (int64_t b = 0; b < blocks; ++b) {
    const int64_t m0 = m * b / blocks, rows = m * (b + 1) / blocks - m0;
    switch (rows) {
      case 5: f.template operator()<5>(m0); break;
      case 4: f.template operator()<4>(m0); break;
      case 3: f.template operator()<3>(m0); break;
      case 2: f.template operator()<2>(m0); break;
      default: f.template operator()<1>(m0); break;
    }
  }
}

// RowBlocks' functor for the 64-column strip s: each row block in Passes of Cols8 registers, by Kernel::Run<MB, G>
// (columns past N skipped).
template <typename Kernel>
struct StripRows {
  const typename Kernel::Data& d;
  int64_t s;
  template <int MB>
  void operator()(int64_t m0) const {
    Passes<Cols8<MB>()>(Pass<MB>{*this, m0});
  }
  template <int MB>
  struct Pass {
    const StripRows& r;
    int64_t m0;
    template <int G>
    void operator()(int q0) const {
      if (r.s * 64 + 8 * q0 < r.d.n) Kernel::template Run<MB, G>(r.d, r.s, m0, q0);
    }
  };
};

// ---------------------------------------------------------------------------------------------------------
// Packed: wp[s, j, c, t] = w[2j + t, 64 s + c]; 16 uint16 of a strip row are 8 columns' (k, k+1) pairs.

struct Packed {
  const uint16_t* wp;
  const float* xt;  // [2 * K2, M]
  float* out;
  int64_t m, n, k2;
};

template <int MB, int G>
inline void PackedPass(const Packed& d, int64_t s, int64_t m0, int q0) {
  const int64_t M = d.m;
  const uint16_t* strip = d.wp + s * d.k2 * 128 + 16 * q0;
  __m256 acc[MB][G];
  for (int i = 0; i < MB; ++i)
    for (int q = 0; q < G; ++q) acc[i][q] = _mm256_setzero_ps();
  for (int64_t j = 0; j < d.k2; ++j) {
    const uint16_t* p = strip + j * 128;
    if constexpr (G == 8) _mm_prefetch(reinterpret_cast<const char*>(p) + kPrefetchBytes, _MM_HINT_T0);
    const float* even = d.xt + 2 * j * M + m0;
    PairStep<MB, G>(acc, [p](int q, __m256& hi, __m256& lo) {
      const __m256i v = Load256(p + 16 * q);
      hi = HighF32(v);
      lo = LowF32(v);
    }, even + M, even);
  }
  Store<MB, G>(d.out, d.n, s * 64 + 8 * q0, m0, acc);
}

struct PackedKernel {  // StripRows' kernel
  using Data = Packed;
  template <int MB, int G>
  static void Run(const Packed& d, int64_t s, int64_t m0, int q0) { PackedPass<MB, G>(d, s, m0, q0); }
};

void PackedStrips(const void* ctx, int64_t begin, int64_t end) {
  const Packed& d = *static_cast<const Packed*>(ctx);
  for (int64_t s = begin; s < end; ++s) RowBlocks(d.m, StripRows<PackedKernel>{d, s});
}

ffi::Error DotPackedImpl(ffi::Buffer<ffi::BF16> x, ffi::Buffer<ffi::BF16> wp, ffi::ResultBuffer<ffi::F32> out) {
  const auto xd = x.dimensions(), wd = wp.dimensions(), od = out->dimensions();
  if (xd.size() != 2 || wd.size() != 4 || od.size() != 2 || wd[2] != 64 || wd[3] != 2 || od[0] != xd[0] ||
      wd[1] != (xd[1] + 1) / 2 || wd[0] != (od[1] + 63) / 64)
    return ffi::Error::InvalidArgument("dot_packed: shapes");
  const int64_t m = xd[0], k = xd[1], n = od[1], k2 = wd[1];
  if (!m || !n) return ffi::Error::Success();
  const Packed d{reinterpret_cast<const uint16_t*>(wp.untyped_data()),
                 WidenColumns(reinterpret_cast<const uint16_t*>(x.untyped_data()), m, k, 2 * k2), out->typed_data(), m,
                 n, k2};
  Pool::Get().Run(PackedStrips, &d, wd[0]);
  return ffi::Error::Success();
}

// ---------------------------------------------------------------------------------------------------------
// kn: w [K, N] row-major; rows k + 1 and k of a G x 8-column slice widened where they are loaded.

struct Dot {
  const uint16_t* w;
  const float* xf;  // kn: [K, M] (WidenColumns; one row: [K]); nk: [M, K] (WidenRows)
  float* out;
  int64_t m, k, n;
  float* partial = nullptr;  // one-row products: units partial rows of N floats
  int64_t kchunk = 0;        // one-row products: rows of w per unit (even)
};

template <int MB, int G>
inline void KnPass(const Dot& d, int64_t col, int64_t m0) {
  const int64_t K = d.k, N = d.n, M = d.m, width = N - col;
  const float* x = d.xf + m0;  // x(m0 + i, k) at x[k * M + i]
  __m256 acc[MB][G];
  for (int i = 0; i < MB; ++i)
    for (int q = 0; q < G; ++q) acc[i][q] = _mm256_setzero_ps();
  auto row = [&](const uint16_t* r, int q) {
    return width >= 8 * (q + 1) ? Widen8(r + 8 * q) : Widen8Tail(r + 8 * q, std::max<int64_t>(0, width - 8 * q));
  };
  int64_t k = 0;
  for (; k + 1 < K; k += 2) {
    const uint16_t* r0 = d.w + k * N + col;
    PairStep<MB, G>(acc, [&](int q, __m256& hi, __m256& lo) {
      hi = row(r0 + N, q);
      lo = row(r0, q);
    }, x + (k + 1) * M, x + k * M);
  }
  if (k < K) {  // odd K: the last row (its pair's high element is a zero, adding +0 first as the pair kernel)
    const uint16_t* r0 = d.w + k * N + col;
    for (int q = 0; q < G; ++q) {
      const __m256 lo = row(r0, q);
      for (int i = 0; i < MB; ++i) {
        acc[i][q] = _mm256_add_ps(acc[i][q], _mm256_setzero_ps());
        acc[i][q] = _mm256_fmadd_ps(lo, _mm256_broadcast_ss(x + k * M + i), acc[i][q]);
      }
    }
  }
  Store<MB, G>(d.out, N, col, m0, acc);
}

struct KnKernel {  // StripRows' kernel
  using Data = Dot;
  template <int MB, int G>
  static void Run(const Dot& d, int64_t s, int64_t m0, int q0) { KnPass<MB, G>(d, s * 64 + 8 * q0, m0); }
};

void KnStrips(const void* ctx, int64_t begin, int64_t end) {
  const Dot& d = *static_cast<const Dot*>(ctx);
  for (int64_t s = begin; s < end; ++s) RowBlocks(d.m, StripRows<KnKernel>{d, s});
}

// One row: split along K into a fixed number of units (bf16_dot.cc's KnOneRow: one sequential stream each,
// partial rows added in unit order, so the result does not depend on the thread count).
constexpr int64_t kOneRowUnits = 4;

void KnOneRow(const void* ctx, int64_t begin, int64_t end) {
  const Dot& d = *static_cast<const Dot*>(ctx);
  const int64_t K = d.k, N = d.n;
  for (int64_t u = begin; u < end; ++u) {
    float* out = d.partial + u * N;
    std::fill(out, out + N, 0.0f);
    const int64_t k0 = u * d.kchunk, k1 = std::min(K, k0 + d.kchunk);
    for (int64_t k = k0; k < k1; k += 2) {
      const bool pair = k + 1 < k1;
      const __m256 xo = _mm256_set1_ps(pair ? d.xf[k + 1] : 0.0f), xe = _mm256_set1_ps(d.xf[k]);
      const uint16_t* r0 = d.w + k * N;
      const uint16_t* r1 = pair ? r0 + N : nullptr;
      int64_t c = 0;
      for (; c + 8 <= N; c += 8) {
        if ((c & 31) == 0) {
          _mm_prefetch(reinterpret_cast<const char*>(r0 + c) + kPrefetchBytes, _MM_HINT_T0);
          if (r1) _mm_prefetch(reinterpret_cast<const char*>(r1 + c) + kPrefetchBytes, _MM_HINT_T0);
        }
        __m256 acc = _mm256_loadu_ps(out + c);
        if (r1) acc = _mm256_fmadd_ps(Widen8(r1 + c), xo, acc);
        _mm256_storeu_ps(out + c, _mm256_fmadd_ps(Widen8(r0 + c), xe, acc));
      }
      for (; c < N; ++c) {
        float acc = out[c];
        if (r1) acc = std::fma(Bf16ToF32(r1[c]), d.xf[k + 1], acc);
        out[c] = std::fma(Bf16ToF32(r0[c]), d.xf[k], acc);
      }
    }
  }
}

ffi::Error DotKnImpl(ffi::Buffer<ffi::BF16> x, ffi::Buffer<ffi::BF16> w, ffi::ResultBuffer<ffi::F32> out) {
  const auto xd = x.dimensions(), wd = w.dimensions();
  if (xd.size() != 2 || wd.size() != 2 || xd[1] != wd[0]) return ffi::Error::InvalidArgument("dot_kn: shapes");
  const int64_t m = xd[0], k = xd[1], n = wd[1];
  if (!m || !n) return ffi::Error::Success();
  Dot d{reinterpret_cast<const uint16_t*>(w.untyped_data()),
        WidenColumns(reinterpret_cast<const uint16_t*>(x.untyped_data()), m, k, k), out->typed_data(), m, k, n};
  if (m == 1 && k > 0) {
    thread_local std::vector<float> partial;
    const int64_t kchunk = ((k + kOneRowUnits - 1) / kOneRowUnits + 1) & ~int64_t(1);
    const int64_t units = (k + kchunk - 1) / kchunk;
    if (static_cast<int64_t>(partial.size()) < units * n) partial.resize(units * n);
    d.partial = partial.data();
    d.kchunk = kchunk;
    Pool::Get().Run(KnOneRow, &d, units);
    for (int64_t c = 0; c < n; ++c) {
      float s = d.partial[c];
      for (int64_t u = 1; u < units; ++u) s += d.partial[u * n + c];
      d.out[c] = s;
    }
  } else if (k == 0) {
    std::fill(d.out, d.out + m * n, 0.0f);
  } else {
    Pool::Get().Run(KnStrips, &d, (n + 63) / 64);
  }
  return ffi::Error::Success();
}

// ---------------------------------------------------------------------------------------------------------
// nk: x @ w^T with w [N, K]: blocks of 4 rows of w, 8 K-values per FMA, each output's 8 partial sums reduced
// once at the end (not XLA's order: within f32 rounding of it).

constexpr int kNkRows = 3;  // rows of x per block
constexpr int kNkCols = 4;  // rows of w per block

template <int MB>
inline void NkBlock(const Dot& d, int64_t n0, int cols, int64_t m0) {
  const int64_t K = d.k, N = d.n;
  __m256 acc[MB][kNkCols];
  for (int i = 0; i < MB; ++i)
    for (int j = 0; j < kNkCols; ++j) acc[i][j] = _mm256_setzero_ps();
  const uint16_t* wr[kNkCols];  // rows beyond N (the last block) read row N - 1 again, never stored
  for (int j = 0; j < kNkCols; ++j) wr[j] = d.w + std::min<int64_t>(n0 + j, N - 1) * K;
  const float* xr = d.xf + m0 * K;
  int64_t k = 0;
  for (; k + 8 <= K; k += 8) {
    __m256 wv[kNkCols];
    for (int j = 0; j < kNkCols; ++j) {
      if constexpr (MB <= 2) {
        if ((k & 31) == 0) _mm_prefetch(reinterpret_cast<const char*>(wr[j] + k) + kPrefetchBytes, _MM_HINT_T0);
      }
      wv[j] = Widen8(wr[j] + k);
    }
    for (int i = 0; i < MB; ++i) {
      const __m256 xv = _mm256_loadu_ps(xr + i * K + k);
      for (int j = 0; j < kNkCols; ++j) acc[i][j] = _mm256_fmadd_ps(wv[j], xv, acc[i][j]);
    }
  }
  if (k < K) {
    __m256 wv[kNkCols];
    for (int j = 0; j < kNkCols; ++j) wv[j] = Widen8Tail(wr[j] + k, K - k);
    for (int i = 0; i < MB; ++i) {
      const __m256 xv = _mm256_maskload_ps(xr + i * K + k, LaneMask(K - k));
      for (int j = 0; j < kNkCols; ++j) acc[i][j] = _mm256_fmadd_ps(wv[j], xv, acc[i][j]);
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
      case 2: NkBlock<2>(d, n0, cols, m0); break;
      case 1: NkBlock<1>(d, n0, cols, m0); break;
      default: break;
    }
  }
}

ffi::Error DotNkImpl(ffi::Buffer<ffi::BF16> x, ffi::Buffer<ffi::BF16> w, ffi::ResultBuffer<ffi::F32> out) {
  const auto xd = x.dimensions(), wd = w.dimensions();
  if (xd.size() != 2 || wd.size() != 2 || xd[1] != wd[1]) return ffi::Error::InvalidArgument("dot_nk: shapes");
  const int64_t m = xd[0], k = xd[1], n = wd[0];
  if (!m || !n) return ffi::Error::Success();
  const Dot d{reinterpret_cast<const uint16_t*>(w.untyped_data()),
              WidenRows(reinterpret_cast<const uint16_t*>(x.untyped_data()), m, k), out->typed_data(), m, k, n};
  Pool::Get().Run(NkBlocks, &d, (n + kNkCols - 1) / kNkCols);
  return ffi::Error::Success();
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(reclm_dot_kn, DotKnImpl,
                              ffi::Ffi::Bind().Arg<ffi::Buffer<ffi::BF16>>().Arg<ffi::Buffer<ffi::BF16>>().Ret<ffi::Buffer<ffi::F32>>());
XLA_FFI_DEFINE_HANDLER_SYMBOL(reclm_dot_nk, DotNkImpl,
                              ffi::Ffi::Bind().Arg<ffi::Buffer<ffi::BF16>>().Arg<ffi::Buffer<ffi::BF16>>().Ret<ffi::Buffer<ffi::F32>>());
XLA_FFI_DEFINE_HANDLER_SYMBOL(reclm_dot_packed, DotPackedImpl,
                              ffi::Ffi::Bind().Arg<ffi::Buffer<ffi::BF16>>().Arg<ffi::Buffer<ffi::BF16>>().Ret<ffi::Buffer<ffi::F32>>());

extern "C" void reclm_set_threads(int n) { Pool::Get().SetThreads(n); }
extern "C" int reclm_threads() { return Pool::Get().threads(); }
