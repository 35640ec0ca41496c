// Pooled lookup and the backward pass fused with the sparse optimizers (DESIGN.md contract 3).
//
// Thread layout of every kernel here: blockDim.x threads share one bag / one unique row (a power of two <= 32, so a
// row's threads are lanes of one warp) and each handles the elements d = threadIdx.x + k * blockDim.x; blockDim.y
// bags / rows per block. Nothing here uses float atomics: each output element is summed by one thread, in a fixed
// order, so the same input gives the same bits.
//
// Twins (the CPU path and the test oracle): hier_ps/hbm/kernels.py, class TorchTwins.
#include "common.cuh"

#define MAXV 16  // elements per thread: dim <= 32 * MAXV = 512 (the loader falls back to the twin above that)

// out[b, :] = sum_{j in [offsets[b], offsets[b+1])} emb[rows[j], :] (fp32 accumulation), divided by div[b] if div.
template <typename T>
__device__ void pooled_forward(const T* __restrict__ emb, const i64* __restrict__ rows,
                               const i64* __restrict__ offsets, const float* __restrict__ div, i64 n_bags, int dim,
                               float* __restrict__ out) {
  i64 b = (i64)blockIdx.x * blockDim.y + threadIdx.y;
  if (b >= n_bags) return;
  i64 lo = offsets[b], hi = offsets[b + 1];
  float scale = div != nullptr ? div[b] : 1.0f;
  for (int d = threadIdx.x; d < dim; d += blockDim.x) {
    float acc = 0.0f;
    for (i64 j = lo; j < hi; ++j) acc += to_f32(emb[rows[j] * (i64)dim + d]);
    out[b * (i64)dim + d] = div != nullptr ? acc / scale : acc;
  }
}

enum Opt { SGD = 0, ADAGRAD = 1, ROWWISE_ADAGRAD = 2, ADAM = 3, FTRL = 4 };

struct Hyper {
  float lr, eps, beta1, beta2, alpha, beta, l1, l2;
  float omb1, omb2;  // 1 - beta1, 1 - beta2 computed in double on the host, as the torch twin does
};

// Sum of v over the `width` lanes that share a row (a fixed butterfly: deterministic).
__device__ __forceinline__ float row_sum(float v, int width) {
  for (int o = width / 2; o > 0; o /= 2) v += __shfl_xor_sync(0xffffffffu, v, o, width);
  return v;
}

// For each unique row u: g = sum over its occurrences j in [seg[u], seg[u+1]) (in order) of
// grad[bags[j], :] / div[bags[j]], then one optimizer update of emb[urows[u]] and state[urows[u]].
// With seg = arange(U+1), bags = arange(U) and div = null this is the update alone with given sums g = grad.
template <typename T, int OPT>
__device__ void backward_update(T* __restrict__ emb, float* __restrict__ state, int state_w,
                                const i64* __restrict__ urows, i64 n_unique, const i64* __restrict__ seg,
                                const i64* __restrict__ bags, const float* __restrict__ grad,
                                const float* __restrict__ div, int dim, Hyper h) {
  i64 u = (i64)blockIdx.x * blockDim.y + threadIdx.y;
  bool active = u < n_unique;  // no early return: the row's lanes meet in shuffles / __syncwarp below
  float g[MAXV];
  i64 r = active ? urows[u] : 0;
  float sq = 0.0f;
  int k = 0;
  for (int d = threadIdx.x; d < dim; d += blockDim.x, ++k) {
    float acc = 0.0f;
    if (active) {
      for (i64 j = seg[u]; j < seg[u + 1]; ++j) {
        i64 bag = bags[j];
        float x = grad[bag * (i64)dim + d];
        acc += div != nullptr ? x / div[bag] : x;
      }
    }
    g[k] = acc;
    sq += acc * acc;
  }
  T* w = emb + r * (i64)dim;
  float* st = state + r * (i64)state_w;
  float lr = h.lr;
  if (OPT == SGD) {
    k = 0;
    for (int d = threadIdx.x; active && d < dim; d += blockDim.x, ++k) store_f32(&w[d], to_f32(w[d]) - lr * g[k]);
  } else if (OPT == ADAGRAD) {
    k = 0;
    for (int d = threadIdx.x; active && d < dim; d += blockDim.x, ++k) {
      float hh = st[d] + g[k] * g[k];
      st[d] = hh;
      store_f32(&w[d], to_f32(w[d]) - lr * g[k] / (sqrtf(hh) + h.eps));
    }
  } else if (OPT == ROWWISE_ADAGRAD) {
    float mean = row_sum(sq, blockDim.x) / (float)dim;
    float hh = active ? st[0] + mean : 0.0f;
    __syncwarp();  // every lane has read st[0] before lane 0 writes it
    if (active && threadIdx.x == 0) st[0] = hh;
    float denom = sqrtf(hh) + h.eps;
    k = 0;
    for (int d = threadIdx.x; active && d < dim; d += blockDim.x, ++k)
      store_f32(&w[d], to_f32(w[d]) - lr * g[k] / denom);
  } else if (OPT == ADAM) {
    float t = active ? st[2 * dim] + 1.0f : 0.0f;
    __syncwarp();  // every lane has read the step count before lane 0 writes it
    if (active && threadIdx.x == 0) st[2 * dim] = t;
    float c1 = 1.0f - powf(h.beta1, t), c2 = 1.0f - powf(h.beta2, t);
    k = 0;
    for (int d = threadIdx.x; active && d < dim; d += blockDim.x, ++k) {
      float m = h.beta1 * st[d] + h.omb1 * g[k];
      float v = h.beta2 * st[dim + d] + h.omb2 * g[k] * g[k];
      st[d] = m;
      st[dim + d] = v;
      store_f32(&w[d], to_f32(w[d]) - lr * (m / c1) / (sqrtf(v / c2) + h.eps));
    }
  } else {  // FTRL-Proximal, per element
    k = 0;
    for (int d = threadIdx.x; active && d < dim; d += blockDim.x, ++k) {
      float z = st[d], n = st[dim + d], wv = to_f32(w[d]);
      float n_new = n + g[k] * g[k];
      float sigma = (sqrtf(n_new) - sqrtf(n)) / h.alpha;
      z += g[k] - sigma * wv;
      st[d] = z;
      st[dim + d] = n_new;
      float sgn = z > 0.0f ? 1.0f : (z < 0.0f ? -1.0f : 0.0f);
      float w_new = -(z - sgn * h.l1) / ((h.beta + sqrtf(n_new)) / h.alpha + h.l2);
      store_f32(&w[d], fabsf(z) <= h.l1 ? 0.0f : w_new);
    }
  }
}

#define POOLED(NAME, T)                                                                                            \
  extern "C" __global__ void NAME(const T* emb, const i64* rows, const i64* offsets, const float* div, i64 n_bags, \
                                  int dim, float* out) {                                                           \
    pooled_forward<T>(emb, rows, offsets, div, n_bags, dim, out);                                                  \
  }
POOLED(pooled_forward_fp32, float)
POOLED(pooled_forward_fp16, f16)
POOLED(pooled_forward_bf16, bf16)

#define BACKWARD(NAME, T, OPT)                                                                                     \
  extern "C" __global__ void NAME(T* emb, float* state, int state_w, const i64* urows, i64 n_unique,              \
                                  const i64* seg, const i64* bags, const float* grad, const float* div, int dim,   \
                                  float lr, float eps, float beta1, float beta2, float alpha, float beta, float l1, \
                                  float l2, float omb1, float omb2) {                                              \
    Hyper h = {lr, eps, beta1, beta2, alpha, beta, l1, l2, omb1, omb2};                                            \
    backward_update<T, OPT>(emb, state, state_w, urows, n_unique, seg, bags, grad, div, dim, h);                 \
  }
#define BACKWARD_ALL(OPTNAME, OPT)                        \
  BACKWARD(backward_##OPTNAME##_fp32, float, OPT)         \
  BACKWARD(backward_##OPTNAME##_fp16, f16, OPT)           \
  BACKWARD(backward_##OPTNAME##_bf16, bf16, OPT)
BACKWARD_ALL(sgd, SGD)
BACKWARD_ALL(adagrad, ADAGRAD)
BACKWARD_ALL(rowwise_adagrad, ROWWISE_ADAGRAD)
BACKWARD_ALL(adam, ADAM)
BACKWARD_ALL(ftrl, FTRL)
