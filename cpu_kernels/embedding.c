// The CPU kernels of the HBM tier's hot paths, for float32 rows: the fused backward pass (per unique row, the sum of
// its occurrences' gradients and one sparse optimizer update, DESIGN.md contract 3; the twin of
// cuda_kernels/embedding.cu's backward_*), and the row moves of a pass's load and push (move_rows_fp32).
//
// Each row's gradient is summed over its occurrences in segment order, element by element, then the row and its
// state are updated in place: one pass over the rows and no [U, dim] temporary. Threads claim chunks of rows as they
// go (parallel.h) and each row is computed the same way whichever thread takes it: the same input gives the same
// bits, with any number of threads. The arithmetic follows embedding.cu expression by expression, with no fused
// multiply-adds (built with -std=c11: -ffp-contract=off); the one difference is the row-wise mean, summed here left
// to right (embedding.cu: a butterfly over lanes), so the two agree to rounding, not bit for bit.
//
// Rows are random in a table far larger than the caches, so the loop prefetches the rows PF iterations ahead, and
// the occurrences' gradient rows (random bags of a pooled gradient larger than L2) PF_OCC occurrences ahead.
//
// Built at run time by hier_ps/hbm/cpu_kernels.py (any C compiler; no Python or torch headers) and called through
// ctypes, which releases the GIL for the call.
#include <math.h>
#include <stdint.h>

#include "parallel.h"

typedef int64_t i64;

enum Opt { SGD = 0, ADAGRAD = 1, ROWWISE_ADAGRAD = 2, ADAM = 3, FTRL = 4 };

typedef struct {
  float lr, eps, beta1, beta2, alpha, beta, l1, l2;
  float omb1, omb2;  // 1 - beta1, 1 - beta2 computed in double on the host, as the torch twin does
} Hyper;

#define MAXD 512      // the loader falls back to the torch twin above this
#define PF 16         // rows ahead to prefetch
#define PF_OCC 16     // occurrences ahead to prefetch the gradient rows of (a batch's pooled gradient: random bags)
#define ROW_CHUNK 1024   // unique rows a thread of the backward claims at a time
#define MOVE_CHUNK 4096  // rows a thread of a row move claims at a time

typedef struct {
  int opt;
  float* emb;
  float* state;
  int state_w;
  const i64* urows;
  Chunks* chunks;  // the unique rows, claimed ROW_CHUNK at a time by the call's threads
  const i64* seg;
  const i64* bags;
  const float* grad;
  const float* div;
  int dim;
  Hyper h;
} Task;

static void run(const Task* t, i64 lo, i64 hi) {
  const int dim = t->dim, state_w = t->state_w, opt = t->opt;
  const Hyper h = t->h;
  float* restrict emb = t->emb;
  float* restrict state = t->state;
  const i64* restrict urows = t->urows;
  const i64* restrict seg = t->seg;
  const i64* restrict bags = t->bags;
  const float* restrict grad = t->grad;
  const float* restrict div = t->div;
  float g[MAXD];
  const i64 occ_end = seg[hi];
  for (i64 u = lo; u < hi; ++u) {
    if (u + PF < hi) {
      i64 pr = urows[u + PF];
      __builtin_prefetch(emb + pr * (i64)dim, 1);
      if (state_w) __builtin_prefetch(state + pr * (i64)state_w, 1);
    }
    for (int d = 0; d < dim; ++d) g[d] = 0.0f;
    for (i64 j = seg[u]; j < seg[u + 1]; ++j) {
      if (j + PF_OCC < occ_end) {  // every occurrence's gradient row, not only each row's first
        const float* ahead = grad + bags[j + PF_OCC] * (i64)dim;
        for (int d = 0; d < dim; d += 16) __builtin_prefetch(ahead + d, 0);
      }
      i64 bag = bags[j];
      const float* restrict x = grad + bag * (i64)dim;
      if (div != 0) {
        float s = div[bag];
        for (int d = 0; d < dim; ++d) g[d] += x[d] / s;
      } else {
        for (int d = 0; d < dim; ++d) g[d] += x[d];
      }
    }
    i64 r = urows[u];
    float* restrict w = emb + r * (i64)dim;
    float* restrict st = state + r * (i64)state_w;
    float lr = h.lr;
    if (opt == SGD) {
      for (int d = 0; d < dim; ++d) w[d] = w[d] - lr * g[d];
    } else if (opt == ADAGRAD) {
      for (int d = 0; d < dim; ++d) {
        float hh = st[d] + g[d] * g[d];
        st[d] = hh;
        w[d] = w[d] - lr * g[d] / (sqrtf(hh) + h.eps);
      }
    } else if (opt == ROWWISE_ADAGRAD) {
      float sq = 0.0f;
      for (int d = 0; d < dim; ++d) sq += g[d] * g[d];
      float hh = st[0] + sq / (float)dim;
      st[0] = hh;
      float denom = sqrtf(hh) + h.eps;
      for (int d = 0; d < dim; ++d) w[d] = w[d] - lr * g[d] / denom;
    } else if (opt == ADAM) {
      float t = st[2 * dim] + 1.0f;
      st[2 * dim] = t;
      float c1 = 1.0f - powf(h.beta1, t), c2 = 1.0f - powf(h.beta2, t);
      for (int d = 0; d < dim; ++d) {
        float m = h.beta1 * st[d] + h.omb1 * g[d];
        float v = h.beta2 * st[dim + d] + h.omb2 * g[d] * g[d];
        st[d] = m;
        st[dim + d] = v;
        w[d] = w[d] - lr * (m / c1) / (sqrtf(v / c2) + h.eps);
      }
    } else {  // FTRL-Proximal, per element
      for (int d = 0; d < dim; ++d) {
        float z = st[d], n = st[dim + d], wv = w[d];
        float n_new = n + g[d] * g[d];
        float sigma = (sqrtf(n_new) - sqrtf(n)) / h.alpha;
        z += g[d] - sigma * wv;
        st[d] = z;
        st[dim + d] = n_new;
        float sgn = z > 0.0f ? 1.0f : (z < 0.0f ? -1.0f : 0.0f);
        float w_new = -(z - sgn * h.l1) / ((h.beta + sqrtf(n_new)) / h.alpha + h.l2);
        w[d] = fabsf(z) <= h.l1 ? 0.0f : w_new;
      }
    }
  }
}

static void* run_thread(void* arg) {
  const Task* t = (const Task*)arg;
  i64 lo, hi;
  while (next_chunk(t->chunks, &lo, &hi)) run(t, lo, hi);
  return 0;
}

// For each unique row u: g = sum over its occurrences j in [seg[u], seg[u+1]) (in order) of
// grad[bags[j], :] / div[bags[j]], then one optimizer update of emb[urows[u]] and state[urows[u]] (urows distinct).
// With seg = arange(U+1), bags = arange(U) and div = null this is the update alone with given sums g = grad.
// At most n_threads threads (the caller's included; one per 4096 rows) claim the rows ROW_CHUNK at a time.
// Returns 0, or -1 for dim > MAXD or an unknown opt (nothing is written then).
int backward_update_fp32(int opt, float* emb, float* state, int state_w, const i64* urows, i64 n_unique,
                         const i64* seg, const i64* bags, const float* grad, const float* div, int dim,
                         const Hyper* h, int n_threads) {
  if (dim > MAXD || opt < SGD || opt > FTRL) return -1;
  n_threads = threads_for(n_unique, 4096, n_threads);  // small batches: one thread
  Chunks chunks;
  chunks_init(&chunks, n_unique, ROW_CHUNK);
  Task tasks[MAXTHREADS];
  for (int k = 0; k < n_threads; ++k) {
    Task t = {opt, emb, state, state_w, urows, &chunks, seg, bags, grad, div, dim, *h};
    tasks[k] = t;
  }
  run_parallel(run_thread, (char*)tasks, sizeof(Task), n_threads);
  return 0;
}

typedef struct {
  float* dst;
  const i64* dst_idx;
  i64 dst_stride;  // floats from one row to the next
  const float* src;
  const i64* src_idx;
  i64 src_stride;
  Chunks* chunks;  // the rows, claimed MOVE_CHUNK at a time
  int width;
} Move;

static void move_range(const Move* m, i64 lo, i64 hi) {
  const int width = m->width;
  const i64 ds = m->dst_stride, ss = m->src_stride;
  const i64* restrict di = m->dst_idx;
  const i64* restrict si = m->src_idx;
  for (i64 i = lo; i < hi; ++i) {
    if (si != 0 && i + PF < hi) __builtin_prefetch(m->src + si[i + PF] * ss, 0);
    if (di != 0 && i + PF < hi) __builtin_prefetch(m->dst + di[i + PF] * ds, 1);
    const float* restrict s = m->src + (si != 0 ? si[i] : i) * ss;
    float* restrict d = m->dst + (di != 0 ? di[i] : i) * ds;
    for (int k = 0; k < width; ++k) d[k] = s[k];
  }
}

static void* move_thread(void* arg) {
  const Move* m = (const Move*)arg;
  i64 lo, hi;
  while (next_chunk(m->chunks, &lo, &hi)) move_range(m, lo, hi);
  return 0;
}

// dst[dst_idx[i], :] = src[src_idx[i], :] for i in [0, n), rows of `width` floats that start dst_stride and
// src_stride floats apart (a row's columns are adjacent; a source may be the first columns of wider packed rows);
// a null index means i itself. The destination rows must be distinct (they are: a working set's positions or fresh
// rows). At most n_threads threads (one per 16384 rows) claim the rows MOVE_CHUNK at a time. Returns 0.
int move_rows_fp32(float* dst, const i64* dst_idx, i64 dst_stride, const float* src, const i64* src_idx,
                   i64 src_stride, i64 n, int width, int n_threads) {
  n_threads = threads_for(n, 16384, n_threads);
  Chunks chunks;
  chunks_init(&chunks, n, MOVE_CHUNK);
  Move moves[MAXTHREADS];
  for (int k = 0; k < n_threads; ++k) {
    Move m = {dst, dst_idx, dst_stride, src, src_idx, src_stride, &chunks, width};
    moves[k] = m;
  }
  run_parallel(move_thread, (char*)moves, sizeof(Move), n_threads);
  return 0;
}
