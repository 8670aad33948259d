// ConvRec's layer norm (docs/models/convrec.md, "ConvRec's layer norm") over the last axis of a
// (rows, n) matrix, forward and backward, one pass over each row per direction.
//
// Built on first use by blocks/compiled.py (on by default; SEQREC_ZOO_CPU_KERNEL=0 turns it off).
//
// For a row x of n values, with weight w and bias b:
//
//     mu = mean(x),  c = x - mu,  q = |c| (Euclidean norm),  s = q / sqrt(n - 1) + eps
//     y  = w * c / s + b
//
// (s is the unbiased standard deviation plus eps, the eps outside the root as in the code.) The
// backward pass, with g = dy * w, r = 1 / s and S = sum(g * c):
//
//     dc = g r - c S r^2 / (q sqrt(n - 1))          (the second term is 0 where q = 0, as torch's norm)
//     dx = dc - mean(dc)
//     dw = sum over rows of dy * c r,   db = sum over rows of dy
//
// PyTorch's autograd runs this as about twenty passes over memory, which made the norm a tenth of a
// ConvRec training step. The weight and bias gradients are summed per block of rows into a buffer and
// the blocks then in order, so the result does not depend on the number of threads.

#include <torch/extension.h>

#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <tuple>

namespace {

constexpr int64_t kRowsPerBlock = 32;

// Row sums accumulate in double: a float32 sum of a few hundred values far from zero (a mean of 100, say)
// loses digits that the centred values then miss.
template <typename T>
inline T row_mean(const T* __restrict x, int64_t n) {
  double sum = 0;
#pragma omp simd reduction(+ : sum)
  for (int64_t i = 0; i < n; ++i) sum += x[i];
  return static_cast<T>(sum / n);
}

template <typename T>
inline T centred_norm(const T* __restrict x, T mean, int64_t n) {
  double sum = 0;
#pragma omp simd reduction(+ : sum)
  for (int64_t i = 0; i < n; ++i) sum += static_cast<double>(x[i] - mean) * (x[i] - mean);
  return static_cast<T>(std::sqrt(sum));
}

template <typename T>
void forward_rows(const T* x, const T* w, const T* b, T* y, T* means, T* norms, int64_t rows, int64_t n, T eps) {
  const T root = std::sqrt(T(n - 1));
  at::parallel_for(0, rows, 16, [&](int64_t begin, int64_t end) {
    for (int64_t row = begin; row < end; ++row) {
      const T* __restrict in = x + row * n;
      T* __restrict out = y + row * n;
      const T mean = row_mean(in, n);
      const T norm = centred_norm(in, mean, n);
      const T inverse = T(1) / (norm / root + eps);
      means[row] = mean;
      norms[row] = norm;
#pragma omp simd
      for (int64_t i = 0; i < n; ++i) out[i] = w[i] * ((in[i] - mean) * inverse) + b[i];
    }
  });
}

template <typename T>
void backward_rows(const T* dy, const T* x, const T* w, const T* means, const T* norms, T* dx, T* partials,
                   int64_t rows, int64_t n, T eps) {
  const T root = std::sqrt(T(n - 1));
  const int64_t blocks = (rows + kRowsPerBlock - 1) / kRowsPerBlock;
  at::parallel_for(0, blocks, 1, [&](int64_t first_block, int64_t last_block) {
    for (int64_t block = first_block; block < last_block; ++block) {
      T* __restrict dw = partials + block * 2 * n;
      T* __restrict db = dw + n;
      for (int64_t i = 0; i < n; ++i) dw[i] = db[i] = T(0);
      const int64_t end = std::min(rows, (block + 1) * kRowsPerBlock);
      for (int64_t row = block * kRowsPerBlock; row < end; ++row) {
        const T* __restrict in = x + row * n;
        const T* __restrict grad = dy + row * n;
        T* __restrict out = dx + row * n;
        const T mean = means[row], norm = norms[row];
        const T inverse = T(1) / (norm / root + eps);
        double dot = 0;
#pragma omp simd reduction(+ : dot)
        for (int64_t i = 0; i < n; ++i) dot += static_cast<double>(grad[i] * w[i]) * (in[i] - mean);
        const T through_norm = norm > T(0) ? static_cast<T>(dot) * inverse * inverse / (norm * root) : T(0);
        double sum = 0;
#pragma omp simd reduction(+ : sum)
        for (int64_t i = 0; i < n; ++i) {
          const T centred = in[i] - mean;
          const T dc = grad[i] * w[i] * inverse - centred * through_norm;
          out[i] = dc;
          sum += dc;
          dw[i] += grad[i] * centred * inverse;
          db[i] += grad[i];
        }
        const T shift = static_cast<T>(sum / n);
#pragma omp simd
        for (int64_t i = 0; i < n; ++i) out[i] -= shift;
      }
    }
  });
}

void check(const at::Tensor& x, const at::Tensor& weight, const char* who) {
  TORCH_CHECK(x.device().is_cpu() && x.is_contiguous() && x.dim() == 2, who, ": a contiguous CPU (rows, n) tensor expected");
  TORCH_CHECK(x.size(1) >= 2, who, ": the unbiased standard deviation needs n >= 2 values a row");
  TORCH_CHECK(weight.is_contiguous() && weight.dim() == 1 && weight.size(0) == x.size(1) &&
                  weight.scalar_type() == x.scalar_type(), who, ": weight (n,) of x's dtype expected");
}

// y (rows, n), and the per-row mean and norm |x - mean| the backward pass reads.
std::tuple<at::Tensor, at::Tensor, at::Tensor> forward(const at::Tensor& x, const at::Tensor& weight,
                                                       const at::Tensor& bias, double eps) {
  check(x, weight, "layer_norm_c_cpu.forward");
  TORCH_CHECK(bias.is_contiguous() && bias.sizes() == weight.sizes() && bias.scalar_type() == x.scalar_type(),
              "layer_norm_c_cpu.forward: bias (n,) of x's dtype expected");
  auto y = at::empty_like(x);
  auto means = at::empty({x.size(0)}, x.options());
  auto norms = at::empty({x.size(0)}, x.options());
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "layer_norm_c_cpu.forward", [&] {
    forward_rows<scalar_t>(x.data_ptr<scalar_t>(), weight.data_ptr<scalar_t>(), bias.data_ptr<scalar_t>(),
                           y.data_ptr<scalar_t>(), means.data_ptr<scalar_t>(), norms.data_ptr<scalar_t>(), x.size(0),
                           x.size(1), static_cast<scalar_t>(eps));
  });
  return {y, means, norms};
}

// dx (rows, n), dweight (n,), dbias (n,).
std::tuple<at::Tensor, at::Tensor, at::Tensor> backward(const at::Tensor& dy, const at::Tensor& x,
                                                        const at::Tensor& weight, const at::Tensor& means,
                                                        const at::Tensor& norms, double eps) {
  check(x, weight, "layer_norm_c_cpu.backward");
  TORCH_CHECK(dy.is_contiguous() && dy.sizes() == x.sizes() && dy.scalar_type() == x.scalar_type(),
              "layer_norm_c_cpu.backward: dy of x's shape and dtype expected");
  auto dx = at::empty_like(x);
  const int64_t blocks = (x.size(0) + kRowsPerBlock - 1) / kRowsPerBlock;
  auto partials = at::empty({blocks, 2, x.size(1)}, x.options());
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "layer_norm_c_cpu.backward", [&] {
    backward_rows<scalar_t>(dy.data_ptr<scalar_t>(), x.data_ptr<scalar_t>(), weight.data_ptr<scalar_t>(),
                            means.data_ptr<scalar_t>(), norms.data_ptr<scalar_t>(), dx.data_ptr<scalar_t>(),
                            partials.data_ptr<scalar_t>(), x.size(0), x.size(1), static_cast<scalar_t>(eps));
  });
  auto sums = partials.sum(0);
  return {dx, sums[0], sums[1]};
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("forward", &forward, "ConvRec's layer norm over the rows of x: (y, mean, norm)");
  m.def("backward", &backward, "its gradients: (dx, dweight, dbias)");
}
