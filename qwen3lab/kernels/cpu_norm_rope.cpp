// Fused RMSNorm and RMSNorm + rotary embedding for bf16 decoding on the CPU.
//
// In a decode step the matrix products are a few large calls, while norms and RoPE are many tiny
// ones: PyTorch runs RMSNorm as eight ops (cast, square, mean, add, rsqrt, multiply, cast, scale)
// and RoPE as six, each with its own dispatch and temporaries. These do each in one AVX-512 pass and
// keep the reference's roundings: statistics in fp32, the normalized value rounded to bf16 before the
// weight multiplies it, and RoPE's two products and their sum each rounded to bf16 (as
// `x * cos + rotate_half(x) * sin` computes them in bf16). Only the order of the fp32 sum of squares
// differs from PyTorch's (16 lanes, then across them). Every row is computed alone, so a row's
// result does not depend on the batch.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <c10/util/BFloat16.h>
#include <cmath>
#include <vector>

#include "cpu_vec.h"

namespace {

using bf16 = c10::BFloat16;
using namespace qwen3lab_vec;

// One row of length d: out = bf16(w * bf16(x * rsqrt(mean(x^2) + eps))) as floats (w null: no weight).
inline void norm_row(const bf16* x, const bf16* w, float eps, int64_t d, float* out) {
  __m512 ss = _mm512_setzero_ps();
  int64_t i = 0;
  for (; i + 16 <= d; i += 16) {
    const __m512 v = load_bf16(x + i);
    ss = _mm512_fmadd_ps(v, v, ss);
  }
  if (i < d) {
    const __m512 v = load_bf16_n(x + i, static_cast<int>(d - i));
    ss = _mm512_fmadd_ps(v, v, ss);
  }
  const __m512 inv = _mm512_set1_ps(1.f / std::sqrt(_mm512_reduce_add_ps(ss) / static_cast<float>(d) + eps));
  for (i = 0; i < d; i += 16) {
    const int n = static_cast<int>(std::min<int64_t>(16, d - i));
    const __m512 v = round_bf16(_mm512_mul_ps(n == 16 ? load_bf16(x + i) : load_bf16_n(x + i, n), inv));
    const __m512 o = w ? round_bf16(_mm512_mul_ps(n == 16 ? load_bf16(w + i) : load_bf16_n(w + i, n), v)) : v;
    if (n == 16) _mm512_storeu_ps(out + i, o); else _mm512_mask_storeu_ps(out + i, static_cast<__mmask16>((1u << n) - 1), o);
  }
}

}  // namespace

at::Tensor rms_norm_bf16(const at::Tensor& x, const at::Tensor& w, double eps) {
  TORCH_CHECK(x.scalar_type() == at::kBFloat16 && w.scalar_type() == at::kBFloat16 && x.is_contiguous(),
              "rms_norm_bf16: contiguous bf16 input and weight expected");
  const int64_t d = x.size(-1), rows = x.numel() / d;
  TORCH_CHECK(w.numel() == d, "rms_norm_bf16: weight size");
  at::Tensor out = at::empty_like(x);
  at::Tensor wc = w.contiguous();
  const bf16* xp = x.data_ptr<bf16>();
  const bf16* wp = wc.data_ptr<bf16>();
  bf16* op = out.data_ptr<bf16>();
  at::parallel_for(0, rows, 32, [&](int64_t b, int64_t e) {
    std::vector<float> tmp(d + 16);
    for (int64_t n = b; n < e; ++n) {
      norm_row(xp + n * d, wp, static_cast<float>(eps), d, tmp.data());
      int64_t i = 0;
      for (; i + 16 <= d; i += 16) store_bf16(op + n * d + i, _mm512_loadu_ps(tmp.data() + i));
      if (i < d) store_bf16_n(op + n * d + i, _mm512_loadu_ps(tmp.data() + i), static_cast<int>(d - i));
    }
  });
  return out;
}

// x [N, heads, d] -> RoPE(RMSNorm_d(x) if w defined else x), with cos/sin [N, d] in bf16.
at::Tensor norm_rope_bf16(const at::Tensor& x, const c10::optional<at::Tensor>& w, const at::Tensor& cos,
                          const at::Tensor& sin, double eps) {
  TORCH_CHECK(x.dim() == 3 && x.scalar_type() == at::kBFloat16, "norm_rope_bf16: x must be bf16 [N, heads, d]");
  TORCH_CHECK(cos.scalar_type() == at::kBFloat16 && sin.scalar_type() == at::kBFloat16, "norm_rope_bf16: bf16 cos/sin");
  const int64_t N = x.size(0), H = x.size(1), d = x.size(2), half = d / 2;
  at::Tensor xc = x.contiguous(), cc = cos.contiguous(), sc = sin.contiguous();
  TORCH_CHECK(cc.numel() == N * d && sc.numel() == N * d, "norm_rope_bf16: cos/sin must be [N, d]");
  at::Tensor wc = w.has_value() ? w->contiguous() : at::Tensor();
  at::Tensor out = at::empty_like(xc);
  const bf16* xp = xc.data_ptr<bf16>();
  const bf16* wp = wc.defined() ? wc.data_ptr<bf16>() : nullptr;
  const bf16* cp = cc.data_ptr<bf16>();
  const bf16* sp = sc.data_ptr<bf16>();
  bf16* op = out.data_ptr<bf16>();
  const bool vec = half % 16 == 0;  // every 16-lane chunk on one side of the rotation
  at::parallel_for(0, N * H, 64, [&](int64_t b, int64_t e) {
    std::vector<float> v(d + 16);
    for (int64_t row = b; row < e; ++row) {
      const int64_t n = row / H;
      const bf16* xr = xp + row * d;
      if (wp) {
        norm_row(xr, wp, static_cast<float>(eps), d, v.data());
      } else {
        for (int64_t i = 0; i < d; ++i) v[i] = static_cast<float>(xr[i]);
      }
      const bf16* c = cp + n * d;
      const bf16* s = sp + n * d;
      bf16* o = op + row * d;
      if (vec) {
        for (int64_t i = 0; i < d; i += 16) {
          const __m512 rot = i < half ? _mm512_sub_ps(_mm512_setzero_ps(), _mm512_loadu_ps(v.data() + i + half))
                                      : _mm512_loadu_ps(v.data() + i - half);
          const __m512 a = round_bf16(_mm512_mul_ps(_mm512_loadu_ps(v.data() + i), load_bf16(c + i)));
          const __m512 bb = round_bf16(_mm512_mul_ps(rot, load_bf16(s + i)));
          store_bf16(o + i, _mm512_add_ps(a, bb));
        }
        continue;
      }
      for (int64_t i = 0; i < d; ++i) {
        const float rot = i < half ? -v[i + half] : v[i - half];
        const float a = static_cast<float>(static_cast<bf16>(v[i] * static_cast<float>(c[i])));
        const float bb = static_cast<float>(static_cast<bf16>(rot * static_cast<float>(s[i])));
        o[i] = static_cast<bf16>(a + bb);
      }
    }
  });
  return out;
}
