// nnforge sparse GEMV/GEMM kernels for small batches: y (M, N) = x (M, K) @ W.T, W stored sparse by rows.
//
// Compiled at first use by nnforge.compress.quantize.kernels.compile_library (g++ -O3, -march chosen at run
// time) and loaded with ctypes: plain C entry points, raw pointers, no Python or torch headers. At batch 1 a
// matmul reads every stored byte of W once, so the layouts below are built for streaming: one row after the
// other, values and their positions side by side, the row's x in L1.
//
// Formats (docs/kernels.md, "Sparse kernels", is the full description; prune/kernels/_format.py packs them):
//
// 2:4, fp32 values ("2:4"): every group of 4 consecutive weights keeps 2. A row of Kp = K rounded up to 16
//   is a sequence of blocks of 4 groups (16 weights -> 8 kept values, 32 bytes, + one uint16 of indices).
//   Value e (0..7) of a block belongs to group (0, 2, 1, 3)[e / 2] of the block, and its position in the group
//   (0..3) is bits [2e, 2e + 2) of the block's uint16. That order is what one vpermilps of the register
//   (g0 | g1) and one of (g2 | g3) produce with the same index vector, blended: 8 x values gathered with
//   4 instructions and no lane crossing.
// 2:4, int8 values ("2:4-int8"): blocks of 16 groups (64 weights -> 32 int8 values + 8 index bytes), one
//   fp32 scale per row. Value b (0..31) belongs to group 4L + t/2 (t < 8) or 8 + 4L + (t-8)/2 (t >= 8),
//   L = b / 16, t = b % 16; its position is bits [2p, 2p + 2) of index byte j, b = 8p + j. Then one
//   broadcast, one 64-bit shift and an AND give 32 byte indices, and two vpshufb + one blend gather 32 int8
//   activations. Activations are rounded to int8 per row (absmax / 127, half to even, as the quantized
//   kernels do) and the products summed exactly in int32: y = sx * s_row * sum(w * xq).
// CSR ("csr", "csr-int8"): row_ptr int64 (N + 1), column indices uint16 (K <= 65536), values fp32 or int8
//   (+ one fp32 scale per row, activations as above).
//
// ISA: AVX2 + FMA, or portable scalar C++, picked by the compiler flags (nnf_isa() reports which; an AVX-512
// build runs the AVX2 code, which AVX-512 CPUs also execute).

#include <cmath>
#include <cstdint>
#include <vector>

#include "isa.h"

namespace {

#include "thread_pool.h"

constexpr int PREFETCH_BYTES = 1024;  // software prefetch distance on the weight stream (as qgemv.cpp)

struct Args {
  int fmt;               // 0: 2:4 fp32, 1: 2:4 int8, 2: csr fp32, 3: csr int8
  int M, K, Kp, N;
  const void* vals;      // fp32 or int8 values
  const uint8_t* idx;    // 2:4 indices, or CSR column indices (uint16)
  const int64_t* rowptr; // CSR only
  const float* scales;   // int8 formats: one per row
  const float* x;        // (M, Kp) fp32 (fp32 formats)
  const int8_t* xq;      // (M, Kp) int8 (2:4 int8)
  const int32_t* xw;     // (M, Kp) int32, low 16 bits the int8 code (csr int8)
  const float* sx;       // (M,) activation scales (int8 formats)
  float* y;              // (M, N)
  int rows_per_chunk;
};

// ---------------------------------------------------------------- 2:4, fp32 values

constexpr int kGroup24[4] = {0, 2, 1, 3};

template <int MT>
void rows24_f32_scalar(const Args& a, int n0, int n1, int m0) {
  const int nb = a.Kp / 16;
  for (int n = n0; n < n1; n++) {
    const float* v = static_cast<const float*>(a.vals) + (size_t)n * (a.Kp / 2);
    const uint8_t* ix = a.idx + (size_t)n * (a.Kp / 8);
    float acc[MT] = {};
    for (int b = 0; b < nb; b++) {
      const unsigned w16 = ix[2 * b] | (unsigned)ix[2 * b + 1] << 8;
      for (int e = 0; e < 8; e++) {
        const int col = 16 * b + 4 * kGroup24[e / 2] + ((w16 >> (2 * e)) & 3);
        for (int m = 0; m < MT; m++) acc[m] += v[8 * b + e] * a.x[(size_t)(m0 + m) * a.Kp + col];
      }
    }
    for (int m = 0; m < MT; m++) a.y[(size_t)(m0 + m) * a.N + n] = acc[m];
  }
}

#if NNF_ISA >= 1
inline float hsum8(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

inline int32_t hsum8i(__m256i v) {
  __m128i s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
  s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0x4E));
  s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0xB1));
  return _mm_cvtsi128_si32(s);
}

template <int MT>
void rows24_f32_avx2(const Args& a, int n0, int n1, int m0) {
  const int nb = a.Kp / 16;
  const __m256i sh = _mm256_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14);
  const __m256i sh16 = _mm256_add_epi32(sh, _mm256_set1_epi32(16));
  for (int n = n0; n < n1; n++) {
    const float* v = static_cast<const float*>(a.vals) + (size_t)n * (a.Kp / 2);
    const uint8_t* ix = a.idx + (size_t)n * (a.Kp / 8);
    __m256 acc0[MT], acc1[MT];
    for (int m = 0; m < MT; m++) acc0[m] = acc1[m] = _mm256_setzero_ps();
    int b = 0;
    for (; b + 2 <= nb; b += 2) {  // two blocks (16 values, 4 index bytes) per step, two FMA chains
      _mm_prefetch((const char*)(v + 8 * b) + PREFETCH_BYTES, _MM_HINT_T0);
      uint32_t w32;
      std::memcpy(&w32, ix + 2 * b, 4);
      const __m256i bc = _mm256_set1_epi32((int)w32);
      const __m256i i0 = _mm256_srlv_epi32(bc, sh), i1 = _mm256_srlv_epi32(bc, sh16);  // vpermilps reads bits 0-1
      const __m256 w0 = _mm256_loadu_ps(v + 8 * b), w1 = _mm256_loadu_ps(v + 8 * b + 8);
      for (int m = 0; m < MT; m++) {
        const float* xr = a.x + (size_t)(m0 + m) * a.Kp + 16 * b;
        const __m256 s0 = _mm256_blend_ps(_mm256_permutevar_ps(_mm256_loadu_ps(xr), i0),
                                          _mm256_permutevar_ps(_mm256_loadu_ps(xr + 8), i0), 0xCC);
        const __m256 s1 = _mm256_blend_ps(_mm256_permutevar_ps(_mm256_loadu_ps(xr + 16), i1),
                                          _mm256_permutevar_ps(_mm256_loadu_ps(xr + 24), i1), 0xCC);
        acc0[m] = _mm256_fmadd_ps(w0, s0, acc0[m]);
        acc1[m] = _mm256_fmadd_ps(w1, s1, acc1[m]);
      }
    }
    for (; b < nb; b++) {
      const unsigned w16 = ix[2 * b] | (unsigned)ix[2 * b + 1] << 8;
      const __m256i i0 = _mm256_srlv_epi32(_mm256_set1_epi32((int)w16), sh);
      const __m256 w0 = _mm256_loadu_ps(v + 8 * b);
      for (int m = 0; m < MT; m++) {
        const float* xr = a.x + (size_t)(m0 + m) * a.Kp + 16 * b;
        const __m256 s0 = _mm256_blend_ps(_mm256_permutevar_ps(_mm256_loadu_ps(xr), i0),
                                          _mm256_permutevar_ps(_mm256_loadu_ps(xr + 8), i0), 0xCC);
        acc0[m] = _mm256_fmadd_ps(w0, s0, acc0[m]);
      }
    }
    for (int m = 0; m < MT; m++) a.y[(size_t)(m0 + m) * a.N + n] = hsum8(_mm256_add_ps(acc0[m], acc1[m]));
  }
}
#endif

// ---------------------------------------------------------------- 2:4, int8 values

inline int group24i8(int b) {  // the group (0..15) of value b (0..31) in a 64-weight block
  const int L = b / 16, t = b % 16;
  return t < 8 ? 4 * L + t / 2 : 8 + 4 * L + (t - 8) / 2;
}

template <int MT>
void rows24_i8_scalar(const Args& a, int n0, int n1, int m0) {
  const int nb = a.Kp / 64;
  for (int n = n0; n < n1; n++) {
    const int8_t* v = static_cast<const int8_t*>(a.vals) + (size_t)n * (a.Kp / 2);
    const uint8_t* ix = a.idx + (size_t)n * (a.Kp / 8);
    int32_t acc[MT] = {};
    for (int b = 0; b < nb; b++) {
      for (int pos = 0; pos < 32; pos++) {
        const int col = 64 * b + 4 * group24i8(pos) + ((ix[8 * b + pos % 8] >> (2 * (pos / 8))) & 3);
        for (int m = 0; m < MT; m++) acc[m] += (int32_t)v[32 * b + pos] * a.xq[(size_t)(m0 + m) * a.Kp + col];
      }
    }
    for (int m = 0; m < MT; m++) a.y[(size_t)(m0 + m) * a.N + n] = a.sx[m0 + m] * a.scales[n] * (float)acc[m];
  }
}

#if NNF_ISA >= 1
template <int MT>
void rows24_i8_avx2(const Args& a, int n0, int n1, int m0) {
  const int nb = a.Kp / 64;
  const __m256i shq = _mm256_setr_epi64x(0, 2, 4, 6), three = _mm256_set1_epi8(3), ones = _mm256_set1_epi16(1);
  const __m256i off = _mm256_setr_epi8(0, 0, 4, 4, 8, 8, 12, 12, 0, 0, 4, 4, 8, 8, 12, 12,
                                       0, 0, 4, 4, 8, 8, 12, 12, 0, 0, 4, 4, 8, 8, 12, 12);
  for (int n = n0; n < n1; n++) {
    const int8_t* v = static_cast<const int8_t*>(a.vals) + (size_t)n * (a.Kp / 2);
    const uint8_t* ix = a.idx + (size_t)n * (a.Kp / 8);
    __m256i acc[MT];
    for (int m = 0; m < MT; m++) acc[m] = _mm256_setzero_si256();
    for (int b = 0; b < nb; b++) {
      _mm_prefetch((const char*)(v + 32 * b) + PREFETCH_BYTES, _MM_HINT_T0);
      int64_t i64;
      std::memcpy(&i64, ix + 8 * b, 8);
      __m256i iv = _mm256_srlv_epi64(_mm256_set1_epi64x(i64), shq);  // byte 8p + j = index byte j >> 2p
      iv = _mm256_or_si256(_mm256_and_si256(iv, three), off);         // + 4 * group within the 16-byte lane
      const __m256i w = _mm256_loadu_si256((const __m256i*)(v + 32 * b));
      for (int m = 0; m < MT; m++) {
        const int8_t* xr = a.xq + (size_t)(m0 + m) * a.Kp + 64 * b;
        const __m256i s = _mm256_blend_epi32(_mm256_shuffle_epi8(_mm256_loadu_si256((const __m256i*)xr), iv),
                                             _mm256_shuffle_epi8(_mm256_loadu_si256((const __m256i*)(xr + 32)), iv),
                                             0xCC);
        // |x| (u8) times w carrying x's sign (s8): pairs of products <= 2 * 127 * 127 fit int16 exactly
        const __m256i p = _mm256_maddubs_epi16(_mm256_sign_epi8(s, s), _mm256_sign_epi8(w, s));
        acc[m] = _mm256_add_epi32(acc[m], _mm256_madd_epi16(p, ones));
      }
    }
    for (int m = 0; m < MT; m++)
      a.y[(size_t)(m0 + m) * a.N + n] = a.sx[m0 + m] * a.scales[n] * (float)hsum8i(acc[m]);
  }
}
#endif

// ---------------------------------------------------------------- CSR, fp32 or int8 values

template <int MT>
void rows_csr_f32(const Args& a, int n0, int n1, int m0) {
  const uint16_t* cols = reinterpret_cast<const uint16_t*>(a.idx);
  const float* vals = static_cast<const float*>(a.vals);
  for (int n = n0; n < n1; n++) {
    int64_t i = a.rowptr[n];
    const int64_t end = a.rowptr[n + 1];
    float acc[MT][4] = {};
    for (; i + 4 <= end; i += 4) {  // scalar loads beat vgatherdps on Zen 3; four chains hide the FMA latency
      const int c0 = cols[i], c1 = cols[i + 1], c2 = cols[i + 2], c3 = cols[i + 3];
      for (int m = 0; m < MT; m++) {
        const float* xr = a.x + (size_t)(m0 + m) * a.Kp;
        acc[m][0] += vals[i] * xr[c0];
        acc[m][1] += vals[i + 1] * xr[c1];
        acc[m][2] += vals[i + 2] * xr[c2];
        acc[m][3] += vals[i + 3] * xr[c3];
      }
    }
    for (; i < end; i++)
      for (int m = 0; m < MT; m++) acc[m][0] += vals[i] * a.x[(size_t)(m0 + m) * a.Kp + cols[i]];
    for (int m = 0; m < MT; m++) a.y[(size_t)(m0 + m) * a.N + n] = (acc[m][0] + acc[m][1]) + (acc[m][2] + acc[m][3]);
  }
}

template <int MT>
void rows_csr_i8(const Args& a, int n0, int n1, int m0) {
  const uint16_t* cols = reinterpret_cast<const uint16_t*>(a.idx);
  const int8_t* vals = static_cast<const int8_t*>(a.vals);
  for (int n = n0; n < n1; n++) {
    int64_t i = a.rowptr[n];
    const int64_t end = a.rowptr[n + 1];
    int32_t out[MT];
#if NNF_ISA >= 1
    __m256i acc[MT];
    for (int m = 0; m < MT; m++) acc[m] = _mm256_setzero_si256();
    for (; i + 8 <= end; i += 8) {
      const __m256i c = _mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i*)(cols + i)));
      int64_t w8;
      std::memcpy(&w8, vals + i, 8);
      const __m256i w = _mm256_cvtepi8_epi32(_mm_cvtsi64_si128(w8));
      for (int m = 0; m < MT; m++) {  // xw's high halves are 0: one vpmaddwd is the exact product
        const __m256i g = _mm256_i32gather_epi32((const int*)(a.xw + (size_t)(m0 + m) * a.Kp), c, 4);
        acc[m] = _mm256_add_epi32(acc[m], _mm256_madd_epi16(w, g));
      }
    }
    for (int m = 0; m < MT; m++) out[m] = hsum8i(acc[m]);
#else
    for (int m = 0; m < MT; m++) out[m] = 0;
#endif
    for (; i < end; i++)
      for (int m = 0; m < MT; m++) out[m] += (int32_t)vals[i] * (int16_t)a.xw[(size_t)(m0 + m) * a.Kp + cols[i]];
    for (int m = 0; m < MT; m++) a.y[(size_t)(m0 + m) * a.N + n] = a.sx[m0 + m] * a.scales[n] * (float)out[m];
  }
}

// ---------------------------------------------------------------- dispatch

template <int MT>
void rows_mt(const Args& a, int n0, int n1, int m0) {
  switch (a.fmt) {
#if NNF_ISA >= 1
    case 0: rows24_f32_avx2<MT>(a, n0, n1, m0); break;
    case 1: rows24_i8_avx2<MT>(a, n0, n1, m0); break;
#else
    case 0: rows24_f32_scalar<MT>(a, n0, n1, m0); break;
    case 1: rows24_i8_scalar<MT>(a, n0, n1, m0); break;
#endif
    case 2: rows_csr_f32<MT>(a, n0, n1, m0); break;
    default: rows_csr_i8<MT>(a, n0, n1, m0); break;
  }
}

void chunk_task(const void* ctx, int t) {
  const Args& a = *static_cast<const Args*>(ctx);
  const int n0 = t * a.rows_per_chunk, n1 = n0 + a.rows_per_chunk < a.N ? n0 + a.rows_per_chunk : a.N;
  int m = 0;  // activation rows four at a time: each weight byte is read once per tile
  for (; m + 4 <= a.M; m += 4) rows_mt<4>(a, n0, n1, m);
  for (; m + 2 <= a.M; m += 2) rows_mt<2>(a, n0, n1, m);
  for (; m < a.M; m++) rows_mt<1>(a, n0, n1, m);
}

// Per-row int8 activations as the quantized kernels round them (absmax / 127, half to even). Returns false
// when a row holds NaN or inf (int8 cannot carry them; the caller computes that call in fp32).
bool quantize_rows(const float* x, int M, int K, int Kp, int8_t* xq, int32_t* xw, float* sx) {
  for (int m = 0; m < M; m++) {
    const float* xr = x + (size_t)m * K;
    float amax = 0.f;
    bool finite = true;
    for (int k = 0; k < K; k++) {
      const float v = std::fabs(xr[k]);
      finite &= v <= 3.4028235e38f;  // false for NaN and inf
      amax = v > amax ? v : amax;
    }
    if (!finite) return false;
    const float s = amax > 0.f ? amax / 127.f : 1.f;
    sx[m] = s;
    for (int k = 0; k < Kp; k++) {
      float r = k < K ? std::nearbyint(xr[k] / s) : 0.f;  // default rounding mode: half to even
      r = r > 127.f ? 127.f : (r < -127.f ? -127.f : r);
      if (xq) xq[(size_t)m * Kp + k] = (int8_t)r;
      if (xw) xw[(size_t)m * Kp + k] = (int32_t)(uint16_t)(int16_t)r;
    }
  }
  return true;
}

}  // namespace

extern "C" {

// 2: AVX-512 VNNI build (runs the AVX2 code), 1: AVX2, 0: scalar.
int nnf_isa(void) { return NNF_ISA; }

// y (M, N) = x (M, K) @ W.T for a sparse W (fmt as in Args). vals / idx / rowptr / scales as the format says.
// Returns 0 on success, a negative code on bad arguments, 1 (y not written) when an int8 format meets a
// non-finite activation.
int nnf_sparse_mm(int fmt, const float* x, int M, int K, int Kp, int N, const void* vals, const uint8_t* idx,
                  const int64_t* rowptr, const float* scales, float* y, int nthreads) {
  if (M < 1 || N < 1 || K < 1 || Kp < K || fmt < 0 || fmt > 3) return -1;
  if ((fmt == 0 && Kp % 16) || (fmt == 1 && Kp % 64) || (fmt >= 2 && Kp != K)) return -2;
  if ((fmt >= 2 && (rowptr == nullptr || K > 65536)) || ((fmt & 1) && scales == nullptr)) return -3;
  std::vector<float> xpad, sx(M);
  std::vector<int8_t> xq;
  std::vector<int32_t> xw;
  const float* xf = x;
  if (fmt == 1) {
    xq.resize((size_t)M * Kp);
    if (!quantize_rows(x, M, K, Kp, xq.data(), nullptr, sx.data())) return 1;
  } else if (fmt == 3) {
    xw.resize((size_t)M * Kp);
    if (!quantize_rows(x, M, K, Kp, nullptr, xw.data(), sx.data())) return 1;
  } else if (Kp != K) {  // 2:4 fp32: zero-padded rows (the padded weights are zeros too)
    xpad.assign((size_t)M * Kp, 0.f);
    for (int m = 0; m < M; m++) std::memcpy(&xpad[(size_t)m * Kp], x + (size_t)m * K, sizeof(float) * K);
    xf = xpad.data();
  }
  // chunks of ~128 KB of stored weights, at least 8 per thread (as qgemv.cpp: long streams per thread)
  if (nthreads < 1 || N < 64) nthreads = 1;
  const double row_bytes = fmt >= 2 ? (double)(rowptr[N] - rowptr[0]) * (fmt == 2 ? 6 : 3) / N + 16
                                    : (double)Kp * (fmt == 0 ? 2.25 : 0.75);
  int rpc = (int)(131072 / row_bytes);
  if (rpc > N / (8 * nthreads)) rpc = N / (8 * nthreads);
  if (rpc < 16) rpc = 16;
  Args a{fmt, M, K, Kp, N, vals, idx, rowptr, scales, xf, xq.data(), xw.data(), sx.data(), y, rpc};
  parallel_chunks(chunk_task, &a, (N + rpc - 1) / rpc, nthreads);
  return 0;
}

}  // extern "C"
