// Decode attention (one new token per sequence) straight from the paged KV cache, bf16 on the CPU.
//
// A decode step has one query row per sequence. PyTorch's CPU SDPA (flash kernel) costs about 1 ms
// per call for such rows however short the context, and feeding it means first gathering every
// sequence's keys and values into a padded copy. Here each (sequence, kv head) pair reads its keys
// in place by slot index, scores the query heads that share it (GQA), takes the softmax in fp32 and
// sums the values: one pass over the context, no copies. Masking matches the model's: row g attends
// keys at positions start[g] .. ctx[g]-1 (start 0 for full attention, ctx - window for a sliding
// window) and also the first `sinks` keys (kept-first tokens of a hybrid window, as in SWAA).
//
// The cache may be bf16 or int8 with one fp32 scale per (slot, kv head): an int8 key's scale multiplies
// its score, an int8 value's scale its softmax weight, so the inner loops only widen int8 to fp32.
//
// Vectorized throughout (scores, exp, value sums with the accumulators in registers): with a scalar
// softmax and a load/store per value multiply, 8 sequences of 50 tokens took 188 us per layer, now 122.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <c10/util/BFloat16.h>
#include <algorithm>
#include <cmath>
#include <vector>

#include "cpu_vec.h"

namespace {

using bf16 = c10::BFloat16;
using namespace qwen3lab_vec;

constexpr int64_t kMaxDv = 16;  // head_dim up to 256
constexpr int64_t kRChunk = 4;  // query heads whose value sums stay in registers together

inline __m512 load16(const bf16* p) { return load_bf16(p); }
inline __m512 load16(const int8_t* p) {
  return _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p))));
}

template <typename T>
void decode_rows(const bf16* qp, const T* kp, const T* vp, const float* ksp, const float* vsp, const int64_t* sp,
                 const int64_t* cp, const int64_t* stp, bf16* op, int64_t G, int64_t H, int64_t KVH, int64_t d,
                 int64_t S, int64_t sinks, double scale) {
  const int64_t rep = H / KVH, dv = d / 16;
  at::parallel_for(0, G * KVH, 1, [&](int64_t b, int64_t e) {
    std::vector<float> qf(rep * d), scores, inv(rep);
    std::vector<int64_t> keys;
    for (int64_t task = b; task < e; ++task) {
      const int64_t g = task / KVH, h = task % KVH;
      const int64_t n = std::min<int64_t>(cp[g], S);
      const int64_t start = std::min(std::max<int64_t>(0, stp[g]), n);
      const int64_t nsink = std::min(std::max<int64_t>(0, sinks), start);
      const int64_t len = nsink + n - start;
      // The row's key slots: the kept-first ones, then the window.
      keys.resize(len);
      for (int64_t s = 0; s < nsink; ++s) keys[s] = sp[g * S + s];
      for (int64_t s = start; s < n; ++s) keys[nsink + s - start] = sp[g * S + s];
      const int64_t* srow = keys.data();
      if (len <= 0) {  // no keys (an empty context): zeros, not 0/0
        for (int64_t r = 0; r < rep; ++r)
          for (int64_t j = 0; j < dv; ++j) store_bf16(op + (g * H + h * rep + r) * d + j * 16, _mm512_setzero_ps());
        continue;
      }
      for (int64_t r = 0; r < rep; ++r)
        for (int64_t j = 0; j < dv; ++j)
          _mm512_storeu_ps(qf.data() + r * d + j * 16,
                           _mm512_mul_ps(load_bf16(qp + (g * H + h * rep + r) * d + j * 16), _mm512_set1_ps(scale)));
      // Scores, row r at scores[r * stride]; padded to 16 so the softmax runs on whole vectors.
      const int64_t stride = (len + 15) / 16 * 16;
      scores.assign(rep * stride, -INFINITY);
      for (int64_t s = 0; s < len; ++s) {
        const T* kr = kp + (srow[s] * KVH + h) * d;
        const float ks = ksp ? ksp[srow[s] * KVH + h] : 1.f;
        __m512 kv[kMaxDv];
        for (int64_t j = 0; j < dv; ++j) kv[j] = load16(kr + j * 16);
        for (int64_t r = 0; r < rep; ++r) {
          const float* qr = qf.data() + r * d;
          __m512 dot0 = _mm512_mul_ps(_mm512_loadu_ps(qr), kv[0]), dot1 = _mm512_setzero_ps();
          for (int64_t j = 1; j < dv; ++j) {
            if (j & 1) dot1 = _mm512_fmadd_ps(_mm512_loadu_ps(qr + j * 16), kv[j], dot1);
            else dot0 = _mm512_fmadd_ps(_mm512_loadu_ps(qr + j * 16), kv[j], dot0);
          }
          scores[r * stride + s] = _mm512_reduce_add_ps(_mm512_add_ps(dot0, dot1)) * ks;
        }
      }
      for (int64_t r = 0; r < rep; ++r) {  // softmax numerators in fp32; normalized at the end
        float* sc = scores.data() + r * stride;
        __m512 mx = _mm512_set1_ps(-INFINITY);
        for (int64_t i = 0; i < stride; i += 16) mx = _mm512_max_ps(mx, _mm512_loadu_ps(sc + i));
        const __m512 m = _mm512_set1_ps(_mm512_reduce_max_ps(mx));
        __m512 sum = _mm512_setzero_ps();
        for (int64_t i = 0; i < stride; i += 16) {
          const __m512 p = exp_ps(_mm512_sub_ps(_mm512_loadu_ps(sc + i), m));  // padding: exp(-inf) = 0
          _mm512_storeu_ps(sc + i, p);
          sum = _mm512_add_ps(sum, p);
        }
        inv[r] = 1.f / _mm512_reduce_add_ps(sum);
        if (vsp)  // fold each int8 value's scale into its weight (after the sum, which the scales must not touch)
          for (int64_t s = 0; s < len; ++s) sc[s] *= vsp[srow[s] * KVH + h];
      }
      // Values: for each chunk of query heads and of head_dim, the sums stay in registers over the keys.
      for (int64_t r0 = 0; r0 < rep; r0 += kRChunk) {
        const int64_t rn = std::min(kRChunk, rep - r0);
        for (int64_t j0 = 0; j0 < dv; j0 += 4) {
          const int64_t jn = std::min<int64_t>(4, dv - j0);
          __m512 acc[kRChunk][4];
          for (int64_t r = 0; r < kRChunk; ++r)
            for (int64_t j = 0; j < 4; ++j) acc[r][j] = _mm512_setzero_ps();
          for (int64_t s = 0; s < len; ++s) {
            const T* vr = vp + (srow[s] * KVH + h) * d + j0 * 16;
            __m512 vv[4];
            for (int64_t j = 0; j < jn; ++j) vv[j] = load16(vr + j * 16);
            for (int64_t r = 0; r < rn; ++r) {
              const __m512 p = _mm512_set1_ps(scores[(r0 + r) * stride + s]);
              for (int64_t j = 0; j < jn; ++j) acc[r][j] = _mm512_fmadd_ps(p, vv[j], acc[r][j]);
            }
          }
          for (int64_t r = 0; r < rn; ++r)
            for (int64_t j = 0; j < jn; ++j)
              store_bf16(op + (g * H + h * rep + r0 + r) * d + (j0 + j) * 16,
                         _mm512_mul_ps(acc[r][j], _mm512_set1_ps(inv[r0 + r])));
        }
      }
    }
  });
}

}  // namespace

// q [G, H, d] bf16; k_cache, v_cache [slots, KVH, d] bf16, or int8 with k_scale, v_scale [slots, KVH] fp32
// (empty tensors for bf16); slots [G, S] int64 (row g's keys at positions 0..S-1); ctx [G] int64 context
// lengths; start [G] int64 first key of the window.
at::Tensor paged_decode_attention(const at::Tensor& q, const at::Tensor& k_cache, const at::Tensor& v_cache,
                                  const at::Tensor& k_scale, const at::Tensor& v_scale, const at::Tensor& slots,
                                  const at::Tensor& ctx, const at::Tensor& start_pos, int64_t sinks, double scale) {
  TORCH_CHECK(q.dim() == 3 && q.scalar_type() == at::kBFloat16, "paged_decode_attention: q must be bf16 [G, H, d]");
  const bool int8 = k_cache.scalar_type() == at::kChar;
  TORCH_CHECK((k_cache.scalar_type() == at::kBFloat16 || int8) && v_cache.scalar_type() == k_cache.scalar_type() &&
              k_cache.is_contiguous() && v_cache.is_contiguous(), "paged_decode_attention: contiguous bf16 or int8 cache");
  TORCH_CHECK(!int8 || (k_scale.scalar_type() == at::kFloat && v_scale.scalar_type() == at::kFloat &&
                        k_scale.is_contiguous() && v_scale.is_contiguous() &&
                        k_scale.numel() == k_cache.size(0) * k_cache.size(1) && v_scale.numel() == k_scale.numel()),
              "paged_decode_attention: an int8 cache needs contiguous fp32 scales [slots, kv heads]");
  const int64_t G = q.size(0), H = q.size(1), d = q.size(2), KVH = k_cache.size(1), S = slots.size(1);
  TORCH_CHECK(d % 16 == 0 && d / 16 <= kMaxDv && H % KVH == 0 && k_cache.size(2) == d,
              "paged_decode_attention: head_dim must be a multiple of 16 up to 256, heads a multiple of kv heads");
  TORCH_CHECK(start_pos.numel() == G && ctx.numel() == G, "paged_decode_attention: ctx and start need one entry per row");
  at::Tensor qc = q.contiguous(), sl = slots.contiguous().to(at::kLong), cl = ctx.contiguous().to(at::kLong);
  at::Tensor st = start_pos.contiguous().to(at::kLong);
  at::Tensor out = at::empty({G, H, d}, q.options());
  const bf16* qp = qc.data_ptr<bf16>();
  if (int8)
    decode_rows<int8_t>(qp, k_cache.data_ptr<int8_t>(), v_cache.data_ptr<int8_t>(), k_scale.data_ptr<float>(),
                        v_scale.data_ptr<float>(), sl.data_ptr<int64_t>(), cl.data_ptr<int64_t>(),
                        st.data_ptr<int64_t>(), out.data_ptr<bf16>(), G, H, KVH, d, S, sinks, scale);
  else
    decode_rows<bf16>(qp, k_cache.data_ptr<bf16>(), v_cache.data_ptr<bf16>(), nullptr, nullptr,
                      sl.data_ptr<int64_t>(), cl.data_ptr<int64_t>(), st.data_ptr<int64_t>(), out.data_ptr<bf16>(),
                      G, H, KVH, d, S, sinks, scale);
  return out;
}
