// Key dedup for planning (unique + inverse over uint64 keys) and row gather / scatter for pass load and push.
//
// Dedup: the loader sorts the keys (torch.sort, stable, on the sign-flipped int64 view so that the order is the
// uint64 order), then mark_heads flags the first of each run of equal keys, an inclusive cumsum of the flags gives
// each sorted key its unique position + 1, and write_unique writes the unique keys and each input key's inverse.
//
// Twins (the CPU path and the test oracle): hier_ps/hbm/kernels.py, class TorchTwins.
#include "common.cuh"

// head[i] = 1 when sorted[i] starts a run of equal keys.
extern "C" __global__ void mark_heads(const u64* sorted, i64 n, i64* head) {
  i64 i = (i64)blockIdx.x * blockDim.x + threadIdx.x;
  if (i < n) head[i] = (i == 0 || sorted[i] != sorted[i - 1]) ? 1 : 0;
}

// pos = inclusive cumsum of head; perm[i] = the input position of sorted[i].
extern "C" __global__ void write_unique(const u64* sorted, const i64* perm, const i64* head, const i64* pos, i64 n,
                                        u64* unique, i64* inverse) {
  i64 i = (i64)blockIdx.x * blockDim.x + threadIdx.x;
  if (i >= n) return;
  i64 p = pos[i] - 1;
  if (head[i]) unique[p] = sorted[i];
  inverse[perm[i]] = p;
}

// dst[i, :] = src[idx[i], :] as float32 (pass push: device rows to packed host rows; working-set delta).
template <typename T>
__device__ void gather_rows(const T* __restrict__ src, const i64* __restrict__ idx, i64 n, int dim,
                            float* __restrict__ dst) {
  i64 i = (i64)blockIdx.x * blockDim.y + threadIdx.y;
  if (i >= n) return;
  const T* s = src + idx[i] * (i64)dim;
  for (int d = threadIdx.x; d < dim; d += blockDim.x) dst[i * (i64)dim + d] = to_f32(s[d]);
}

// dst[idx[i], :] = src[i, :] stored as T (pass load: float32 host rows into device storage). idx holds no repeats.
template <typename T>
__device__ void scatter_rows(T* __restrict__ dst, const i64* __restrict__ idx, i64 n, int dim,
                             const float* __restrict__ src) {
  i64 i = (i64)blockIdx.x * blockDim.y + threadIdx.y;
  if (i >= n) return;
  T* o = dst + idx[i] * (i64)dim;
  for (int d = threadIdx.x; d < dim; d += blockDim.x) store_f32(&o[d], src[i * (i64)dim + d]);
}

#define ROWS(SUFFIX, T)                                                                                         \
  extern "C" __global__ void gather_rows_##SUFFIX(const T* src, const i64* idx, i64 n, int dim, float* dst) {  \
    gather_rows<T>(src, idx, n, dim, dst);                                                                      \
  }                                                                                                             \
  extern "C" __global__ void scatter_rows_##SUFFIX(T* dst, const i64* idx, i64 n, int dim, const float* src) { \
    scatter_rows<T>(dst, idx, n, dim, src);                                                                     \
  }
ROWS(fp32, float)
ROWS(fp16, f16)
ROWS(bf16, bf16)
