// Few-row bf16 x bf16 -> f32 products against a weight matrix packed for decoding (an XLA FFI custom call).
//
//   reclm_dot_packed:  out[M, N] = x[M, K] @ w[K, N], w given packed as wp[S, K2, 64, 2] with
//                      wp[s, j, c, t] = w[2j + t, 64s + c] (zero past K and N; S = ceil(N / 64), K2 = ceil(K / 2))
//
// Why: bf16_dot.cc's strip kernel reads w [K, N] as 64-column strips, 128 bytes from each of K rows a row
// apart; at a few rows per product that strided stream, not the arithmetic, bounds it (measured on AMD Zen 4,
// 2 cores, the 30 layers of SmolLM2: 18 ms per step at 16 rows, 15 ms at 4, where reading the 212 MB takes
// about 10). Packed, each strip is one contiguous block, already in the (k, k+1) pairs vdpbf16ps multiplies, so
// the permutes go too: 14-15 ms at 16 rows, 9-10 ms at 1 to 8. The sampler packs each kernel once per call,
// outside its decoding loop (models/linear.py, models/sampler.py).
//
// The sums are the strip kernel's: the same vdpbf16ps pairs in the same order along K, so the result has the
// strip kernel's bits (the tests emulate the order), at every row count, one row included.
#include "bf16_ops.h"
#include "pool.h"
#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

using reclm::Pool;

struct Packed {
  const uint16_t* x;   // [M, K]
  const uint16_t* wp;  // [S, K2, 64, 2]
  float* out;          // [M, N]
  int64_t m, k, n, k2;
  const float* xf = nullptr;  // without AVX512-BF16: x widened to f32, [M, 2 * K2] (a zero after an odd K)
};

constexpr int kRowsPerBlock = reclm::kMaxRowBlock;  // bf16_ops.h: 6 rows with AVX512-BF16, 4 without

// Rows [m0, m0 + MB) of strip `s` into out: acc[i][j] lane l is out(m0 + i, 64 s + 16 j + l), masked past N.
template <int MB>
inline void StoreRows(const Packed& d, const __m512 (&acc)[MB][4], int64_t s, int64_t m0) {
  const int64_t N = d.n, col = s * 64, width = std::min<int64_t>(64, N - col);
  for (int i = 0; i < MB; ++i) {
    float* o = d.out + (m0 + i) * N + col;
    for (int j = 0; j < 4; ++j) {
      const int64_t left = width - 16 * j;
      if (left >= 16) {
        _mm512_storeu_ps(o + 16 * j, acc[i][j]);
      } else if (left > 0) {
        _mm512_mask_storeu_ps(o + 16 * j, static_cast<__mmask16>((1u << left) - 1), acc[i][j]);
      }
    }
  }
}

// Rows [m0, m0 + MB) of strip `s`: acc[i][j] lane l holds out(m0 + i, 64 s + 16 j + l).
template <int MB>
inline void PackedBlock(const Packed& d, int64_t s, int64_t m0) {
  const int64_t K = d.k;
  const uint16_t* strip = d.wp + s * d.k2 * 128;
  const uint16_t* x = d.x + m0 * K;
  __m512 acc[MB][4];
  for (int i = 0; i < MB; ++i)
    for (int j = 0; j < 4; ++j) acc[i][j] = _mm512_setzero_ps();
  for (int64_t j = 0; j < d.k2; ++j) {
    const uint16_t* p = strip + j * 128;
    const reclm::Bf16x32 v0 = (reclm::Bf16x32)_mm512_loadu_si512(p), v1 = (reclm::Bf16x32)_mm512_loadu_si512(p + 32),
                   v2 = (reclm::Bf16x32)_mm512_loadu_si512(p + 64), v3 = (reclm::Bf16x32)_mm512_loadu_si512(p + 96);
    const int64_t k = 2 * j;
    for (int i = 0; i < MB; ++i) {
      int32_t pair;
      if (k + 1 < K) {
        __builtin_memcpy(&pair, x + i * K + k, sizeof(pair));
      } else {  // odd K: the last x value pairs with zero, as its packed row does
        pair = static_cast<int32_t>(x[i * K + k]);
      }
      const reclm::Bf16x32 xb = (reclm::Bf16x32)_mm512_set1_epi32(pair);
      acc[i][0] = reclm::Dp(acc[i][0], v0, xb);
      acc[i][1] = reclm::Dp(acc[i][1], v1, xb);
      acc[i][2] = reclm::Dp(acc[i][2], v2, xb);
      acc[i][3] = reclm::Dp(acc[i][3], v3, xb);
    }
  }
  StoreRows<MB>(d, acc, s, m0);
}

// Without AVX512-BF16 (bf16_ops.h): the same sums from x widened to f32 once per product, so each row's values
// are broadcast straight from memory into the FMAs, and each weight vector is widened once per row block: 2 FMAs
// per pair and row plus 2 widenings per pair and block, where Dp would also widen every broadcast.
template <int MB>
inline void PackedBlockWide(const Packed& d, int64_t s, int64_t m0) {
  const int64_t kp = 2 * d.k2;
  const uint16_t* strip = d.wp + s * d.k2 * 128;
  const float* x = d.xf + m0 * kp;
  __m512 acc[MB][4];
  for (int i = 0; i < MB; ++i)
    for (int j = 0; j < 4; ++j) acc[i][j] = _mm512_setzero_ps();
  const __m512i high = _mm512_set1_epi32(static_cast<int>(0xFFFF0000u));
  for (int64_t j = 0; j < d.k2; ++j) {
    const uint16_t* p = strip + j * 128;
    __m512 hi[4], lo[4];
    for (int q = 0; q < 4; ++q) {
      const __m512i v = _mm512_loadu_si512(p + 32 * q);
      hi[q] = _mm512_castsi512_ps(_mm512_and_si512(v, high));
      lo[q] = _mm512_castsi512_ps(_mm512_slli_epi32(v, 16));
    }
    for (int i = 0; i < MB; ++i) {
      const __m512 xo = _mm512_set1_ps(x[i * kp + 2 * j + 1]), xe = _mm512_set1_ps(x[i * kp + 2 * j]);
      for (int q = 0; q < 4; ++q) acc[i][q] = _mm512_fmadd_ps(hi[q], xo, acc[i][q]);  // odd first, as Dp
      for (int q = 0; q < 4; ++q) acc[i][q] = _mm512_fmadd_ps(lo[q], xe, acc[i][q]);
    }
  }
  StoreRows<MB>(d, acc, s, m0);
}

template <int MB>
inline void Block(const Packed& d, int64_t s, int64_t m0) {
  if constexpr (reclm::kNativeBf16) {
    PackedBlock<MB>(d, s, m0);
  } else {
    PackedBlockWide<MB>(d, s, m0);
  }
}

void PackedStrips(const void* ctx, int64_t begin, int64_t end) {
  const Packed& d = *static_cast<const Packed*>(ctx);
  // Row blocks of equal size (16 rows -> 6 + 5 + 5); each block re-reads the strip, from cache after the first.
  const int64_t blocks = (d.m + kRowsPerBlock - 1) / kRowsPerBlock;
  for (int64_t s = begin; s < end; ++s) {
    for (int64_t b = 0; b < blocks; ++b) {
      const int64_t m0 = d.m * b / blocks, rows = d.m * (b + 1) / blocks - m0;
      switch (rows) {
        case 6: Block<6>(d, s, m0); break;
        case 5: Block<5>(d, s, m0); break;
        case 4: Block<4>(d, s, m0); break;
        case 3: Block<3>(d, s, m0); break;
        case 2: Block<2>(d, s, m0); break;
        default: Block<1>(d, s, m0); break;
      }
    }
  }
}

ffi::Error DotPackedImpl(ffi::Buffer<ffi::BF16> x, ffi::Buffer<ffi::BF16> wp, ffi::ResultBuffer<ffi::F32> out) {
  const auto xd = x.dimensions(), wd = wp.dimensions(), od = out->dimensions();
  if (xd.size() != 2 || wd.size() != 4 || od.size() != 2 || wd[2] != 64 || wd[3] != 2 || od[0] != xd[0] ||
      wd[1] != (xd[1] + 1) / 2 || wd[0] != (od[1] + 63) / 64)
    return ffi::Error::InvalidArgument("dot_packed: shapes");
  Packed d{reinterpret_cast<const uint16_t*>(x.untyped_data()),
           reinterpret_cast<const uint16_t*>(wp.untyped_data()), out->typed_data(), xd[0], xd[1], od[1], wd[1]};
  if (!d.m || !d.n) return ffi::Error::Success();
  if constexpr (!reclm::kNativeBf16) {
    // Lives with the calling thread (XLA may run two products at once from two threads); M x K is small.
    thread_local std::vector<float> xf;
    const int64_t kp = 2 * d.k2;
    xf.assign(d.m * kp, 0.0f);
    for (int64_t i = 0; i < d.m; ++i)
      for (int64_t k = 0; k < d.k; ++k) {
        const uint32_t bits = static_cast<uint32_t>(d.x[i * d.k + k]) << 16;
        __builtin_memcpy(&xf[i * kp + k], &bits, sizeof(bits));
      }
    d.xf = xf.data();
  }
  Pool::Get().Run(PackedStrips, &d, wd[0]);
  return ffi::Error::Success();
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(reclm_dot_packed, DotPackedImpl,
                              ffi::Ffi::Bind().Arg<ffi::Buffer<ffi::BF16>>().Arg<ffi::Buffer<ffi::BF16>>().Ret<ffi::Buffer<ffi::F32>>());
