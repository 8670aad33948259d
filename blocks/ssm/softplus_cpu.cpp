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
//
// The projected form forms the step from its low-rank input in the same pass (Mamba's Delta = softplus(dt_proj(dt)),
// dt of rank R, 4 in a D = 64 layer), each row optionally multiplied by a 0/1 `valid` (0: a step that is no item):
//
//     delta[r, e] = valid[r] * softplus(bias[e] + sum_j low[r, j] * w[j, e])
//
// where the projection, a masking pass and the softplus would each write and reread the (rows, E) result.
// Backward: g = ddelta * valid * sigmoid(pre) (pre recomputed), dlow[r, j] = sum_e g[r, e] w[j, e],
// dw[j, e] = sum_r g[r, e] low[r, j], dbias[e] = sum_r g[r, e] (dw, dbias per thread, summed by the caller).
// Layouts: low (rows, R) with any row stride (a slice of x_proj's output); w (R, E), bias (E,) or empty, valid
// (rows,) or empty, all contiguous; delta, its gradient (rows, E) contiguous.

#include <torch/extension.h>

#include <ATen/Parallel.h>

#include "project_row.h"
#include "step_size.h"

#include <algorithm>
#include <vector>

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

struct Projected {
  int64_t rows, rank, channels, row_stride;
};

Projected shape_of(const at::Tensor& low, const at::Tensor& w) { return {low.size(0), w.size(0), w.size(1), low.stride(0)}; }

void check_projected(const at::Tensor& low, const at::Tensor& w, const at::Tensor& bias, const at::Tensor& valid) {
  for (const at::Tensor* t : {&low, &w, &bias, &valid}) {
    TORCH_CHECK(t->device().is_cpu() && t->scalar_type() == low.scalar_type() &&
                    (low.scalar_type() == at::kFloat || low.scalar_type() == at::kDouble),
                "softplus: low, w, bias and valid must be CPU tensors of one dtype, float32 or float64");
  }
  TORCH_CHECK(low.dim() == 2 && (low.size(1) <= 1 || low.stride(1) == 1), "softplus: low (rows, R) with contiguous rows");
  TORCH_CHECK(w.dim() == 2 && w.is_contiguous() && w.size(0) == low.size(1), "softplus: w (R, E), contiguous");
  TORCH_CHECK(bias.numel() == 0 || (bias.dim() == 1 && bias.is_contiguous() && bias.size(0) == w.size(1)),
              "softplus: bias (E,) or empty");
  TORCH_CHECK(valid.numel() == 0 || (valid.dim() == 1 && valid.is_contiguous() && valid.size(0) == low.size(0)),
              "softplus: valid (rows,) or empty");
}

// delta = valid * softplus(pre) for the rows [begin, end).
template <typename T>
void projected_forward_rows(const Projected& s, const T* low, const T* w, const T* bias, const T* valid, T* delta,
                            int64_t begin, int64_t end) {
  const StepSize<T> step = StepSize<T>::unclamped_rule(true);
  for (int64_t r = begin; r < end; ++r) {
    T* __restrict out = delta + r * s.channels;
    project_row(low + r * s.row_stride, w, bias, s.rank, s.channels, out);
    const T keep = valid ? valid[r] : T(1);
#pragma omp simd
    for (int64_t e = 0; e < s.channels; ++e) out[e] = keep * step(out[e]);
  }
}

// The backward pass over the rows [begin, end), adding to this thread's dw and dbias.
template <typename T>
void projected_backward_rows(const Projected& s, const T* low, const T* w, const T* bias, const T* valid, const T* grad,
                             T* dlow, T* dw, T* dbias, int64_t begin, int64_t end) {
  const StepSize<T> step = StepSize<T>::unclamped_rule(true);
  std::vector<T> g(s.channels);
  for (int64_t r = begin; r < end; ++r) {
    const T* low_r = low + r * s.row_stride;
    const T* __restrict grad_r = grad + r * s.channels;
    T* __restrict g_r = g.data();
    project_row(low_r, w, bias, s.rank, s.channels, g_r);
    const T keep = valid ? valid[r] : T(1);
#pragma omp simd
    for (int64_t e = 0; e < s.channels; ++e) {
      g_r[e] = grad_r[e] * keep * step.slope(g_r[e]);
      dbias[e] += g_r[e];
    }
    for (int64_t j = 0; j < s.rank; ++j) {
      const T a = low_r[j];
      const T* __restrict w_j = w + j * s.channels;
      T* __restrict dw_j = dw + j * s.channels;
      T through = 0;
#pragma omp simd reduction(+ : through)
      for (int64_t e = 0; e < s.channels; ++e) {
        through += g_r[e] * w_j[e];
        dw_j[e] += g_r[e] * a;
      }
      dlow[r * s.rank + j] = through;
    }
  }
}

template <typename T>
const T* data_or_null(const at::Tensor& t) {
  return t.numel() ? t.data_ptr<T>() : nullptr;
}

at::Tensor projected_forward(const at::Tensor& low, const at::Tensor& w, const at::Tensor& bias, const at::Tensor& valid) {
  check_projected(low, w, bias, valid);
  const auto s = shape_of(low, w);
  at::Tensor delta = at::empty({s.rows, s.channels}, low.options());
  AT_DISPATCH_FLOATING_TYPES(low.scalar_type(), "projected_softplus_forward", [&] {
    at::parallel_for(0, s.rows, kGrain / s.channels + 1, [&](int64_t begin, int64_t end) {
      projected_forward_rows(s, low.data_ptr<scalar_t>(), w.data_ptr<scalar_t>(), data_or_null<scalar_t>(bias),
                             data_or_null<scalar_t>(valid), delta.data_ptr<scalar_t>(), begin, end);
    });
  });
  return delta;
}

// Returns dlow (rows, R), dw per thread (threads, R, E), dbias per thread (threads, E).
std::vector<at::Tensor> projected_backward(const at::Tensor& low, const at::Tensor& w, const at::Tensor& bias,
                                           const at::Tensor& valid, const at::Tensor& grad) {
  check_projected(low, w, bias, valid);
  const auto s = shape_of(low, w);
  TORCH_CHECK(grad.is_contiguous() && grad.scalar_type() == low.scalar_type() &&
                  grad.sizes() == at::IntArrayRef({s.rows, s.channels}),
              "softplus: the gradient of delta (rows, E), contiguous, expected");
  const int64_t threads = at::get_num_threads();
  at::Tensor dlow = at::empty({s.rows, s.rank}, low.options());
  at::Tensor dw = at::zeros({threads, s.rank, s.channels}, low.options());
  at::Tensor dbias = at::zeros({threads, s.channels}, low.options());
  AT_DISPATCH_FLOATING_TYPES(low.scalar_type(), "projected_softplus_backward", [&] {
    at::parallel_for(0, s.rows, kGrain / s.channels + 1, [&](int64_t begin, int64_t end) {
      const int64_t thread = at::get_thread_num();
      projected_backward_rows(s, low.data_ptr<scalar_t>(), w.data_ptr<scalar_t>(), data_or_null<scalar_t>(bias),
                              data_or_null<scalar_t>(valid), grad.data_ptr<scalar_t>(), dlow.data_ptr<scalar_t>(),
                              dw.data_ptr<scalar_t>() + thread * s.rank * s.channels,
                              dbias.data_ptr<scalar_t>() + thread * s.channels, begin, end);
    });
  });
  return {dlow, dw, dbias};
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("forward", &forward, "softplus(x), threshold 20");
  m.def("backward", &backward, "grad * d softplus / dx");
  m.def("projected_forward", &projected_forward, "valid * softplus(bias + low @ w): (rows, E)");
  m.def("projected_backward", &projected_backward, "(dlow, dw per thread, dbias per thread)");
}
