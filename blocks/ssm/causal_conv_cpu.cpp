// The causal depthwise convolution in front of every Mamba and Mamba2 scan (Gu & Dao 2023, "Mamba",
// §3.4 and Fig. 3: a short convolution over time, then SiLU), as one fused CPU pass.
//
// Built on first use by blocks/compiled.py (on by default; SEQREC_ZOO_CPU_KERNEL=0 turns it off).
//
// For batch b, position t and channel c, with K taps (tap K - 1 multiplies the current input):
//
//     a[b, t, c] = bias[c] + sum_k w[k, c] * x[b, t - K + 1 + k, c]      (x before position 0 is zero)
//     y[b, t, c] = silu(a) = a * sigmoid(a)   (or a itself without the activation)
//
// The backward pass recomputes a (K multiply-adds per value, cheaper than keeping it), forms
// ga = dy * silu'(a) with silu'(a) = s (1 + a (1 - s)), s = sigmoid(a), and from it
//
//     dx[b, s, c] = sum_k w[k, c] * ga[b, s + K - 1 - k, c]
//     dw[k, c]    = sum_{b, t} ga[b, t, c] * x[b, t - K + 1 + k, c]          dbias[c] = sum_{b, t} ga[b, t, c]
//
// An optional 0/1 `valid` (batch, length) masks the input first: x[b, p] reads as zero where valid[b, p] is 0 (a
// padded position), and dx is zero there; the taps that read such a position are skipped.
//
// torch's depthwise Conv1d spends most of a Mamba layer's convolution time in its backward pass
// (mkldnn's depthwise weight gradient) and SiLU is two more passes over memory; here each sequence is one
// vectorised sweep over channels.
//
// Layouts: x (batch, length, channels) with channels contiguous and any batch and time strides (a slice
// of the input projection is read in place); w (K, channels), bias (channels,), all contiguous; y, dx
// (batch, length, channels) contiguous; dw and dbias come out per sequence, (batch, K, channels) and
// (batch, channels), for the caller to sum (each sequence owns its row: no two threads write one value).
//
// The gathered form (gathered_forward / gathered_backward) reads, for each of S outputs per position, the
// positions a table names instead of the K latest ones: with source (S, batch, positions, K) of int64,
//
//     a[s, b, t, c] = bias[c] + sum_k w[k, c] * x[b, source[s, b, t, k], c]      (source -1: the tap reads zero)
//
// and y = silu(a) as above, y (S, batch, positions, channels) contiguous. SIGMA's every-prefix pass
// (blocks/flips.py) builds all the convolution windows its flipped prefixes need, cut short or reaching
// back to a sequence's oldest items, as one such table. Its backward pass scatters w[k, c] * ga into dx
// at each tap's source position, a sequence per thread.

#include <torch/extension.h>

#include <ATen/Parallel.h>

#include "silu.h"

#include <algorithm>
#include <cmath>
#include <vector>

namespace {

struct Shape {
  int64_t batch, length, channels, taps, batch_stride, time_stride;
};

Shape shape_of(const at::Tensor& x, const at::Tensor& w) {
  return {x.size(0), x.size(1), x.size(2), w.size(0), x.stride(0), x.stride(1)};
}

// out[c] += a[c] * b[c] over the channels.
template <typename T>
inline void multiply_add(T* __restrict out, const T* __restrict a, const T* __restrict b, int64_t channels) {
#pragma omp simd
  for (int64_t c = 0; c < channels; ++c) out[c] += a[c] * b[c];
}

// Whether position p of a sequence is read: valid_b is the sequence's row of `valid`, or null (all are).
template <typename T>
inline bool kept(const T* valid_b, int64_t p) {
  return !valid_b || valid_b[p] != T(0);
}

// out[c] = bias[c] + sum_k w[k, c] * x[t - K + 1 + k, c] for one position t of one sequence, skipping the taps
// at positions valid_b marks 0.
template <typename T>
inline void convolve(const Shape& s, const T* __restrict x_b, const T* valid_b, const T* __restrict w,
                     const T* __restrict bias, int64_t t, T* __restrict out) {
  std::copy(bias, bias + s.channels, out);
  for (int64_t k = std::max<int64_t>(0, s.taps - 1 - t); k < s.taps; ++k) {
    const int64_t p = t - s.taps + 1 + k;
    if (kept(valid_b, p)) multiply_add(out, w + k * s.channels, x_b + p * s.time_stride, s.channels);
  }
}

// a = silu(a) in place.
template <typename T>
inline void activate_in_place(T* __restrict a, int64_t channels) {
#pragma omp simd
  for (int64_t c = 0; c < channels; ++c) a[c] = silu(a[c]);
}

// a_to_ga = dy * silu'(a) in place: dL/da from dL/dy.
template <typename T>
inline void through_activation(const T* __restrict dy, T* __restrict a_to_ga, int64_t channels) {
#pragma omp simd
  for (int64_t c = 0; c < channels; ++c) a_to_ga[c] = dy[c] * silu_slope(a_to_ga[c]);
}

template <typename T>
void conv_forward(const at::Tensor& x, const at::Tensor& w, const at::Tensor& bias, const at::Tensor& valid,
                  bool activate, at::Tensor& y) {
  const auto s = shape_of(x, w);
  const T *x_p = x.data_ptr<T>(), *w_p = w.data_ptr<T>(), *bias_p = bias.data_ptr<T>();
  const T* valid_p = valid.numel() ? valid.data_ptr<T>() : nullptr;
  T* y_p = y.data_ptr<T>();
  at::parallel_for(0, s.batch, 1, [&](int64_t begin, int64_t end) {
    for (int64_t b = begin; b < end; ++b) {
      for (int64_t t = 0; t < s.length; ++t) {
        T* __restrict out = y_p + (b * s.length + t) * s.channels;
        convolve(s, x_p + b * s.batch_stride, valid_p ? valid_p + b * s.length : nullptr, w_p, bias_p, t, out);
        if (activate) activate_in_place(out, s.channels);
      }
    }
  });
}

template <typename T>
void conv_backward(const at::Tensor& x, const at::Tensor& w, const at::Tensor& bias, const at::Tensor& valid,
                   bool activate, const at::Tensor& grad_y, at::Tensor& dx, at::Tensor& dw, at::Tensor& dbias) {
  const auto s = shape_of(x, w);
  const T *x_p = x.data_ptr<T>(), *w_p = w.data_ptr<T>(), *bias_p = bias.data_ptr<T>(), *gy_p = grad_y.data_ptr<T>();
  const T* valid_p = valid.numel() ? valid.data_ptr<T>() : nullptr;
  T *dx_p = dx.data_ptr<T>(), *dw_p = dw.data_ptr<T>(), *dbias_p = dbias.data_ptr<T>();
  at::parallel_for(0, s.batch, 1, [&](int64_t begin, int64_t end) {
    std::vector<T> ga(s.length * s.channels);  // dL/da of one sequence
    for (int64_t b = begin; b < end; ++b) {
      const T* x_b = x_p + b * s.batch_stride;
      const T* valid_b = valid_p ? valid_p + b * s.length : nullptr;
      const T* gy_b = gy_p + b * s.length * s.channels;
      T *dw_b = dw_p + b * s.taps * s.channels, *dbias_b = dbias_p + b * s.channels;
      std::fill(dw_b, dw_b + s.taps * s.channels, T(0));
      std::fill(dbias_b, dbias_b + s.channels, T(0));
      for (int64_t t = 0; t < s.length; ++t) {
        T* __restrict g = ga.data() + t * s.channels;
        const T* __restrict gy = gy_b + t * s.channels;
        if (activate) {
          convolve(s, x_b, valid_b, w_p, bias_p, t, g);
          through_activation(gy, g, s.channels);
        } else {
          std::copy(gy, gy + s.channels, g);
        }
#pragma omp simd
        for (int64_t c = 0; c < s.channels; ++c) dbias_b[c] += g[c];
        for (int64_t k = std::max<int64_t>(0, s.taps - 1 - t); k < s.taps; ++k) {
          const int64_t p = t - s.taps + 1 + k;
          if (kept(valid_b, p)) multiply_add(dw_b + k * s.channels, g, x_b + p * s.time_stride, s.channels);
        }
      }
      for (int64_t p = 0; p < s.length; ++p) {  // dx at position p gathers the taps that read it
        T* __restrict out = dx_p + (b * s.length + p) * s.channels;
        std::fill(out, out + s.channels, T(0));
        if (!kept(valid_b, p)) continue;
        for (int64_t k = std::max<int64_t>(0, p + s.taps - s.length); k < s.taps; ++k)
          multiply_add(out, w_p + k * s.channels, ga.data() + (p + s.taps - 1 - k) * s.channels, s.channels);
      }
    }
  });
}

// The gathered form (see the header): one table of source positions, shape (S, batch, positions, K).
struct Table {
  const int64_t* source;
  int64_t outputs, batch, positions, taps;

  explicit Table(const at::Tensor& t)
      : source(t.data_ptr<int64_t>()), outputs(t.size(0)), batch(t.size(1)), positions(t.size(2)), taps(t.size(3)) {}

  // The K source positions of output `out` at position t of sequence b.
  const int64_t* taps_at(int64_t out, int64_t b, int64_t t) const {
    return source + ((out * batch + b) * positions + t) * taps;
  }
};

// out[c] = bias[c] + sum_k w[k, c] * x_b[src[k], c] over the taps whose source is not -1.
template <typename T>
inline void convolve_gathered(const Shape& s, const T* __restrict x_b, const int64_t* src, const T* __restrict w,
                              const T* __restrict bias, T* __restrict out) {
  std::copy(bias, bias + s.channels, out);
  for (int64_t k = 0; k < s.taps; ++k)
    if (src[k] >= 0) multiply_add(out, w + k * s.channels, x_b + src[k] * s.time_stride, s.channels);
}

template <typename T>
void gathered_conv_forward(const at::Tensor& x, const at::Tensor& w, const at::Tensor& bias, const Table& table,
                           bool activate, at::Tensor& y) {
  const auto s = shape_of(x, w);
  const T *x_p = x.data_ptr<T>(), *w_p = w.data_ptr<T>(), *bias_p = bias.data_ptr<T>();
  T* y_p = y.data_ptr<T>();
  at::parallel_for(0, table.outputs * s.batch, 1, [&](int64_t begin, int64_t end) {
    for (int64_t pair = begin; pair < end; ++pair) {  // pair = out * batch + b
      const int64_t out = pair / s.batch, b = pair % s.batch;
      for (int64_t t = 0; t < table.positions; ++t) {
        T* __restrict a = y_p + (pair * table.positions + t) * s.channels;
        convolve_gathered(s, x_p + b * s.batch_stride, table.taps_at(out, b, t), w_p, bias_p, a);
        if (activate) activate_in_place(a, s.channels);
      }
    }
  });
}

template <typename T>
void gathered_conv_backward(const at::Tensor& x, const at::Tensor& w, const at::Tensor& bias, const Table& table,
                            bool activate, const at::Tensor& grad_y, at::Tensor& dx, at::Tensor& dw,
                            at::Tensor& dbias) {
  const auto s = shape_of(x, w);
  const T *x_p = x.data_ptr<T>(), *w_p = w.data_ptr<T>(), *bias_p = bias.data_ptr<T>(), *gy_p = grad_y.data_ptr<T>();
  T *dx_p = dx.data_ptr<T>(), *dw_p = dw.data_ptr<T>(), *dbias_p = dbias.data_ptr<T>();
  at::parallel_for(0, s.batch, 1, [&](int64_t begin, int64_t end) {
    std::vector<T> ga(s.channels);  // dL/da at one output
    for (int64_t b = begin; b < end; ++b) {
      const T* x_b = x_p + b * s.batch_stride;
      T *dx_b = dx_p + b * s.length * s.channels, *dw_b = dw_p + b * s.taps * s.channels;
      T* dbias_b = dbias_p + b * s.channels;
      std::fill(dx_b, dx_b + s.length * s.channels, T(0));
      std::fill(dw_b, dw_b + s.taps * s.channels, T(0));
      std::fill(dbias_b, dbias_b + s.channels, T(0));
      for (int64_t out = 0; out < table.outputs; ++out) {
        for (int64_t t = 0; t < table.positions; ++t) {
          const int64_t* src = table.taps_at(out, b, t);
          const T* gy = gy_p + ((out * s.batch + b) * table.positions + t) * s.channels;
          T* g = ga.data();
          if (activate) {
            convolve_gathered(s, x_b, src, w_p, bias_p, g);
            through_activation(gy, g, s.channels);
          } else {
            std::copy(gy, gy + s.channels, g);
          }
#pragma omp simd
          for (int64_t c = 0; c < s.channels; ++c) dbias_b[c] += g[c];
          for (int64_t k = 0; k < s.taps; ++k) {
            if (src[k] < 0) continue;
            multiply_add(dw_b + k * s.channels, g, x_b + src[k] * s.time_stride, s.channels);
            multiply_add(dx_b + src[k] * s.channels, w_p + k * s.channels, g, s.channels);
          }
        }
      }
    }
  });
}

void check(const at::Tensor& x, const at::Tensor& w, const at::Tensor& bias, const at::Tensor& valid) {
  for (const at::Tensor* t : {&x, &w, &bias, &valid}) {
    TORCH_CHECK(t->device().is_cpu() && t->scalar_type() == x.scalar_type(),
                "causal_conv_cpu: inputs must be CPU tensors of one dtype");
  }
  TORCH_CHECK(x.dim() == 3 && (x.size(2) <= 1 || x.stride(2) == 1),
              "causal_conv_cpu: x (batch, length, channels) with contiguous channels expected");
  TORCH_CHECK(w.dim() == 2 && w.is_contiguous() && w.size(1) == x.size(2) && w.size(0) >= 1,
              "causal_conv_cpu: w (taps, channels) expected");
  TORCH_CHECK(bias.dim() == 1 && bias.is_contiguous() && bias.size(0) == x.size(2),
              "causal_conv_cpu: bias (channels,) expected");
  TORCH_CHECK(valid.numel() == 0 || (valid.dim() == 2 && valid.is_contiguous() && valid.size(0) == x.size(0) &&
                                     valid.size(1) == x.size(1)),
              "causal_conv_cpu: valid (batch, length), contiguous, or empty expected");
}

// valid: (batch, length) of x's dtype, or empty (every position read).
at::Tensor forward(const at::Tensor& x, const at::Tensor& w, const at::Tensor& bias, const at::Tensor& valid,
                   bool activate) {
  check(x, w, bias, valid);
  auto y = at::empty(x.sizes(), x.options());
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "causal_conv_cpu_forward",
                             [&] { conv_forward<scalar_t>(x, w, bias, valid, activate, y); });
  return y;
}

// Returns dx (batch, length, channels), dw per sequence (batch, taps, channels), dbias per sequence
// (batch, channels).
std::vector<at::Tensor> backward(const at::Tensor& x, const at::Tensor& w, const at::Tensor& bias,
                                 const at::Tensor& valid, bool activate, const at::Tensor& grad_y) {
  check(x, w, bias, valid);
  TORCH_CHECK(grad_y.is_contiguous() && grad_y.scalar_type() == x.scalar_type() && grad_y.sizes() == x.sizes(),
              "causal_conv_cpu: the gradient of y (batch, length, channels) expected");
  auto dx = at::empty(x.sizes(), x.options());
  auto dw = at::empty({x.size(0), w.size(0), w.size(1)}, x.options());
  auto dbias = at::empty({x.size(0), x.size(2)}, x.options());
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "causal_conv_cpu_backward",
                             [&] { conv_backward<scalar_t>(x, w, bias, valid, activate, grad_y, dx, dw, dbias); });
  return {dx, dw, dbias};
}

// The table's shape, and with `positions` its values (the forward pass checks them; its backward gets the same table).
void check_table(const at::Tensor& x, const at::Tensor& w, const at::Tensor& source, bool positions) {
  TORCH_CHECK(source.dim() == 4 && source.scalar_type() == at::kLong && source.is_contiguous() &&
                  source.size(1) == x.size(0) && source.size(3) == w.size(0),
              "causal_conv_cpu: source (outputs, batch, positions, taps) of int64, contiguous, expected");
  TORCH_CHECK(!positions || source.numel() == 0 ||
                  (source.min().item<int64_t>() >= -1 && source.max().item<int64_t>() < x.size(1)),
              "causal_conv_cpu: every source position must lie in [-1, length)");
}

at::Tensor gathered_forward(const at::Tensor& x, const at::Tensor& w, const at::Tensor& bias,
                            const at::Tensor& source, bool activate) {
  check(x, w, bias, at::empty({0}, x.options()));
  check_table(x, w, source, true);
  auto y = at::empty({source.size(0), source.size(1), source.size(2), x.size(2)}, x.options());
  const Table table(source);
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "gathered_conv_cpu_forward",
                             [&] { gathered_conv_forward<scalar_t>(x, w, bias, table, activate, y); });
  return y;
}

// Returns dx (batch, length, channels), dw per sequence (batch, taps, channels), dbias per sequence
// (batch, channels).
std::vector<at::Tensor> gathered_backward(const at::Tensor& x, const at::Tensor& w, const at::Tensor& bias,
                                          const at::Tensor& source, bool activate, const at::Tensor& grad_y) {
  check(x, w, bias, at::empty({0}, x.options()));
  check_table(x, w, source, false);
  TORCH_CHECK(grad_y.is_contiguous() && grad_y.scalar_type() == x.scalar_type() &&
                  grad_y.sizes() == at::IntArrayRef({source.size(0), source.size(1), source.size(2), x.size(2)}),
              "causal_conv_cpu: the gradient of y (outputs, batch, positions, channels) expected");
  auto dx = at::empty(x.sizes(), x.options());
  auto dw = at::empty({x.size(0), w.size(0), w.size(1)}, x.options());
  auto dbias = at::empty({x.size(0), x.size(2)}, x.options());
  const Table table(source);
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "gathered_conv_cpu_backward", [&] {
    gathered_conv_backward<scalar_t>(x, w, bias, table, activate, grad_y, dx, dw, dbias);
  });
  return {dx, dw, dbias};
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("forward", &forward, "causal depthwise convolution (+ SiLU) forward: y (batch, length, channels)");
  m.def("backward", &backward, "causal depthwise convolution backward: (dx, dw per sequence, dbias per sequence)");
  m.def("gathered_forward", &gathered_forward, "gathered depthwise convolution (+ SiLU): y (outputs, batch, positions, channels)");
  m.def("gathered_backward", &gathered_backward, "gathered depthwise convolution backward: (dx, dw, dbias per sequence)");
}
