// The worker pool and SIMD helpers shared by the native kernels (one library, one pool).
#pragma once

#include <immintrin.h>

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <mutex>
#include <thread>
#include <vector>

namespace reclm {

// ---------------------------------------------------------------------------------------------------------
// A pool of worker threads that spin between jobs (a decoding step issues ~200 products of 30-300 us each;
// waking a sleeping thread costs tens of microseconds) and fall asleep after kSpinRounds idle polls.
//
// Work is claimed in chunks from a shared counter rather than split in fixed parts, so a worker that the OS
// has descheduled (a loaded machine) delays a product by at most the chunk it holds, never by its whole
// share; the caller takes chunks too and finishes alone if no worker comes.

using JobFn = void (*)(const void* ctx, int64_t begin, int64_t end);

constexpr int64_t kSpinRounds = 1 << 16;  // ~1-2 ms of _mm_pause polling before a worker sleeps

class Pool {
 public:
  static Pool& Get() {
    static Pool* pool = new Pool();  // never destroyed: workers may still be spinning at exit
    return *pool;
  }

  // Grows the pool to n threads (the caller included); it never shrinks.
  void SetThreads(int n) {
    std::lock_guard<std::mutex> busy(busy_);
    n = std::max(threads(), std::min(n, 64));
    while (static_cast<int>(workers_.size()) < n - 1) {
      workers_.emplace_back([this] { Work(); });
      workers_.back().detach();
    }
    threads_.store(n, std::memory_order_release);
  }

  int threads() const { return threads_.load(std::memory_order_acquire); }

  // Runs fn over [0, units). A second caller while a job runs (XLA may run independent products
  // concurrently) computes alone.
  void Run(JobFn fn, const void* ctx, int64_t units) {
    const int n = threads();
    if (n <= 1 || units <= 1 || units > kMaxUnits || !busy_.try_lock()) {
      fn(ctx, 0, units);
      return;
    }
    fn_ = fn;
    ctx_ = ctx;
    chunk_ = std::max<int64_t>(1, units / (4 * n));
    done_.store(0, std::memory_order_relaxed);
    generation_ = (generation_ + 1) & kGenMask;
    {
      std::lock_guard<std::mutex> lock(mu_);  // publishes the job: (generation, units, next unit 0)
      next_.store(Pack(generation_, units, 0), std::memory_order_release);
    }
    cv_.notify_all();
    Claim(generation_);
    while (done_.load(std::memory_order_acquire) < units) _mm_pause();
    busy_.unlock();
  }

 private:
  Pool() = default;

  // The job counter packs (generation, units, next unclaimed unit) into one word, so a worker still looking
  // at a finished job can never claim a unit of the next one: its compare-and-swap needs the old generation,
  // and it compares against the old job's own unit count, not the next job's.
  static constexpr int kUnitBits = 20;
  static constexpr int64_t kMaxUnits = (int64_t(1) << kUnitBits) - 1;
  static constexpr uint64_t kGenMask = (uint64_t(1) << (64 - 2 * kUnitBits)) - 1;
  static uint64_t Pack(uint64_t gen, int64_t units, int64_t next) {
    return (gen << (2 * kUnitBits)) | (static_cast<uint64_t>(units) << kUnitBits) | static_cast<uint64_t>(next);
  }
  static uint64_t Gen(uint64_t v) { return v >> (2 * kUnitBits); }
  static int64_t Units(uint64_t v) { return static_cast<int64_t>((v >> kUnitBits) & kMaxUnits); }
  static int64_t Next(uint64_t v) { return static_cast<int64_t>(v & kMaxUnits); }

  // Takes chunks of the job of generation `gen` until none is left (or the job is another one).
  void Claim(uint64_t gen) {
    uint64_t v = next_.load(std::memory_order_acquire);
    for (;;) {
      if (Gen(v) != gen) return;
      const int64_t units = Units(v), begin = Next(v);
      if (begin >= units) return;
      // An unclaimed unit means the job is unfinished, so its caller still waits and chunk_, fn_ and ctx_
      // are this job's.
      const int64_t end = std::min(begin + chunk_, units);
      if (!next_.compare_exchange_weak(v, Pack(gen, units, end), std::memory_order_acq_rel)) continue;
      fn_(ctx_, begin, end);
      done_.fetch_add(end - begin, std::memory_order_acq_rel);
      v = next_.load(std::memory_order_acquire);
    }
  }

  void Work() {
    uint64_t seen = Gen(next_.load(std::memory_order_acquire));
    for (;;) {
      int64_t spins = 0;
      uint64_t gen;
      while ((gen = Gen(next_.load(std::memory_order_acquire))) == seen) {
        if (++spins > kSpinRounds) {
          std::unique_lock<std::mutex> lock(mu_);
          cv_.wait(lock, [&] { return Gen(next_.load(std::memory_order_acquire)) != seen; });
          spins = 0;
        }
        _mm_pause();
        // Between products XLA runs its own small ops, some split over its thread pool: yield the core
        // now and then so a thread of XLA's that is waiting for it gets it at once.
        if (spins % 32 == 0) std::this_thread::yield();
      }
      seen = gen;
      Claim(gen);
    }
  }

  std::mutex busy_;  // one parallel job at a time
  std::mutex mu_;    // guards sleeping
  std::condition_variable cv_;
  std::atomic<uint64_t> next_{0};  // Pack(generation, units, next unclaimed unit)
  std::atomic<int64_t> done_{0};   // units finished in the current job
  uint64_t generation_ = 0;        // only the caller holding busy_ touches it
  std::atomic<int> threads_{1};
  std::vector<std::thread> workers_;
  // The current job: written before next_ publishes it (release), read after a claim (acquire).
  JobFn fn_ = nullptr;
  const void* ctx_ = nullptr;
  int64_t chunk_ = 1;
};

#if defined(__AVX512F__)
// The permutes that interleave two rows a and b of 32 bf16 values into (a[c], b[c]) pairs, the layout vdpbf16ps
// and the AMX tiles multiply: _mm512_permutex2var_epi16(a, PairsLo(), b) holds the pairs of columns 0-15,
// PairsHi() those of 16-31.
inline __m512i PairsLo() {
  return _mm512_set_epi16(47, 15, 46, 14, 45, 13, 44, 12, 43, 11, 42, 10, 41, 9, 40, 8,
                          39, 7, 38, 6, 37, 5, 36, 4, 35, 3, 34, 2, 33, 1, 32, 0);
}
inline __m512i PairsHi() {
  return _mm512_set_epi16(63, 31, 62, 30, 61, 29, 60, 28, 59, 27, 58, 26, 57, 25, 56, 24,
                          55, 23, 54, 22, 53, 21, 52, 20, 51, 19, 50, 18, 49, 17, 48, 16);
}

// -> [sum(a), sum(b), sum(c), sum(e)]: four horizontal sums at once.
inline __m128 Sum4(__m512 a, __m512 b, __m512 c, __m512 e) {
  const __m512 ab = _mm512_add_ps(_mm512_unpacklo_ps(a, b), _mm512_unpackhi_ps(a, b));
  const __m512 ce = _mm512_add_ps(_mm512_unpacklo_ps(c, e), _mm512_unpackhi_ps(c, e));
  const __m512 s = _mm512_add_ps(_mm512_shuffle_ps(ab, ce, 0x44), _mm512_shuffle_ps(ab, ce, 0xEE));
  const __m256 h = _mm256_add_ps(_mm512_castps512_ps256(s),
                                 _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(s), 1)));
  return _mm_add_ps(_mm256_castps256_ps128(h), _mm256_extractf128_ps(h, 1));
}
#endif

}  // namespace reclm
