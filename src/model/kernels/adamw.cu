// The fused AdamW update behind meshcast's optimizer (src/train/optimizer/fused.rs), in
// two in-place stages, each element as candle-nn's composed AdamW computes it:
// - moments: over the arena [2, n] (rows m, v), the parameters [start, start + len)
//   that have a gradient, the clip and loss-scale multiplier applied to the gradient
//   first when `scaled`;
// - weights: one parameter's weights from its new moments at `offset` in the arena.
template <typename T>
__device__ void adamw_moments(T* state, const T* grads, unsigned long long n,
                              unsigned long long start, unsigned long long len, int scaled,
                              T mult, T beta1, T one_minus_beta1, T beta2, T one_minus_beta2) {
  T* m = state + start;
  T* v = state + n + start;
  const unsigned long long stride = (unsigned long long)gridDim.x * blockDim.x;
  for (unsigned long long i = blockIdx.x * (unsigned long long)blockDim.x + threadIdx.x; i < len;
       i += stride) {
    T g = grads[i];
    if (scaled) g = g * mult;
    m[i] = m[i] * beta1 + g * one_minus_beta1;
    v[i] = v[i] * beta2 + (g * g) * one_minus_beta2;
  }
}

template <typename T>
__device__ void adamw_weights(T* w, const T* state, unsigned long long n,
                              unsigned long long offset, unsigned long long len, T scale_m,
                              T scale_v, T decay, T lr, T eps) {
  const T* m = state + offset;
  const T* v = state + n + offset;
  const unsigned long long stride = (unsigned long long)gridDim.x * blockDim.x;
  for (unsigned long long i = blockIdx.x * (unsigned long long)blockDim.x + threadIdx.x; i < len;
       i += stride) {
    const T m_hat = m[i] * scale_m;
    const T v_hat = v[i] * scale_v;
    w[i] = w[i] * decay - m_hat / (sqrt(v_hat) + eps) * lr;
  }
}

#define ADAMW(T, SUFFIX)                                                                     \
  extern "C" __global__ void adamw_moments_##SUFFIX(                                         \
      T* state, const T* grads, unsigned long long n, unsigned long long start,              \
      unsigned long long len, int scaled, T mult, T beta1, T one_minus_beta1, T beta2,       \
      T one_minus_beta2) {                                                                   \
    adamw_moments<T>(state, grads, n, start, len, scaled, mult, beta1, one_minus_beta1,      \
                     beta2, one_minus_beta2);                                                \
  }                                                                                          \
  extern "C" __global__ void adamw_weights_##SUFFIX(                                         \
      T* w, const T* state, unsigned long long n, unsigned long long offset,                 \
      unsigned long long len, T scale_m, T scale_v, T decay, T lr, T eps) {                  \
    adamw_weights<T>(w, state, n, offset, len, scale_m, scale_v, decay, lr, eps);            \
  }

ADAMW(float, f32)
ADAMW(double, f64)
