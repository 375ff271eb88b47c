// The first layer of an edge MLP under the concat trick, the CUDA kernel behind
// meshcast's GatherSum op (src/model/aggregate/gather_sum.rs):
//   out[b, k, :] = e[b|0, k, :] + s[b|0, senders[k], :] + r[b|0, receivers[k], :]
// (an input with batch 1 is broadcast). One thread per output value, features fastest;
// half precision is added in f32 and rounded once.
#include <cuda_bf16.h>
#include <cuda_fp16.h>

__device__ __forceinline__ float widen(float v) { return v; }
__device__ __forceinline__ double widen(double v) { return v; }
__device__ __forceinline__ float widen(__nv_bfloat16 v) { return __bfloat162float(v); }
__device__ __forceinline__ float widen(__half v) { return __half2float(v); }
__device__ __forceinline__ void store(float* p, float v) { *p = v; }
__device__ __forceinline__ void store(double* p, double v) { *p = v; }
__device__ __forceinline__ void store(__nv_bfloat16* p, float v) { *p = __float2bfloat16(v); }
__device__ __forceinline__ void store(__half* p, float v) { *p = __float2half(v); }

template <typename T>
__device__ void gather_sum(const T* e, const T* s, const T* r, const unsigned int* senders,
                           const unsigned int* receivers, T* out, unsigned int batch,
                           unsigned int edges, unsigned int n_senders, unsigned int n_receivers,
                           unsigned int features, unsigned int e_batched, unsigned int s_batched,
                           unsigned int r_batched) {
  const unsigned long long total = (unsigned long long)batch * edges * features;
  for (unsigned long long i = blockIdx.x * (unsigned long long)blockDim.x + threadIdx.x;
       i < total; i += (unsigned long long)gridDim.x * blockDim.x) {
    const unsigned int f = (unsigned int)(i % features);
    const unsigned long long row = i / features;
    const unsigned int k = (unsigned int)(row % edges);
    const unsigned long long b = row / edges;
    const unsigned long long eb = e_batched ? b : 0, sb = s_batched ? b : 0, rb = r_batched ? b : 0;
    const auto sum = widen(e[(eb * edges + k) * features + f]) +
                     widen(s[(sb * n_senders + senders[k]) * features + f]) +
                     widen(r[(rb * n_receivers + receivers[k]) * features + f]);
    store(out + i, sum);
  }
}

#define GATHER_SUM(NAME, T)                                                               \
  extern "C" __global__ void NAME(const T* e, const T* s, const T* r,                    \
                                  const unsigned int* senders,                           \
                                  const unsigned int* receivers, T* out,                 \
                                  unsigned int batch, unsigned int edges,                \
                                  unsigned int n_senders, unsigned int n_receivers,      \
                                  unsigned int features, unsigned int e_batched,         \
                                  unsigned int s_batched, unsigned int r_batched) {      \
    gather_sum<T>(e, s, r, senders, receivers, out, batch, edges, n_senders, n_receivers, \
                  features, e_batched, s_batched, r_batched);                             \
  }

GATHER_SUM(gather_sum_f32, float)
GATHER_SUM(gather_sum_f64, double)
GATHER_SUM(gather_sum_bf16, __nv_bfloat16)
GATHER_SUM(gather_sum_f16, __half)
