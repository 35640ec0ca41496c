// The DLRM dot interaction on the CPU, float32: for F vectors v_0 .. v_{F-1} of width d per example, the dot
// products of all pairs (i, j), i < j, in torch.triu_indices(F, F, 1) order ((0, 1), (0, 2) .. (F-2, F-1)), after
// v_0 itself when `keep_first` (DLRM's [x, dots]). The backward gives each vector's gradient
//   g_f = [g_z's first d columns, when keep_first and f == 0] + sum over j != f, ascending, of G[f][j] * v_j
// where G[f][j] = G[j][f] is pair (f, j)'s output gradient.
//
// hier_ps/models/layers.py runs these in place of a bmm, a gather of the upper triangle, the vectors' stacking copy
// and the output's concatenation (and, backward, a gather into F x F and a bmm). Each example is computed by one
// thread in a fixed order (every sum over k or j ascending, no fused multiply-adds: -std=c11), so the result does
// not depend on the thread count; it agrees with the bmm path to rounding, not bit for bit.
//
// The vectors are read where they are: one pointer and one row stride (in floats) per vector, unit column stride.
// Examples go LANES at a time, transposed into [value][lane] blocks in L1, so that every product is one loop over
// LANES examples (fixed length: the compiler vectorizes it whole); each example's arithmetic is the same whichever
// lane or thread takes it.
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "parallel.h"

typedef int64_t i64;

#define LANES 16  // examples at once
#define JB 4      // forward: pairs at once
#define KB 8      // backward: gradient columns at once
#define CHUNK 64  // examples a thread claims at a time (a multiple of LANES)

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

// x[(f * d + k) * LANES + l] = v_f[b0 + l][k] for the n examples from b0; lanes n.. are zero.
static void load_block(const Job* t, i64 b0, int n, float* restrict x) {
  const int nv = t->n_vec, d = t->dim;
  if (n < LANES) memset(x, 0, sizeof(float) * (size_t)nv * (size_t)d * LANES);
  for (int f = 0; f < nv; ++f) {
    for (int l = 0; l < n; ++l) {
      const float* restrict v = t->vecs[f] + (b0 + l) * t->strides[f];
      for (int k = 0; k < d; ++k) x[((i64)f * d + k) * LANES + l] = v[k];
    }
  }
}

static void* forward_range(void* arg) {
  Job* t = (Job*)arg;
  const int nv = t->n_vec, d = t->dim, first = t->keep_first ? d : 0;
  float* x = (float*)malloc(sizeof(float) * (size_t)nv * (size_t)d * LANES);
  if (x == 0) {
    t->failed = 1;
    return 0;
  }
  i64 lo, hi;
  while (next_chunk(t->chunks, &lo, &hi)) {
    for (i64 b0 = lo; b0 < hi; b0 += LANES) {
      const int n = hi - b0 < LANES ? (int)(hi - b0) : LANES;
      load_block(t, b0, n, x);
      float* restrict z = t->out + b0 * t->out_stride;
      if (t->keep_first) {
        for (int l = 0; l < n; ++l) {
          memcpy(z + l * t->out_stride, t->vecs[0] + (b0 + l) * t->strides[0], sizeof(float) * (size_t)d);
        }
      }
      i64 p = first;
      for (int i = 0; i + 1 < nv; ++i) {
        const float* restrict xi = x + (i64)i * d * LANES;
        int j = i + 1;
        for (; j + JB <= nv; j += JB, p += JB) {  // JB pairs (i, j..) at once: each load of v_i serves JB products
          float acc[JB][LANES] = {{0}};
          for (int k = 0; k < d; ++k) {
            for (int jj = 0; jj < JB; ++jj) {
              const float* restrict xj = x + ((i64)(j + jj) * d + k) * LANES;
              for (int l = 0; l < LANES; ++l) acc[jj][l] += xi[k * LANES + l] * xj[l];
            }
          }
          for (int l = 0; l < n; ++l) {
            for (int jj = 0; jj < JB; ++jj) z[l * t->out_stride + p + jj] = acc[jj][l];
          }
        }
        for (; j < nv; ++j, ++p) {
          const float* restrict xj = x + (i64)j * d * LANES;
          float acc[LANES] = {0};
          for (int k = 0; k < d; ++k) {
            for (int l = 0; l < LANES; ++l) acc[l] += xi[k * LANES + l] * xj[k * LANES + l];
          }
          for (int l = 0; l < n; ++l) z[l * t->out_stride + p] = acc[l];
        }
      }
    }
  }
  free(x);
  return 0;
}

static void* backward_range(void* arg) {
  Job* t = (Job*)arg;
  const int nv = t->n_vec, d = t->dim, first = t->keep_first ? d : 0;
  const i64 pairs = (i64)nv * (nv - 1) / 2;
  float* x = (float*)malloc(sizeof(float) * ((size_t)nv * (size_t)d + (size_t)pairs) * LANES);
  i64* pair = (i64*)malloc(sizeof(i64) * (size_t)nv * (size_t)nv);  // pair[f * F + j]: (f, j)'s index, either order
  if (x == 0 || pair == 0) {
    free(x);
    free(pair);
    t->failed = 1;
    return 0;
  }
  float* g = x + (i64)nv * d * LANES;  // g[p * LANES + l]: pair p's gradient of example b0 + l
  for (int i = 0, p = 0; i < nv; ++i) {
    pair[(i64)i * nv + i] = -1;
    for (int j = i + 1; j < nv; ++j, ++p) pair[(i64)i * nv + j] = pair[(i64)j * nv + i] = p;
  }
  i64 lo, hi;
  while (next_chunk(t->chunks, &lo, &hi)) {
    for (i64 b0 = lo; b0 < hi; b0 += LANES) {
      const int n = hi - b0 < LANES ? (int)(hi - b0) : LANES;
      load_block(t, b0, n, x);
      if (n < LANES) memset(g, 0, sizeof(float) * (size_t)pairs * LANES);
      for (int l = 0; l < n; ++l) {
        const float* restrict gz = t->gz + (b0 + l) * t->out_stride + first;
        for (i64 p = 0; p < pairs; ++p) g[p * LANES + l] = gz[p];
      }
      for (int f = 0; f < nv; ++f) {
        float* restrict out = t->out + ((i64)f * t->batch + b0) * d;
        for (int k0 = 0; k0 < d; k0 += KB) {
          const int kb = d - k0 < KB ? d - k0 : KB;
          float a[KB][LANES] = {{0}};
          if (t->keep_first && f == 0) {
            for (int l = 0; l < n; ++l) {
              const float* restrict gz = t->gz + (b0 + l) * t->out_stride + k0;
              for (int kk = 0; kk < kb; ++kk) a[kk][l] = gz[kk];
            }
          }
          for (int j = 0; j < nv; ++j) {
            if (j == f) continue;
            const float* restrict gp = g + pair[(i64)f * nv + j] * LANES;
            const float* restrict xj = x + ((i64)j * d + k0) * LANES;
            if (kb == KB) {  // a whole block: fixed trip counts, the accumulators stay in registers
              for (int kk = 0; kk < KB; ++kk) {
                for (int l = 0; l < LANES; ++l) a[kk][l] += gp[l] * xj[kk * LANES + l];
              }
            } else {
              for (int kk = 0; kk < kb; ++kk) {
                for (int l = 0; l < LANES; ++l) a[kk][l] += gp[l] * xj[kk * LANES + l];
              }
            }
          }
          for (int l = 0; l < n; ++l) {
            for (int kk = 0; kk < kb; ++kk) out[(i64)l * d + k0 + kk] = a[kk][l];
          }
        }
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
