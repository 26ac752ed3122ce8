// nnforge native runtime for int8 BERT-family encoders: the whole forward pass (embeddings, every layer's
// q/k/v, attention, output projection, LayerNorms, GELU feed-forward) in one C call, no framework
// dispatch between the ~25 operations of a layer.
//
// Compiled at first use by nnforge.compress.quantize.kernels._build (g++ -O3, -march chosen at run time),
// loaded with ctypes. nnforge.deploy.native.encoder builds the structs below from a quantized model.
//
// Linear layers: y = ((x * inv_smooth) @ W.T) * wscale + bias with W int8 per output row, stored as unsigned
// codes u = w + 128 in VNNI tiles: tile t (16 output rows) holds, for every 4 consecutive k, 64 bytes
// [row 0: k..k+3][row 1: k..k+3]...[row 15]. Activations are rounded to int8 per token and per block of 64
// inputs (codes round(v * 127 / absmax), half to even, sx = absmax / 127); each block's integer dot product
// is accumulated in int32 and scaled into fp32 at the block's end:
//   y = ws * sum_b sx_b * (sum_k u_k xq_k - 128 * sum_k xq_k).
//
// ISA: AVX-512 VNNI (vpdpbusd, 4 tokens x 48 outputs per register tile; attention four queries x 32 keys
// at a time, vectorised exp) or portable C++; there is no AVX2 path (an AVX2 build reports "scalar").
// Where the compiler targets AMX-INT8 (Sapphire Rapids and later) and the kernel grants the process the tile
// state, the linear layers run on AMX tiles instead (tdpbsud: 16 tokens x 16 outputs x one block of 64 inputs
// per instruction, on a signed copy of the weights): the same int32 block sums, scaled and added in the same
// order, so the same bits out.

#include <cfloat>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <vector>

#include "isa.h"

#if NNF_ISA == 2 && defined(__AMX_TILE__) && defined(__AMX_INT8__) && defined(__linux__)
#define NNF_AMX 1
#include <sys/syscall.h>
#include <unistd.h>
#else
#define NNF_AMX 0
#endif

extern "C" {
struct NnfLinear {
  const uint8_t* w;       // (N / 16, K / 4, 16, 4) codes
  const float* wscale;    // (N,)
  const float* bias;      // (N,) or null
  const float* inv_smooth;  // (K,) or null: 1 / SmoothQuant scale, multiplies the input first
  const int8_t* ws8;      // null, or the same tiles as signed codes w (what AMX's tdpbssd reads)
  int N, K;               // N % 16 == 0, K % 64 == 0
};

struct NnfLayer {
  NnfLinear qkv, out, up, down;  // qkv: query, key, value rows stacked (N = 3H)
  const float *ln1_w, *ln1_b, *ln2_w, *ln2_b;
};

struct NnfEncoder {
  const float* word;            // (V, H) fp32, or null when word_codes is set
  const uint8_t* word_codes;    // (V, H) codes u = w + 128, one scale per row
  const float* word_scale;      // (V,)
  const float* pos;             // (P, H)
  const float* type;            // (n_types, H)
  const float *ln_w, *ln_b;
  const NnfLayer* layers;
  int V, P, n_types, H, heads, n_layers, I;  // I: the widest FFN of all layers
  float eps;
};
}

namespace {

#include "thread_pool.h"

constexpr int KB = 64;  // activation block

// ------------------------------------------------------------------------------------------- activations
struct QAct {
  std::vector<int8_t> q;   // (M, K), and rows up to a multiple of 16 (an AMX tile reads 16; never stored)
  std::vector<float> s;    // (M, K / KB), rows padded as q's
  std::vector<int32_t> sum;
  void resize(int M, int K) {
    q.resize((size_t)((M + 15) / 16 * 16) * K);
    s.resize((size_t)((M + 15) / 16 * 16) * (K / KB));
    sum.resize((size_t)M * (K / KB));
  }
};

// f(m0, m1) over row ranges, split across the pool for large batches (small ones: the sync costs more)
template <class F>
void for_rows(int M, int nthreads, F&& f) {
  if (nthreads < 2 || M < 64) {
    f(0, M);
    return;
  }
  struct Ctx {
    F* f;
    int M, chunk;
  };
  const int nch = 4 * nthreads;
  const Ctx c{&f, M, (M + nch - 1) / nch};
  parallel_chunks([](const void* p, int t) {
    const Ctx& c = *static_cast<const Ctx*>(p);
    const int m0 = t * c.chunk, m1 = m0 + c.chunk < c.M ? m0 + c.chunk : c.M;
    if (m0 < m1) (*c.f)(m0, m1);
  }, &c, nch, nthreads);
}

// int8 codes round_half_even(x * inv_smooth * (127 / absmax)) per (row, block of 64); s = absmax / 127
void quantize_blocks(const float* x, int m0, int m1, int K, const float* inv_smooth, QAct& a) {
  const int nb = K / KB;
  for (int m = m0; m < m1; m++) {
    for (int b = 0; b < nb; b++) {
      const float* xr = x + (size_t)m * K + b * KB;
      int8_t* q = a.q.data() + (size_t)m * K + b * KB;
      const size_t i = (size_t)m * nb + b;
#if NNF_ISA == 2
      __m512 v[4];
      __m512 mx = _mm512_setzero_ps();
      for (int j = 0; j < 4; j++) {
        v[j] = _mm512_loadu_ps(xr + 16 * j);
        if (inv_smooth) v[j] = _mm512_mul_ps(v[j], _mm512_loadu_ps(inv_smooth + b * KB + 16 * j));
        mx = _mm512_max_ps(mx, _mm512_abs_ps(v[j]));
      }
      const float amax = _mm512_reduce_max_ps(mx);
      const float inv = amax > 0.f ? 127.f / amax : 0.f;
      const __m512 vi = _mm512_set1_ps(inv);
      __m512i tot = _mm512_setzero_si512();
      for (int j = 0; j < 4; j++) {
        // |v * inv| <= 127 up to rounding: the clamp only guards the last ulp
        __m512 r = _mm512_roundscale_ps(_mm512_mul_ps(v[j], vi), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
        r = _mm512_min_ps(_mm512_max_ps(r, _mm512_set1_ps(-127.f)), _mm512_set1_ps(127.f));
        const __m512i qi = _mm512_cvtps_epi32(r);
        tot = _mm512_add_epi32(tot, qi);
        _mm_storeu_si128((__m128i*)(q + 16 * j), _mm512_cvtepi32_epi8(qi));
      }
      a.s[i] = amax > 0.f ? amax / 127.f : 1.f;
      a.sum[i] = _mm512_reduce_add_epi32(tot);
#else
      float v[KB];
      float amax = 0.f;
      for (int k = 0; k < KB; k++) {
        v[k] = inv_smooth ? xr[k] * inv_smooth[b * KB + k] : xr[k];
        const float av = v[k] < 0.f ? -v[k] : v[k];
        amax = av > amax ? av : amax;
      }
      const float inv = amax > 0.f ? 127.f / amax : 0.f;
      int32_t sum = 0;
      for (int k = 0; k < KB; k++) {
        float r = std::nearbyint(v[k] * inv);  // default rounding mode: half to even, as torch.round
        r = r > 127.f ? 127.f : (r < -127.f ? -127.f : r);
        q[k] = (int8_t)r;
        sum += (int32_t)r;
      }
      a.s[i] = amax > 0.f ? amax / 127.f : 1.f;
      a.sum[i] = sum;
#endif
    }
  }
}

// ------------------------------------------------------------------------------------------------- GEMM
struct Gemm {
  const QAct* a;
  const NnfLinear* L;
  int M;
  float* y;  // (M, N)
  int tiles_per_chunk, n_tiles;  // tiles of 48 outputs (the last one may have 16 or 32)
};

#if NNF_ISA == 2
template <int MT, int NT>
void tile_vnni(const Gemm& g, int m0, int n0) {
  const int K = g.L->K, nb = K / KB, k4s = K / 4;
  __m512 accf[MT][NT];
  __m512i acc[MT][NT];
  for (int m = 0; m < MT; m++)
    for (int j = 0; j < NT; j++) accf[m][j] = _mm512_setzero_ps();
  const uint8_t* wt[NT];
  for (int j = 0; j < NT; j++) wt[j] = g.L->w + ((size_t)(n0 / 16 + j) * k4s) * 64;
  const int8_t* xq = g.a->q.data() + (size_t)m0 * K;
  for (int b = 0; b < nb; b++) {
    for (int m = 0; m < MT; m++)
      for (int j = 0; j < NT; j++) acc[m][j] = _mm512_setzero_si512();
#pragma GCC unroll 4
    for (int kk = 0; kk < KB / 4; kk++) {
      const int k4 = b * (KB / 4) + kk;
      __m512i wv[NT];
      for (int j = 0; j < NT; j++) wv[j] = _mm512_loadu_si512(wt[j] + (size_t)k4 * 64);
      for (int m = 0; m < MT; m++) {
        int32_t x4;
        std::memcpy(&x4, xq + (size_t)m * K + k4 * 4, 4);
        const __m512i xb = _mm512_set1_epi32(x4);
        for (int j = 0; j < NT; j++) acc[m][j] = _mm512_dpbusd_epi32(acc[m][j], wv[j], xb);
      }
    }
    for (int m = 0; m < MT; m++) {
      const size_t i = (size_t)(m0 + m) * nb + b;
      const __m512 s = _mm512_set1_ps(g.a->s[i]);
      const __m512i c = _mm512_set1_epi32(128 * g.a->sum[i]);
      for (int j = 0; j < NT; j++)
        accf[m][j] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(_mm512_sub_epi32(acc[m][j], c)), s, accf[m][j]);
    }
  }
  const int N = g.L->N;
  for (int j = 0; j < NT; j++) {
    const __m512 ws = _mm512_loadu_ps(g.L->wscale + n0 + 16 * j);
    const __m512 bias = g.L->bias ? _mm512_loadu_ps(g.L->bias + n0 + 16 * j) : _mm512_setzero_ps();
    for (int m = 0; m < MT; m++)
      _mm512_storeu_ps(g.y + (size_t)(m0 + m) * N + n0 + 16 * j, _mm512_fmadd_ps(accf[m][j], ws, bias));
  }
}

template <int NT>
void tiles_m(const Gemm& g, int n0) {
  // near-equal tiles of at most 4 tokens: 4 x 3 int32 + 4 x 3 fp32 accumulators, 3 weight vectors and a
  // broadcast stay in the 32 registers (measured: 6 x 2 tiles spill and lose 30% at 600 tokens)
  const int nt = (g.M + 3) / 4;
  int m0 = 0;
  for (int t = 0; t < nt; t++) {
    const int mt = (g.M - m0) / (nt - t);
    switch (mt) {
      case 1: tile_vnni<1, NT>(g, m0, n0); break;
      case 2: tile_vnni<2, NT>(g, m0, n0); break;
      case 3: tile_vnni<3, NT>(g, m0, n0); break;
      default: tile_vnni<4, NT>(g, m0, n0); break;
    }
    m0 += mt;
  }
}
#endif

#if NNF_AMX
// ------------------------------------------------------------------------------------------- AMX tiles
// Linux hands a process the 8 KiB tile state only when asked (arch_prctl ARCH_REQ_XCOMP_PERM, kernel 5.16+);
// a refusal (an older kernel, a hypervisor that hides it, an alternate signal stack too small for it) or
// NNFORGE_AMX=0 keeps the VNNI path. nnf_amx() reads or switches the choice at run time.
std::atomic<int> amx_state{-1};  // -1 not asked yet, 0 off, 1 on

bool amx_permitted() {
  static const bool ok = [] {
    const char* env = std::getenv("NNFORGE_AMX");
    if (env && env[0] == '0') return false;
    return syscall(SYS_arch_prctl, 0x1023 /* ARCH_REQ_XCOMP_PERM */, 18 /* XFEATURE_XTILEDATA */) == 0;
  }();
  return ok;
}

bool amx_on() {
  int s = amx_state.load(std::memory_order_relaxed);
  if (s < 0) {
    s = amx_permitted() ? 1 : 0;
    amx_state.store(s, std::memory_order_relaxed);
  }
  return s == 1;
}

struct alignas(64) TileConfig {
  uint8_t palette_id, start_row, reserved[14];
  uint16_t colsb[16];
  uint8_t rows[16];
};

// every tile 16 rows x 64 bytes: C (16 tokens x 16 int32), A (16 tokens x 64 int8 inputs), B (16 groups of 4
// inputs x 16 outputs: exactly 16 consecutive rows of the weights' VNNI layout, one block of 64 inputs)
void amx_configure() {
  TileConfig c{};
  c.palette_id = 1;
  for (int i = 0; i < 8; i++) {
    c.rows[i] = 16;
    c.colsb[i] = 64;
  }
  _tile_loadconfig(&c);
}

// y[m0 .. m0 + 16, n0 .. n0 + 16): one output tile, its 16 fp32 accumulators in registers. Each block of 64
// inputs is one tile product (tdpbssd: int8 tokens x the signed copy of the weights, no -128 correction), stored
// to memory and scaled into the accumulators in block order. Blocks go in pairs, software-pipelined: while one
// pair (tiles 0/1 or 2/3) is scaled in, the tile unit already multiplies the next pair, so neither the products'
// latency nor the scaling waits for the other. Tokens in tiles 4/5, weights in 6/7.
// (Tile numbers are literals: the intrinsics take them as immediates.)
#define NNF_AMX_BLOCK(T, TX, TW, B)                                          \
  do {                                                                       \
    _tile_zero(T);                                                           \
    _tile_loadd(TX, xq + (size_t)(B) * KB, K);                               \
    _tile_loadd(TW, wt + (size_t)(B) * 1024, 64);                            \
    _tile_dpbssd(T, TX, TW);                                                 \
  } while (0)
// the pair of blocks B, B + 1 (if it exists) into tiles T0/T1 ...
#define NNF_AMX_PAIR(T0, T1, B)                                              \
  do {                                                                       \
    NNF_AMX_BLOCK(T0, 4, 6, B);                                              \
    if ((B) + 1 < nb) NNF_AMX_BLOCK(T1, 5, 7, (B) + 1);                      \
  } while (0)
// ... and out to memory (tiles 0/1 to cb[0, 512), 2/3 to cb[512, 1024))
#define NNF_AMX_STORE(T0, T1, B)                                             \
  do {                                                                       \
    _tile_stored(T0, cb + 256 * (T0), 64);                                   \
    if ((B) + 1 < nb) _tile_stored(T1, cb + 256 * (T1), 64);                 \
  } while (0)

void amx_tile(const Gemm& g, int m0, int n0, int32_t* cb) {
  const int K = g.L->K, nb = K / KB, k4s = K / 4, N = g.L->N;
  const int rows = g.M - m0 < 16 ? g.M - m0 : 16;
  const int8_t* xq = g.a->q.data() + (size_t)m0 * K;
  const int8_t* wt = g.L->ws8 + (size_t)(n0 / 16) * k4s * 64;
  const float* sx = g.a->s.data() + (size_t)m0 * nb;  // (16, nb): rows past M are padding, never stored
  __m512 acc[16];
  for (int r = 0; r < 16; r++) acc[r] = _mm512_setzero_ps();
  auto scale_in = [&](const int32_t* c, int b) {  // the stored pair at c: blocks b and (if it exists) b + 1
    for (int j = 0; j < 2 && b + j < nb; j++)
      for (int r = 0; r < 16; r++)
        acc[r] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(_mm512_load_si512(c + 256 * j + 16 * r)),
                                 _mm512_set1_ps(sx[(size_t)r * nb + b + j]), acc[r]);
  };
  NNF_AMX_PAIR(0, 1, 0);
  NNF_AMX_STORE(0, 1, 0);
  for (int b = 0; b < nb; b += 4) {
    if (b + 2 < nb) NNF_AMX_PAIR(2, 3, b + 2);
    scale_in(cb, b);
    if (b + 2 < nb) NNF_AMX_STORE(2, 3, b + 2);
    if (b + 4 < nb) NNF_AMX_PAIR(0, 1, b + 4);
    if (b + 2 < nb) scale_in(cb + 512, b + 2);
    if (b + 4 < nb) NNF_AMX_STORE(0, 1, b + 4);
  }
  const __m512 ws = _mm512_loadu_ps(g.L->wscale + n0);
  const __m512 bias = g.L->bias ? _mm512_loadu_ps(g.L->bias + n0) : _mm512_setzero_ps();
  for (int r = 0; r < rows; r++) _mm512_storeu_ps(g.y + (size_t)(m0 + r) * N + n0, _mm512_fmadd_ps(acc[r], ws, bias));
}
#undef NNF_AMX_PAIR
#undef NNF_AMX_STORE
#undef NNF_AMX_BLOCK

// chunk c: output tiles of 16 [c * tiles_per_chunk, ...), every token (a tile's weights stay in L1 across tokens)
void gemm_chunk_amx(const void* ctx, int c) {
  const Gemm& g = *static_cast<const Gemm*>(ctx);
  const int t0 = c * g.tiles_per_chunk;
  const int t1 = t0 + g.tiles_per_chunk < g.n_tiles ? t0 + g.tiles_per_chunk : g.n_tiles;
  alignas(64) int32_t cb[4 * 256];
  amx_configure();
  for (int m0 = 0; m0 < g.M; m0 += 16)
    for (int t = t0; t < t1; t++) amx_tile(g, m0, 16 * t, cb);
  _tile_release();
}
#endif

// portable: the same arithmetic, one output at a time
void cols_scalar(const Gemm& g, int n0, int n1) {
  const int K = g.L->K, nb = K / KB, k4s = K / 4, N = g.L->N;
  for (int n = n0; n < n1; n++) {
    const uint8_t* wt = g.L->w + (size_t)(n / 16) * k4s * 64 + (n % 16) * 4;
    for (int m = 0; m < g.M; m++) {
      const int8_t* xq = g.a->q.data() + (size_t)m * K;
      float acc = 0.f;
      for (int b = 0; b < nb; b++) {
        int32_t d = 0;
        for (int k = b * KB; k < (b + 1) * KB; k++) d += (int32_t)wt[(size_t)(k / 4) * 64 + k % 4] * xq[k];
        const size_t i = (size_t)m * nb + b;
        acc += (float)(d - 128 * g.a->sum[i]) * g.a->s[i];
      }
      g.y[(size_t)m * N + n] = acc * g.L->wscale[n] + (g.L->bias ? g.L->bias[n] : 0.f);
    }
  }
}

void gemm_chunk(const void* ctx, int c) {
  const Gemm& g = *static_cast<const Gemm*>(ctx);
  const int t0 = c * g.tiles_per_chunk;
  const int t1 = t0 + g.tiles_per_chunk < g.n_tiles ? t0 + g.tiles_per_chunk : g.n_tiles;
  for (int t = t0; t < t1; t++) {
    const int n0 = 48 * t, width = g.L->N - n0 >= 48 ? 48 : g.L->N - n0;
#if NNF_ISA == 2
    if (width == 48) tiles_m<3>(g, n0);
    else if (width == 32) tiles_m<2>(g, n0);
    else tiles_m<1>(g, n0);
#else
    cols_scalar(g, n0, n0 + width);
#endif
  }
}

void linear(const NnfLinear& L, const float* x, int M, float* y, QAct& qa, int nthreads) {
  qa.resize(M, L.K);
  for_rows(M, nthreads, [&](int m0, int m1) { quantize_blocks(x, m0, m1, L.K, L.inv_smooth, qa); });
#if NNF_AMX
  if (L.ws8 && amx_on()) {
    Gemm g{&qa, &L, M, y, 1, L.N / 16};
    int chunks = g.n_tiles < 4 * nthreads ? g.n_tiles : 4 * nthreads;
    g.tiles_per_chunk = (g.n_tiles + chunks - 1) / chunks;
    chunks = (g.n_tiles + g.tiles_per_chunk - 1) / g.tiles_per_chunk;
    if (nthreads > 1 && chunks > 1) parallel_chunks(gemm_chunk_amx, &g, chunks, nthreads);
    else for (int c = 0; c < chunks; c++) gemm_chunk_amx(&g, c);
    return;
  }
#endif
  Gemm g{&qa, &L, M, y, 1, (L.N + 47) / 48};
  int chunks = g.n_tiles < 4 * nthreads ? g.n_tiles : 4 * nthreads;
  g.tiles_per_chunk = (g.n_tiles + chunks - 1) / chunks;
  chunks = (g.n_tiles + g.tiles_per_chunk - 1) / g.tiles_per_chunk;
  if (nthreads > 1 && chunks > 1) parallel_chunks(gemm_chunk, &g, chunks, nthreads);
  else for (int c = 0; c < chunks; c++) gemm_chunk(&g, c);
}

// ------------------------------------------------------------------------------------- other operations
// x = LayerNorm(x + r) row by row (r may be null)
void add_layernorm(float* x, const float* r, int M, int H, const float* w, const float* b, float eps) {
  for (int m = 0; m < M; m++) {
    float* xr = x + (size_t)m * H;
    if (r) {
      const float* rr = r + (size_t)m * H;
#pragma omp simd
      for (int k = 0; k < H; k++) xr[k] += rr[k];
    }
    float mean = 0.f;
#pragma omp simd reduction(+ : mean)
    for (int k = 0; k < H; k++) mean += xr[k];
    mean /= (float)H;
    float var = 0.f;
#pragma omp simd reduction(+ : var)
    for (int k = 0; k < H; k++) var += (xr[k] - mean) * (xr[k] - mean);
    const float inv = 1.f / std::sqrt(var / (float)H + eps);
#pragma omp simd
    for (int k = 0; k < H; k++) xr[k] = (xr[k] - mean) * inv * w[k] + b[k];
  }
}

// exact-erf GELU; erf from a rational approximation (|error| < 5e-7 in fp32, vectorises)
void gelu(float* x, size_t n) {
  constexpr float a13 = -2.72614225801306e-10f, a11 = 2.77068142495902e-08f, a9 = -2.10102402082508e-06f,
                  a7 = -5.69250639462346e-05f, a5 = -7.34990630326855e-04f, a3 = -2.95459980854025e-03f,
                  a1 = -1.60960333262415e-02f, b8 = -1.45660718464996e-05f, b6 = -2.13374055278905e-04f,
                  b4 = -1.68282697438203e-03f, b2 = -7.37332916720468e-03f, b0 = -1.42647390514189e-02f;
#pragma omp simd
  for (size_t i = 0; i < n; i++) {
    float z = x[i] * 0.70710678118654752f;
    z = z > 4.f ? 4.f : (z < -4.f ? -4.f : z);
    const float z2 = z * z;
    float p = a13;
    p = p * z2 + a11; p = p * z2 + a9; p = p * z2 + a7; p = p * z2 + a5; p = p * z2 + a3; p = p * z2 + a1;
    float q = b8;
    q = q * z2 + b6; q = q * z2 + b4; q = q * z2 + b2; q = q * z2 + b0;
    x[i] = 0.5f * x[i] * (1.f + z * p / q);
  }
}

void residual_layernorm(float* x, const float* r, int M, int H, const float* w, const float* b, float eps,
                        int nthreads) {
  for_rows(M, nthreads, [&](int m0, int m1) {
    add_layernorm(x + (size_t)m0 * H, r + (size_t)m0 * H, m1 - m0, H, w, b, eps);
  });
}

struct Attn {
  const float* qkv;        // (B * T, 3H)
  const int64_t* mask;     // (B, T) or null
  float* ctx;              // (B * T, H)
  int B, T, H, heads;
};

#if NNF_ISA == 2
// e^x for the softmax (x <= 0 after subtracting the row maximum): Cephes' expf polynomial, |rel. error| < 2e-7;
// below -87.3 (a masked key) exactly 0, as std::exp underflows
inline __m512 exp_ps(__m512 x) {
  const __m512 lo = _mm512_set1_ps(-87.3365f);
  const __mmask16 keep = _mm512_cmp_ps_mask(x, lo, _CMP_GE_OQ);
  x = _mm512_max_ps(x, lo);
  const __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)),
                                        _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693359375f), x);
  r = _mm512_fnmadd_ps(n, _mm512_set1_ps(-2.12194440e-4f), r);
  __m512 y = _mm512_set1_ps(1.9875691500e-4f);
  y = _mm512_fmadd_ps(y, r, _mm512_set1_ps(1.3981999507e-3f));
  y = _mm512_fmadd_ps(y, r, _mm512_set1_ps(8.3334519073e-3f));
  y = _mm512_fmadd_ps(y, r, _mm512_set1_ps(4.1665795894e-2f));
  y = _mm512_fmadd_ps(y, r, _mm512_set1_ps(1.6666665459e-1f));
  y = _mm512_fmadd_ps(y, r, _mm512_set1_ps(5.0000001201e-1f));
  y = _mm512_fmadd_ps(y, _mm512_mul_ps(r, r), _mm512_add_ps(r, _mm512_set1_ps(1.f)));
  return _mm512_maskz_mov_ps(keep, _mm512_scalef_ps(y, n));
}

inline __mmask16 tail_mask(int left) { return left >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << left) - 1); }
#endif

void attn_task(const void* p, int t) {
  const Attn& a = *static_cast<const Attn*>(p);
  const int b = t / a.heads, h = t % a.heads, dh = a.H / a.heads, ld = 3 * a.H, T = a.T;
  const float scale = 1.f / std::sqrt((float)dh);
  // this head's keys transposed (dh, T), so that a query's scores are one vectorised pass over the keys
  thread_local std::vector<float> kt_buf, sc_buf, add_buf;  // (reached once: TLS lookups are not free in a .so)
  kt_buf.resize((size_t)dh * T);
  sc_buf.resize((size_t)4 * T);
  add_buf.resize(T);
  float* kt = kt_buf.data();
  const float* base = a.qkv + (size_t)b * T * ld;
  for (int j = 0; j < T; j++) {
    const float* k = base + (size_t)j * ld + a.H + h * dh;
    for (int e = 0; e < dh; e++) kt[(size_t)e * T + j] = k[e];
  }
  // as HF: masked keys get the most negative float added (a fully masked row stays uniform)
  float* madd = add_buf.data();
  const int64_t* mask = a.mask ? a.mask + (size_t)b * T : nullptr;
  for (int j = 0; j < T; j++) madd[j] = mask && mask[j] == 0 ? -FLT_MAX : 0.f;
  const float* vh = base + 2 * a.H + h * dh;  // value j, dims of this head: vh + j * ld
#if NNF_ISA == 2
  // four queries at a time: every key (value) load feeds four independent FMA chains
  constexpr int QB = 4;
  for (int i0 = 0; i0 < T; i0 += QB) {
    const int nq = T - i0 < QB ? T - i0 : QB;
    const float* q[QB];
    float* s[QB];
    for (int r = 0; r < QB; r++) {  // a short last group repeats its last query (computed, not stored)
      const int i = i0 + (r < nq ? r : nq - 1);
      q[r] = base + (size_t)i * ld + h * dh;
      s[r] = sc_buf.data() + (size_t)r * T;
    }
    for (int j0 = 0; j0 < T; j0 += 32) {  // scores of 2 x 16 keys, summed over the head dimension
      const __mmask16 m0 = tail_mask(T - j0), m1 = T - j0 > 16 ? tail_mask(T - j0 - 16) : (__mmask16)0;
      __m512 c0[QB], c1[QB];
      for (int r = 0; r < QB; r++) c0[r] = c1[r] = _mm512_setzero_ps();
      for (int e = 0; e < dh; e++) {
        const __m512 k0 = _mm512_maskz_loadu_ps(m0, kt + (size_t)e * T + j0);
        const __m512 k1 = _mm512_maskz_loadu_ps(m1, kt + (size_t)e * T + j0 + 16);
        for (int r = 0; r < QB; r++) {
          const __m512 qe = _mm512_set1_ps(q[r][e]);
          c0[r] = _mm512_fmadd_ps(qe, k0, c0[r]);
          c1[r] = _mm512_fmadd_ps(qe, k1, c1[r]);
        }
      }
      const __m512 sc = _mm512_set1_ps(scale);
      const __m512 a0 = _mm512_maskz_loadu_ps(m0, madd + j0), a1 = _mm512_maskz_loadu_ps(m1, madd + j0 + 16);
      for (int r = 0; r < QB; r++) {
        _mm512_mask_storeu_ps(s[r] + j0, m0, _mm512_add_ps(_mm512_mul_ps(c0[r], sc), a0));
        _mm512_mask_storeu_ps(s[r] + j0 + 16, m1, _mm512_add_ps(_mm512_mul_ps(c1[r], sc), a1));
      }
    }
    for (int r = 0; r < nq; r++) {  // softmax, probabilities normalised in place
      __m512 mx = _mm512_set1_ps(-FLT_MAX);
      for (int j0 = 0; j0 < T; j0 += 16)
        mx = _mm512_mask_max_ps(mx, tail_mask(T - j0), mx, _mm512_maskz_loadu_ps(tail_mask(T - j0), s[r] + j0));
      const __m512 vmx = _mm512_set1_ps(_mm512_reduce_max_ps(mx));
      __m512 tot = _mm512_setzero_ps();
      for (int j0 = 0; j0 < T; j0 += 16) {
        const __mmask16 m = tail_mask(T - j0);
        const __m512 ex = _mm512_maskz_mov_ps(m, exp_ps(_mm512_sub_ps(_mm512_maskz_loadu_ps(m, s[r] + j0), vmx)));
        _mm512_mask_storeu_ps(s[r] + j0, m, ex);
        tot = _mm512_add_ps(tot, ex);
      }
      const __m512 inv = _mm512_set1_ps(1.f / _mm512_reduce_add_ps(tot));
      for (int j0 = 0; j0 < T; j0 += 16) {
        const __mmask16 m = tail_mask(T - j0);
        _mm512_mask_storeu_ps(s[r] + j0, m, _mm512_mul_ps(_mm512_maskz_loadu_ps(m, s[r] + j0), inv));
      }
    }
    for (int r = nq; r < QB; r++) s[r] = s[nq - 1];
    float* o[QB];
    for (int r = 0; r < QB; r++) o[r] = a.ctx + ((size_t)b * T + i0 + (r < nq ? r : nq - 1)) * a.H + h * dh;
    int e0 = 0;
    for (; e0 + 32 <= dh; e0 += 32) {  // 2 x 16 output dims, summed over the keys
      __m512 c0[QB], c1[QB];
      for (int r = 0; r < QB; r++) c0[r] = c1[r] = _mm512_setzero_ps();
      for (int j = 0; j < T; j++) {
        const __m512 v0 = _mm512_loadu_ps(vh + (size_t)j * ld + e0), v1 = _mm512_loadu_ps(vh + (size_t)j * ld + e0 + 16);
        for (int r = 0; r < QB; r++) {
          const __m512 pj = _mm512_set1_ps(s[r][j]);
          c0[r] = _mm512_fmadd_ps(pj, v0, c0[r]);
          c1[r] = _mm512_fmadd_ps(pj, v1, c1[r]);
        }
      }
      for (int r = 0; r < nq; r++) {
        _mm512_storeu_ps(o[r] + e0, c0[r]);
        _mm512_storeu_ps(o[r] + e0 + 16, c1[r]);
      }
    }
    for (; e0 + 16 <= dh; e0 += 16) {
      __m512 c0[QB];
      for (int r = 0; r < QB; r++) c0[r] = _mm512_setzero_ps();
      for (int j = 0; j < T; j++) {
        const __m512 v0 = _mm512_loadu_ps(vh + (size_t)j * ld + e0);
        for (int r = 0; r < QB; r++) c0[r] = _mm512_fmadd_ps(_mm512_set1_ps(s[r][j]), v0, c0[r]);
      }
      for (int r = 0; r < nq; r++) _mm512_storeu_ps(o[r] + e0, c0[r]);
    }
    for (int r = 0; r < nq; r++)
      for (int e = e0; e < dh; e++) {
        float acc = 0.f;
        for (int j = 0; j < T; j++) acc += s[r][j] * vh[(size_t)j * ld + e];
        o[r][e] = acc;
      }
  }
#else
  float* s = sc_buf.data();
  for (int i = 0; i < T; i++) {
    const float* q = base + (size_t)i * ld + h * dh;
    for (int j = 0; j < T; j++) s[j] = 0.f;
    for (int e = 0; e < dh; e++) {
      const float qe = q[e];
      const float* kr = kt + (size_t)e * T;
#pragma omp simd
      for (int j = 0; j < T; j++) s[j] += qe * kr[j];
    }
    float mx = -FLT_MAX;
    for (int j = 0; j < T; j++) {
      s[j] = s[j] * scale + madd[j];
      mx = s[j] > mx ? s[j] : mx;
    }
    float tot = 0.f;
    for (int j = 0; j < T; j++) { s[j] = std::exp(s[j] - mx); tot += s[j]; }
    const float inv = 1.f / tot;
    for (int j = 0; j < T; j++) s[j] *= inv;
    float* o = a.ctx + ((size_t)b * T + i) * a.H + h * dh;
    for (int e = 0; e < dh; e++) {
      float acc = 0.f;
      for (int j = 0; j < T; j++) acc += s[j] * vh[(size_t)j * ld + e];
      o[e] = acc;
    }
  }
#endif
}

}  // namespace

extern "C" {

// The code path this build really runs: the encoder has AVX-512 VNNI and portable paths only, so a build with
// AVX2 flags (NNF_ISA 1) runs the portable C++ (auto-vectorised by the compiler) and says so: 0, "scalar".
int nnf_isa(void) { return NNF_ISA == 2 ? 2 : 0; }

// Whether the linear layers run on AMX tiles: request -1 asks, 0 switches them off, 1 on (where this build has
// AMX and the kernel granted the tile state); returns the state after the request (0 or 1).
int nnf_amx(int request) {
#if NNF_AMX
  if (request == 0) amx_state.store(0);
  else if (request == 1) amx_state.store(amx_permitted() ? 1 : 0);
  return amx_on() ? 1 : 0;
#else
  (void)request;
  return 0;
#endif
}

// One linear layer (for tests): y (M, N) = quantised x (M, K) through L.
int nnf_linear(const NnfLinear* L, const float* x, int M, float* y, int nthreads) {
  if (M < 1 || L->N % 16 || L->K % KB || L->N < 16) return -1;
  QAct qa;
  linear(*L, x, M, y, qa, nthreads < 1 ? 1 : nthreads);
  return 0;
}

// Last hidden state out (B, T, H) for input ids, attention mask (or null) and token types (or null).
// Returns 0, or a negative code: -1 bad shapes, -2 an id out of range.
int nnf_encoder_forward(const NnfEncoder* e, const int64_t* ids, const int64_t* mask, const int64_t* types,
                        int B, int T, float* out, int nthreads) {
  if (B < 1 || T < 1 || T > e->P || e->H % e->heads || e->H % KB) return -1;
  if (nthreads < 1) nthreads = 1;
  const int M = B * T, H = e->H;
  for (int i = 0; i < M; i++) {
    if (ids[i] < 0 || ids[i] >= e->V) return -2;
    if (types && (types[i] < 0 || types[i] >= e->n_types)) return -2;
  }
  float* x = out;  // the hidden state lives in the output buffer
  for_rows(M, nthreads, [&](int m0, int m1) {
    for (int i = m0; i < m1; i++) {
      float* xr = x + (size_t)i * H;
      const float* p = e->pos + (size_t)(i % T) * H;
      const float* ty = e->type + (size_t)(types ? types[i] : 0) * H;
      if (e->word_codes) {
        const uint8_t* u = e->word_codes + (size_t)ids[i] * H;
        const float s = e->word_scale[ids[i]];
        for (int k = 0; k < H; k++) xr[k] = s * ((float)u[k] - 128.f) + ty[k] + p[k];
      } else {
        const float* w = e->word + (size_t)ids[i] * H;
        for (int k = 0; k < H; k++) xr[k] = w[k] + ty[k] + p[k];
      }
    }
    add_layernorm(x + (size_t)m0 * H, nullptr, m1 - m0, H, e->ln_w, e->ln_b, e->eps);
  });
  // workspace reused across calls (grow-only, one per calling thread): no page faults per call
  thread_local std::vector<float> qkv, ctx, tmp, mid;
  thread_local QAct qa;
  qkv.resize((size_t)M * 3 * H);
  ctx.resize((size_t)M * H);
  tmp.resize((size_t)M * H);
  mid.resize((size_t)M * e->I);
  for (int l = 0; l < e->n_layers; l++) {
    const NnfLayer& L = e->layers[l];
    linear(L.qkv, x, M, qkv.data(), qa, nthreads);
    Attn at{qkv.data(), mask, ctx.data(), B, T, H, e->heads};
    if (nthreads > 1 && B * e->heads > 1) parallel_chunks(attn_task, &at, B * e->heads, nthreads);
    else for (int t = 0; t < B * e->heads; t++) attn_task(&at, t);
    linear(L.out, ctx.data(), M, tmp.data(), qa, nthreads);
    residual_layernorm(x, tmp.data(), M, H, L.ln1_w, L.ln1_b, e->eps, nthreads);
    linear(L.up, x, M, mid.data(), qa, nthreads);
    const int I = L.up.N;  // layers may differ in FFN width (pruning); e->I is the widest
    float* act = mid.data();  // not mid itself in the lambda: a pool thread would see its own thread_local
    for_rows(M, nthreads, [&](int m0, int m1) { gelu(act + (size_t)m0 * I, (size_t)(m1 - m0) * I); });
    linear(L.down, mid.data(), M, tmp.data(), qa, nthreads);
    residual_layernorm(x, tmp.data(), M, H, L.ln2_w, L.ln2_b, e->eps, nthreads);
  }
  return 0;
}

}  // extern "C"
