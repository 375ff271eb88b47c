// CSR segment sum, the CUDA kernel behind meshcast's `csr` aggregation
// (src/model/aggregate/segment_sum.rs):
//   out[b, g, f] = sum over k in offsets[g]..offsets[g+1] of msg[b, edge_ids[k], f].
// One thread per output value, features fastest, so a warp reads consecutive features
// of one edge row (coalesced) and every output is written by exactly one thread: no
// atomics, and edges are added in COO order, as on the CPU.
// Half-precision messages are summed in f32 and rounded once.
#include <cuda_bf16.h>
#include <cuda_fp16.h>

template <typename T, typename Acc>
__device__ void segment_sum(const T* msg, const unsigned int* offsets,
                            const unsigned int* edge_ids, T* out, unsigned int batch,
                            unsigned int groups, unsigned int edges, unsigned int features) {
  const unsigned long long total =
      (unsigned long long)batch * groups * features;
  for (unsigned long long i = blockIdx.x * (unsigned long long)blockDim.x + threadIdx.x;
       i < total; i += (unsigned long long)gridDim.x * blockDim.x) {
    const unsigned long long row = i / features;
    const unsigned int f = (unsigned int)(i % features);
    const unsigned int g = (unsigned int)(row % groups);
    const unsigned long long b = row / groups;
    const T* base = msg + b * edges * (unsigned long long)features + f;
    Acc acc = Acc(0);
    for (unsigned int k = offsets[g]; k < offsets[g + 1]; ++k) {
      acc += Acc(base[(unsigned long long)edge_ids[k] * features]);
    }
    out[i] = T(acc);
  }
}

#define SEGMENT_SUM(NAME, T, ACC)                                                     \
  extern "C" __global__ void NAME(const T* msg, const unsigned int* offsets,         \
                                  const unsigned int* edge_ids, T* out,              \
                                  unsigned int batch, unsigned int groups,           \
                                  unsigned int edges, unsigned int features) {       \
    segment_sum<T, ACC>(msg, offsets, edge_ids, out, batch, groups, edges, features); \
  }

SEGMENT_SUM(segment_sum_f32, float, float)
SEGMENT_SUM(segment_sum_f64, double, double)
SEGMENT_SUM(segment_sum_bf16, __nv_bfloat16, float)
SEGMENT_SUM(segment_sum_f16, __half, float)
