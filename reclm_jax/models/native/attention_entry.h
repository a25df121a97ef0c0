// The XLA FFI entry of one decoding step's attention (`reclm_decode_attention`), shared by the builds: the
// arguments, their checks and the split into (sequence, KV head) units over the pool. Each build's kernel source
// (decode_attention.cc for AVX-512, avx2_attention.cc) defines `Unit` and includes this header once: it defines
// the exported handler symbol, so exactly one source file of a build may include it.
//
//   q [B, 1, N, H], k_new / v_new [B, 1, K, H], caches [B, K, S, H]: bf16; mask [B, 1, 1, S] bool (slots the
//   new token may see, its own included); end: int32 scalar, the slot written now (mask is False beyond it).
//   N = K * G (query heads grouped by KV head), H a multiple of 32 (at most kMaxHead), G at most kMaxGroup.
#pragma once

#include <cstdint>
#include <cstring>
#include <vector>

#include "pool.h"
#include "xla/ffi/api/ffi.h"

namespace reclm::attention {

namespace ffi = xla::ffi;

constexpr int kMaxGroup = 16;  // query heads per KV head the kernels serve
constexpr int kMaxHead = 256;  // head_dim at most

struct Step {
  const uint16_t* q;
  const uint16_t* k_new;
  const uint16_t* v_new;
  uint16_t* keys;
  uint16_t* values;
  const bool* mask;
  uint16_t* out;
  int64_t b, kv, g, s, h, end;
  float scale;
};

inline float RoundBf16(float v) {  // round to nearest even bf16, back to f32 (finite inputs)
  uint32_t bits;
  std::memcpy(&bits, &v, 4);
  bits = (bits + 0x7FFFu + ((bits >> 16) & 1u)) & 0xFFFF0000u;
  std::memcpy(&v, &bits, 4);
  return v;
}

// One (sequence, KV head) unit, its new slot already written: the group's G query heads and outputs ([G, H]),
// its key and value cache rows ([S, H]) and the sequence's mask ([S]).
struct Head {
  const uint16_t* q;
  uint16_t* out;
  const uint16_t* keys;
  const uint16_t* values;
  const bool* mask;
};

// Scores a unit's queries against slots [0, end], softmax, sums the values. `scores`: a scratch buffer of the
// calling thread. Defined by the build's kernel source.
void Unit(const Step& st, const Head& head, std::vector<float>& scores);

inline void Units(const void* ctx, int64_t begin, int64_t end) {
  thread_local std::vector<float> scores;
  const Step& st = *static_cast<const Step*>(ctx);
  const int64_t H = st.h, S = st.s;
  for (int64_t u = begin; u < end; ++u) {  // u = b * K + kh
    uint16_t* keys = st.keys + u * S * H;
    uint16_t* values = st.values + u * S * H;
    std::memcpy(keys + st.end * H, st.k_new + u * H, H * 2);
    std::memcpy(values + st.end * H, st.v_new + u * H, H * 2);
    Unit(st, Head{st.q + u * st.g * H, st.out + u * st.g * H, keys, values, st.mask + (u / st.kv) * S}, scores);
  }
}

inline ffi::Error DecodeAttentionImpl(ffi::Buffer<ffi::BF16> q, ffi::Buffer<ffi::BF16> k_new,
                                      ffi::Buffer<ffi::BF16> v_new, ffi::Buffer<ffi::BF16>, ffi::Buffer<ffi::BF16>,
                                      ffi::Buffer<ffi::PRED> mask, ffi::Buffer<ffi::S32> end, float scale,
                                      ffi::ResultBuffer<ffi::BF16> out, ffi::ResultBuffer<ffi::BF16> keys,
                                      ffi::ResultBuffer<ffi::BF16> values) {
  const auto qd = q.dimensions(), cd = keys->dimensions(), md = mask.dimensions();
  if (qd.size() != 4 || cd.size() != 4 || md.size() != 4 || qd[1] != 1) {
    return ffi::Error::InvalidArgument("decode_attention: expects q [B, 1, N, H], caches [B, K, S, H]");
  }
  Step st{reinterpret_cast<const uint16_t*>(q.untyped_data()), reinterpret_cast<const uint16_t*>(k_new.untyped_data()),
          reinterpret_cast<const uint16_t*>(v_new.untyped_data()), reinterpret_cast<uint16_t*>(keys->untyped_data()),
          reinterpret_cast<uint16_t*>(values->untyped_data()), mask.typed_data(),
          reinterpret_cast<uint16_t*>(out->untyped_data()), qd[0], cd[1], qd[2] / cd[1], cd[2], qd[3],
          static_cast<int64_t>(end.typed_data()[0]), scale};
  if (st.h % 32 || st.h > kMaxHead || st.g > kMaxGroup || qd[2] % cd[1] || st.end < 0 || st.end >= st.s) {
    return ffi::Error::InvalidArgument("decode_attention: unsupported shape or slot");
  }
  Pool::Get().Run(Units, &st, st.b * st.kv);
  return ffi::Error::Success();
}

}  // namespace reclm::attention

XLA_FFI_DEFINE_HANDLER_SYMBOL(reclm_decode_attention, reclm::attention::DecodeAttentionImpl,
                              xla::ffi::Ffi::Bind()
                                  .Arg<xla::ffi::Buffer<xla::ffi::BF16>>()  // q
                                  .Arg<xla::ffi::Buffer<xla::ffi::BF16>>()  // k_new
                                  .Arg<xla::ffi::Buffer<xla::ffi::BF16>>()  // v_new
                                  .Arg<xla::ffi::Buffer<xla::ffi::BF16>>()  // keys (aliased by the result `keys`)
                                  .Arg<xla::ffi::Buffer<xla::ffi::BF16>>()  // values (aliased by the result `values`)
                                  .Arg<xla::ffi::Buffer<xla::ffi::PRED>>()  // mask
                                  .Arg<xla::ffi::Buffer<xla::ffi::S32>>()   // end
                                  .Attr<float>("scale")
                                  .Ret<xla::ffi::Buffer<xla::ffi::BF16>>()  // out
                                  .Ret<xla::ffi::Buffer<xla::ffi::BF16>>()  // keys
                                  .Ret<xla::ffi::Buffer<xla::ffi::BF16>>());  // values
