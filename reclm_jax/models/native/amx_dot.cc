// Many-row bf16 x bf16 -> f32 products on Intel AMX tiles (Sapphire Rapids and later; an XLA FFI custom call).
//
//   reclm_amx_kn:      out[M, N] = x[M, K] @ w[K, N]
//   reclm_amx_nk:      out[M, N] = x[M, K] @ w[N, K]^T
//   reclm_amx_packed:  out[M, N] = x[M, K] @ w[K, N], w in native_kernels.pack_kernel's form
//                      wp[S, K2, 64, 2], wp[s, j, c, t] = w[2j + t, 64s + c] (zero past K and N)
//   reclm_amx_tn:      out[K, N] = a[M, K]^T @ b[M, N] (a weight gradient: both operands' rows contracted),
//                      with the attribute ones_row one more row out[K] = the column sums of b (a bias gradient)
//
// Why: prefill, training and evaluation multiply hundreds to thousands of rows by each weight matrix, where the
// products are bound by arithmetic. XLA:CPU forms them with vdpbf16ps at 150-420 GFLOP/s on this project's
// 2-core Sapphire Rapids machines, while one AMX tile product (TDPBF16PS: 16 x 16 outputs, 32 bf16 values deep)
// does 16 K MACs in ~16 cycles on each core. torch's oneDNN reaches 2.4 TFLOP/s there with it.
//
// How: the packed layout is exactly the tiles' "VNNI" layout of the right operand: 16 (k, k+1) pair rows of a
// strip are a B tile of 16 columns when read with a 256-byte stride. kn and nk products pack w into that layout
// first (once per call, split over the pool; K2 rounded up to whole tiles). A unit of work is a block of 32 rows
// by 32 columns: 2 x 2 accumulator tiles, 2 tiles of x and 2 of w, all eight tile registers, walking K 32 values
// at a time. x is read in place where its rows are whole tiles (K a multiple of 32, M of 32), else from a
// zero-padded copy; rows of w past K2 in the last tile come from a zero-padded copy too.
//
// Sums: each output is its K products summed in f32 in order along K (the tile's definition), within f32
// rounding of the pair order (vdpbf16ps adds the odd product of a pair first; denormals are flushed to zero).
// Not the same bits: the few-row decoding products stay on packed_dot.cc (native_kernels.MAX_ROWS).
//
// The kernel needs the OS's permission to use the tiles' state (Linux: arch_prctl ARCH_REQ_XCOMP_PERM, once per
// process): reclm_amx_ready() asks for it and says whether the tiles can run; Python checks it before routing a
// product here.
#include <sys/syscall.h>
#include <unistd.h>

#include <cstring>
#include <mutex>

#include "pool.h"
#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

using reclm::Pool;

constexpr long kArchReqXcompPerm = 0x1023;  // arch_prctl: request permission for an extended state component
constexpr long kXfeatureXtiledata = 18;     // the tile data state

struct TileConfig {  // the 64-byte operand of ldtilecfg (palette 1)
  uint8_t palette = 1, start_row = 0;
  uint8_t reserved[14] = {};
  uint16_t colsb[16] = {};
  uint8_t rows[16] = {};
};

// Every tile 16 rows of 64 bytes: C (0-3) 16 x 16 f32, A (4, 5) 16 rows x 32 bf16, B (6, 7) 16 pair rows x 16
// columns x 2 bf16.
inline void ConfigureTiles() {
  TileConfig cfg;
  for (int t = 0; t < 8; ++t) {
    cfg.rows[t] = 16;
    cfg.colsb[t] = 64;
  }
  _tile_loadconfig(&cfg);
}

struct Amx {
  const uint16_t* x;   // [rows of x, xstride]: at least Mp = ceil(M / 32) * 32 rows, zero past M and K
  int64_t xstride;     // elements per row of x (a multiple of 32)
  const uint16_t* wp;  // [S, K2, 64, 2]
  int64_t k2;          // pair rows per strip in wp
  int64_t ktiles;      // ceil(K2 / 16)
  const uint16_t* wtail = nullptr;  // where K2 % 16: [S, 16, 64, 2], the last tile's pair rows, zero-padded
  float* out;          // [M, N]
  int64_t m, n;
  int64_t col_blocks;  // ceil(N / 32)
};

// One 32 x 32 block of out: rows [32 rb, +32), columns [32 cb, +32) (two 16-column halves of one strip).
inline void Block(const Amx& d, int64_t rb, int64_t cb) {
  const int64_t s = cb / 2, c0 = (cb % 2) * 32;  // strip, first column inside it
  const uint16_t* x0 = d.x + rb * 32 * d.xstride;
  const uint16_t* x1 = x0 + 16 * d.xstride;
  const int64_t xbytes = d.xstride * 2;
  const uint16_t* strip = d.wp + s * d.k2 * 128 + c0 * 2;
  _tile_zero(0);
  _tile_zero(1);
  _tile_zero(2);
  _tile_zero(3);
  const int64_t whole = d.wtail ? d.ktiles - 1 : d.ktiles;
  for (int64_t kt = 0; kt < d.ktiles; ++kt) {
    // Each load just before the first product that needs it: the tiles have no renaming, so a load waits for
    // the products still reading its register (measured: 1.3x the rate of all four loads first).
    const uint16_t* b = kt < whole ? strip + kt * 16 * 128 : d.wtail + s * 16 * 128 + c0 * 2;
    _tile_loadd(4, x0 + kt * 32, xbytes);
    _tile_loadd(6, b, 256);
    _tile_dpbf16ps(0, 4, 6);
    _tile_loadd(7, b + 32, 256);
    _tile_dpbf16ps(1, 4, 7);
    _tile_loadd(5, x1 + kt * 32, xbytes);
    _tile_dpbf16ps(2, 5, 6);
    _tile_dpbf16ps(3, 5, 7);
  }
  const int64_t row0 = rb * 32, col0 = cb * 32;
  const int64_t rows = std::min<int64_t>(32, d.m - row0), cols = std::min<int64_t>(32, d.n - col0);
  if (rows == 32 && cols == 32) {  // straight into out
    float* o = d.out + row0 * d.n + col0;
    const int64_t obytes = d.n * 4;
    _tile_stored(0, o, obytes);
    _tile_stored(1, o + 16, obytes);
    _tile_stored(2, o + 16 * d.n, obytes);
    _tile_stored(3, o + 16 * d.n + 16, obytes);
    return;
  }
  alignas(64) float buf[32 * 32];
  _tile_stored(0, buf, 128);
  _tile_stored(1, buf + 16, 128);
  _tile_stored(2, buf + 16 * 32, 128);
  _tile_stored(3, buf + 16 * 32 + 16, 128);
  for (int64_t i = 0; i < rows; ++i) std::memcpy(d.out + (row0 + i) * d.n + col0, buf + i * 32, cols * 4);
}

// A unit is one row block against one group of `group` column blocks, units ordered group-major: a thread's
// consecutive units share the group's packed columns (8 blocks at K = 576: 576 x 256 bf16, 288 KB, held in L2),
// and each unit's 32 rows of x (36 KB) stay in L1 across the group's blocks. With one or two row blocks (a
// decoding step's rows) a group is one block, so the units still spread over the pool.
inline int64_t GroupBlocks(int64_t row_blocks) { return row_blocks >= 4 ? 8 : 1; }

void Blocks(const void* ctx, int64_t begin, int64_t end) {
  const Amx& d = *static_cast<const Amx*>(ctx);
  ConfigureTiles();  // per call: the tile state belongs to the thread, and another library may have set its own
  const int64_t row_blocks = (d.m + 31) / 32, group = GroupBlocks(row_blocks);
  for (int64_t u = begin; u < end; ++u) {
    const int64_t g = u / row_blocks, rb = u % row_blocks;
    const int64_t cb_end = std::min(d.col_blocks, (g + 1) * group);
    for (int64_t cb = g * group; cb < cb_end; ++cb) Block(d, rb, cb);
  }
  _tile_release();
}

// ---------------------------------------------------------------------------------------------------------
// Packing w into [S, K2p, 64, 2] (K2p = whole tiles, zero past K and N), one strip per unit.

struct Pack {
  const uint16_t* w;  // [K, N] (kn) or [N, K] (nk)
  uint16_t* wp;
  int64_t k, n, k2p;
  float* colsum = nullptr;  // kn only, where set: [N], the sums over K of w's columns, in f32 in row order
};

// 32 bf16 -> the f32 values of the low (first) and high 16.
inline __m512 Bf16Lo(__m512i v) {
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm512_castsi512_si256(v)), 16));
}
inline __m512 Bf16Hi(__m512i v) {
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm512_extracti64x4_epi64(v, 1)), 16));
}

void PackKn(const void* ctx, int64_t begin, int64_t end) {
  const Pack& p = *static_cast<const Pack*>(ctx);
  const __m512i lo_idx = reclm::PairsLo(), hi_idx = reclm::PairsHi();
  for (int64_t s = begin; s < end; ++s) {
    const int64_t col = s * 64, width = std::min<int64_t>(64, p.n - col);
    const __mmask32 m0 = width >= 32 ? ~__mmask32(0) : static_cast<__mmask32>((uint64_t(1) << width) - 1);
    const __mmask32 m1 = width >= 64 ? ~__mmask32(0)
                         : width <= 32 ? __mmask32(0)
                                       : static_cast<__mmask32>((uint64_t(1) << (width - 32)) - 1);
    uint16_t* dst = p.wp + s * p.k2p * 128;
    __m512 sum[4] = {_mm512_setzero_ps(), _mm512_setzero_ps(), _mm512_setzero_ps(), _mm512_setzero_ps()};
    for (int64_t j = 0; j < p.k2p; ++j, dst += 128) {
      const int64_t k = 2 * j;
      const __m512i z = _mm512_setzero_si512();
      const uint16_t* r0 = p.w + k * p.n + col;
      const __m512i a0 = k < p.k ? _mm512_maskz_loadu_epi16(m0, r0) : z;
      const __m512i a1 = k < p.k ? _mm512_maskz_loadu_epi16(m1, r0 + 32) : z;
      const __m512i b0 = k + 1 < p.k ? _mm512_maskz_loadu_epi16(m0, r0 + p.n) : z;
      const __m512i b1 = k + 1 < p.k ? _mm512_maskz_loadu_epi16(m1, r0 + p.n + 32) : z;
      if (p.colsum && k < p.k) {  // row k, then row k + 1 (zero past K)
        sum[0] = _mm512_add_ps(_mm512_add_ps(sum[0], Bf16Lo(a0)), Bf16Lo(b0));
        sum[1] = _mm512_add_ps(_mm512_add_ps(sum[1], Bf16Hi(a0)), Bf16Hi(b0));
        sum[2] = _mm512_add_ps(_mm512_add_ps(sum[2], Bf16Lo(a1)), Bf16Lo(b1));
        sum[3] = _mm512_add_ps(_mm512_add_ps(sum[3], Bf16Hi(a1)), Bf16Hi(b1));
      }
      _mm512_storeu_si512(dst, _mm512_permutex2var_epi16(a0, lo_idx, b0));
      _mm512_storeu_si512(dst + 32, _mm512_permutex2var_epi16(a0, hi_idx, b0));
      _mm512_storeu_si512(dst + 64, _mm512_permutex2var_epi16(a1, lo_idx, b1));
      _mm512_storeu_si512(dst + 96, _mm512_permutex2var_epi16(a1, hi_idx, b1));
    }
    if (p.colsum) {
      for (int q = 0; q < 4; ++q) {
        const int64_t c = q * 16, live = std::max<int64_t>(0, std::min<int64_t>(16, width - c));
        _mm512_mask_storeu_ps(p.colsum + col + c, static_cast<__mmask16>((1u << live) - 1), sum[q]);
      }
    }
  }
}

// nk: the (k, k+1) pair of column c is one 32-bit word of w's row c, so a packed row of 16 columns is a gather
// of 16 words a row of w apart.
void PackNk(const void* ctx, int64_t begin, int64_t end) {
  const Pack& p = *static_cast<const Pack*>(ctx);
  const int64_t k2 = p.k / 2;  // whole pairs in a row of w
  for (int64_t s = begin; s < end; ++s) {
    uint16_t* dst = p.wp + s * p.k2p * 128;
    std::memset(dst, 0, p.k2p * 128 * 2);
    for (int64_t q = 0; q < 4; ++q) {
      const int64_t c0 = s * 64 + q * 16;
      if (c0 >= p.n) break;
      const int64_t cols = std::min<int64_t>(16, p.n - c0);
      const __mmask16 live = static_cast<__mmask16>((1u << cols) - 1);
      const __m512i idx = _mm512_mullo_epi32(_mm512_set_epi32(15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0),
                                             _mm512_set1_epi32(static_cast<int>(p.k)));
      const uint16_t* base = p.w + c0 * p.k;
      for (int64_t j = 0; j < k2; ++j) {
        const __m512i v = _mm512_mask_i32gather_epi32(_mm512_setzero_si512(), live, idx, base + 2 * j, 2);
        _mm512_storeu_si512(dst + j * 128 + q * 32, v);
      }
      if (p.k % 2) {  // odd K: the last value of each row pairs with zero
        for (int64_t c = 0; c < cols; ++c) dst[k2 * 128 + (q * 16 + c) * 2] = base[c * p.k + p.k - 1];
      }
    }
  }
}

// ---------------------------------------------------------------------------------------------------------

bool RequestTiles() {
  static std::once_flag once;
  static bool ok = false;
  std::call_once(once, [] { ok = syscall(SYS_arch_prctl, kArchReqXcompPerm, kXfeatureXtiledata) == 0; });
  return ok;
}

// Runs the blocks of out = x @ (w packed as wp [S, k2, 64, 2]); x [M, K] bf16. `xstride` > 0: x is already in
// the tiles' form, rows padded with zeros to a multiple of 32 and `xstride` (a multiple of 32, at least K
// rounded up to 32) elements per row.
ffi::Error Run(const uint16_t* x, int64_t m, int64_t k, const uint16_t* wp, int64_t k2, int64_t n, float* out,
               int64_t xstride = 0) {
  if (!RequestTiles()) return ffi::Error::Internal("amx: the OS refused the tile state (arch_prctl)");
  if (!m || !n) return ffi::Error::Success();
  Amx d{};
  d.ktiles = (k2 + 15) / 16;
  d.k2 = k2;
  d.wp = wp;
  d.out = out;
  d.m = m;
  d.n = n;
  d.col_blocks = (n + 31) / 32;
  const int64_t mp = (m + 31) / 32 * 32, kp = d.ktiles * 32;
  // Scratch lives with the calling thread (XLA may run two products at once from two threads).
  thread_local std::vector<uint16_t> xpad, wtail;
  if (xstride) {
    d.x = x;
    d.xstride = xstride;
  } else if (m == mp && k == kp) {
    d.x = x;
    d.xstride = k;
  } else {
    xpad.assign(mp * kp, 0);
    for (int64_t i = 0; i < m; ++i) std::memcpy(&xpad[i * kp], x + i * k, k * 2);
    d.x = xpad.data();
    d.xstride = kp;
  }
  if (k2 % 16) {
    const int64_t strips = (n + 63) / 64, first = (d.ktiles - 1) * 16, left = k2 - first;
    wtail.assign(strips * 16 * 128, 0);
    for (int64_t s = 0; s < strips; ++s)
      std::memcpy(&wtail[s * 16 * 128], wp + (s * k2 + first) * 128, left * 128 * 2);
    d.wtail = wtail.data();
  }
  const int64_t group = GroupBlocks(mp / 32);
  Pool::Get().Run(Blocks, &d, (mp / 32) * ((d.col_blocks + group - 1) / group));
  return ffi::Error::Success();
}

ffi::Error PackAndRun(const uint16_t* x, int64_t m, int64_t k, const uint16_t* w, int64_t n, bool nk, float* out) {
  Pack p{w, nullptr, k, n, ((k + 1) / 2 + 15) / 16 * 16};
  thread_local std::vector<uint16_t> wp;
  const int64_t strips = (n + 63) / 64;
  wp.resize(strips * p.k2p * 128);
  p.wp = wp.data();
  Pool::Get().Run(nk ? PackNk : PackKn, &p, strips);
  return Run(x, m, k, p.wp, p.k2p, n, out);
}

// ---------------------------------------------------------------------------------------------------------
// tn: the tiles take the contracted axis as the minor one of their left operand, so a^T is written out first,
// in the tiles' form: at[Kr, Mp] (Kr = K rounded up to 32 rows, Mp = M rounded up to 32, zeros past them).
// XLA:CPU's own transposes of these shapes ran several times slower than this copy. The right operand b [M, N]
// is packed as a kn product's w, and the pack sums its columns for the ones row on the way (a row of ones in at
// would cost a block of 32 rows of tile products for one row of output).

struct Transpose {
  const uint16_t* a;  // [M, K]
  uint16_t* at;       // [Kr, Mp]
  int64_t m, k, mp;
};

// The 16-bit halves of 32 gathered words (g0: words 0-15, g1: 16-31): the even ones, then the odd ones.
inline __m512i Evens() {
  return _mm512_set_epi16(62, 60, 58, 56, 54, 52, 50, 48, 46, 44, 42, 40, 38, 36, 34, 32,
                          30, 28, 26, 24, 22, 20, 18, 16, 14, 12, 10, 8, 6, 4, 2, 0);
}
inline __m512i Odds() { return _mm512_add_epi16(Evens(), _mm512_set1_epi16(1)); }

// One unit: 32 rows of at (32 columns of a). A pair of columns (kk, kk + 1) of 32 rows of a is 32 gathered
// 32-bit words; their halves are rows kk and kk + 1 of at. A last odd column and the padding
// are written one value at a time.
void TransposeRows(const void* ctx, int64_t begin, int64_t end) {
  const Transpose& t = *static_cast<const Transpose*>(ctx);
  const __m512i rows16 = _mm512_mullo_epi32(_mm512_set_epi32(15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0),
                                            _mm512_set1_epi32(static_cast<int>(t.k)));
  const __m512i evens = Evens(), odds = Odds(), zero = _mm512_setzero_si512();
  for (int64_t u = begin; u < end; ++u) {
    const int64_t k0 = u * 32;
    for (int64_t m0 = 0; m0 < t.mp; m0 += 32) {
      const int64_t rows = std::max<int64_t>(0, std::min<int64_t>(32, t.m - m0));
      const __mmask16 live0 = rows >= 16 ? 0xFFFF : static_cast<__mmask16>((1u << rows) - 1);
      const __mmask16 live1 = rows >= 32 ? 0xFFFF : rows <= 16 ? 0 : static_cast<__mmask16>((1u << (rows - 16)) - 1);
      int64_t kk = k0;
      for (; kk + 1 < std::min<int64_t>(k0 + 32, t.k); kk += 2) {
        const uint16_t* src = t.a + m0 * t.k + kk;
        const __m512i g0 = _mm512_mask_i32gather_epi32(zero, live0, rows16, src, 2);
        const __m512i g1 = live1 ? _mm512_mask_i32gather_epi32(zero, live1, rows16, src + 16 * t.k, 2) : zero;
        _mm512_storeu_si512(t.at + kk * t.mp + m0, _mm512_permutex2var_epi16(g0, evens, g1));
        _mm512_storeu_si512(t.at + (kk + 1) * t.mp + m0, _mm512_permutex2var_epi16(g0, odds, g1));
      }
      for (; kk < k0 + 32; ++kk) {
        uint16_t* dst = t.at + kk * t.mp + m0;
        if (kk < t.k) {
          const uint16_t* src = t.a + m0 * t.k + kk;
          for (int64_t i = 0; i < 32; ++i) dst[i] = i < rows ? src[i * t.k] : 0;
        } else {
          std::memset(dst, 0, 64);
        }
      }
    }
  }
}

ffi::Error AmxTnImpl(ffi::Buffer<ffi::BF16> a, ffi::Buffer<ffi::BF16> b, ffi::ResultBuffer<ffi::F32> out,
                     bool ones_row) {
  const auto ad = a.dimensions(), bd = b.dimensions(), od = out->dimensions();
  if (ad.size() != 2 || bd.size() != 2 || ad[0] != bd[0] || od.size() != 2 ||
      od[0] != ad[1] + (ones_row ? 1 : 0) || od[1] != bd[1])
    return ffi::Error::InvalidArgument("amx_tn: shapes");
  const int64_t m = ad[0], k = ad[1], rows = od[0];
  if (!rows || !od[1]) return ffi::Error::Success();
  const int64_t mp = std::max<int64_t>(32, (m + 31) / 32 * 32), kr = std::max<int64_t>(32, (k + 31) / 32 * 32);
  thread_local std::vector<uint16_t> at;
  at.resize(kr * mp);
  Transpose t{reinterpret_cast<const uint16_t*>(a.untyped_data()), at.data(), m, k, mp};
  Pool::Get().Run(TransposeRows, &t, kr / 32);
  // b packed as the w of a kn product with m rows (M contracted), then at's rows as x.
  float* o = out->typed_data();
  Pack p{reinterpret_cast<const uint16_t*>(b.untyped_data()), nullptr, m, bd[1], ((m + 1) / 2 + 15) / 16 * 16,
         ones_row ? o + k * bd[1] : nullptr};
  thread_local std::vector<uint16_t> wp;
  const int64_t strips = (bd[1] + 63) / 64;
  wp.resize(strips * p.k2p * 128);
  p.wp = wp.data();
  Pool::Get().Run(PackKn, &p, strips);
  return Run(at.data(), k, mp, p.wp, p.k2p, bd[1], o, mp);
}

ffi::Error AmxKnImpl(ffi::Buffer<ffi::BF16> x, ffi::Buffer<ffi::BF16> w, ffi::ResultBuffer<ffi::F32> out) {
  const auto xd = x.dimensions(), wd = w.dimensions();
  if (xd.size() != 2 || wd.size() != 2 || xd[1] != wd[0]) return ffi::Error::InvalidArgument("amx_kn: shapes");
  return PackAndRun(reinterpret_cast<const uint16_t*>(x.untyped_data()), xd[0], xd[1],
                    reinterpret_cast<const uint16_t*>(w.untyped_data()), wd[1], false, out->typed_data());
}

ffi::Error AmxNkImpl(ffi::Buffer<ffi::BF16> x, ffi::Buffer<ffi::BF16> w, ffi::ResultBuffer<ffi::F32> out) {
  const auto xd = x.dimensions(), wd = w.dimensions();
  if (xd.size() != 2 || wd.size() != 2 || xd[1] != wd[1]) return ffi::Error::InvalidArgument("amx_nk: shapes");
  return PackAndRun(reinterpret_cast<const uint16_t*>(x.untyped_data()), xd[0], xd[1],
                    reinterpret_cast<const uint16_t*>(w.untyped_data()), wd[0], true, out->typed_data());
}

ffi::Error AmxPackedImpl(ffi::Buffer<ffi::BF16> x, ffi::Buffer<ffi::BF16> wp, ffi::ResultBuffer<ffi::F32> out) {
  const auto xd = x.dimensions(), wd = wp.dimensions(), od = out->dimensions();
  if (xd.size() != 2 || wd.size() != 4 || od.size() != 2 || wd[2] != 64 || wd[3] != 2 || od[0] != xd[0] ||
      wd[1] != (xd[1] + 1) / 2 || wd[0] != (od[1] + 63) / 64)
    return ffi::Error::InvalidArgument("amx_packed: shapes");
  return Run(reinterpret_cast<const uint16_t*>(x.untyped_data()), xd[0], xd[1],
             reinterpret_cast<const uint16_t*>(wp.untyped_data()), wd[1], od[1], out->typed_data());
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(reclm_amx_kn, AmxKnImpl,
                              ffi::Ffi::Bind().Arg<ffi::Buffer<ffi::BF16>>().Arg<ffi::Buffer<ffi::BF16>>().Ret<ffi::Buffer<ffi::F32>>());
XLA_FFI_DEFINE_HANDLER_SYMBOL(reclm_amx_nk, AmxNkImpl,
                              ffi::Ffi::Bind().Arg<ffi::Buffer<ffi::BF16>>().Arg<ffi::Buffer<ffi::BF16>>().Ret<ffi::Buffer<ffi::F32>>());
XLA_FFI_DEFINE_HANDLER_SYMBOL(reclm_amx_packed, AmxPackedImpl,
                              ffi::Ffi::Bind().Arg<ffi::Buffer<ffi::BF16>>().Arg<ffi::Buffer<ffi::BF16>>().Ret<ffi::Buffer<ffi::F32>>());

XLA_FFI_DEFINE_HANDLER_SYMBOL(reclm_amx_tn, AmxTnImpl,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::Buffer<ffi::BF16>>()
                                  .Arg<ffi::Buffer<ffi::BF16>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Attr<bool>("ones_row"));

extern "C" int reclm_amx_ready() { return RequestTiles() ? 1 : 0; }
