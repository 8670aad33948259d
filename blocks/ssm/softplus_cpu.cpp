// Mamba's step size softplus(x) = log(1 + exp(x)) elementwise, and its gradient (Gu & Dao 2023, "Mamba",
// Alg. 2: Delta = softplus(Parameter + s_Delta(x))).
//
// Built on first use by blocks/compiled.py (on by default; SEQREC_ZOO_CPU_KERNEL=0 turns it off).
//
// torch's CPU softplus evaluates log1p one element at a time: on a (256, 128, 50) tensor it takes about
// 8 ms, twelve times an exp over the same tensor, and Mamba-based models take it over every step of every
// channel wherever the step is formed outside a scan kernel (scoring from one readout, SIGMA's every-prefix
// pass, M2Rec's multi-scale Mamba). Here the loop is vectorised (glibc's vector log1p and exp) on the
// intra-op threads. Values and gradients follow torch.nn.functional.softplus with beta 1 and threshold 20
// (the identity above it), and are exactly 0 below x = -87 in float32 (-708 in float64; step_size.h).

#include <torch/extension.h>

#include <ATen/Parallel.h>

#include "step_size.h"

namespace {

constexpr int64_t kGrain = 1 << 14;

template <typename T>
void forward_range(const T* __restrict x, T* __restrict y, int64_t begin, int64_t end) {
  const StepSize<T> step = StepSize<T>::unclamped_rule(true);
#pragma omp simd
  for (int64_t i = begin; i < end; ++i) y[i] = step(x[i]);
}

template <typename T>
void backward_range(const T* __restrict x, const T* __restrict grad, T* __restrict dx, int64_t begin, int64_t end) {
  const StepSize<T> step = StepSize<T>::unclamped_rule(true);
#pragma omp simd
  for (int64_t i = begin; i < end; ++i) dx[i] = grad[i] * step.slope(x[i]);
}

// Elementwise over memory: any dense layout (a transposed view included) is walked as it lies, and the result
// takes the input's strides.
void check(const at::Tensor& t, const char* name) {
  TORCH_CHECK(t.device().is_cpu() && t.is_non_overlapping_and_dense(), "softplus: ", name,
              " must be a dense CPU tensor");
  TORCH_CHECK(t.scalar_type() == at::kFloat || t.scalar_type() == at::kDouble, "softplus: ", name,
              " must be float32 or float64, got ", t.scalar_type());
}

at::Tensor forward(const at::Tensor& x) {
  check(x, "x");
  at::Tensor y = at::empty_like(x);
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "softplus_forward", [&] {
    const scalar_t* x_p = x.data_ptr<scalar_t>();
    scalar_t* y_p = y.data_ptr<scalar_t>();
    at::parallel_for(0, x.numel(), kGrain, [&](int64_t begin, int64_t end) {
      forward_range(x_p, y_p, begin, end);
    });
  });
  return y;
}

at::Tensor backward(const at::Tensor& x, const at::Tensor& grad) {
  check(x, "x");
  check(grad, "grad");
  TORCH_CHECK(grad.sizes() == x.sizes() && grad.strides() == x.strides() && grad.scalar_type() == x.scalar_type(),
              "softplus: the gradient must have x's shape, strides and dtype");
  at::Tensor dx = at::empty_like(x);
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "softplus_backward", [&] {
    const scalar_t *x_p = x.data_ptr<scalar_t>(), *g_p = grad.data_ptr<scalar_t>();
    scalar_t* dx_p = dx.data_ptr<scalar_t>();
    at::parallel_for(0, x.numel(), kGrain, [&](int64_t begin, int64_t end) {
      backward_range(x_p, g_p, dx_p, begin, end);
    });
  });
  return dx;
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("forward", &forward, "softplus(x), threshold 20");
  m.def("backward", &backward, "grad * d softplus / dx");
}
