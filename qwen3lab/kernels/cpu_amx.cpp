// bf16 and weight-only int8 / int4 products on Intel AMX tiles, for decode batches (1..16 rows per pass).
//
// The AVX-512 VNNI kernels in cpu_gemv.cpp spend several vector instructions per weight per activation
// row, so at 8 rows they are compute-bound on two cores (int8: 5.5 ms for 19456 x 2560 at 8 rows against
// 1.2 ms at one). One AMX `tdpbssd` multiplies a 16 x 64 int8 tile by a 64 x 16 tile in a few dozen
// cycles, so here the work per weight hardly grows with the number of rows and the pass stays at memory
// bandwidth up to 16 rows.
//
// Layout trick: the weight [N, K] is the A operand as stored (16 output rows x 64 bytes of K, loaded with
// stride K), and the activations are the B operand, repacked per call into AMX's 4-byte groups
// (B[r][4m + j] = x[m][64b + 4r + j]). So the checkpoint layout is unchanged and C[n][m] = sum_k w x.
//
// Each 64-value block of K has its own activation scale (int8, as in cpu_gemv.cpp) or 32-value weight
// group (int4), so each block's exact int32 tile is converted to fp32 and scaled before it is summed.
// Every row's arithmetic is independent of how many rows share the pass: a row gets bit-identical
// results alone or in a batch of 16 (decoding and speculative verification agree).
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <c10/util/BFloat16.h>
#include <immintrin.h>
#include <sys/syscall.h>
#include <unistd.h>
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

namespace {

constexpr int64_t kBlock = 64;    // K per tile product (and int8 activation scale block)
constexpr int64_t kMaxM = 16;
constexpr int64_t kAhead = 8;     // activation rows per pass: B's 64-byte rows hold 16 x 4 bytes

struct alignas(64) TileConfig {
  uint8_t palette_id = 1;
  uint8_t start_row = 0;
  uint8_t reserved[14] = {};
  uint16_t colsb[16] = {};
  uint8_t rows[16] = {};
};

// Linux hands out the 8 KB of tile state only on request (once per process); without it tile
// instructions fault.
bool request_amx() {
  constexpr long kReqXcompPerm = 0x1023, kXtileData = 18;
  static const bool ok = syscall(SYS_arch_prctl, kReqXcompPerm, kXtileData) == 0;
  return ok;
}

// tmm0/tmm3: C (16 x M int32); tmm1/tmm4: A, 16 weight rows x kA bytes; tmm2/tmm5: B (kA / 4 x 4M bytes).
void configure(int64_t M, int64_t a_bytes) {
  TileConfig cfg;
  for (int t : {0, 3}) { cfg.rows[t] = 16; cfg.colsb[t] = static_cast<uint16_t>(M * 4); }
  for (int t : {1, 4}) { cfg.rows[t] = 16; cfg.colsb[t] = static_cast<uint16_t>(a_bytes); }
  for (int t : {2, 5}) { cfg.rows[t] = static_cast<uint8_t>(a_bytes / 4); cfg.colsb[t] = static_cast<uint16_t>(M * 4); }
  _tile_loadconfig(&cfg);
}

inline __m512 bf16x16(const uint16_t* p) {
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p))), 16));
}

// Signed int8 activations in their natural order [M, K] (int4's A operand), one scale per `block`
// values: d [K / block][16] (lanes >= M zero) and bsum = d * the block's sum of q (int4's zero-point term).
struct QuantA {
  std::vector<int8_t> q;
  std::vector<float> d, bsum;
};

QuantA quantize_a(const at::BFloat16* x, int64_t M, int64_t K, int64_t block) {
  QuantA out;
  const int64_t NB = K / block;
  out.q.resize(M * K);
  out.d.assign(NB * 16, 0.f);
  out.bsum.assign(NB * 16, 0.f);
  const auto* xs = reinterpret_cast<const uint16_t*>(x);
  for (int64_t m = 0; m < M; ++m)
    for (int64_t b = 0; b < NB; ++b) {
      const uint16_t* xr = xs + m * K + b * block;
      __m512 amax = _mm512_setzero_ps();
      for (int64_t k = 0; k < block; k += 16) amax = _mm512_max_ps(amax, _mm512_abs_ps(bf16x16(xr + k)));
      const float dm = _mm512_reduce_max_ps(amax) / 127.f;
      const __m512 inv = _mm512_set1_ps(dm > 0.f ? 1.f / dm : 0.f);
      __m512i qsum = _mm512_setzero_si512();
      for (int64_t k = 0; k < block; k += 16) {
        const __m512i v = _mm512_cvt_roundps_epi32(_mm512_mul_ps(bf16x16(xr + k), inv),
                                                   _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
        qsum = _mm512_add_epi32(qsum, v);
        _mm_storeu_si128(reinterpret_cast<__m128i*>(out.q.data() + m * K + b * block + k), _mm512_cvtepi32_epi8(v));
      }
      out.d[b * 16 + m] = dm;
      out.bsum[b * 16 + m] = dm * static_cast<float>(_mm512_reduce_add_epi32(qsum));
    }
  return out;
}

// The same activations repacked for int8's B tile: xb [K / block][block / 4][M][4].
struct PackedX {
  std::vector<int8_t> xb;
  std::vector<float> d;  // [K / block][16] (lanes >= M zero)
};

PackedX pack_x(const at::BFloat16* x, int64_t M, int64_t K, int64_t block) {
  QuantA qa = quantize_a(x, M, K, block);
  PackedX out;
  out.xb.resize(M * K);
  for (int64_t b = 0; b < K / block; ++b)
    for (int64_t p = 0; p < block; ++p)
      for (int64_t m = 0; m < M; ++m) out.xb[b * block * M + (p / 4) * M * 4 + m * 4 + p % 4] = qa.q[m * K + b * block + p];
  out.d = std::move(qa.d);
  return out;
}

// Write the 16 x M block acc (row i: output n0 + i, lane m) into y [M, N] times the row scales.
inline void store_rows(const __m512* acc, int64_t M, int64_t N, int64_t n0, const float* row_scale, float* y) {
  alignas(64) float t[16][16];
  for (int i = 0; i < 16; ++i) _mm512_store_ps(t[i], acc[i]);
  for (int64_t m = 0; m < M; ++m)
    for (int i = 0; i < 16; ++i) y[m * N + n0 + i] = t[i][m] * (row_scale ? row_scale[n0 + i] : 1.f);
}

void check_x(const at::Tensor& x, int64_t K, const char* what) {
  TORCH_CHECK(x.dim() == 2 && x.size(1) == K, what, ": x must be [M, ", K, "]");
  TORCH_CHECK(x.scalar_type() == at::kBFloat16 && x.is_contiguous() && x.device().is_cpu(),
              what, ": x must be contiguous bf16 on the CPU");
}

}  // namespace

bool amx_available() { return request_amx(); }

// y [M, N] = x [M, K] @ (w [N, K] int8 * scale [N])^T, activations int8 per 64 values.
at::Tensor amx_int8(const at::Tensor& x, const at::Tensor& w, const at::Tensor& scale) {
  TORCH_CHECK(request_amx(), "amx_int8: the kernel could not get AMX tile state from the OS");
  TORCH_CHECK(w.dim() == 2 && w.scalar_type() == at::kChar && w.is_contiguous(), "amx_int8: bad weight");
  const int64_t N = w.size(0), K = w.size(1), M = x.size(0);
  TORCH_CHECK(K % kBlock == 0 && N % 16 == 0, "amx_int8: in_features must be a multiple of 64, out_features of 16");
  TORCH_CHECK(scale.scalar_type() == at::kFloat && scale.numel() == N, "amx_int8: scale must be fp32 [N]");
  check_x(x, K, "amx_int8");
  at::Tensor y = at::empty({M, N}, x.options().dtype(at::kFloat));
  const int8_t* wp = w.data_ptr<int8_t>();
  const float* sp = scale.data_ptr<float>();
  for (int64_t m0 = 0; m0 < M; m0 += kMaxM) {
    const int64_t rows = std::min(kMaxM, M - m0);
    const PackedX px = pack_x(x.data_ptr<at::BFloat16>() + m0 * K, rows, K, kBlock);
    float* yp = y.data_ptr<float>() + m0 * N;
    const int64_t NB = K / kBlock, bstride = kBlock * rows;
    at::parallel_for(0, N / 16, 4, [&](int64_t g0, int64_t g1) {
      configure(rows, kBlock);
      alignas(64) int32_t c0[16][16], c1[16][16];
      for (int64_t g = g0; g < g1; ++g) {
        const int8_t* a = wp + g * 16 * K;
        __m512 acc[16];
        for (int i = 0; i < 16; ++i) acc[i] = _mm512_setzero_ps();
        int64_t b = 0;
        for (; b + 2 <= NB; b += 2) {  // two blocks in flight: tile products overlap the conversions
          // 16 weight rows are 16 streams: fetching ahead (into the next row group at the end) beats
          // waiting for the hardware prefetcher (a fifth of the time at one row).
          for (int64_t pb = b + kAhead; pb < b + kAhead + 2; ++pb) {
            const int8_t* p = pb < NB ? a + pb * kBlock : (g + 1 < g1 ? a + 16 * K + (pb - NB) * kBlock : nullptr);
            if (p) for (int i = 0; i < 16; ++i) _mm_prefetch(reinterpret_cast<const char*>(p + i * K), _MM_HINT_T0);
          }
          _tile_zero(0);
          _tile_zero(3);
          _tile_loadd(1, a + b * kBlock, K);
          _tile_loadd(2, px.xb.data() + b * bstride, rows * 4);
          _tile_loadd(4, a + (b + 1) * kBlock, K);
          _tile_loadd(5, px.xb.data() + (b + 1) * bstride, rows * 4);
          _tile_dpbssd(0, 1, 2);
          _tile_dpbssd(3, 4, 5);
          _tile_stored(0, c0, 64);
          _tile_stored(3, c1, 64);
          const __m512 d0 = _mm512_loadu_ps(px.d.data() + b * 16), d1 = _mm512_loadu_ps(px.d.data() + (b + 1) * 16);
          for (int i = 0; i < 16; ++i) {
            acc[i] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(_mm512_load_si512(c0[i])), d0, acc[i]);
            acc[i] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(_mm512_load_si512(c1[i])), d1, acc[i]);
          }
        }
        if (b < NB) {
          _tile_zero(0);
          _tile_loadd(1, a + b * kBlock, K);
          _tile_loadd(2, px.xb.data() + b * bstride, rows * 4);
          _tile_dpbssd(0, 1, 2);
          _tile_stored(0, c0, 64);
          const __m512 d0 = _mm512_loadu_ps(px.d.data() + b * 16);
          for (int i = 0; i < 16; ++i) acc[i] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(_mm512_load_si512(c0[i])), d0, acc[i]);
        }
        store_rows(acc, rows, N, g * 16, sp, yp);
      }
      _tile_release();
    });
  }
  return y.to(at::kBFloat16);
}

// ---------------------------------------------------------------------------------------------
// int4 (group-wise scale s and zero z, w = (q - 8) s + z, q in 0..15), group size g in {32, 64, 128, 256}.
//
// Unlike int8, the weights are the B operand here, so each C row is one activation row with 16 outputs
// per vector and the per-block float work is per activation row (int8's is per output row, 16 per
// group, affordable there because nothing else is done per weight). B wants 4-byte k groups per output
// column, so prepare() repacks the nibbles once at load (amx_pack_int4): per 16 output rows and KT-wide
// block of K, the B tile's rows r (KT / 4 of them, 64 bytes each, byte 4n + j = q[n][KT b + 4r + j])
// are stored in pairs, byte c = row 2t [c] | row 2t+1 [c] << 4, so one 64-byte load unpacks into two
// tile rows with an AND and a shift. KT = 32 for g = 32, else 64; activations are int8 per KT values.
//   sum_k w x^ = sum_blocks [ s_g d_b * sum_k q x_q + (z_g - 8 s_g) d_b * sum_k x_q ]
// Scales and zeros are stored [N / 16, G, 16] bf16 so each block reads one vector of each.
namespace {

constexpr int64_t kInt4VnniRows = 2;  // up to this many rows the VNNI form is faster (19456 x 2560: 1.55 vs 1.70 ms at 1 row)

inline int64_t int4_tile_k(int64_t group_size) { return group_size == 32 ? 32 : 64; }

// Packed weight byte index for (n, k): group of 16 rows, block, row pair, byte.
inline int64_t amx4_index(int64_t n, int64_t k, int64_t K, int64_t KT, int* shift) {
  const int64_t g = n / 16, nn = n % 16, b = k / KT, kk = k % KT, r = kk / 4, j = kk % 4;
  *shift = (r & 1) * 4;
  return g * 16 * (K / 2) + b * (KT * 8) + (r / 2) * 64 + nn * 4 + j;
}

// One block's contribution, the same float steps for both forms (their bits agree because of it):
// acc[m] += cvt(dot[m]) * (s_g d_b[m]) + (z_g - 8 s_g) * bsum_b[m]; dot(m) is the block's int32 sums.
template <int M, typename Dot>
inline void int4_add_block(__m512* acc, Dot dot, const uint16_t* sg, const uint16_t* zg, int64_t grp,
                           const float* d, const float* bsum, int64_t blk) {
  const __m512 sv = bf16x16(sg + grp * 16);
  const __m512 mz = _mm512_fnmadd_ps(_mm512_set1_ps(8.f), sv, bf16x16(zg + grp * 16));
  _Pragma("GCC unroll 16") for (int m = 0; m < M; ++m) {
    acc[m] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(dot(m)), _mm512_mul_ps(sv, _mm512_set1_ps(d[blk * 16 + m])), acc[m]);
    acc[m] = _mm512_fmadd_ps(mz, _mm512_set1_ps(bsum[blk * 16 + m]), acc[m]);
  }
}

// Software prefetch of every cache line of the block kInt4AheadBytes on (and of its group's scale and
// zero vectors): one line per block, as before, left 3 of 4 lines to the hardware prefetcher and ran
// at 13-14 GB/s on 19456 x 2560 g32 at one row; all lines reach 17-18 GB/s.
constexpr int64_t kInt4AheadBytes = 6144;
template <int KT>
inline void int4_prefetch(const uint8_t* src, const uint16_t* sg, const uint16_t* zg, int64_t blk, int64_t per_group) {
  constexpr int64_t ahead = kInt4AheadBytes / (KT * 8);  // blocks
  _Pragma("GCC unroll 8") for (int l = 0; l < KT / 8; ++l)
    _mm_prefetch(reinterpret_cast<const char*>(src + ahead * KT * 8 + 64 * l), _MM_HINT_T0);
  if ((blk + ahead) % (2 * per_group) == 0) {  // 64 bytes hold two groups' vectors
    _mm_prefetch(reinterpret_cast<const char*>(sg + (blk + ahead) / per_group * 16), _MM_HINT_T0);
    _mm_prefetch(reinterpret_cast<const char*>(zg + (blk + ahead) / per_group * 16), _MM_HINT_T0);
  }
}

template <int M, int KT>
void int4_amx_groups(const int8_t* xq, const float* d, const float* bsum, int64_t K, const uint8_t* W,
                     const uint16_t* s, const uint16_t* z, int64_t G, int64_t group_size, int64_t g0, int64_t g1,
                     float* y, int64_t N) {
  constexpr int kRows = KT / 4;  // B tile rows
  const int64_t NB = K / KT, per_group = group_size / KT;
  // Two pairs of B buffers: the next pair of blocks is unpacked while the tiles work on this one.
  alignas(64) uint8_t bbuf[2][2][kRows][64];
  alignas(64) int32_t cbuf[2][16][16];
  const __m512i low4 = _mm512_set1_epi8(0x0F);
  auto unpack = [&](const uint8_t* wg, const uint16_t* sg, const uint16_t* zg, int64_t b, uint8_t (*dst)[kRows][64]) {
    for (int u = 0; u < 2 && b + u < NB; ++u) {
      const uint8_t* src = wg + (b + u) * (KT * 8);
      int4_prefetch<KT>(src, sg, zg, b + u, per_group);
      for (int t = 0; t < kRows / 2; ++t) {
        const __m512i v = _mm512_loadu_si512(src + t * 64);
        _mm512_store_si512(dst[u][2 * t], _mm512_and_si512(v, low4));
        _mm512_store_si512(dst[u][2 * t + 1], _mm512_and_si512(_mm512_srli_epi16(v, 4), low4));
      }
    }
  };
  for (int64_t g = g0; g < g1; ++g) {
    const uint8_t* wg = W + g * 16 * (K / 2);
    const uint16_t* sg = s + g * G * 16;
    const uint16_t* zg = z + g * G * 16;
    __m512 acc[M];
    for (int m = 0; m < M; ++m) acc[m] = _mm512_setzero_ps();
    unpack(wg, sg, zg, 0, bbuf[0]);
    for (int64_t b = 0, it = 0; b < NB; b += 2, ++it) {
      const int nb = b + 1 < NB ? 2 : 1;
      uint8_t (*cur)[kRows][64] = bbuf[it & 1];
      _tile_zero(0);
      _tile_loadd(1, xq + b * KT, K);
      _tile_loadd(2, cur[0], 64);
      _tile_dpbsud(0, 1, 2);
      if (nb == 2) {
        _tile_zero(3);
        _tile_loadd(4, xq + (b + 1) * KT, K);
        _tile_loadd(5, cur[1], 64);
        _tile_dpbsud(3, 4, 5);
      }
      _tile_stored(0, cbuf[0], 64);
      if (nb == 2) _tile_stored(3, cbuf[1], 64);
      if (b + 2 < NB) unpack(wg, sg, zg, b + 2, bbuf[(it + 1) & 1]);
      for (int u = 0; u < nb; ++u)
        int4_add_block<M>(acc, [&](int m) { return _mm512_load_si512(cbuf[u][m]); }, sg, zg, (b + u) / per_group, d,
                          bsum, b + u);
    }
    for (int m = 0; m < M; ++m) _mm512_storeu_ps(y + m * N + g * 16, acc[m]);
  }
}

// g = 32 with at most 8 rows: two blocks per tile product. The A tile stacks block 2p's activations
// (rows 0..M-1, k bytes 0..31) over block 2p+1's (rows M..2M-1, k bytes 32..63) with zeros elsewhere, so
// against the pair's 64-k B tile C rows 0..M-1 hold block 2p's sums and rows M..2M-1 block 2p+1's: half
// the tile loads and stores of int4_amx_groups for the same multiplier cycles (they scale with A's
// rows). Two tile sets alternate so a pair's products run while the previous pair's sums are scaled.
template <int M>
void int4_amx_pairs(const int8_t* xd, const float* d, const float* bsum, int64_t K, const uint8_t* W,
                    const uint16_t* s, const uint16_t* z, int64_t G, int64_t g0, int64_t g1, float* y, int64_t N) {
  constexpr int KT = 32, kBuf = 4, kAheadPairs = 3;
  const int64_t NP = K / 64, total = (g1 - g0) * NP;
  // Groups are contiguous in the packed weight and in the [N / 16, G, 16] scales / zeros, so the pairs of
  // all this task's groups form one stream: pair i is at W + 512 i, its blocks' vectors at 16 (2 i + u).
  const uint8_t* wb = W + g0 * 16 * (K / 2);
  const uint16_t* sb = s + g0 * G * 16;
  const uint16_t* zb = z + g0 * G * 16;
  alignas(64) uint8_t bbuf[kBuf][16][64];
  alignas(64) int32_t cbuf[2][16][16];
  const __m512i low4 = _mm512_set1_epi8(0x0F);
  auto unpack = [&](int64_t i) {
    uint8_t (*dst)[64] = bbuf[i % kBuf];
    for (int u = 0; u < 2; ++u) {
      const uint8_t* src = wb + (2 * i + u) * (KT * 8);
      int4_prefetch<KT>(src, sb, zb, 2 * i + u, 1);
      for (int t = 0; t < 4; ++t) {
        const __m512i v = _mm512_loadu_si512(src + t * 64);
        _mm512_store_si512(dst[8 * u + 2 * t], _mm512_and_si512(v, low4));
        _mm512_store_si512(dst[8 * u + 2 * t + 1], _mm512_and_si512(_mm512_srli_epi16(v, 4), low4));
      }
    }
  };
  __m512 acc[M];
  for (int m = 0; m < M; ++m) acc[m] = _mm512_setzero_ps();
  auto finish = [&](int64_t i) {
    const int32_t (*cb)[16] = cbuf[i & 1];
    const int64_t p = i % NP;
    // Scale vectors by the stream's block index, activation scales by the block's index within K.
    int4_add_block<M>(acc, [&](int m) { return _mm512_load_si512(cb[m]); }, sb, zb, 2 * i, d, bsum, 2 * p);
    int4_add_block<M>(acc, [&](int m) { return _mm512_load_si512(cb[M + m]); }, sb, zb, 2 * i + 1, d, bsum, 2 * p + 1);
    if (p == NP - 1) {
      const int64_t g = g0 + i / NP;
      for (int m = 0; m < M; ++m) {
        _mm512_storeu_ps(y + m * N + g * 16, acc[m]);
        acc[m] = _mm512_setzero_ps();
      }
    }
  };
  auto store = [&](int64_t i) {
    if (i & 1) _tile_stored(3, cbuf[1], 64); else _tile_stored(0, cbuf[0], 64);
  };
  for (int64_t i = 0; i < std::min<int64_t>(kAheadPairs, total); ++i) unpack(i);
  for (int64_t i = 0; i < total; ++i) {
    const int8_t* xa = xd + (i % NP) * 2 * M * 64;
    if (i & 1) {
      _tile_loadd(4, xa, 64);
      _tile_loadd(5, bbuf[i % kBuf], 64);
      _tile_zero(3);
      _tile_dpbsud(3, 4, 5);
    } else {
      _tile_loadd(1, xa, 64);
      _tile_loadd(2, bbuf[i % kBuf], 64);
      _tile_zero(0);
      _tile_dpbsud(0, 1, 2);
    }
    // Unpacked three pairs ahead: a tile load of freshly stored bytes waits for the stores to reach the
    // cache, and one pair ahead is not enough to hide that at 8 rows.
    if (i + kAheadPairs < total) unpack(i + kAheadPairs);
    if (i > 0) {  // the previous pair's sums: its products ran while this pair's were issued
      store(i - 1);
      finish(i - 1);
    }
  }
  store(total - 1);
  finish(total - 1);
}

// Activations for int4_amx_pairs: [K / 64][2M][64], rows m and M + m hold row m's two 32-value halves.
std::vector<int8_t> pair_rows(const int8_t* q, int64_t M, int64_t K) {
  std::vector<int8_t> out(K / 64 * 2 * M * 64, 0);
  for (int64_t p = 0; p < K / 64; ++p)
    for (int64_t m = 0; m < M; ++m) {
      std::memcpy(&out[(p * 2 * M + m) * 64], q + m * K + 64 * p, 32);
      std::memcpy(&out[(p * 2 * M + M + m) * 64 + 32], q + m * K + 64 * p + 32, 32);
    }
  return out;
}

// The same products for few rows with AVX-512 VNNI on the same layout: one tile row (4 k x 16 outputs)
// per `vpdpbusd` against 4 broadcast activation bytes. The integer block sums are exact and the float
// steps are int4_amx_groups' own, so a row gets the same bits from either kernel.
template <int M, int KT>
void int4_vnni_groups(const int8_t* xq, const float* d, const float* bsum, int64_t K, const uint8_t* W,
                      const uint16_t* s, const uint16_t* z, int64_t G, int64_t group_size, int64_t g0, int64_t g1,
                      float* y, int64_t N) {
  const int64_t NB = K / KT, per_group = group_size / KT;
  const __m512i low4 = _mm512_set1_epi8(0x0F);
  for (int64_t g = g0; g < g1; ++g) {
    const uint8_t* wg = W + g * 16 * (K / 2);
    const uint16_t* sg = s + g * G * 16;
    const uint16_t* zg = z + g * G * 16;
    __m512 acc[M];
    for (int m = 0; m < M; ++m) acc[m] = _mm512_setzero_ps();
    for (int64_t blk = 0; blk < NB; ++blk) {
      const uint8_t* src = wg + blk * (KT * 8);
      int4_prefetch<KT>(src, sg, zg, blk, per_group);
      // Two int32 sums per row (low / high nibble rows): half the dependency chain, and integer sums
      // are exact, so the total is the same.
      __m512i dot[M], dot2[M];
      for (int m = 0; m < M; ++m) dot[m] = dot2[m] = _mm512_setzero_si512();
      _Pragma("GCC unroll 8") for (int t = 0; t < KT / 8; ++t) {
        const __m512i v = _mm512_loadu_si512(src + t * 64);
        const __m512i lo = _mm512_and_si512(v, low4), hi = _mm512_and_si512(_mm512_srli_epi16(v, 4), low4);
        _Pragma("GCC unroll 16") for (int m = 0; m < M; ++m) {
          const int8_t* xm = xq + m * K + blk * KT + 8 * t;
          int32_t x0, x1;
          std::memcpy(&x0, xm, 4);
          std::memcpy(&x1, xm + 4, 4);
          dot[m] = _mm512_dpbusd_epi32(dot[m], lo, _mm512_set1_epi32(x0));
          dot2[m] = _mm512_dpbusd_epi32(dot2[m], hi, _mm512_set1_epi32(x1));
        }
      }
      for (int m = 0; m < M; ++m) dot[m] = _mm512_add_epi32(dot[m], dot2[m]);
      int4_add_block<M>(acc, [&](int m) { return dot[m]; }, sg, zg, blk / per_group, d, bsum, blk);
    }
    for (int m = 0; m < M; ++m) _mm512_storeu_ps(y + m * N + g * 16, acc[m]);
  }
}

template <int KT>
void int4_amx_dispatch(int64_t M, const int8_t* xq, const int8_t* xd, const float* d, const float* bsum, int64_t K, const uint8_t* W,
                       const uint16_t* s, const uint16_t* z, int64_t G, int64_t gs, int64_t g0, int64_t g1, float* y,
                       int64_t N) {
  if (M <= kInt4VnniRows) {
    switch (M) {
      case 1: int4_vnni_groups<1, KT>(xq, d, bsum, K, W, s, z, G, gs, g0, g1, y, N); return;
      case 2: int4_vnni_groups<2, KT>(xq, d, bsum, K, W, s, z, G, gs, g0, g1, y, N); return;
      case 3: int4_vnni_groups<3, KT>(xq, d, bsum, K, W, s, z, G, gs, g0, g1, y, N); return;
      default: int4_vnni_groups<4, KT>(xq, d, bsum, K, W, s, z, G, gs, g0, g1, y, N); return;
    }
  }
  if constexpr (KT == 32) {
    if (xd != nullptr) {
      switch (M) {
#define PCASE(m) case m: int4_amx_pairs<m>(xd, d, bsum, K, W, s, z, G, g0, g1, y, N); return;
        PCASE(3) PCASE(4) PCASE(5) PCASE(6) PCASE(7) default: PCASE(8)
#undef PCASE
      }
    }
  }
  switch (M) {
#define CASE(m) case m: int4_amx_groups<m, KT>(xq, d, bsum, K, W, s, z, G, gs, g0, g1, y, N); break;
    CASE(1) CASE(2) CASE(3) CASE(4) CASE(5) CASE(6) CASE(7) CASE(8)
    CASE(9) CASE(10) CASE(11) CASE(12) CASE(13) CASE(14) CASE(15) default: CASE(16)
#undef CASE
  }
}

}  // namespace

// Portable nibbles [N, K / 2] (byte j = q[2j] | q[2j+1] << 4) -> the tile layout above (same shape).
at::Tensor amx_pack_int4(const at::Tensor& w, int64_t group_size) {
  TORCH_CHECK(w.dim() == 2 && w.scalar_type() == at::kByte && w.is_contiguous(), "amx_pack_int4: bad weight");
  const int64_t N = w.size(0), K = w.size(1) * 2, KT = int4_tile_k(group_size);
  TORCH_CHECK(N % 16 == 0 && K % KT == 0, "amx_pack_int4: out_features must be a multiple of 16");
  at::Tensor out = at::empty_like(w);
  const uint8_t* src = w.data_ptr<uint8_t>();
  uint8_t* dst = out.data_ptr<uint8_t>();
  const int64_t H = K / 2;
  // Destination order, no divisions: byte (g, b, t, n, j) = q[n][KT b + 8t + j] | q[n][KT b + 8t + 4 + j] << 4,
  // where q[n][k] is nibble k & 1 of source byte k / 2. (A per-nibble loop took 20 s for Qwen3-4B.)
  at::parallel_for(0, N / 16, 1, [&](int64_t g0, int64_t g1) {
    for (int64_t g = g0; g < g1; ++g) {
      uint8_t* d = dst + g * 16 * H;
      for (int64_t b = 0; b < K / KT; ++b)
        for (int64_t t = 0; t < KT / 8; ++t)
          for (int64_t n = 0; n < 16; ++n) {
            const uint8_t* row = src + (g * 16 + n) * H + (b * KT + 8 * t) / 2;  // 4 bytes: k .. k+7
            for (int j = 0; j < 4; ++j) {
              const int lo = (row[j / 2] >> ((j & 1) * 4)) & 0xF;
              const int hi = (row[2 + j / 2] >> ((j & 1) * 4)) & 0xF;
              *d++ = static_cast<uint8_t>(lo | (hi << 4));
            }
          }
    }
  });
  return out;
}

// The inverse of amx_pack_int4: the portable nibbles back (tests check the layout round-trips).
at::Tensor amx_unpack_int4(const at::Tensor& w, int64_t group_size, const c10::optional<at::Tensor>& out_buf) {
  const int64_t N = w.size(0), K = w.size(1) * 2, KT = int4_tile_k(group_size);
  at::Tensor out = out_buf.has_value() ? out_buf->view({N, K / 2}) : at::empty_like(w);
  const uint8_t* src = w.data_ptr<uint8_t>();
  uint8_t* dst = out.data_ptr<uint8_t>();
  at::parallel_for(0, N, 16, [&](int64_t n0, int64_t n1) {
    for (int64_t n = n0; n < n1; ++n)
      for (int64_t j = 0; j < K / 2; ++j) {
        int s0, s1;
        const uint8_t lo = (src[amx4_index(n, 2 * j, K, KT, &s0)] >> s0) & 0xF;
        const uint8_t hi = (src[amx4_index(n, 2 * j + 1, K, KT, &s1)] >> s1) & 0xF;
        dst[n * (K / 2) + j] = static_cast<uint8_t>(lo | (hi << 4));
      }
  });
  return out;
}

// Scales or zeros [G, N] (any float view) -> bf16 [N / 16, G, 16].
at::Tensor amx_group_vectors(const at::Tensor& v) {
  const int64_t G = v.size(0), N = v.size(1);
  TORCH_CHECK(N % 16 == 0, "amx_group_vectors: out_features must be a multiple of 16");
  return v.to(at::kBFloat16).reshape({G, N / 16, 16}).permute({1, 0, 2}).contiguous();
}

at::Tensor amx_int4(const at::Tensor& x, const at::Tensor& w, const at::Tensor& scales, const at::Tensor& zeros,
                    int64_t group_size) {
  TORCH_CHECK(request_amx(), "amx_int4: the kernel could not get AMX tile state from the OS");
  TORCH_CHECK(w.dim() == 2 && w.scalar_type() == at::kByte && w.is_contiguous(), "amx_int4: bad weight");
  const int64_t N = w.size(0), K = w.size(1) * 2, M = x.size(0), G = K / group_size, KT = int4_tile_k(group_size);
  TORCH_CHECK(N % 16 == 0 && K % group_size == 0 && group_size % 32 == 0, "amx_int4: bad shapes");
  TORCH_CHECK(scales.scalar_type() == at::kBFloat16 && zeros.scalar_type() == at::kBFloat16 && scales.numel() == N * G &&
              zeros.numel() == N * G, "amx_int4: scales and zeros must be bf16 [N / 16, G, 16]");
  check_x(x, K, "amx_int4");
  at::Tensor y = at::empty({M, N}, x.options().dtype(at::kFloat));
  const auto* wp = w.data_ptr<uint8_t>();
  const auto* sp = reinterpret_cast<const uint16_t*>(scales.data_ptr<at::BFloat16>());
  const auto* zp = reinterpret_cast<const uint16_t*>(zeros.data_ptr<at::BFloat16>());
  for (int64_t m0 = 0; m0 < M; m0 += kMaxM) {
    const int64_t rows = std::min(kMaxM, M - m0);
    const QuantA xa = quantize_a(x.data_ptr<at::BFloat16>() + m0 * K, rows, K, KT);
    const bool pairs = KT == 32 && rows > kInt4VnniRows && rows <= 8 && K % 64 == 0;
    const std::vector<int8_t> xd = pairs ? pair_rows(xa.q.data(), rows, K) : std::vector<int8_t>();
    float* yp = y.data_ptr<float>() + m0 * N;
    at::parallel_for(0, N / 16, 4, [&](int64_t g0, int64_t g1) {
      const bool tiles = rows > kInt4VnniRows;
      TileConfig cfg;
      const int arows = static_cast<int>(pairs ? 2 * rows : rows), acols = pairs ? 64 : static_cast<int>(KT);
      for (int t : {0, 3}) { cfg.rows[t] = static_cast<uint8_t>(arows); cfg.colsb[t] = 64; }
      for (int t : {1, 4}) { cfg.rows[t] = static_cast<uint8_t>(arows); cfg.colsb[t] = static_cast<uint16_t>(acols); }
      for (int t : {2, 5}) { cfg.rows[t] = static_cast<uint8_t>(acols / 4); cfg.colsb[t] = 64; }
      if (tiles) _tile_loadconfig(&cfg);
      if (KT == 32)
        int4_amx_dispatch<32>(rows, xa.q.data(), pairs ? xd.data() : nullptr, xa.d.data(), xa.bsum.data(), K, wp, sp, zp, G, group_size, g0, g1, yp, N);
      else
        int4_amx_dispatch<64>(rows, xa.q.data(), nullptr, xa.d.data(), xa.bsum.data(), K, wp, sp, zp, G, group_size, g0, g1, yp, N);
      if (tiles) _tile_release();
    });
  }
  return y.to(at::kBFloat16);
}


// ---------------------------------------------------------------------------------------------
// bf16: the weight [N, K] is A as stored (16 rows x 32 values per tile), the activations B in pairs
// (B[r][2m + j] = x[m][32b + 2r + j]); `tdpbf16ps` accumulates in the fp32 C tile over all of K, so
// there is nothing to do per block but load and multiply. Two 16-row groups share each B tile.
namespace {

std::vector<uint16_t> pack_x_bf16(const at::BFloat16* x, int64_t M, int64_t K) {
  std::vector<uint16_t> out(M * K);
  const auto* xs = reinterpret_cast<const uint16_t*>(x);
  for (int64_t b = 0; b < K / 32; ++b)
    for (int64_t r = 0; r < 16; ++r)
      for (int64_t m = 0; m < M; ++m)
        for (int j = 0; j < 2; ++j) out[b * 32 * M + r * 2 * M + 2 * m + j] = xs[m * K + 32 * b + 2 * r + j];
  return out;
}

inline void store_tile_rows(const float (*c)[16], int64_t M, int64_t N, int64_t n0, float* y) {
  for (int64_t m = 0; m < M; ++m)
    for (int i = 0; i < 16; ++i) y[m * N + n0 + i] = c[i][m];
}

}  // namespace

at::Tensor amx_bf16(const at::Tensor& x, const at::Tensor& w) {
  TORCH_CHECK(request_amx(), "amx_bf16: the kernel could not get AMX tile state from the OS");
  TORCH_CHECK(w.dim() == 2 && w.scalar_type() == at::kBFloat16 && w.is_contiguous(), "amx_bf16: bad weight");
  const int64_t N = w.size(0), K = w.size(1), M = x.size(0);
  TORCH_CHECK(K % 32 == 0 && N % 16 == 0, "amx_bf16: in_features must be a multiple of 32, out_features of 16");
  check_x(x, K, "amx_bf16");
  at::Tensor y = at::empty({M, N}, x.options().dtype(at::kFloat));
  const auto* wp = reinterpret_cast<const uint16_t*>(w.data_ptr<at::BFloat16>());
  const int64_t NB = K / 32, G = N / 16;
  for (int64_t m0 = 0; m0 < M; m0 += kMaxM) {
    const int64_t rows = std::min(kMaxM, M - m0);
    const std::vector<uint16_t> xb = pack_x_bf16(x.data_ptr<at::BFloat16>() + m0 * K, rows, K);
    float* yp = y.data_ptr<float>() + m0 * N;
    // Pairs of row groups per task, so that the two C tiles share the activation tile.
    at::parallel_for(0, (G + 1) / 2, 2, [&](int64_t p0, int64_t p1) {
      TileConfig cfg;
      for (int t : {0, 1}) { cfg.rows[t] = 16; cfg.colsb[t] = static_cast<uint16_t>(rows * 4); }
      for (int t : {2, 3}) { cfg.rows[t] = 16; cfg.colsb[t] = 64; }
      cfg.rows[4] = 16;
      cfg.colsb[4] = static_cast<uint16_t>(rows * 4);
      _tile_loadconfig(&cfg);
      alignas(64) float c[2][16][16];
      for (int64_t p = p0; p < p1; ++p) {
        const int64_t g = 2 * p;
        const bool two = g + 1 < G;
        const uint16_t* a0 = wp + g * 16 * K;
        const uint16_t* a1 = a0 + 16 * K;
        _tile_zero(0);
        _tile_zero(1);
        for (int64_t b = 0; b < NB; ++b) {
          // 16 (or 32) weight rows are as many streams: fetch ahead of the hardware prefetcher.
          const int64_t pb = b + kAhead;
          if (pb < NB) {
            for (int i = 0; i < 16; ++i) _mm_prefetch(reinterpret_cast<const char*>(a0 + i * K + pb * 32), _MM_HINT_T0);
            if (two)
              for (int i = 0; i < 16; ++i) _mm_prefetch(reinterpret_cast<const char*>(a1 + i * K + pb * 32), _MM_HINT_T0);
          }
          _tile_loadd(4, xb.data() + b * 32 * rows, rows * 4);
          _tile_loadd(2, a0 + b * 32, K * 2);
          _tile_dpbf16ps(0, 2, 4);
          if (two) {
            _tile_loadd(3, a1 + b * 32, K * 2);
            _tile_dpbf16ps(1, 3, 4);
          }
        }
        _tile_stored(0, c[0], 64);
        store_tile_rows(c[0], rows, N, g * 16, yp);
        if (two) {
          _tile_stored(1, c[1], 64);
          store_tile_rows(c[1], rows, N, (g + 1) * 16, yp);
        }
      }
      _tile_release();
    });
  }
  return y.to(at::kBFloat16);
}

// bf16 weight [N, K] from the int4 tile layout (prefill-sized products dequantize once per call and use
// the float GEMM, as for the portable layout). A 64-byte chunk holds k .. k+7 (k = KT b + 8t) of 16 rows:
// low nibbles the first four of each row, high nibbles the next four; interleaving them per 32-bit word
// gives each row's 8 values in order, two rows per 128-bit lane.
at::Tensor amx_dequant_int4(const at::Tensor& w, const at::Tensor& scales, const at::Tensor& zeros, int64_t group_size,
                            const c10::optional<at::Tensor>& out_buf) {
  const int64_t N = w.size(0), K = w.size(1) * 2, G = K / group_size, KT = int4_tile_k(group_size);
  TORCH_CHECK(N % 16 == 0 && K % group_size == 0 && scales.numel() == N * G && zeros.numel() == N * G,
              "amx_dequant_int4: bad shapes");
  at::Tensor out;
  if (out_buf.has_value()) {
    TORCH_CHECK(out_buf->scalar_type() == at::kBFloat16 && out_buf->is_contiguous() && out_buf->numel() == N * K,
                "amx_dequant_int4: out must be contiguous bf16 with N * K elements");
    out = out_buf->view({N, K});
  } else {
    out = at::empty({N, K}, scales.options().dtype(at::kBFloat16));
  }
  const auto* wp = w.data_ptr<uint8_t>();
  const auto* sp = reinterpret_cast<const uint16_t*>(scales.data_ptr<at::BFloat16>());
  const auto* zp = reinterpret_cast<const uint16_t*>(zeros.data_ptr<at::BFloat16>());
  auto* op = reinterpret_cast<uint16_t*>(out.data_ptr<at::BFloat16>());
  const int64_t per_group = group_size / KT;
  // Lane pattern for the row pair (2p, 2p+1) of each 128-bit lane L: rows 4L + 2p, 4L + 2p + 1, 8 lanes each.
  alignas(64) int32_t pat[2][4][16];
  for (int p = 0; p < 2; ++p)
    for (int L = 0; L < 4; ++L)
      for (int i = 0; i < 16; ++i) pat[p][L][i] = 4 * L + 2 * p + i / 8;
  const __m512i low4 = _mm512_set1_epi8(0x0F);
  const __m512 eight = _mm512_set1_ps(8.f);
  at::parallel_for(0, N / 16, 1, [&](int64_t g0, int64_t g1) {
    for (int64_t g = g0; g < g1; ++g) {
      const uint8_t* wg = wp + g * 16 * (K / 2);
      for (int64_t blk = 0; blk < K / KT; ++blk) {
        const int64_t grp = blk / per_group;
        const __m512 sv = bf16x16(sp + (g * G + grp) * 16);
        const __m512 mz = _mm512_fnmadd_ps(eight, sv, bf16x16(zp + (g * G + grp) * 16));
        __m512 S[2][4], Z[2][4];
        for (int p = 0; p < 2; ++p)
          for (int L = 0; L < 4; ++L) {
            const __m512i idx = _mm512_load_si512(pat[p][L]);
            S[p][L] = _mm512_permutexvar_ps(idx, sv);
            Z[p][L] = _mm512_permutexvar_ps(idx, mz);
          }
        for (int64_t t = 0; t < KT / 8; ++t) {
          const __m512i v = _mm512_loadu_si512(wg + blk * (KT * 8) + t * 64);
          const __m512i lo = _mm512_and_si512(v, low4), hi = _mm512_and_si512(_mm512_srli_epi16(v, 4), low4);
          const __m512i pair[2] = {_mm512_unpacklo_epi32(lo, hi), _mm512_unpackhi_epi32(lo, hi)};
          const int64_t k = blk * KT + 8 * t;
          for (int p = 0; p < 2; ++p)
            for (int L = 0; L < 4; ++L) {
              __m128i b16;
              switch (L) {
                case 0: b16 = _mm512_extracti32x4_epi32(pair[p], 0); break;
                case 1: b16 = _mm512_extracti32x4_epi32(pair[p], 1); break;
                case 2: b16 = _mm512_extracti32x4_epi32(pair[p], 2); break;
                default: b16 = _mm512_extracti32x4_epi32(pair[p], 3); break;
              }
              const __m512 q = _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(b16));
              const __m256i bf = (__m256i)_mm512_cvtneps_pbh(_mm512_fmadd_ps(q, S[p][L], Z[p][L]));
              const int64_t n = g * 16 + 4 * L + 2 * p;
              _mm_storeu_si128(reinterpret_cast<__m128i*>(op + n * K + k), _mm256_castsi256_si128(bf));
              _mm_storeu_si128(reinterpret_cast<__m128i*>(op + (n + 1) * K + k), _mm256_extracti128_si256(bf, 1));
            }
        }
      }
    }
  });
  return out;
}
