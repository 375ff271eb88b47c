// The edge MLP's first layer (src/model/edge_input.rs, --cuda-fused-ops): the edge
// product p = e W^T (cuBLAS, made by the op) plus the gathered node projections,
//   out[b, k, f] = p[b|0, k, f] + nodes[b|0, senders[k], f]
//                  + nodes[b|0, receiver_row + receivers[k], receiver_col + f],
// with the node operand's rows of `node_width` values: the senders' rows then the
// receivers' (stacked: receiver_row = senders, receiver_col = 0) or one node set with
// the two projections side by side (receiver_row = 0, receiver_col = features). One
// thread per output value, summed in f32 for half precision; the CPU twin is
// EdgeInputOp::forward.
#include "float_acc.cuh"

template <typename T>
__device__ void edge_input_gather(const T* p, const T* nodes, const unsigned int* senders,
                                  const unsigned int* receivers, T* out, unsigned int batch,
                                  unsigned int edges, unsigned int features,
                                  unsigned int p_batched, unsigned int nodes_batched,
                                  unsigned int node_rows, unsigned int node_width,
                                  unsigned int receiver_row, unsigned int receiver_col) {
  const unsigned long long total = (unsigned long long)batch * edges * features;
  for (unsigned long long i = blockIdx.x * (unsigned long long)blockDim.x + threadIdx.x;
       i < total; i += (unsigned long long)gridDim.x * blockDim.x) {
    const unsigned int f = (unsigned int)(i % features);
    const unsigned long long row = i / features;
    const unsigned int k = (unsigned int)(row % edges);
    const unsigned long long b = row / edges;
    const unsigned long long base = nodes_batched ? b * node_rows : 0;
    const unsigned long long pb = p_batched ? b : 0;
    const unsigned long long s0 = (base + senders[k]) * node_width;
    const unsigned long long r0 = (base + receiver_row + receivers[k]) * node_width + receiver_col;
    const auto sum = to_acc(p[(pb * edges + k) * features + f]) + to_acc(nodes[s0 + f]) +
                     to_acc(nodes[r0 + f]);
    out[i] = from_acc<T>(sum);
  }
}

#define EDGE_INPUT_GATHER(NAME, T)                                                          \
  extern "C" __global__ void NAME(const T* p, const T* nodes, const unsigned int* senders, \
                                  const unsigned int* receivers, T* out,                  \
                                  unsigned int batch, unsigned int edges,                 \
                                  unsigned int features, unsigned int p_batched,          \
                                  unsigned int nodes_batched, unsigned int node_rows,     \
                                  unsigned int node_width, unsigned int receiver_row,     \
                                  unsigned int receiver_col) {                            \
    edge_input_gather<T>(p, nodes, senders, receivers, out, batch, edges, features,      \
                         p_batched, nodes_batched, node_rows, node_width, receiver_row, \
                         receiver_col);                                                   \
  }

EDGE_INPUT_GATHER(edge_input_gather_f32, float)
EDGE_INPUT_GATHER(edge_input_gather_f64, double)
EDGE_INPUT_GATHER(edge_input_gather_bf16, __nv_bfloat16)
EDGE_INPUT_GATHER(edge_input_gather_f16, __half)
