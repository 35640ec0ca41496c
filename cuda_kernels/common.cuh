// Shared helpers of the hier_ps kernels: row element types and their float32 conversions.
//
// NVRTC compiles these sources with no host headers, so fp16/bf16 are plain 16-bit structs converted with PTX
// instructions (fp16) and bit arithmetic (bf16) instead of cuda_fp16.h / cuda_bf16.h. Conversions to 16 bits round
// to nearest even, as torch's .to(float16 / bfloat16) does, so kernels and torch twins store the same bits.
#pragma once

typedef long long i64;
typedef unsigned long long u64;

struct f16 {
  unsigned short x;
};
struct bf16 {
  unsigned short x;
};

__device__ __forceinline__ float to_f32(float v) { return v; }

__device__ __forceinline__ float to_f32(f16 v) {
  float f;
  asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(v.x));
  return f;
}

__device__ __forceinline__ float to_f32(bf16 v) { return __uint_as_float(((unsigned int)v.x) << 16); }

__device__ __forceinline__ void store_f32(float* p, float v) { *p = v; }

__device__ __forceinline__ void store_f32(f16* p, float v) {
  unsigned short h;
  asm("cvt.rn.f16.f32 %0, %1;" : "=h"(h) : "f"(v));
  p->x = h;
}

__device__ __forceinline__ void store_f32(bf16* p, float v) {
  unsigned int u = __float_as_uint(v);
  if ((u & 0x7fffffffu) > 0x7f800000u) {  // NaN: keep it a (quiet) NaN
    p->x = (unsigned short)((u >> 16) | 0x40u);
    return;
  }
  u += 0x7fffu + ((u >> 16) & 1u);  // round to nearest, ties to even
  p->x = (unsigned short)(u >> 16);
}
