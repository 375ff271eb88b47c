// The dense op's backward through SiLU (src/model/dense.rs, --cuda-fused-ops):
//   dx = grad * silu'(x), silu'(x) = s (1 + x (1 - s)), s = sigmoid(x),
// one pass, in f32 for half precision (f64 for f64), rounded once.
#include "float_acc.cuh"

template <typename T, typename Acc>
__device__ void silu_backward(const T* x, const T* grad, T* out, unsigned long long n) {
  for (unsigned long long i = blockIdx.x * (unsigned long long)blockDim.x + threadIdx.x; i < n;
       i += (unsigned long long)gridDim.x * blockDim.x) {
    const Acc v = to_acc(x[i]);
    const Acc s = Acc(1) / (Acc(1) + exp(-v));
    out[i] = from_acc<T, Acc>(to_acc(grad[i]) * s * (Acc(1) + v * (Acc(1) - s)));
  }
}

#define SILU_BACKWARD(NAME, T, ACC)                                                 \
  extern "C" __global__ void NAME(const T* x, const T* grad, T* out,               \
                                  unsigned long long n) {                          \
    silu_backward<T, ACC>(x, grad, out, n);                                         \
  }

SILU_BACKWARD(silu_backward_f32, float, float)
SILU_BACKWARD(silu_backward_f64, double, double)
SILU_BACKWARD(silu_backward_bf16, __nv_bfloat16, float)
SILU_BACKWARD(silu_backward_f16, __half, float)
