// nnforge low-bit GEMV/GEMM kernels for small batches: y (M, N) = x (M, K) @ W.T, W packed along K.
//
// Compiled at first use by nnforge.compress.quantize.kernels._build (g++ -O3, -march chosen at run time)
// and loaded with ctypes: plain C entry points, raw pointers, no Python or torch headers.
//
// Packed layout (see docs/kernels.md): every weight is an unsigned code u in [0, 2^bits).
// A row is a sequence of 64-byte blocks; block b covers 64 * P weights (P = 8 / bits planes) and
// byte j of the block holds the code of weight (b * 64 * P + p * 64 + j) in bits [p * bits, (p + 1) * bits).
// Real weight = scale_g * (u - z_g) (binary: scale_g * (2u - 1)); scales are fp16, one per (row, group).
//
// Activations are quantised per row to int8 (absmax / 127, round half to even); each group's integer dot
// product sum_k u_k * xq_k is accumulated in int32 and the zero point enters through the group's
// activation sum:  y = sx * sum_g s_g * (amul * dot_g - z_g * sum_g(xq)).
//
// ISA: AVX-512 VNNI (vpdpbusd), AVX2 (vpmaddubsw + vpmaddwd), or portable scalar C++, picked by the
// compiler flags this file is built with (nnf_isa() reports which).

#include <cfloat>
#include <cmath>
#include <cstdint>
#include <vector>

#include "isa.h"

namespace {

#include "thread_pool.h"

// Software prefetch distance for the weight stream (bytes ahead of the block being read; past the end of
// the weights it is harmless: prefetches never fault). Measured on a shared Zen 3 (AVX2) with weights
// from DRAM: 1-2 KB ahead lowered the best and median times of a 90 MB int2 stream in interleaved runs.
constexpr int PREFETCH_BYTES = 1024;

struct Args {
  const uint8_t* w;      // (N, Kp * bits / 8)
  const uint16_t* s;     // (N, ng) fp16 bits
  const uint8_t* z;      // (N, ng) or nullptr (then zconst)
  float zconst, amul;
  int bits, N, Kp, G, ng, M;
  const int8_t* xq;      // (M, Kp)
  const float* sx;       // (M,)
  const float* gsum;     // (M, ng)
  float* y;              // (M, N)
  int rows_per_chunk;    // rows handed out at a time to a thread
};

#if NNF_ISA == 0
float half_to_float(uint16_t h) {
  uint32_t sign = (uint32_t)(h & 0x8000) << 16, exp = (h >> 10) & 0x1f, man = h & 0x3ff, bits;
  if (exp == 0) {
    if (man == 0) {
      bits = sign;
    } else {  // subnormal: renormalise
      int e = -1;
      do { e++; man <<= 1; } while ((man & 0x400) == 0);
      bits = sign | ((uint32_t)(127 - 15 - e) << 23) | ((man & 0x3ff) << 13);
    }
  } else if (exp == 31) {
    bits = sign | 0x7f800000u | (man << 13);
  } else {
    bits = sign | ((exp + 112) << 23) | (man << 13);
  }
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}
#endif

// Row scales to fp32 and the zero-point correction sum_g s_g * z_g * gsum[m][g] for MT activation rows.
template <int MT>
void row_prologue(const Args& a, int n, int m0, float* sf, float* corr) {
  const uint16_t* srow = a.s + (size_t)n * a.ng;
  const uint8_t* zrow = a.z ? a.z + (size_t)n * a.ng : nullptr;
  int g = 0;
  float c[MT] = {};
#if NNF_ISA >= 1
  __m256 c8[MT];
  for (int m = 0; m < MT; m++) c8[m] = _mm256_setzero_ps();
  for (; g + 8 <= a.ng; g += 8) {  // 8 groups at a time: scale, scale * zero point, times the activation sums
    const __m256 s = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i*)(srow + g)));
    _mm256_storeu_ps(sf + g, s);
    const __m256 z = zrow ? _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i*)(zrow + g))))
                          : _mm256_set1_ps(a.zconst);
    const __m256 sz = _mm256_mul_ps(s, z);
    for (int m = 0; m < MT; m++) c8[m] = _mm256_fmadd_ps(sz, _mm256_loadu_ps(a.gsum + (size_t)(m0 + m) * a.ng + g), c8[m]);
  }
  for (int m = 0; m < MT; m++) {
    __m128 s4 = _mm_add_ps(_mm256_castps256_ps128(c8[m]), _mm256_extractf128_ps(c8[m], 1));
    s4 = _mm_add_ps(s4, _mm_movehl_ps(s4, s4));
    c[m] = _mm_cvtss_f32(_mm_add_ss(s4, _mm_movehdup_ps(s4)));
  }
  for (int t = g; t < a.ng; t++) sf[t] = _cvtsh_ss(srow[t]);
#else
  for (int t = 0; t < a.ng; t++) sf[t] = half_to_float(srow[t]);
#endif
  for (; g < a.ng; g++) {
    const float sz = sf[g] * (zrow ? (float)zrow[g] : a.zconst);
    for (int m = 0; m < MT; m++) c[m] += sz * a.gsum[(size_t)(m0 + m) * a.ng + g];
  }
  for (int m = 0; m < MT; m++) corr[m] = c[m];
}

#if NNF_ISA == 2
// ---------------------------------------------------------------- AVX-512 VNNI
// CPG: 64-code chunks per group. ROW (one scale per row: int32 sums over the whole row), G32 (each chunk
// spans two groups: lanes 0-7 and 8-15 take different scales), or 1, 2, 4 (groups of 64, 128, 256).
constexpr int ROW = 0, G32 = -1;
#ifndef NNF_PLANES
#define NNF_PLANES 1
#endif

// Row scales to fp32 and the zero-point correction sum_g s_g * z_g * gsum[m][g], 16 groups at a time.
template <int MT>
void row_prologue_avx512(const Args& a, int n, int m0, float* sf, float* corr) {
  const uint16_t* srow = a.s + (size_t)n * a.ng;
  const uint8_t* zrow = a.z ? a.z + (size_t)n * a.ng : nullptr;
  if (a.ng == 1) {
    sf[0] = _cvtsh_ss(srow[0]);
    const float sz = sf[0] * (zrow ? (float)zrow[0] : a.zconst);
    for (int m = 0; m < MT; m++) corr[m] = sz * a.gsum[m0 + m];
    return;
  }
  __m512 c[MT];
  for (int m = 0; m < MT; m++) c[m] = _mm512_setzero_ps();
  for (int g = 0; g < a.ng; g += 16) {
    const __mmask16 k = a.ng - g >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << (a.ng - g)) - 1);
    const __m512 s = _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(k, srow + g));
    _mm512_mask_storeu_ps(sf + g, k, s);
    const __m512 sz = zrow ? _mm512_mul_ps(s, _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(_mm_maskz_loadu_epi8(k, zrow + g))))
                           : _mm512_mul_ps(s, _mm512_set1_ps(a.zconst));
    for (int m = 0; m < MT; m++)
      c[m] = _mm512_fmadd_ps(sz, _mm512_maskz_loadu_ps(k, a.gsum + (size_t)(m0 + m) * a.ng + g), c[m]);
  }
  for (int m = 0; m < MT; m++) corr[m] = _mm512_reduce_add_ps(c[m]);
}

// R output rows at a time (they share each activation load); NS independent accumulator slots per row
// hide the dpbusd/fma latency.
template <int BITS, int MT, int CPG, int R>
void row_block_avx512(const Args& a, int n, int m0, float* sf) {
  constexpr int P = 8 / BITS;
  constexpr int NS = (MT == 1 ? 4 : (MT == 2 ? 2 : 1)) / R > 0 ? (MT == 1 ? 4 : (MT == 2 ? 2 : 1)) / R : 1;
  constexpr int S0 = CPG > 0 ? NS * CPG : NS;  // chunks per step: whole groups, every slot used
  constexpr int S = S0 > P ? S0 : P;
  constexpr int U = S / P;  // blocks per step
  const int nb = a.Kp / (64 * P);
  const size_t row_bytes = (size_t)a.Kp * BITS / 8;
  const __m512i mask = _mm512_set1_epi8((char)((1 << BITS) - 1));
  const int8_t* xq = a.xq + (size_t)m0 * a.Kp;
  float corr[R][MT];
  for (int r = 0; r < R; r++) row_prologue_avx512<MT>(a, n + r, m0, sf + r * a.ng, corr[r]);
  const uint8_t* wrow = a.w + (size_t)n * row_bytes;
  __m512 accf[R][NS][MT];
  __m512i acci[R][NS][MT];
  for (int r = 0; r < R; r++)
    for (int j = 0; j < NS; j++)
      for (int m = 0; m < MT; m++) { accf[r][j][m] = _mm512_setzero_ps(); acci[r][j][m] = _mm512_setzero_si512(); }
  for (int b = 0; b < nb; b += U) {
#pragma GCC unroll 16
    for (int ub = 0; ub < U; ub++) {
      if (U > 1 && b + ub >= nb) break;
      __m512i v[R];
      for (int r = 0; r < R; r++) v[r] = _mm512_loadu_si512(wrow + r * row_bytes + (size_t)(b + ub) * 64);
#pragma GCC unroll 8
      for (int p = 0; p < P; p++) {
        const int c = ub * P + p, chunk = b * P + c;  // c: chunk within the step (compile time)
        const int slot = CPG > 0 ? (c / CPG) % NS : c % NS;
        const int8_t* xk = xq + (size_t)chunk * 64;
        __m512i xv[MT];
        for (int m = 0; m < MT; m++) xv[m] = _mm512_loadu_si512(xk + (size_t)m * a.Kp);
        for (int r = 0; r < R; r++) {
          const __m512i u = BITS == 8 ? v[r] : _mm512_and_si512(_mm512_srli_epi16(v[r], BITS * p), mask);
          const float* sr = sf + r * a.ng;
          if (CPG == G32) {
            const __m512 sv = _mm512_mask_blend_ps(0xFF00, _mm512_set1_ps(sr[2 * chunk]), _mm512_set1_ps(sr[2 * chunk + 1]));
            for (int m = 0; m < MT; m++) {
              const __m512i d = _mm512_dpbusd_epi32(_mm512_setzero_si512(), u, xv[m]);
              accf[r][slot][m] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(d), sv, accf[r][slot][m]);
            }
            continue;
          }
          for (int m = 0; m < MT; m++) acci[r][slot][m] = _mm512_dpbusd_epi32(acci[r][slot][m], u, xv[m]);
          if (CPG > 0 && c % CPG == CPG - 1) {  // last chunk of a group: scale it into the float sums
            const __m512 sv = _mm512_set1_ps(sr[chunk / (CPG > 0 ? CPG : 1)]);
            for (int m = 0; m < MT; m++) {
              accf[r][slot][m] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(acci[r][slot][m]), sv, accf[r][slot][m]);
              acci[r][slot][m] = _mm512_setzero_si512();
            }
          }
        }
      }
    }
  }
  for (int r = 0; r < R; r++)
    for (int m = 0; m < MT; m++) {
      float dot;
      if (CPG == ROW) {
        __m512i t = acci[r][0][m];
        for (int j = 1; j < NS; j++) t = _mm512_add_epi32(t, acci[r][j][m]);
        dot = sf[r * a.ng] * (float)_mm512_reduce_add_epi32(t);
      } else {
        __m512 t = accf[r][0][m];
        for (int j = 1; j < NS; j++) t = _mm512_add_ps(t, accf[r][j][m]);
        dot = _mm512_reduce_add_ps(t);
      }
      a.y[(size_t)(m0 + m) * a.N + n + r] = a.sx[m0 + m] * (a.amul * dot - corr[r][m]);
    }
}

// Plane-mask variant for groups of whole blocks (ROW, or CPG a multiple of P) or of whole planes (P a
// multiple of CPG: groups end inside a block): plane p is isolated in place with one AND (codes << bits*p,
// still < 256), dotted into its own accumulator, and the factor 2^(bits*p) is shifted out exactly when
// the group is flushed. One ALU op per 64 codes instead of a shift and an AND; two float chains (groups
// alternate) hide the FMA latency.
template <int BITS, int MT, int CPG, int R>
void row_block_planes_avx512(const Args& a, int n, int m0, float* sf) {
  constexpr int P = 8 / BITS;
  constexpr int BPG = CPG >= P ? CPG / P : 0;          // blocks per group (0: the whole row, or inside)
  constexpr int GPB = CPG > 0 && CPG < P ? P / CPG : 1;  // groups ending inside one block
  const int nb = a.Kp / (64 * P);
  const size_t row_bytes = (size_t)a.Kp * BITS / 8;
  const int8_t* xq = a.xq + (size_t)m0 * a.Kp;
  float corr[R][MT];
  for (int r = 0; r < R; r++) row_prologue_avx512<MT>(a, n + r, m0, sf + r * a.ng, corr[r]);
  const uint8_t* wrow = a.w + (size_t)n * row_bytes;
  __m512 accf[R][2][MT];
  __m512i acc[R][P][MT];
  for (int r = 0; r < R; r++)
    for (int m = 0; m < MT; m++) {
      accf[r][0][m] = accf[r][1][m] = _mm512_setzero_ps();
      for (int p = 0; p < P; p++) acc[r][p][m] = _mm512_setzero_si512();
    }
  auto flush = [&](int r, int m, int p0, int p1) -> __m512i {  // planes [p0, p1), shifted back to plain codes
    __m512i t = _mm512_srai_epi32(acc[r][p0][m], BITS * p0);
    for (int p = p0 + 1; p < p1; p++) t = _mm512_add_epi32(t, _mm512_srai_epi32(acc[r][p][m], BITS * p));
    for (int p = p0; p < p1; p++) acc[r][p][m] = _mm512_setzero_si512();
    return t;
  };
  int cnt = 0, grp = 0;
  for (int b = 0; b < nb; b++) {
    __m512i v[R];
    for (int r = 0; r < R; r++) {
      _mm_prefetch((const char*)(wrow + r * row_bytes + (size_t)b * 64 + PREFETCH_BYTES), _MM_HINT_T0);
      v[r] = _mm512_loadu_si512(wrow + r * row_bytes + (size_t)b * 64);
    }
#pragma GCC unroll 8
    for (int p = 0; p < P; p++) {
      const int8_t* xk = xq + (size_t)(b * P + p) * 64;
      __m512i xv[MT];
      for (int m = 0; m < MT; m++) xv[m] = _mm512_loadu_si512(xk + (size_t)m * a.Kp);
      const __m512i pm = _mm512_set1_epi8((char)(((1 << BITS) - 1) << (BITS * p)));
      for (int r = 0; r < R; r++) {
        const __m512i u = P == 1 ? v[r] : _mm512_and_si512(v[r], pm);
        for (int m = 0; m < MT; m++) acc[r][p][m] = _mm512_dpbusd_epi32(acc[r][p][m], u, xv[m]);
      }
      if (GPB > 1 && p % CPG == CPG - 1) {  // a group ends inside the block: scale it now
        const int g = b * GPB + p / (CPG > 0 ? CPG : 1), f = (p / (CPG > 0 ? CPG : 1)) & 1;
        for (int r = 0; r < R; r++) {
          const __m512 sv = _mm512_set1_ps(sf[r * a.ng + g]);
          for (int m = 0; m < MT; m++)
            accf[r][f][m] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(flush(r, m, p + 1 - CPG, p + 1)), sv, accf[r][f][m]);
        }
      }
    }
    if (BPG > 0 && ++cnt == BPG) {
      cnt = 0;
      const int g = grp++;
      for (int r = 0; r < R; r++) {
        const __m512 sv = _mm512_set1_ps(sf[r * a.ng + g]);
        for (int m = 0; m < MT; m++) {  // the chains swap places (no run-time index into registers)
          const __m512 older = accf[r][1][m];
          accf[r][1][m] = accf[r][0][m];
          accf[r][0][m] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(flush(r, m, 0, P)), sv, older);
        }
      }
    }
  }
  for (int r = 0; r < R; r++)
    for (int m = 0; m < MT; m++) {
      const float dot = CPG == ROW ? sf[r * a.ng] * (float)_mm512_reduce_add_epi32(flush(r, m, 0, P))
                                   : _mm512_reduce_add_ps(_mm512_add_ps(accf[r][0][m], accf[r][1][m]));
      a.y[(size_t)(m0 + m) * a.N + n + r] = a.sx[m0 + m] * (a.amul * dot - corr[r][m]);
    }
}

template <int BITS, int MT, int CPG>
void rows_avx512(const Args& a, int n0, int n1, int m0, float* sf) {
  constexpr int R = MT == 1 && BITS <= 2 ? 2 : 1;  // measured: helps 1-2 bit rows, hurts 4-8 bit ones
  int n = n0;
  constexpr bool planes = BITS < 8 && (CPG == ROW || (CPG > 0 && (CPG % (8 / BITS) == 0 || (8 / BITS) % CPG == 0)));
  if (planes && NNF_PLANES) {
    for (; n + R <= n1; n += R) row_block_planes_avx512<BITS, MT, CPG, R>(a, n, m0, sf);
    for (; n < n1; n++) row_block_planes_avx512<BITS, MT, CPG, 1>(a, n, m0, sf);
    return;
  }
  for (; n + R <= n1; n += R) row_block_avx512<BITS, MT, CPG, R>(a, n, m0, sf);
  for (; n < n1; n++) row_block_avx512<BITS, MT, CPG, 1>(a, n, m0, sf);
}
#endif

#if NNF_ISA >= 1
// ---------------------------------------------------------------- AVX2
// dot of 32 codes with 32 int8 activations -> 8 int32 lanes (4 codes each)
template <int BITS>
inline __m256i dot32(__m256i u, __m256i x) {
  if (BITS == 8) {  // u up to 255 would saturate vpmaddubsw: use |w| and sign-moved x with w = u - 128
    const __m256i w = _mm256_xor_si256(u, _mm256_set1_epi8((char)0x80));
    const __m256i p16 = _mm256_maddubs_epi16(_mm256_abs_epi8(w), _mm256_sign_epi8(x, w));
    return _mm256_madd_epi16(p16, _mm256_set1_epi16(1));
  }
  return _mm256_madd_epi16(_mm256_maddubs_epi16(u, x), _mm256_set1_epi16(1));
}

// 1-, 2- and 4-bit rows (HPG: 32-code chunks per group; 0: one scale for the whole row).
// A 32-byte half v and t = v >> 4 (16-bit lanes) give every plane with one AND: plane p is
// (p < P/2 ? v : t) & (mask << s), s = BITS * (p % (P/2)), i.e. its codes times 2^s, still below 256.
// vpmaddubsw products of one shift class s are summed in int16 (exact: at most 4 per class per block,
// |2^s * 2 * code * x| <= 3810) and shifted back (srai, exact on multiples of 2^s) before one vpmaddwd
// per block or group: 1 AND + 1 multiply + 1 add per 32 codes instead of shift + AND + 2 multiplies + add.
template <int BITS, int MT, int HPG>
void rows_avx2_low(const Args& a, int n0, int n1, int m0, float* sf) {
  constexpr int P = 8 / BITS, NC = P / 2, CPB = 2 * P;  // planes, shift classes, chunks per block
  constexpr int GPB = HPG > 0 && HPG < CPB ? CPB / HPG : 1;  // groups ending inside one block
  constexpr int BPG = HPG >= CPB ? HPG / CPB : 0;            // blocks per group (0: per row or inside)
  // blocks summed in int16 before widening: class sums stay below 2^15 (2-bit: <= 12192 per block in the
  // x4 class; 1-bit: <= 8128 in the x8 class), only where groups hold whole multiples of it
  constexpr int WB0 = BITS == 1 ? 4 : BITS == 2 ? 2 : 1;
  constexpr int WB = GPB > 1 ? 1 : (HPG == 0 || BPG % WB0 == 0 ? WB0 : 1);
  const int nb = a.Kp / (64 * P);
  const size_t row_bytes = (size_t)a.Kp * BITS / 8;
  const __m256i ones = _mm256_set1_epi16(1);
  const int8_t* xq = a.xq + (size_t)m0 * a.Kp;
  for (int n = n0; n < n1; n++) {
    float corr[MT];
    row_prologue<MT>(a, n, m0, sf, corr);
    const uint8_t* wrow = a.w + (size_t)n * row_bytes;
    __m256 accf[2][MT];  // two float chains (groups alternate) hide the FMA latency
    __m256i acci[MT], a16[NC][MT];
    for (int m = 0; m < MT; m++) {
      accf[0][m] = accf[1][m] = _mm256_setzero_ps();
      acci[m] = _mm256_setzero_si256();
      for (int c = 0; c < NC; c++) a16[c][m] = _mm256_setzero_si256();
    }
    int bcnt = 0, grp = 0;
    for (int b = 0; b < nb; b++) {
      const uint8_t* wb = wrow + (size_t)b * 64;
      _mm_prefetch((const char*)(wb + PREFETCH_BYTES), _MM_HINT_T0);
      const __m256i v[2] = {_mm256_loadu_si256((const __m256i*)wb), _mm256_loadu_si256((const __m256i*)(wb + 32))};
      const __m256i t[2] = {_mm256_srli_epi16(v[0], 4), _mm256_srli_epi16(v[1], 4)};
      auto widen = [&](int m) {  // the block's (or group's) int16 sums as int32, classes shifted back
        __m256i s16 = a16[0][m];
        for (int c = 1; c < NC; c++) s16 = _mm256_add_epi16(s16, _mm256_srai_epi16(a16[c][m], BITS * c));
        for (int c = 0; c < NC; c++) a16[c][m] = _mm256_setzero_si256();
        return _mm256_madd_epi16(s16, ones);
      };
#pragma GCC unroll 16
      for (int ch = 0; ch < CPB; ch++) {
        const int p = ch >> 1, h = ch & 1, cls = p % NC;
        const __m256i u = _mm256_and_si256(p < NC ? v[h] : t[h], _mm256_set1_epi8((char)(((1 << BITS) - 1) << (BITS * cls))));
        const int8_t* xk = xq + (size_t)(b * P + p) * 64 + h * 32;
        for (int m = 0; m < MT; m++)
          a16[cls][m] = _mm256_add_epi16(a16[cls][m], _mm256_maddubs_epi16(u, _mm256_loadu_si256((const __m256i*)(xk + (size_t)m * a.Kp))));
        if (GPB > 1 && ch % HPG == HPG - 1) {  // a group ends inside the block: scale it now
          const __m256 sv = _mm256_set1_ps(sf[b * GPB + ch / HPG]);
          const int f = (ch / HPG) & 1;
          for (int m = 0; m < MT; m++) accf[f][m] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(widen(m)), sv, accf[f][m]);
        }
      }
      if (GPB == 1 && ((b + 1) % WB == 0 || b + 1 == nb)) {
        for (int m = 0; m < MT; m++) acci[m] = _mm256_add_epi32(acci[m], widen(m));
        if (BPG > 0 && (bcnt += WB) == BPG) {
          const __m256 sv = _mm256_set1_ps(sf[grp++]);
          bcnt = 0;
          for (int m = 0; m < MT; m++) {  // the chains swap places (no run-time index into registers)
            const __m256 older = accf[1][m];
            accf[1][m] = accf[0][m];
            accf[0][m] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(acci[m]), sv, older);
            acci[m] = _mm256_setzero_si256();
          }
        }
      }
    }
    for (int m = 0; m < MT; m++) {
      __m128 s4;
      if (HPG == 0) {
        __m128i i4 = _mm_add_epi32(_mm256_castsi256_si128(acci[m]), _mm256_extracti128_si256(acci[m], 1));
        i4 = _mm_add_epi32(i4, _mm_shuffle_epi32(i4, 0x4E));
        i4 = _mm_add_epi32(i4, _mm_shuffle_epi32(i4, 0xB1));
        s4 = _mm_set_ss(sf[0] * (float)_mm_cvtsi128_si32(i4));
      } else {
        const __m256 f8 = _mm256_add_ps(accf[0][m], accf[1][m]);
        s4 = _mm_add_ps(_mm256_castps256_ps128(f8), _mm256_extractf128_ps(f8, 1));
        s4 = _mm_add_ps(s4, _mm_movehl_ps(s4, s4));
        s4 = _mm_add_ss(s4, _mm_movehdup_ps(s4));
      }
      a.y[(size_t)(m0 + m) * a.N + n] = a.sx[m0 + m] * (a.amul * _mm_cvtss_f32(s4) - corr[m]);
    }
  }
}

template <int BITS, int MT>
void rows_avx2(const Args& a, int n0, int n1, int m0, float* sf) {
  constexpr int P = 8 / BITS;
  const int nb = a.Kp / (64 * P), hpg = a.G / 32;  // 32-weight halves per group
  const size_t row_bytes = (size_t)a.Kp * BITS / 8;
  const __m256i mask = _mm256_set1_epi8((char)((1 << BITS) - 1));
  const int8_t* xq = a.xq + (size_t)m0 * a.Kp;
  // the int8 path computes sum (u - 128) * x, so its zero point moves by 128
  const float zfix = BITS == 8 ? 128.f : 0.f;
  for (int n = n0; n < n1; n++) {
    float corr[MT];
    row_prologue<MT>(a, n, m0, sf, corr);
    if (zfix != 0.f)
      for (int m = 0; m < MT; m++) {
        const float* gs = a.gsum + (size_t)(m0 + m) * a.ng;
        for (int g = 0; g < a.ng; g++) corr[m] -= zfix * sf[g] * gs[g];
      }
    const uint8_t* wrow = a.w + (size_t)n * row_bytes;
    __m256 accf[MT];
    __m256i acci[MT];
    for (int m = 0; m < MT; m++) { accf[m] = _mm256_setzero_ps(); acci[m] = _mm256_setzero_si256(); }
    int cnt = 0, grp = 0;
    for (int b = 0; b < nb; b++) {
      const __m256i v[2] = {_mm256_loadu_si256((const __m256i*)(wrow + (size_t)b * 64)),
                            _mm256_loadu_si256((const __m256i*)(wrow + (size_t)b * 64 + 32))};
#pragma GCC unroll 16
      for (int ph = 0; ph < 2 * P; ph++) {
        const int p = ph >> 1, h = ph & 1;
        const __m256i u = BITS == 8 ? v[h] : _mm256_and_si256(_mm256_srli_epi16(v[h], BITS * p), mask);
        const int8_t* xk = xq + (size_t)(b * P + p) * 64 + h * 32;
        for (int m = 0; m < MT; m++)
          acci[m] = _mm256_add_epi32(acci[m], dot32<BITS>(u, _mm256_loadu_si256((const __m256i*)(xk + (size_t)m * a.Kp))));
        if (++cnt == hpg) {
          const __m256 sv = _mm256_set1_ps(sf[grp++]);
          cnt = 0;
          for (int m = 0; m < MT; m++) {
            accf[m] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(acci[m]), sv, accf[m]);
            acci[m] = _mm256_setzero_si256();
          }
        }
      }
    }
    for (int m = 0; m < MT; m++) {
      __m128 s4 = _mm_add_ps(_mm256_castps256_ps128(accf[m]), _mm256_extractf128_ps(accf[m], 1));
      s4 = _mm_add_ps(s4, _mm_movehl_ps(s4, s4));
      s4 = _mm_add_ss(s4, _mm_movehdup_ps(s4));
      a.y[(size_t)(m0 + m) * a.N + n] = a.sx[m0 + m] * (a.amul * _mm_cvtss_f32(s4) - corr[m]);
    }
  }
}
#endif

// ---------------------------------------------------------------- portable scalar
template <int BITS, int MT>
void rows_scalar(const Args& a, int n0, int n1, int m0, float* sf) {
  constexpr int P = 8 / BITS;
  const size_t row_bytes = (size_t)a.Kp * BITS / 8;
  const int mask = (1 << BITS) - 1;
  for (int n = n0; n < n1; n++) {
    float corr[MT];
    row_prologue<MT>(a, n, m0, sf, corr);
    const uint8_t* wrow = a.w + (size_t)n * row_bytes;
    float acc[MT] = {};
    for (int g = 0; g < a.ng; g++) {
      int32_t d[MT] = {};
      for (int k = g * a.G; k < (g + 1) * a.G; k++) {
        const int blk = k / (64 * P), p = (k / 64) % P, j = k % 64;
        const int u = (wrow[(size_t)blk * 64 + j] >> (BITS * p)) & mask;
        for (int m = 0; m < MT; m++) d[m] += u * a.xq[(size_t)(m0 + m) * a.Kp + k];
      }
      for (int m = 0; m < MT; m++) acc[m] += sf[g] * (float)d[m];
    }
    for (int m = 0; m < MT; m++) a.y[(size_t)(m0 + m) * a.N + n] = a.sx[m0 + m] * (a.amul * acc[m] - corr[m]);
  }
}

template <int BITS, int MT>
void rows(const Args& a, int n0, int n1, int m0, float* sf) {
#if NNF_ISA == 2
  if (a.ng == 1) rows_avx512<BITS, MT, ROW>(a, n0, n1, m0, sf);
  else if (a.G == 32) rows_avx512<BITS, MT, G32>(a, n0, n1, m0, sf);
  else if (a.G == 64) rows_avx512<BITS, MT, 1>(a, n0, n1, m0, sf);
  else if (a.G == 128) rows_avx512<BITS, MT, 2>(a, n0, n1, m0, sf);
  else if (a.G == 256) rows_avx512<BITS, MT, 4>(a, n0, n1, m0, sf);
  else rows_scalar<BITS, MT>(a, n0, n1, m0, sf);  // other group sizes: correct, not tuned
#elif NNF_ISA == 1
  if (BITS == 8) rows_avx2<BITS, MT>(a, n0, n1, m0, sf);
  else if (a.ng == 1) rows_avx2_low<BITS < 8 ? BITS : 4, MT, 0>(a, n0, n1, m0, sf);
  else if (a.G == 32) rows_avx2_low<BITS < 8 ? BITS : 4, MT, 1>(a, n0, n1, m0, sf);
  else if (a.G == 64) rows_avx2_low<BITS < 8 ? BITS : 4, MT, 2>(a, n0, n1, m0, sf);
  else if (a.G == 128) rows_avx2_low<BITS < 8 ? BITS : 4, MT, 4>(a, n0, n1, m0, sf);
  else if (a.G == 256) rows_avx2_low<BITS < 8 ? BITS : 4, MT, 8>(a, n0, n1, m0, sf);
  else rows_avx2<BITS, MT>(a, n0, n1, m0, sf);  // other group sizes: correct, not tuned
#else
  rows_scalar<BITS, MT>(a, n0, n1, m0, sf);
#endif
}

template <int BITS>
void rows_any_m(const Args& a, int n0, int n1, float* sf) {
  for (int m0 = 0; m0 < a.M; m0 += 4) {  // tiles of up to 4 activation rows share each weight load
    switch (a.M - m0 >= 4 ? 4 : a.M - m0) {
      case 1: rows<BITS, 1>(a, n0, n1, m0, sf); break;
      case 2: rows<BITS, 2>(a, n0, n1, m0, sf); break;
      case 3: rows<BITS, 3>(a, n0, n1, m0, sf); break;
      default: rows<BITS, 4>(a, n0, n1, m0, sf); break;
    }
  }
}

// Per-row absmax int8 quantisation of x (M, K) into xq (M, Kp) (zero padded), sx (M,), gsum (M, ng).
// Codes are round_half_even(x / s) with s = absmax / 127, the same float ops as quantize_activations().
// Returns false, leaving the outputs unspecified, as soon as a row holds NaN or +-inf: max drops NaN and
// (int8_t)NaN is undefined, so such input would come out as finite garbage; the caller takes the fp32 path.
bool quantize_activations(const float* x, int M, int K, int Kp, int G, int8_t* xq, float* sx, float* gsum) {
  const int ng = Kp / G;
  for (int m = 0; m < M; m++) {
    const float* xr = x + (size_t)m * K;
    int8_t* q = xq + (size_t)m * Kp;
    float* gs = gsum + (size_t)m * ng;
    int k = 0;
    bool finite = true;
#if NNF_ISA == 2
    __m512 vmax = _mm512_setzero_ps();
    const __m512 vbig = _mm512_set1_ps(FLT_MAX);
    __mmask16 bad = 0;
    for (; k + 16 <= K; k += 16) {
      const __m512 v = _mm512_abs_ps(_mm512_loadu_ps(xr + k));
      bad |= _mm512_cmp_ps_mask(v, vbig, _CMP_NLE_UQ);  // NaN (unordered) or inf
      vmax = _mm512_max_ps(vmax, v);
    }
    float amax = _mm512_reduce_max_ps(vmax);
    finite = bad == 0;
#elif NNF_ISA == 1
    __m256 vmax = _mm256_setzero_ps();
    const __m256 vbig = _mm256_set1_ps(FLT_MAX), vabs = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fffffff));
    int bad = 0;
    for (; k + 8 <= K; k += 8) {
      const __m256 v = _mm256_and_ps(_mm256_loadu_ps(xr + k), vabs);
      bad |= _mm256_movemask_ps(_mm256_cmp_ps(v, vbig, _CMP_NLE_UQ));  // NaN (unordered) or inf
      vmax = _mm256_max_ps(vmax, v);
    }
    __m128 m4 = _mm_max_ps(_mm256_castps256_ps128(vmax), _mm256_extractf128_ps(vmax, 1));
    m4 = _mm_max_ps(m4, _mm_movehl_ps(m4, m4));
    float amax = _mm_cvtss_f32(_mm_max_ss(m4, _mm_movehdup_ps(m4)));
    finite = bad == 0;
#else
    float amax = 0.f;
#endif
    for (; k < K; k++) {
      const float a = std::fabs(xr[k]);
      finite = finite && a <= FLT_MAX;  // false for NaN and inf
      amax = std::fmax(amax, a);
    }
    if (!finite) return false;
    float s = amax / 127.f;
    if (!(s > 0.f)) s = 1.f;  // all zeros (or underflow): any scale gives zero codes
    sx[m] = s;
    for (int g = 0; g < ng; g++) gs[g] = 0.f;
    k = 0;
#if NNF_ISA == 2
    if (G % 16 == 0) {
      const __m512 vs = _mm512_set1_ps(s), lim = _mm512_set1_ps(127.f);
      for (; k + G <= K; k += G) {  // whole groups; one horizontal sum per group
        __m512i gsv = _mm512_setzero_si512();
        for (int j = k; j < k + G; j += 16) {
          __m512 r = _mm512_roundscale_ps(_mm512_div_ps(_mm512_loadu_ps(xr + j), vs),
                                          _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
          r = _mm512_min_ps(_mm512_max_ps(r, _mm512_sub_ps(_mm512_setzero_ps(), lim)), lim);
          const __m512i qi = _mm512_cvtps_epi32(r);
          _mm_storeu_si128((__m128i*)(q + j), _mm512_cvtepi32_epi8(qi));
          gsv = _mm512_add_epi32(gsv, qi);
        }
        gs[k / G] += (float)_mm512_reduce_add_epi32(gsv);
      }
    }
#elif NNF_ISA == 1
    {  // G is a multiple of 32: whole groups of 8
      const __m256 vs = _mm256_set1_ps(s), lim = _mm256_set1_ps(127.f), nlim = _mm256_set1_ps(-127.f);
      for (; k + G <= K; k += G) {
        __m256i gsv = _mm256_setzero_si256();
        for (int j = k; j < k + G; j += 8) {
          __m256 r = _mm256_round_ps(_mm256_div_ps(_mm256_loadu_ps(xr + j), vs), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
          r = _mm256_min_ps(_mm256_max_ps(r, nlim), lim);
          const __m256i qi = _mm256_cvtps_epi32(r);
          gsv = _mm256_add_epi32(gsv, qi);
          const __m128i q16 = _mm_packs_epi32(_mm256_castsi256_si128(qi), _mm256_extracti128_si256(qi, 1));
          _mm_storel_epi64((__m128i*)(q + j), _mm_packs_epi16(q16, q16));
        }
        __m128i i4 = _mm_add_epi32(_mm256_castsi256_si128(gsv), _mm256_extracti128_si256(gsv, 1));
        i4 = _mm_add_epi32(i4, _mm_shuffle_epi32(i4, 0x4E));
        i4 = _mm_add_epi32(i4, _mm_shuffle_epi32(i4, 0xB1));
        gs[k / G] += (float)_mm_cvtsi128_si32(i4);
      }
    }
#endif
    for (; k < K; k++) {
      float r = std::nearbyint(xr[k] / s);  // default rounding mode: half to even, as torch.round
      q[k] = (int8_t)(r > 127.f ? 127.f : (r < -127.f ? -127.f : r));
      gs[k / G] += (float)q[k];
    }
    for (; k < Kp; k++) q[k] = 0;
  }
  return true;
}

template <int BITS>
void chunk_task(const void* ctx, int t) {
  const Args& a = *static_cast<const Args*>(ctx);
  const int n0 = t * a.rows_per_chunk, n1 = n0 + a.rows_per_chunk < a.N ? n0 + a.rows_per_chunk : a.N;
  float sf[4096 + 32];  // two rows of scales (ng <= Kp / 32); larger K gets a heap buffer below
  if (2 * a.ng <= 4096) {
    rows_any_m<BITS>(a, n0, n1, sf);
  } else {
    std::vector<float> big(2 * (size_t)a.ng + 32);
    rows_any_m<BITS>(a, n0, n1, big.data());
  }
}

}  // namespace

extern "C" {

// 2: AVX-512 VNNI, 1: AVX2, 0: scalar.
int nnf_isa(void) { return NNF_ISA; }

// y (M, N) = x (M, K) @ dequant(W).T; returns 0 on success, a negative code on bad arguments, and 1 (y not
// written) when x holds NaN or inf: the caller computes those in fp32, where they propagate.
int nnf_qgemm(const float* x, int M, int K, const uint8_t* w, const uint16_t* scales, const uint8_t* zeros,
              float zconst, float amul, int bits, int N, int Kp, int G, float* y, int nthreads) {
  if (M < 1 || N < 1 || K < 1 || Kp < K || G < 32 || G % 32 != 0 || Kp % G != 0) return -1;
  if (bits != 1 && bits != 2 && bits != 4 && bits != 8) return -2;
  if (Kp % (64 * (8 / bits)) != 0) return -3;
  const int ng = Kp / G;
  std::vector<int8_t> xq((size_t)M * Kp);
  std::vector<float> sx(M), gsum((size_t)M * ng);
  if (!quantize_activations(x, M, K, Kp, G, xq.data(), sx.data(), gsum.data())) return 1;
  // chunks of ~128 KB of weights keep each thread's stream long enough for the hardware prefetcher
  // (measured: 16 KB chunks halve the bandwidth of 2-bit rows), with at least 8 chunks per thread
  if (nthreads < 1 || N < 64) nthreads = 1;
  const size_t row_bytes = (size_t)Kp * bits / 8;
  int rpc = (int)(131072 / row_bytes);
  if (rpc > N / (8 * nthreads)) rpc = N / (8 * nthreads);
  if (rpc < 16) rpc = 16;
  rpc = (rpc + 1) & ~1;
  Args a{w, scales, zeros, zconst, amul, bits, N, Kp, G, ng, M, xq.data(), sx.data(), gsum.data(), y, rpc};
  const int nchunks = (N + rpc - 1) / rpc;
  auto fn = bits == 8 ? chunk_task<8> : bits == 4 ? chunk_task<4> : bits == 2 ? chunk_task<2> : chunk_task<1>;
  parallel_chunks(fn, &a, nchunks, nthreads);
  return 0;
}

}  // extern "C"
