// The CPU kernel of the uniform row initializer (hier_ps/hbm/rows.py, init_embeddings): element j of key k is
// ((2 u - 1) * scale) rounded to float32, u = (h >> 11) * 2^-53 and h the splitmix64 hash of (seed, table, k, j).
//
// The same bits as the numpy path: integer hashing wraps the same way, and each float step is one correctly
// rounded IEEE operation in double, in the same order (no fused multiply-adds: built with -std=c11), then the same
// rounding to float32. tests/hbm/test_rows.py holds the two to each other.
//
// Built with the other cpu_kernels sources into one library by hier_ps/hbm/cpu_kernels.py; called through ctypes.
#include <stdint.h>

typedef int64_t i64;

static inline uint64_t mix64(uint64_t x) {
  x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
  x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
  return x ^ (x >> 31);
}

// out[i * out_stride + j] for key i in [0, n), element j in [0, dim): base is mix64(seed) ^ fnv1a(table) (the
// caller's), stream the element stream (0 for uniform).
void init_uniform_fp32(uint64_t base, const uint64_t* keys, i64 n, int dim, int stream, double scale, float* out,
                       i64 out_stride) {
  const uint64_t golden = 0x9E3779B97F4A7C15ull;
  for (i64 i = 0; i < n; ++i) {
    uint64_t k = mix64(keys[i] ^ base);
    float* o = out + i * out_stride;
    for (int j = 0; j < dim; ++j) {
      uint64_t h = mix64(k + ((uint64_t)j + (uint64_t)stream * (uint64_t)dim + 1u) * golden);
      double u = (double)(h >> 11) * (1.0 / 9007199254740992.0);
      o[j] = (float)((2.0 * u - 1.0) * scale);
    }
  }
}
