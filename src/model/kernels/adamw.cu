// The fused AdamW update behind meshcast's optimizer (src/train/optimizer/fused.rs):
// one pass over the optimizer arena [3, n] (rows: f32 master weights, first and second
// moments) with the flat gradients, for the parameters [start, start + len) that have
// a gradient. Each element follows candle-nn's composed AdamW, with the clip and
// loss-scale multiplier applied to the gradient first when `scaled`.
template <typename T>
__device__ void adamw(T* state, const T* grads, unsigned long long n,
                      unsigned long long start, unsigned long long len, int scaled,
                      T mult, T beta1, T one_minus_beta1, T beta2, T one_minus_beta2,
                      T scale_m, T scale_v, T decay, T lr, T eps) {
  T* w = state + start;
  T* m = state + n + start;
  T* v = state + 2 * n + start;
  const unsigned long long stride = (unsigned long long)gridDim.x * blockDim.x;
  for (unsigned long long i = blockIdx.x * (unsigned long long)blockDim.x + threadIdx.x; i < len;
       i += stride) {
    T g = grads[i];
    if (scaled) g = g * mult;
    const T next_m = m[i] * beta1 + g * one_minus_beta1;
    const T next_v = v[i] * beta2 + (g * g) * one_minus_beta2;
    const T m_hat = next_m * scale_m;
    const T v_hat = next_v * scale_v;
    const T theta = w[i] * decay;
    w[i] = theta - m_hat / (sqrt(v_hat) + eps) * lr;
    m[i] = next_m;
    v[i] = next_v;
  }
}

#define ADAMW(NAME, T)                                                                       \
  extern "C" __global__ void NAME(T* state, const T* grads, unsigned long long n,           \
                                  unsigned long long start, unsigned long long len,         \
                                  int scaled, T mult, T beta1, T one_minus_beta1, T beta2,  \
                                  T one_minus_beta2, T scale_m, T scale_v, T decay, T lr,   \
                                  T eps) {                                                  \
    adamw<T>(state, grads, n, start, len, scaled, mult, beta1, one_minus_beta1, beta2,      \
             one_minus_beta2, scale_m, scale_v, decay, lr, eps);                            \
  }

ADAMW(adamw_f32, float)
ADAMW(adamw_f64, double)
