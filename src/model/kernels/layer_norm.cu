// LayerNorm forward, the CUDA kernel behind meshcast's LayerNorm custom op
// (src/model/layer_norm.rs): y = (x - mean) / sqrt(var + eps) * weight + bias over the
// last dimension (plus a residual, for the residual op of --cuda-fused-ops), and its
// backward (further below). One warp per row; statistics in f32 (f64 for f64 rows) in two passes
// (mean, then the mean of squared deviations), whatever the storage dtype of x, and the
// affine map with the f32 master weights under mixed precision.
#include "float_acc.cuh"

// A row's mean and 1 / sqrt(variance + eps), in two passes (the warp's lanes stride the
// row; every lane gets the results).
template <typename T, typename Acc>
__device__ __forceinline__ void row_stats(const T* xr, unsigned int cols, Acc eps,
                                          unsigned int lane, Acc& mean, Acc& rstd) {
  Acc sum = Acc(0);
  for (unsigned int j = lane; j < cols; j += 32) sum += to_acc(xr[j]);
  mean = warp_sum(sum) / Acc(cols);
  Acc sq = Acc(0);
  for (unsigned int j = lane; j < cols; j += 32) {
    const Acc d = to_acc(xr[j]) - mean;
    sq += d * d;
  }
  rstd = Acc(1) / sqrt(warp_sum(sq) / Acc(cols) + eps);
}

// With RESIDUAL, y = LayerNorm(x) + residual, the residual's rows repeating when it has
// fewer (`residual_rows`: a batch of one broadcast over the batch), summed in Acc.
template <typename T, typename Acc, bool RESIDUAL>
__device__ void layer_norm(const T* x, const T* residual, unsigned int residual_rows,
                           const Acc* weight, const Acc* bias, T* y, unsigned int rows,
                           unsigned int cols, Acc eps) {
  const unsigned int lane = threadIdx.x % 32;
  const unsigned long long warps = (unsigned long long)gridDim.x * (blockDim.x / 32);
  for (unsigned long long row = blockIdx.x * (unsigned long long)(blockDim.x / 32) + threadIdx.x / 32;
       row < rows; row += warps) {
    const T* xr = x + row * cols;
    T* yr = y + row * cols;
    Acc mean, rstd;
    row_stats(xr, cols, eps, lane, mean, rstd);
    for (unsigned int j = lane; j < cols; j += 32) {
      Acc v = (to_acc(xr[j]) - mean) * rstd * weight[j] + bias[j];
      if (RESIDUAL) v += to_acc(residual[(row % residual_rows) * cols + j]);
      yr[j] = from_acc<T, Acc>(v);
    }
  }
}

#define LAYER_NORM(NAME, T, ACC)                                                          \
  extern "C" __global__ void NAME(const T* x, const ACC* weight, const ACC* bias, T* y, \
                                  unsigned int rows, unsigned int cols, ACC eps) {      \
    layer_norm<T, ACC, false>(x, nullptr, 1, weight, bias, y, rows, cols, eps);          \
  }
#define RESIDUAL_LAYER_NORM(NAME, T, ACC)                                                  \
  extern "C" __global__ void NAME(const T* x, const T* residual, unsigned int residual_rows, \
                                  const ACC* weight, const ACC* bias, T* y,                \
                                  unsigned int rows, unsigned int cols, ACC eps) {         \
    layer_norm<T, ACC, true>(x, residual, residual_rows, weight, bias, y, rows, cols, eps); \
  }

LAYER_NORM(layer_norm_f32, float, float)
LAYER_NORM(layer_norm_f64, double, double)
LAYER_NORM(layer_norm_bf16, __nv_bfloat16, float)
LAYER_NORM(layer_norm_f16, __half, float)
RESIDUAL_LAYER_NORM(residual_layer_norm_f32, float, float)
RESIDUAL_LAYER_NORM(residual_layer_norm_f64, double, double)
RESIDUAL_LAYER_NORM(residual_layer_norm_bf16, __nv_bfloat16, float)
RESIDUAL_LAYER_NORM(residual_layer_norm_f16, __half, float)

// LayerNorm backward (under --cuda-fused-ops): with xhat = (x - mean) * rstd and
// g = grad * weight, dx = rstd * (g - mean(g) - xhat * mean(g * xhat)) for every row (one
// warp per row, the statistics recomputed as in the forward pass), and each warp's
// partial sums over its rows of grad * xhat and grad per column (the weight's and the
// bias's gradients), which the host adds up. Everything is written in Acc to `out`: dx
// ([rows, cols]), then the partial sums ([warps, 2, cols]). Rows of at most
// LAYER_NORM_BACKWARD_MAX_COLS columns (a warp keeps its column sums in registers).
#define LAYER_NORM_BACKWARD_MAX_COLS 512

template <typename T, typename Acc>
__device__ void layer_norm_backward(const T* x, const Acc* weight, const T* grad, Acc* out,
                                    unsigned int rows, unsigned int cols, Acc eps) {
  constexpr int PER_LANE = LAYER_NORM_BACKWARD_MAX_COLS / 32;
  const unsigned int lane = threadIdx.x % 32;
  const unsigned long long warp =
      blockIdx.x * (unsigned long long)(blockDim.x / 32) + threadIdx.x / 32;
  const unsigned long long warps = (unsigned long long)gridDim.x * (blockDim.x / 32);
  Acc dweight[PER_LANE], dbias[PER_LANE];
#pragma unroll
  for (int t = 0; t < PER_LANE; ++t) {
    dweight[t] = Acc(0);
    dbias[t] = Acc(0);
  }
  for (unsigned long long row = warp; row < rows; row += warps) {
    const T* xr = x + row * cols;
    const T* gr = grad + row * cols;
    Acc* dxr = out + row * cols;
    Acc mean, rstd;
    row_stats(xr, cols, eps, lane, mean, rstd);
    Acc sg = Acc(0), sgx = Acc(0);
    for (unsigned int j = lane; j < cols; j += 32) {
      const Acc g = to_acc(gr[j]) * weight[j];
      sg += g;
      sgx += g * (to_acc(xr[j]) - mean) * rstd;
    }
    const Acc mean_g = warp_sum(sg) / Acc(cols);
    const Acc mean_gx = warp_sum(sgx) / Acc(cols);
#pragma unroll
    for (int t = 0; t < PER_LANE; ++t) {
      const unsigned int j = lane + 32 * t;
      if (j < cols) {
        const Acc xhat = (to_acc(xr[j]) - mean) * rstd;
        const Acc go = to_acc(gr[j]);
        dxr[j] = rstd * (go * weight[j] - mean_g - xhat * mean_gx);
        dweight[t] += go * xhat;
        dbias[t] += go;
      }
    }
  }
  Acc* partial = out + (unsigned long long)rows * cols + warp * 2ull * cols;
#pragma unroll
  for (int t = 0; t < PER_LANE; ++t) {
    const unsigned int j = lane + 32 * t;
    if (j < cols) {
      partial[j] = dweight[t];
      partial[cols + j] = dbias[t];
    }
  }
}

#define LAYER_NORM_BACKWARD(NAME, T, ACC)                                                    \
  extern "C" __global__ void NAME(const T* x, const ACC* weight, const T* grad, ACC* out, \
                                  unsigned int rows, unsigned int cols, ACC eps) {        \
    layer_norm_backward<T, ACC>(x, weight, grad, out, rows, cols, eps);                    \
  }

LAYER_NORM_BACKWARD(layer_norm_backward_f32, float, float)
LAYER_NORM_BACKWARD(layer_norm_backward_f64, double, double)
LAYER_NORM_BACKWARD(layer_norm_backward_bf16, __nv_bfloat16, float)
LAYER_NORM_BACKWARD(layer_norm_backward_f16, __half, float)
