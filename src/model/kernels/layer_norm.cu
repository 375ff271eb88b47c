// LayerNorm forward, the CUDA kernel behind meshcast's LayerNorm custom op
// (src/model/layer_norm.rs): y = (x - mean) / sqrt(var + eps) * weight + bias over the
// last dimension. One warp per row; statistics in f32 (f64 for f64 rows) in two passes
// (mean, then the mean of squared deviations), whatever the storage dtype of x, and the
// affine map with the f32 master weights under mixed precision.
#include <cuda_bf16.h>
#include <cuda_fp16.h>

__device__ __forceinline__ float to_acc(float v) { return v; }
__device__ __forceinline__ double to_acc(double v) { return v; }
__device__ __forceinline__ float to_acc(__nv_bfloat16 v) { return __bfloat162float(v); }
__device__ __forceinline__ float to_acc(__half v) { return __half2float(v); }

template <typename T, typename Acc>
__device__ __forceinline__ T from_acc(Acc v) { return T(v); }
template <>
__device__ __forceinline__ __nv_bfloat16 from_acc<__nv_bfloat16, float>(float v) {
  return __float2bfloat16(v);
}
template <>
__device__ __forceinline__ __half from_acc<__half, float>(float v) { return __float2half(v); }

template <typename Acc>
__device__ __forceinline__ Acc warp_sum(Acc v) {
  for (int offset = 16; offset > 0; offset /= 2) v += __shfl_xor_sync(0xffffffffu, v, offset);
  return v;
}

template <typename T, typename Acc>
__device__ void layer_norm(const T* x, const Acc* weight, const Acc* bias, T* y,
                           unsigned int rows, unsigned int cols, Acc eps) {
  const unsigned int lane = threadIdx.x % 32;
  const unsigned long long warps = (unsigned long long)gridDim.x * (blockDim.x / 32);
  for (unsigned long long row = blockIdx.x * (unsigned long long)(blockDim.x / 32) + threadIdx.x / 32;
       row < rows; row += warps) {
    const T* xr = x + row * cols;
    T* yr = y + row * cols;
    Acc sum = Acc(0);
    for (unsigned int j = lane; j < cols; j += 32) sum += to_acc(xr[j]);
    const Acc mean = warp_sum(sum) / Acc(cols);
    Acc sq = Acc(0);
    for (unsigned int j = lane; j < cols; j += 32) {
      const Acc d = to_acc(xr[j]) - mean;
      sq += d * d;
    }
    const Acc rstd = Acc(1) / sqrt(warp_sum(sq) / Acc(cols) + eps);
    for (unsigned int j = lane; j < cols; j += 32) {
      yr[j] = from_acc<T, Acc>((to_acc(xr[j]) - mean) * rstd * weight[j] + bias[j]);
    }
  }
}

#define LAYER_NORM(NAME, T, ACC)                                                          \
  extern "C" __global__ void NAME(const T* x, const ACC* weight, const ACC* bias, T* y, \
                                  unsigned int rows, unsigned int cols, ACC eps) {      \
    layer_norm<T, ACC>(x, weight, bias, y, rows, cols, eps);                             \
  }

LAYER_NORM(layer_norm_f32, float, float)
LAYER_NORM(layer_norm_f64, double, double)
LAYER_NORM(layer_norm_bf16, __nv_bfloat16, float)
LAYER_NORM(layer_norm_f16, __half, float)
