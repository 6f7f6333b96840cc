// Skinny matrix products for CPU decoding: y[M, N] = x[M, K] @ W[N, K]^T with M small (1..8 rows
// per pass: one decode token per sequence, or a few verification tokens).
//
// Decoding reads every weight once per step, so these kernels exist to stream the weight matrix at
// memory bandwidth: each weight byte is loaded once per pass and used for all M rows, rows of W are
// split across the torch thread pool, and the inner loops are AVX-512 dot-product instructions.
//   bf16: AVX512-BF16 `vdpbf16ps` (bf16 x bf16 -> fp32 accumulate), the same products oneDNN forms.
//   int8: weight-only int8 with one scale per output row. Activations are quantized on the fly to
//         int8 in blocks of 64 values (absmax / 127), then AVX512-VNNI `vpdpbusd` forms 4-wide int8
//         dot products summed in int32 over each block.
//   int4: the portable nibble layout of quant/int4.py (byte j = q[2j] | q[2j+1] << 4, q in 0..15)
//         with per-group bf16 scale s and zero z: w = (q - 8) s + z. With int8 activations x^:
//         sum_k w x^ = sum_g [ s_g * sum_{k in g} q x^ + (z_g - 8 s_g) * sum_{k in g} x^ ].
// Anything these kernels do not cover (other CPUs, M > 64, odd widths) stays with PyTorch's ops; the
// Python side decides (qwen3lab/kernels/__init__.py).
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <c10/util/BFloat16.h>
#include <immintrin.h>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

namespace {

// Activation rows per pass over the weights. More rows reuse each loaded weight more, but every row
// adds dot products per weight; up to 8 rows in one pass beat passes of 4 for bf16, int8 and int4
// (int4's unpacking is shared by the extra rows). The bf16 pass uses the bf16 dot product: an
// fp32-FMA form on even / odd halves is slower at every row count.
constexpr int64_t kMaxRows = 4;
// Software prefetch of the next rows' weights (a few KB ahead of the hardware prefetcher): +5-10% on
// large bf16 / int4 matrices, neutral on int8.
constexpr bool kPrefetch = true;
constexpr int64_t kMaxRowsBf16 = 8;
constexpr int64_t kMaxRowsInt4 = 8;
constexpr int64_t kMaxRowsInt8 = 8;

inline __m512 bf16x16_to_fp32(__m256i v) {  // 16 bf16 -> 16 fp32 (exact)
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(v), 16));
}

// ---------------------------------------------------------------------------------------------
// bf16
template <int R, int MB>
void bf16_rows(const uint16_t* x, int64_t K, const uint16_t* W, int64_t n0, float* y, int64_t N) {
  __m512 acc[R][MB];
  _Pragma("GCC unroll 8") for (int r = 0; r < R; ++r)
    _Pragma("GCC unroll 8") for (int m = 0; m < MB; ++m) acc[r][m] = _mm512_setzero_ps();
  int64_t k = 0;
  for (; k + 32 <= K; k += 32) {
    __m512bh xv[MB];
    _Pragma("GCC unroll 8") for (int m = 0; m < MB; ++m) xv[m] = (__m512bh)_mm512_loadu_si512(x + m * K + k);
    _Pragma("GCC unroll 8") for (int r = 0; r < R; ++r) {
      if (kPrefetch) _mm_prefetch(reinterpret_cast<const char*>(W + (n0 + R + r) * K + k), _MM_HINT_T0);
      __m512bh w = (__m512bh)_mm512_loadu_si512(W + (n0 + r) * K + k);
      _Pragma("GCC unroll 8") for (int m = 0; m < MB; ++m) acc[r][m] = _mm512_dpbf16_ps(acc[r][m], w, xv[m]);
    }
  }
  if (k < K) {  // tail: masked loads read zeros past the end
    __mmask32 mask = (__mmask32)((1ull << (K - k)) - 1);
    __m512bh xv[MB];
    _Pragma("GCC unroll 8") for (int m = 0; m < MB; ++m) xv[m] = (__m512bh)_mm512_maskz_loadu_epi16(mask, x + m * K + k);
    _Pragma("GCC unroll 8") for (int r = 0; r < R; ++r) {
      __m512bh w = (__m512bh)_mm512_maskz_loadu_epi16(mask, W + (n0 + r) * K + k);
      _Pragma("GCC unroll 8") for (int m = 0; m < MB; ++m) acc[r][m] = _mm512_dpbf16_ps(acc[r][m], w, xv[m]);
    }
  }
  _Pragma("GCC unroll 8") for (int r = 0; r < R; ++r)
    _Pragma("GCC unroll 8") for (int m = 0; m < MB; ++m) y[m * N + n0 + r] = _mm512_reduce_add_ps(acc[r][m]);
}

template <int MB>
void bf16_pass(const uint16_t* x, int64_t K, const uint16_t* W, int64_t N, float* y) {
  constexpr int R = MB <= 4 ? 4 : 2;
  at::parallel_for(0, N / R, 16, [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; ++i) bf16_rows<R, MB>(x, K, W, i * R, y, N);
  });
  for (int64_t n = (N / R) * R; n < N; ++n) bf16_rows<1, MB>(x, K, W, n, y, N);
}

// ---------------------------------------------------------------------------------------------
// Activation quantization for int4: blocks of 32 values, symmetric int8.
struct QuantX {
  std::vector<int8_t> q;      // [M, K]
  std::vector<float> scale;   // [M, K / 32]
  std::vector<int32_t> bsum;  // [M, K / 32] sum of q over the block
};

QuantX quantize_rows(const at::BFloat16* x, int64_t M, int64_t K) {
  QuantX out;
  const int64_t B = K / 32;
  out.q.resize(M * K);
  out.scale.resize(M * B);
  out.bsum.resize(M * B);
  for (int64_t m = 0; m < M; ++m) {
    for (int64_t b = 0; b < B; ++b) {
      const at::BFloat16* xb = x + m * K + b * 32;
      float amax = 0.f;
      for (int j = 0; j < 32; ++j) amax = std::max(amax, std::fabs(static_cast<float>(xb[j])));
      const float d = amax / 127.f;
      const float inv = d > 0.f ? 1.f / d : 0.f;
      int32_t s = 0;
      for (int j = 0; j < 32; ++j) {
        const int v = static_cast<int>(std::nearbyint(static_cast<float>(xb[j]) * inv));
        out.q[m * K + b * 32 + j] = static_cast<int8_t>(v);
        s += v;
      }
      out.scale[m * B + b] = d;
      out.bsum[m * B + b] = s;
    }
  }
  return out;
}

// ---------------------------------------------------------------------------------------------
// int8 weights [N, K] (values -127..127), per-row scale; K a multiple of 64.
//
// Activations: int8 with one scale per block of kQBlock values, stored offset by 128 as unsigned bytes,
// the operand `vpdpbusd` wants unsigned: sum (q + 128) w = sum q w + 128 sum w, and the second term comes
// from one more `vpdpbusd` of 128s against the weights, shared by all rows (no per-row sign flip).
// Products accumulate in int32 over a block; each block then costs one conversion and FMA per row.
// Block size 64: on the real SmolLM2 (perplexity through the decode path) 32 and 64 cost +0.4% over
// weights-only int8, 128 +0.9% and 256 (llama.cpp's Q8_K) +1.9%, at equal kernel times.
constexpr int64_t kQBlock = 64;

struct QuantU8 {
  std::vector<uint8_t> u;  // [M, K] q + 128
  std::vector<float> d;    // [M, NB] block scales
  int64_t NB = 0;
};

QuantU8 quantize_rows_u8(const at::BFloat16* x, int64_t M, int64_t K) {
  QuantU8 out;
  out.NB = (K + kQBlock - 1) / kQBlock;
  out.u.resize(M * K);
  out.d.resize(M * out.NB);
  const auto* xs = reinterpret_cast<const uint16_t*>(x);
  const __m512i offset = _mm512_set1_epi32(128);
  for (int64_t m = 0; m < M; ++m) {
    for (int64_t b = 0; b < out.NB; ++b) {
      const int64_t k0 = b * kQBlock, k1 = std::min(K, k0 + kQBlock);
      __m512 amax = _mm512_setzero_ps();
      for (int64_t k = k0; k < k1; k += 16)
        amax = _mm512_max_ps(amax, _mm512_abs_ps(bf16x16_to_fp32(_mm256_loadu_si256(
                                       reinterpret_cast<const __m256i*>(xs + m * K + k)))));
      const float dm = _mm512_reduce_max_ps(amax) / 127.f;
      const __m512 inv = _mm512_set1_ps(dm > 0.f ? 1.f / dm : 0.f);
      for (int64_t k = k0; k < k1; k += 16) {
        const __m512 v = _mm512_mul_ps(bf16x16_to_fp32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(xs + m * K + k))), inv);
        const __m512i q = _mm512_add_epi32(_mm512_cvt_roundps_epi32(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC), offset);
        _mm_storeu_si128(reinterpret_cast<__m128i*>(out.u.data() + m * K + k), _mm512_cvtepi32_epi8(q));
      }
      out.d[m * out.NB + b] = dm;
    }
  }
  return out;
}

template <int R, int MB>
void int8_rows(const uint8_t* xu, const float* d, int64_t NB, int64_t K, const int8_t* W, int64_t n0, float* y,
               int64_t N) {
  __m512 acc[R][MB];
  _Pragma("GCC unroll 8") for (int r = 0; r < R; ++r)
    _Pragma("GCC unroll 8") for (int m = 0; m < MB; ++m) acc[r][m] = _mm512_setzero_ps();
  const __m512i c128 = _mm512_set1_epi8(static_cast<char>(0x80));
  for (int64_t b = 0; b < NB; ++b) {
    const int64_t k0 = b * kQBlock, k1 = std::min(K, k0 + kQBlock);
    __m512i dot[R][MB], corr[R];
    _Pragma("GCC unroll 8") for (int r = 0; r < R; ++r) {
      corr[r] = _mm512_setzero_si512();
      _Pragma("GCC unroll 8") for (int m = 0; m < MB; ++m) dot[r][m] = _mm512_setzero_si512();
    }
    for (int64_t k = k0; k < k1; k += 64) {
      _Pragma("GCC unroll 8") for (int r = 0; r < R; ++r) {
        if (kPrefetch) _mm_prefetch(reinterpret_cast<const char*>(W + (n0 + R + r) * K + k), _MM_HINT_T0);
        const __m512i w = _mm512_loadu_si512(W + (n0 + r) * K + k);
        corr[r] = _mm512_dpbusd_epi32(corr[r], c128, w);
        _Pragma("GCC unroll 8") for (int m = 0; m < MB; ++m)
          dot[r][m] = _mm512_dpbusd_epi32(dot[r][m], _mm512_loadu_si512(xu + m * K + k), w);
      }
    }
    _Pragma("GCC unroll 8") for (int m = 0; m < MB; ++m) {
      const __m512 dm = _mm512_set1_ps(d[m * NB + b]);
      _Pragma("GCC unroll 8") for (int r = 0; r < R; ++r)
        acc[r][m] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(_mm512_sub_epi32(dot[r][m], corr[r])), dm, acc[r][m]);
    }
  }
  _Pragma("GCC unroll 8") for (int r = 0; r < R; ++r)
    _Pragma("GCC unroll 8") for (int m = 0; m < MB; ++m) y[m * N + n0 + r] = _mm512_reduce_add_ps(acc[r][m]);
}

template <int MB>
void int8_pass(const uint8_t* xu, const float* d, int64_t NB, int64_t K, const int8_t* W, int64_t N, float* y) {
  // Registers: R * MB int32 block sums + R * MB fp32 accumulators + R corrections within 32.
  constexpr int R = MB == 1 ? 4 : MB <= 4 ? 2 : 1;
  at::parallel_for(0, N / R, 16, [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; ++i) int8_rows<R, MB>(xu, d, NB, K, W, i * R, y, N);
  });
  for (int64_t n = (N / R) * R; n < N; ++n) int8_rows<1, MB>(xu, d, NB, K, W, n, y, N);
}

// ---------------------------------------------------------------------------------------------
// int4 nibbles [N, K / 2] with bf16 scales / zeros [N, G], G = K / g; K a multiple of 128.
// x_lo / x_hi: the activations at even / odd k, so that a byte's low nibble meets x[2j], the high x[2j+1].
// The group size is a template parameter: with it known, the group of each lane is a shift, not a
// division per chunk (a runtime divide in the inner loop cost about a third of the kernel's time).

// Weight scale for each 32-bit lane of 128-weight chunk c (lane i: weights 128c + 8i .. +7, one group).
template <int GS>
inline __m512 int4_lane_scales(const uint16_t* srow, int64_t c, __m512i lane_group) {
  if constexpr (GS >= 128) {
    const uint32_t bits = static_cast<uint32_t>(srow[c * 128 / GS]) << 16;
    float f;
    std::memcpy(&f, &bits, 4);
    return _mm512_set1_ps(f);
  } else {
    constexpr int per_chunk = 128 / GS;  // 4 (g = 32) or 2 (g = 64) groups in a chunk
    __m128i raw;
    if constexpr (per_chunk == 4) {
      raw = _mm_loadl_epi64(reinterpret_cast<const __m128i*>(srow + c * 4));
    } else {
      int32_t two;
      std::memcpy(&two, srow + c * 2, 4);
      raw = _mm_cvtsi32_si128(two);
    }
    const __m128 f = _mm_castsi128_ps(_mm_slli_epi32(_mm_cvtepu16_epi32(raw), 16));
    return _mm512_permutexvar_ps(lane_group, _mm512_castps128_ps512(f));
  }
}

template <int GS, int MB>
void int4_row(const int8_t* xlo, const int8_t* xhi, const float* dxv, const float* xg, int64_t K,
              const uint8_t* Wrow, const uint16_t* srow, const uint16_t* zrow, int64_t G,
              const __m512i lane_group, float* y, int64_t N, int64_t n) {
  __m512 acc[MB];
  _Pragma("GCC unroll 8") for (int m = 0; m < MB; ++m) acc[m] = _mm512_setzero_ps();
  const __m512i zero = _mm512_setzero_si512(), low4 = _mm512_set1_epi8(0x0F);
  const int64_t C = K / 128, H = K / 2;
  for (int64_t c = 0; c < C; ++c) {
    if (kPrefetch) _mm_prefetch(reinterpret_cast<const char*>(Wrow + H + c * 64), _MM_HINT_T0);  // next row
    const __m512i b = _mm512_loadu_si512(Wrow + c * 64);
    const __m512i lo = _mm512_and_si512(b, low4);
    const __m512i hi = _mm512_and_si512(_mm512_srli_epi16(b, 4), low4);
    const __m512 s_lanes = int4_lane_scales<GS>(srow, c, lane_group);
    _Pragma("GCC unroll 8") for (int m = 0; m < MB; ++m) {
      __m512i dot = _mm512_dpbusd_epi32(zero, lo, _mm512_loadu_si512(xlo + m * H + c * 64));
      dot = _mm512_dpbusd_epi32(dot, hi, _mm512_loadu_si512(xhi + m * H + c * 64));
      const __m512 scale = _mm512_mul_ps(s_lanes, _mm512_loadu_ps(dxv + (m * C + c) * 16));
      acc[m] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(dot), scale, acc[m]);
    }
  }
  // Zero-point term: sum_g (z_g - 8 s_g) * sum_{k in g} x^.
  __m512 accz[MB];
  _Pragma("GCC unroll 8") for (int m = 0; m < MB; ++m) accz[m] = _mm512_setzero_ps();
  const __m512 eight = _mm512_set1_ps(8.f);
  for (int64_t i = 0; i < G; i += 16) {
    const int64_t left = G - i;
    const __mmask16 lm = left >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << left) - 1);
    const __m512 s = bf16x16_to_fp32(_mm256_maskz_loadu_epi16(lm, srow + i));
    const __m512 z = bf16x16_to_fp32(_mm256_maskz_loadu_epi16(lm, zrow + i));
    const __m512 mz = _mm512_fnmadd_ps(eight, s, z);
    _Pragma("GCC unroll 8") for (int m = 0; m < MB; ++m) accz[m] = _mm512_fmadd_ps(mz, _mm512_maskz_loadu_ps(lm, xg + m * G + i), accz[m]);
  }
  _Pragma("GCC unroll 8") for (int m = 0; m < MB; ++m) y[m * N + n] = _mm512_reduce_add_ps(_mm512_add_ps(acc[m], accz[m]));
}

template <int GS, int MB>
void int4_pass_g(const int8_t* xlo, const int8_t* xhi, const float* dxv, const float* xg, int64_t K, const uint8_t* W,
                 const uint16_t* s, const uint16_t* z, int64_t G, int64_t N, float* y) {
  alignas(64) int32_t idx[16];
  for (int i = 0; i < 16; ++i) idx[i] = GS < 128 ? 8 * i / GS : 0;
  const __m512i lane_group = _mm512_load_si512(idx);
  at::parallel_for(0, N, 64, [&](int64_t b, int64_t e) {
    for (int64_t n = b; n < e; ++n)
      int4_row<GS, MB>(xlo, xhi, dxv, xg, K, W + n * (K / 2), s + n * G, z + n * G, G, lane_group, y, N, n);
  });
}

template <int MB>
void int4_pass(const int8_t* xlo, const int8_t* xhi, const float* dxv, const float* xg, int64_t K, const uint8_t* W,
               const uint16_t* s, const uint16_t* z, int64_t G, int64_t g, int64_t N, float* y) {
  switch (g) {
    case 32: int4_pass_g<32, MB>(xlo, xhi, dxv, xg, K, W, s, z, G, N, y); break;
    case 64: int4_pass_g<64, MB>(xlo, xhi, dxv, xg, K, W, s, z, G, N, y); break;
    case 128: int4_pass_g<128, MB>(xlo, xhi, dxv, xg, K, W, s, z, G, N, y); break;
    default: int4_pass_g<256, MB>(xlo, xhi, dxv, xg, K, W, s, z, G, N, y); break;
  }
}

// Per-lane activation scales: lane i of 64-weight chunk c (int8) covers weights 64c + 4i .. +3, and of
// 128-weight chunk c (int4) weights 128c + 8i .. +7; each inside one 32-value activation block.
std::vector<float> lane_scales(const QuantX& xq, int64_t M, int64_t K, int64_t chunk) {
  const int64_t C = K / chunk, B = K / 32, per_lane = chunk / 16;
  std::vector<float> out(M * C * 16);
  for (int64_t m = 0; m < M; ++m)
    for (int64_t c = 0; c < C; ++c)
      for (int i = 0; i < 16; ++i) out[(m * C + c) * 16 + i] = xq.scale[m * B + (c * chunk + i * per_lane) / 32];
  return out;
}

void check_x(const at::Tensor& x, int64_t K, const char* what) {
  TORCH_CHECK(x.dim() == 2 && x.size(1) == K, what, ": x must be [M, ", K, "]");
  TORCH_CHECK(x.scalar_type() == at::kBFloat16 && x.is_contiguous() && x.device().is_cpu(),
              what, ": x must be contiguous bf16 on the CPU");
}

template <typename F>
void by_rows(int64_t M, F&& f, int64_t per_pass = kMaxRows) {  // run f(m0, rows) over blocks of at most per_pass
  for (int64_t m0 = 0; m0 < M; m0 += per_pass) f(m0, std::min<int64_t>(per_pass, M - m0));
}

#define DISPATCH_ROWS(rows, FN, ...)      \
  switch (rows) {                          \
    case 1: FN<1>(__VA_ARGS__); break;     \
    case 2: FN<2>(__VA_ARGS__); break;     \
    case 3: FN<3>(__VA_ARGS__); break;     \
    case 4: FN<4>(__VA_ARGS__); break;     \
    case 5: FN<5>(__VA_ARGS__); break;     \
    case 6: FN<6>(__VA_ARGS__); break;     \
    case 7: FN<7>(__VA_ARGS__); break;     \
    default: FN<8>(__VA_ARGS__); break;    \
  }

}  // namespace

at::Tensor gemv_bf16(const at::Tensor& x, const at::Tensor& w) {
  TORCH_CHECK(w.dim() == 2 && w.scalar_type() == at::kBFloat16 && w.is_contiguous(), "gemv_bf16: bad weight");
  const int64_t N = w.size(0), K = w.size(1), M = x.size(0);
  check_x(x, K, "gemv_bf16");
  at::Tensor y = at::empty({M, N}, x.options().dtype(at::kFloat));
  const auto* xp = reinterpret_cast<const uint16_t*>(x.data_ptr<at::BFloat16>());
  const auto* wp = reinterpret_cast<const uint16_t*>(w.data_ptr<at::BFloat16>());
  by_rows(M, [&](int64_t m0, int64_t rows) {
    DISPATCH_ROWS(rows, bf16_pass, xp + m0 * K, K, wp, N, y.data_ptr<float>() + m0 * N)
  }, kMaxRowsBf16);
  return y.to(at::kBFloat16);
}

at::Tensor gemv_int8(const at::Tensor& x, const at::Tensor& w, const at::Tensor& scale) {
  TORCH_CHECK(w.dim() == 2 && w.scalar_type() == at::kChar && w.is_contiguous(), "gemv_int8: bad weight");
  const int64_t N = w.size(0), K = w.size(1), M = x.size(0);
  TORCH_CHECK(K % 64 == 0, "gemv_int8: in_features must be a multiple of 64");
  TORCH_CHECK(scale.scalar_type() == at::kFloat && scale.numel() == N, "gemv_int8: scale must be fp32 [N]");
  check_x(x, K, "gemv_int8");
  at::Tensor y = at::empty({M, N}, x.options().dtype(at::kFloat));
  const QuantU8 xq = quantize_rows_u8(x.data_ptr<at::BFloat16>(), M, K);
  by_rows(M, [&](int64_t m0, int64_t rows) {
    DISPATCH_ROWS(rows, int8_pass, xq.u.data() + m0 * K, xq.d.data() + m0 * xq.NB, xq.NB, K, w.data_ptr<int8_t>(), N,
                  y.data_ptr<float>() + m0 * N)
  }, kMaxRowsInt8);
  y.mul_(scale);
  return y.to(at::kBFloat16);
}

at::Tensor gemv_int4(const at::Tensor& x, const at::Tensor& w, const at::Tensor& scales, const at::Tensor& zeros,
                     int64_t group_size) {
  TORCH_CHECK(w.dim() == 2 && w.scalar_type() == at::kByte && w.is_contiguous(), "gemv_int4: bad weight");
  const int64_t N = w.size(0), K = w.size(1) * 2, M = x.size(0), G = K / group_size;
  TORCH_CHECK(K % 128 == 0 && (group_size == 32 || group_size == 64 || group_size == 128 || group_size == 256) &&
                  K % group_size == 0,
              "gemv_int4: in_features must be a multiple of 128 and of the group size (32, 64, 128 or 256)");
  TORCH_CHECK(scales.scalar_type() == at::kBFloat16 && zeros.scalar_type() == at::kBFloat16 &&
              scales.is_contiguous() && zeros.is_contiguous() && scales.numel() == N * G && zeros.numel() == N * G,
              "gemv_int4: scales and zeros must be contiguous bf16 [N, K / group_size]");
  check_x(x, K, "gemv_int4");
  const QuantX xq = quantize_rows(x.data_ptr<at::BFloat16>(), M, K);
  const std::vector<float> dxv = lane_scales(xq, M, K, 128);
  // Deinterleave by parity and sum the dequantized activations per weight group.
  std::vector<int8_t> xlo(M * K / 2), xhi(M * K / 2);
  std::vector<float> xg(M * G, 0.f);
  const int64_t B = K / 32;
  for (int64_t m = 0; m < M; ++m) {
    for (int64_t j = 0; j < K / 2; ++j) {
      xlo[m * K / 2 + j] = xq.q[m * K + 2 * j];
      xhi[m * K / 2 + j] = xq.q[m * K + 2 * j + 1];
    }
    for (int64_t b = 0; b < B; ++b) xg[m * G + b * 32 / group_size] += xq.scale[m * B + b] * xq.bsum[m * B + b];
  }
  at::Tensor y = at::empty({M, N}, x.options().dtype(at::kFloat));
  const auto* sp = reinterpret_cast<const uint16_t*>(scales.data_ptr<at::BFloat16>());
  const auto* zp = reinterpret_cast<const uint16_t*>(zeros.data_ptr<at::BFloat16>());
  const int64_t C = K / 128;
  by_rows(M, [&](int64_t m0, int64_t rows) {
    DISPATCH_ROWS(rows, int4_pass, xlo.data() + m0 * K / 2, xhi.data() + m0 * K / 2, dxv.data() + m0 * C * 16,
                  xg.data() + m0 * G, K, w.data_ptr<uint8_t>(), sp, zp, G, group_size, N,
                  y.data_ptr<float>() + m0 * N)
  }, kMaxRowsInt4);
  return y.to(at::kBFloat16);
}

// Prefill-sized products dequantize the weight to bf16 once per call and hand it to the float GEMM
// (oneDNN). These loops are vectorized and parallel: the plain PyTorch expression for int8
// (w.to(bf16) * scale) took 60% of the GEMM's own time on a 512-token prompt.
namespace {
inline void store_bf16x32(at::BFloat16* out, __m512 a, __m512 b) {  // a: elements 0..15, b: 16..31
  _mm512_storeu_si512(out, (__m512i)_mm512_cvtne2ps_pbh(b, a));
}
}  // namespace

at::Tensor dequant_out(const c10::optional<at::Tensor>& out, int64_t N, int64_t K, const at::Tensor& like) {
  // Writing into a caller's reused buffer: fresh pages for a 50-100 MB weight cost a page fault each,
  // as much time as the dequantization itself.
  if (out.has_value()) {
    TORCH_CHECK(out->scalar_type() == at::kBFloat16 && out->is_contiguous() && out->numel() == N * K,
                "dequant: out must be contiguous bf16 with N * K elements");
    return out->view({N, K});
  }
  return at::empty({N, K}, like.options().dtype(at::kBFloat16));
}

at::Tensor dequant_int8(const at::Tensor& w, const at::Tensor& scale, const c10::optional<at::Tensor>& out_buf) {
  TORCH_CHECK(w.dim() == 2 && w.scalar_type() == at::kChar && w.is_contiguous(), "dequant_int8: bad weight");
  const int64_t N = w.size(0), K = w.size(1);
  TORCH_CHECK(scale.scalar_type() == at::kFloat && scale.numel() == N, "dequant_int8: scale must be fp32 [N]");
  at::Tensor out = dequant_out(out_buf, N, K, scale);
  const int8_t* wp = w.data_ptr<int8_t>();
  const float* sp = scale.data_ptr<float>();
  at::BFloat16* op = out.data_ptr<at::BFloat16>();
  at::parallel_for(0, N, 16, [&](int64_t b, int64_t e) {
    for (int64_t n = b; n < e; ++n) {
      const __m512 sv = _mm512_set1_ps(sp[n]);
      const int8_t* row = wp + n * K;
      at::BFloat16* orow = op + n * K;
      int64_t k = 0;
      for (; k + 32 <= K; k += 32) {
        const __m512 lo = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(row + k))));
        const __m512 hi = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(row + k + 16))));
        store_bf16x32(orow + k, _mm512_mul_ps(lo, sv), _mm512_mul_ps(hi, sv));
      }
      for (; k < K; ++k) orow[k] = static_cast<at::BFloat16>(static_cast<float>(row[k]) * sp[n]);
    }
  });
  return out;
}

at::Tensor dequant_int4(const at::Tensor& w, const at::Tensor& scales, const at::Tensor& zeros, int64_t group_size,
                        const c10::optional<at::Tensor>& out_buf) {
  const int64_t N = w.size(0), K = w.size(1) * 2, G = K / group_size;
  TORCH_CHECK(scales.numel() == N * G && zeros.numel() == N * G && K % group_size == 0 && group_size % 32 == 0,
              "dequant_int4: bad shapes");
  at::Tensor out = dequant_out(out_buf, N, K, scales);
  const uint8_t* wp = w.data_ptr<uint8_t>();
  const at::BFloat16* sp = scales.data_ptr<at::BFloat16>();
  const at::BFloat16* zp = zeros.data_ptr<at::BFloat16>();
  at::BFloat16* op = out.data_ptr<at::BFloat16>();
  const __m512i low4 = _mm512_set1_epi32(0x0F), high4 = _mm512_set1_epi32(0xF0);
  at::parallel_for(0, N, 16, [&](int64_t b, int64_t e) {
    for (int64_t n = b; n < e; ++n) {
      for (int64_t gi = 0; gi < G; ++gi) {
        const float s = static_cast<float>(sp[n * G + gi]), z = static_cast<float>(zp[n * G + gi]);
        const __m512 sv = _mm512_set1_ps(s), base = _mm512_set1_ps(z - 8.f * s);
        for (int64_t k = gi * group_size; k < (gi + 1) * group_size; k += 32) {
          // 16 bytes = 32 nibbles; dword i = low nibble | high nibble << 16 puts weights 2i, 2i+1 in order.
          const __m512i v = _mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(wp + n * (K / 2) + k / 2)));
          const __m512i pairs = _mm512_or_si512(_mm512_and_si512(v, low4), _mm512_slli_epi32(_mm512_and_si512(v, high4), 12));
          const __m512 a = _mm512_cvtepi32_ps(_mm512_cvtepi16_epi32(_mm512_castsi512_si256(pairs)));
          const __m512 c = _mm512_cvtepi32_ps(_mm512_cvtepi16_epi32(_mm512_extracti64x4_epi64(pairs, 1)));
          store_bf16x32(op + n * K + k, _mm512_fmadd_ps(a, sv, base), _mm512_fmadd_ps(c, sv, base));
        }
      }
    }
  });
  return out;
}
