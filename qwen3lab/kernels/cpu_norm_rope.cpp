// Fused RMSNorm and RMSNorm + rotary embedding for bf16 decoding on the CPU.
//
// In a decode step the matrix products are a few large calls, while norms and RoPE are many tiny
// ones: PyTorch runs RMSNorm as eight ops (cast, square, mean, add, rsqrt, multiply, cast, scale)
// and RoPE as six, each with its own dispatch and temporaries. These do each in one pass and keep
// the reference's roundings: statistics in fp32, the normalized value rounded to bf16 before the
// weight multiplies it, and RoPE's two products and their sum each rounded to bf16 (as
// `x * cos + rotate_half(x) * sin` computes them in bf16).
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <c10/util/BFloat16.h>
#include <cmath>

namespace {

using bf16 = c10::BFloat16;

inline float r(float v) { return static_cast<float>(static_cast<bf16>(v)); }  // round to bf16

// One row of length d: out = w * bf16(x * rsqrt(mean(x^2) + eps)), in fp32 registers.
inline void norm_row(const bf16* x, const bf16* w, float eps, int64_t d, float* out) {
  float ss = 0.f;
  for (int64_t i = 0; i < d; ++i) {
    const float v = static_cast<float>(x[i]);
    ss += v * v;
  }
  const float inv = 1.f / std::sqrt(ss / static_cast<float>(d) + eps);
  for (int64_t i = 0; i < d; ++i) {
    const float v = r(static_cast<float>(x[i]) * inv);
    out[i] = w ? r(static_cast<float>(w[i]) * v) : v;
  }
}

}  // namespace

at::Tensor rms_norm_bf16(const at::Tensor& x, const at::Tensor& w, double eps) {
  TORCH_CHECK(x.scalar_type() == at::kBFloat16 && w.scalar_type() == at::kBFloat16 && x.is_contiguous(),
              "rms_norm_bf16: contiguous bf16 input and weight expected");
  const int64_t d = x.size(-1), rows = x.numel() / d;
  TORCH_CHECK(w.numel() == d, "rms_norm_bf16: weight size");
  at::Tensor out = at::empty_like(x);
  const bf16* xp = x.data_ptr<bf16>();
  const bf16* wp = w.contiguous().data_ptr<bf16>();
  bf16* op = out.data_ptr<bf16>();
  at::parallel_for(0, rows, 32, [&](int64_t b, int64_t e) {
    std::vector<float> tmp(d);
    for (int64_t n = b; n < e; ++n) {
      norm_row(xp + n * d, wp, static_cast<float>(eps), d, tmp.data());
      for (int64_t i = 0; i < d; ++i) op[n * d + i] = static_cast<bf16>(tmp[i]);
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
  at::parallel_for(0, N * H, 64, [&](int64_t b, int64_t e) {
    std::vector<float> v(d);
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
      for (int64_t i = 0; i < d; ++i) {
        const float rot = i < half ? -v[i + half] : v[i - half];
        const float a = r(v[i] * static_cast<float>(c[i]));
        const float bb = r(rot * static_cast<float>(s[i]));
        op[row * d + i] = static_cast<bf16>(a + bb);
      }
    }
  });
  return out;
}
