// The DLRM dot interaction on the CPU, float32: for F vectors v_0 .. v_{F-1} of width d per example, the dot
// products of all pairs (i, j), i < j, in torch.triu_indices(F, F, 1) order ((0, 1), (0, 2) .. (F-2, F-1)), after
// v_0 itself when `keep_first` (DLRM's [x, dots]). The backward gives each vector's gradient
//   g_f = [g_z's first d columns, when keep_first and f == 0] + sum over j != f, ascending, of G[f][j] * v_j
// where G[f][j] = G[j][f] is pair (f, j)'s output gradient.
//
// hier_ps/models/layers.py runs these in place of a bmm, a gather of the upper triangle, the vectors' stacking copy
// and the output's concatenation (and, backward, a gather into F x F and a bmm). Each example is computed by one
// thread in a fixed order (every sum over k or j ascending, no fused multiply-adds: -std=c11 -ffp-contract=off), so
// the result does not depend on the thread count; it agrees with the bmm path to rounding, not bit for bit.
//
// The vectors are read where they are: one pointer and one row stride (in floats) per vector, unit column stride.
// Examples go LANES at a time (one register of floats: 16 with AVX-512, else 8), transposed into [value][lane]
// blocks in L1, so that every product is one vector operation over LANES examples (GCC's vector extension, which
// clang has too); each example's arithmetic is the same whichever lane or thread takes it. The accumulators are
// vector variables, so that they stay in registers (as arrays indexed by lane they went through memory: half the
// kernel's time). The transposes into and out of the blocks move LANES x LANES tiles with AVX-512 or AVX shuffles,
// and value by value on other targets and for a ragged last block (the same bits either way: they only move
// values).
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#if defined(__AVX512F__) || defined(__AVX__)
#include <immintrin.h>
#endif

#include "parallel.h"

typedef int64_t i64;

#if defined(__AVX512F__)
#define LANES 16  // examples at once: one 512-bit register of floats
#else
#define LANES 8   // examples at once: one 256-bit register of floats (AVX2), or what the compiler makes of it
#endif
#define JB 4      // forward: pairs at once
#define KB 16     // backward: gradient columns at once
#define CHUNK 64  // examples a thread claims at a time (a multiple of LANES)

typedef float vf __attribute__((vector_size(LANES * sizeof(float))));  // one value of LANES examples

typedef struct {
  const float* const* vecs;
  const i64* strides;
  int n_vec, dim, keep_first;
  Chunks* chunks;    // the examples, claimed CHUNK at a time by the call's threads
  float* out;        // forward: z [batch, keep_first * dim + pairs]; backward: g_v [n_vec, batch, dim]
  const float* gz;   // backward: g_z, same layout as z
  i64 out_stride, batch;
  int failed;
} Job;

// The LANES x LANES tile r[0..LANES-1] (row i = LANES floats) transposed in place: r[i][j] <- r[j][i]. TILED says
// whether the target has one (AVX-512 or AVX); without, the transposes go value by value.
#if defined(__AVX512F__)
#define TILED 1
typedef __m512 row_t;
#define load_row _mm512_loadu_ps
#define store_row _mm512_storeu_ps
static inline void transpose_tile(__m512 r[16]) {
  __m512 t[16];
  for (int i = 0; i < 16; i += 2) {
    t[i] = _mm512_unpacklo_ps(r[i], r[i + 1]);
    t[i + 1] = _mm512_unpackhi_ps(r[i], r[i + 1]);
  }
  for (int i = 0; i < 16; i += 4) {
    for (int k = 0; k < 2; ++k) {
      const __m512d lo = _mm512_castps_pd(t[i + k]), hi = _mm512_castps_pd(t[i + 2 + k]);
      r[i + 2 * k] = _mm512_castpd_ps(_mm512_unpacklo_pd(lo, hi));
      r[i + 2 * k + 1] = _mm512_castpd_ps(_mm512_unpackhi_pd(lo, hi));
    }
  }
  // each 128-bit lane now holds four consecutive values of one column: two rounds of 128-bit lane shuffles put each
  // column's four lanes in one register
  for (int i = 0; i < 16; i += 8) {
    for (int k = 0; k < 4; ++k) {
      t[i + k] = _mm512_shuffle_f32x4(r[i + k], r[i + 4 + k], 0x88);
      t[i + 4 + k] = _mm512_shuffle_f32x4(r[i + k], r[i + 4 + k], 0xdd);
    }
  }
  for (int k = 0; k < 8; ++k) {
    r[k] = _mm512_shuffle_f32x4(t[k], t[8 + k], 0x88);
    r[8 + k] = _mm512_shuffle_f32x4(t[k], t[8 + k], 0xdd);
  }
}
#elif defined(__AVX__)
#define TILED 1
typedef __m256 row_t;
#define load_row _mm256_loadu_ps
#define store_row _mm256_storeu_ps
static inline void transpose_tile(__m256 r[8]) {
  __m256 t[8], u[8];
  for (int i = 0; i < 8; i += 2) {
    t[i] = _mm256_unpacklo_ps(r[i], r[i + 1]);
    t[i + 1] = _mm256_unpackhi_ps(r[i], r[i + 1]);
  }
  for (int i = 0; i < 8; i += 4) {
    u[i] = _mm256_shuffle_ps(t[i], t[i + 2], 0x44);
    u[i + 1] = _mm256_shuffle_ps(t[i], t[i + 2], 0xee);
    u[i + 2] = _mm256_shuffle_ps(t[i + 1], t[i + 3], 0x44);
    u[i + 3] = _mm256_shuffle_ps(t[i + 1], t[i + 3], 0xee);
  }
  for (int k = 0; k < 4; ++k) {
    r[k] = _mm256_permute2f128_ps(u[k], u[4 + k], 0x20);
    r[4 + k] = _mm256_permute2f128_ps(u[k], u[4 + k], 0x31);
  }
}
#else
#define TILED 0
#endif

// dst[c * LANES + r] = src[r * stride + c] for r < n (<= LANES) and c < cols; dst's lanes n.. are left as they are.
static void to_lanes(const float* src, i64 stride, int n, int cols, float* restrict dst) {
  int c0 = 0;
#if TILED
  if (n == LANES) {
    for (; c0 + LANES <= cols; c0 += LANES) {
      row_t r[LANES];
      for (int i = 0; i < LANES; ++i) r[i] = load_row(src + i * stride + c0);
      transpose_tile(r);
      for (int i = 0; i < LANES; ++i) store_row(dst + (i64)(c0 + i) * LANES, r[i]);
    }
  }
#endif
  for (int r = 0; r < n; ++r) {
    const float* restrict s = src + r * stride;
    for (int c = c0; c < cols; ++c) dst[(i64)c * LANES + r] = s[c];
  }
}

// dst[r * stride + c] = src[c * LANES + r] for r < n (<= LANES) and c < cols.
static void from_lanes(const float* restrict src, int n, int cols, float* dst, i64 stride) {
  int c0 = 0;
#if TILED
  if (n == LANES) {
    for (; c0 + LANES <= cols; c0 += LANES) {
      row_t r[LANES];
      for (int i = 0; i < LANES; ++i) r[i] = load_row(src + (i64)(c0 + i) * LANES);
      transpose_tile(r);
      for (int i = 0; i < LANES; ++i) store_row(dst + i * stride + c0, r[i]);
    }
  }
#endif
  for (int r = 0; r < n; ++r) {
    float* restrict d = dst + r * stride;
    for (int c = c0; c < cols; ++c) d[c] = src[(i64)c * LANES + r];
  }
}

// x[(f * d + k) * LANES + l] = v_f[b0 + l][k] for the n examples from b0; lanes n.. are zero.
static void load_block(const Job* t, i64 b0, int n, float* restrict x) {
  const int nv = t->n_vec, d = t->dim;
  if (n < LANES) memset(x, 0, sizeof(float) * (size_t)nv * (size_t)d * LANES);
  for (int f = 0; f < nv; ++f) {
    to_lanes(t->vecs[f] + b0 * t->strides[f], t->strides[f], n, d, x + (i64)f * d * LANES);
  }
}

static void* forward_range(void* arg) {
  Job* t = (Job*)arg;
  const int nv = t->n_vec, d = t->dim, first = t->keep_first ? d : 0;
  const i64 pairs = (i64)nv * (nv - 1) / 2;
  // the vectors' block, then the dots' block zt[p * LANES + l]
  const size_t bytes = sizeof(float) * ((size_t)nv * (size_t)d + (size_t)pairs) * LANES;
  float* x = (float*)aligned_alloc(64, (bytes + 63) / 64 * 64);
  if (x == 0) {
    t->failed = 1;
    return 0;
  }
  vf* zt = (vf*)(x + (i64)nv * d * LANES);
  i64 lo, hi;
  while (next_chunk(t->chunks, &lo, &hi)) {
    for (i64 b0 = lo; b0 < hi; b0 += LANES) {
      const int n = hi - b0 < LANES ? (int)(hi - b0) : LANES;
      load_block(t, b0, n, x);
      float* z = t->out + b0 * t->out_stride;
      if (t->keep_first) {
        for (int l = 0; l < n; ++l) {
          memcpy(z + l * t->out_stride, t->vecs[0] + (b0 + l) * t->strides[0], sizeof(float) * (size_t)d);
        }
      }
      const vf* xv = (const vf*)x;  // xv[f * d + k]: value k of vector f
      i64 p = 0;
      for (int i = 0; i + 1 < nv; ++i) {
        const vf* xi = xv + (i64)i * d;
        int j = i + 1;
        for (; j + JB <= nv; j += JB, p += JB) {  // JB pairs (i, j..) at once: each load of v_i serves JB products
          const vf* xj = xv + (i64)j * d;
          vf a0 = {0}, a1 = {0}, a2 = {0}, a3 = {0};
          for (int k = 0; k < d; ++k) {
            const vf u = xi[k];
            a0 += u * xj[k];
            a1 += u * xj[d + k];
            a2 += u * xj[2 * d + k];
            a3 += u * xj[3 * d + k];
          }
          zt[p] = a0;
          zt[p + 1] = a1;
          zt[p + 2] = a2;
          zt[p + 3] = a3;
        }
        for (; j < nv; ++j, ++p) {
          const vf* xj = xv + (i64)j * d;
          vf a = {0};
          for (int k = 0; k < d; ++k) a += xi[k] * xj[k];
          zt[p] = a;
        }
      }
      from_lanes((const float*)zt, n, (int)pairs, z + first, t->out_stride);
    }
  }
  free(x);
  return 0;
}

// a[k0 + kk] += sum over j != f, ascending, of g[pf[j]] * v_j's value k0 + kk, for kk < kb. Inlined with kb a
// constant, so that the kb accumulators are registers.
static inline __attribute__((always_inline)) void grad_columns(const vf* xv, const vf* g, const i64* pf, int nv,
                                                               int d, int f, int k0, int kb, vf* a) {
  vf acc[KB];
  for (int kk = 0; kk < kb; ++kk) acc[kk] = a[k0 + kk];
  for (int j = 0; j < nv; ++j) {
    if (j == f) continue;
    const vf gp = g[pf[j]];
    const vf* xj = xv + (i64)j * d + k0;
    for (int kk = 0; kk < kb; ++kk) acc[kk] += gp * xj[kk];
  }
  for (int kk = 0; kk < kb; ++kk) a[k0 + kk] = acc[kk];
}

static void* backward_range(void* arg) {
  Job* t = (Job*)arg;
  const int nv = t->n_vec, d = t->dim, first = t->keep_first ? d : 0;
  const i64 pairs = (i64)nv * (nv - 1) / 2;
  // the vectors' block, the pair gradients' g[p * LANES + l], and one vector's gradient a[k * LANES + l]
  const size_t bytes = sizeof(float) * ((size_t)nv * (size_t)d + (size_t)pairs + (size_t)d) * LANES;
  float* x = (float*)aligned_alloc(64, (bytes + 63) / 64 * 64);
  i64* pair = (i64*)malloc(sizeof(i64) * (size_t)nv * (size_t)nv);  // pair[f * F + j]: (f, j)'s index, either order
  if (x == 0 || pair == 0) {
    free(x);
    free(pair);
    t->failed = 1;
    return 0;
  }
  const vf* xv = (const vf*)x;
  vf* g = (vf*)(x + (i64)nv * d * LANES);  // g[p]: pair p's gradient of examples b0..
  vf* a = g + pairs;                        // a[k]: value k of one vector's gradient
  for (int i = 0, p = 0; i < nv; ++i) {
    pair[(i64)i * nv + i] = -1;
    for (int j = i + 1; j < nv; ++j, ++p) pair[(i64)i * nv + j] = pair[(i64)j * nv + i] = p;
  }
  i64 lo, hi;
  while (next_chunk(t->chunks, &lo, &hi)) {
    for (i64 b0 = lo; b0 < hi; b0 += LANES) {
      const int n = hi - b0 < LANES ? (int)(hi - b0) : LANES;
      load_block(t, b0, n, x);
      const float* gz = t->gz + b0 * t->out_stride;
      if (n < LANES) memset(g, 0, sizeof(vf) * (size_t)(pairs + d));
      to_lanes(gz + first, t->out_stride, n, (int)pairs, (float*)g);
      for (int f = 0; f < nv; ++f) {
        const i64* pf = pair + (i64)f * nv;
        if (t->keep_first && f == 0) {
          to_lanes(gz, t->out_stride, n, d, (float*)a);
        } else {
          memset(a, 0, sizeof(vf) * (size_t)d);
        }
        // Columns in blocks of 16, then 8, 4 and 1: each block's accumulators stay in registers.
        int k0 = 0;
        for (; k0 + KB <= d; k0 += KB) grad_columns(xv, g, pf, nv, d, f, k0, KB, a);
        if (k0 + 8 <= d) {  // fewer than KB = 16 columns are left: at most one block of 8 and one of 4
          grad_columns(xv, g, pf, nv, d, f, k0, 8, a);
          k0 += 8;
        }
        if (k0 + 4 <= d) {
          grad_columns(xv, g, pf, nv, d, f, k0, 4, a);
          k0 += 4;
        }
        for (; k0 < d; ++k0) grad_columns(xv, g, pf, nv, d, f, k0, 1, a);
        from_lanes((const float*)a, n, d, t->out + ((i64)f * t->batch + b0) * d, d);
      }
    }
  }
  free(x);
  free(pair);
  return 0;
}

static int run(void* (*fn)(void*), const float* const* vecs, const i64* strides, int n_vec, int dim, i64 batch,
               int keep_first, float* out, const float* gz, i64 out_stride, int n_threads) {
  if (n_vec < 2 || dim < 1 || batch < 0) return -2;
  n_threads = threads_for(batch, 256, n_threads);  // at least 256 examples a thread
  Chunks chunks;
  chunks_init(&chunks, batch, CHUNK);
  Job jobs[MAXTHREADS];
  for (int k = 0; k < n_threads; ++k) {
    Job j = {vecs, strides, n_vec, dim, keep_first, &chunks, out, gz, out_stride, batch, 0};
    jobs[k] = j;
  }
  run_parallel(fn, (char*)jobs, sizeof(Job), n_threads);
  for (int k = 0; k < n_threads; ++k) {
    if (jobs[k].failed) return -1;
  }
  return 0;
}

// z[b] = [v_0[b] if keep_first] + [<v_i[b], v_j[b]> for i < j]; z's rows z_stride floats apart. Returns 0, -1 when
// out of memory, -2 for bad sizes.
int dot_interaction_fwd_fp32(const float* const* vecs, const i64* strides, int n_vec, int dim, i64 batch,
                             int keep_first, float* z, i64 z_stride, int n_threads) {
  return run(forward_range, vecs, strides, n_vec, dim, batch, keep_first, z, 0, z_stride, n_threads);
}

// g_v [n_vec, batch, dim] (contiguous) from g_z (rows gz_stride floats apart, laid out as z). Returns as the forward.
int dot_interaction_bwd_fp32(const float* const* vecs, const i64* strides, int n_vec, int dim, i64 batch,
                             int keep_first, const float* gz, i64 gz_stride, float* gv, int n_threads) {
  return run(backward_range, vecs, strides, n_vec, dim, batch, keep_first, gv, gz, gz_stride, n_threads);
}
