// Decode attention (one new token per sequence) straight from the paged KV cache, bf16 on the CPU.
//
// A decode step has one query row per sequence. PyTorch's CPU SDPA (flash kernel) costs about 1 ms
// per call for such rows however short the context, and feeding it means first gathering every
// sequence's keys and values into a padded copy. Here each (sequence, kv head) pair reads its keys
// in place by slot index, scores the query heads that share it (GQA), takes the softmax in fp32 and
// sums the values: one pass over the context, no copies. Masking matches the model's: keys at
// positions 0 .. ctx-1, or the last `window` of them for sliding-window layers.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <c10/util/BFloat16.h>
#include <immintrin.h>
#include <algorithm>
#include <cmath>
#include <vector>

namespace {

using bf16 = c10::BFloat16;

inline __m512 load16(const bf16* p) {  // 16 bf16 -> fp32
  return _mm512_castsi512_ps(_mm512_slli_epi32(
      _mm512_cvtepu16_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p))), 16));
}

}  // namespace

// q [G, H, d] bf16; k_cache, v_cache [slots, KVH, d] bf16; slots [G, S] int64 (row g's keys at
// positions 0..S-1); ctx [G] int64 context lengths; window 0 for full attention.
at::Tensor paged_decode_attention(const at::Tensor& q, const at::Tensor& k_cache, const at::Tensor& v_cache,
                                  const at::Tensor& slots, const at::Tensor& ctx, double scale, int64_t window) {
  TORCH_CHECK(q.dim() == 3 && q.scalar_type() == at::kBFloat16, "paged_decode_attention: q must be bf16 [G, H, d]");
  TORCH_CHECK(k_cache.scalar_type() == at::kBFloat16 && v_cache.scalar_type() == at::kBFloat16 &&
              k_cache.is_contiguous() && v_cache.is_contiguous(), "paged_decode_attention: contiguous bf16 cache");
  const int64_t G = q.size(0), H = q.size(1), d = q.size(2), KVH = k_cache.size(1), S = slots.size(1);
  TORCH_CHECK(d % 16 == 0 && H % KVH == 0 && k_cache.size(2) == d, "paged_decode_attention: head sizes");
  const int64_t rep = H / KVH, dv = d / 16;
  at::Tensor qc = q.contiguous(), sl = slots.contiguous().to(at::kLong), cl = ctx.contiguous().to(at::kLong);
  at::Tensor out = at::empty({G, H, d}, q.options());
  const bf16* qp = qc.data_ptr<bf16>();
  const bf16* kp = k_cache.data_ptr<bf16>();
  const bf16* vp = v_cache.data_ptr<bf16>();
  const int64_t* sp = sl.data_ptr<int64_t>();
  const int64_t* cp = cl.data_ptr<int64_t>();
  bf16* op = out.data_ptr<bf16>();
  at::parallel_for(0, G * KVH, 1, [&](int64_t b, int64_t e) {
    std::vector<float> qf(rep * d), scores, acc(rep * d);
    for (int64_t task = b; task < e; ++task) {
      const int64_t g = task / KVH, h = task % KVH;
      const int64_t n = std::min<int64_t>(cp[g], S);
      const int64_t start = window > 0 ? std::max<int64_t>(0, n - window) : 0;
      for (int64_t r = 0; r < rep; ++r)
        for (int64_t i = 0; i < d; ++i) qf[r * d + i] = static_cast<float>(qp[(g * H + h * rep + r) * d + i]) * scale;
      scores.assign(rep * (n - start), 0.f);
      for (int64_t s = start; s < n; ++s) {
        const bf16* kr = kp + (sp[g * S + s] * KVH + h) * d;
        __m512 dot[8];
        for (int64_t r = 0; r < rep && r < 8; ++r) dot[r] = _mm512_setzero_ps();
        for (int64_t j = 0; j < dv; ++j) {
          const __m512 kv = load16(kr + j * 16);
          for (int64_t r = 0; r < rep && r < 8; ++r)
            dot[r] = _mm512_fmadd_ps(_mm512_loadu_ps(qf.data() + r * d + j * 16), kv, dot[r]);
        }
        for (int64_t r = 0; r < rep && r < 8; ++r) scores[r * (n - start) + (s - start)] = _mm512_reduce_add_ps(dot[r]);
        for (int64_t r = 8; r < rep; ++r) {  // more than 8 query heads per kv head: plain loop
          float t = 0.f;
          for (int64_t i = 0; i < d; ++i) t += qf[r * d + i] * static_cast<float>(kr[i]);
          scores[r * (n - start) + (s - start)] = t;
        }
      }
      const int64_t len = n - start;
      for (int64_t r = 0; r < rep; ++r) {  // softmax per query head, fp32
        float* sc = scores.data() + r * len;
        const float mx = *std::max_element(sc, sc + len);
        float sum = 0.f;
        for (int64_t s = 0; s < len; ++s) sum += (sc[s] = std::exp(sc[s] - mx));
        const float inv = 1.f / sum;
        for (int64_t s = 0; s < len; ++s) sc[s] *= inv;
      }
      std::fill(acc.begin(), acc.end(), 0.f);
      for (int64_t s = start; s < n; ++s) {
        const bf16* vr = vp + (sp[g * S + s] * KVH + h) * d;
        for (int64_t j = 0; j < dv; ++j) {
          const __m512 vv = load16(vr + j * 16);
          for (int64_t r = 0; r < rep; ++r) {
            float* a = acc.data() + r * d + j * 16;
            _mm512_storeu_ps(a, _mm512_fmadd_ps(_mm512_set1_ps(scores[r * len + (s - start)]), vv, _mm512_loadu_ps(a)));
          }
        }
      }
      for (int64_t r = 0; r < rep; ++r)
        for (int64_t i = 0; i < d; ++i) op[(g * H + h * rep + r) * d + i] = static_cast<bf16>(acc[r * d + i]);
    }
  });
  return out;
}
