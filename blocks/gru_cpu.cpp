// One GRU layer over left-padded rows, for inference: each thread runs its rows' whole recurrences, four rows in
// lock-step, with the hidden product and the gates fused per step (Cho et al. 2014, in torch.nn.GRU's form, which
// applies the reset gate after the hidden product as cuDNN does):
//
//     r = sigmoid(gi_r + W_hr h + b_hr)
//     z = sigmoid(gi_z + W_hz h + b_hz)
//     n = tanh(gi_n + r * (W_hn h + b_hn))
//     h' = (1 - z) * n + z * h
//
// gi = x W_ih^T + b_ih is computed beforehand for every step at once (one matrix product, blocks/gru.py). Row b
// holds its items in slots start[b] .. L - 1 (left padding): its state is zero before start[b], its outputs there
// are zero, and pads never reach an item. torch's CPU GRU runs each step as a few separate operations over the
// batch (a matrix product and the gates' elementwise passes): at SIGMA's shapes (256 rows, 50 steps, width 64)
// their overhead is most of its time (11.7 ms there against 3.1 ms for this loop, and 2.6 ms for gi).
//
// Built on first use by blocks/compiled.py (on by default; SEQREC_ZOO_CPU_KERNEL=0 turns it off).
//
// Layouts, all contiguous: gi (B, L, 3H) gates in torch's order r, z, n; w_hh_t (H, 3H), W_hh transposed;
// b_hh (3H) or empty; start (B) int64; y (B, L, H).

#include <torch/extension.h>

#include <ATen/Parallel.h>

#include "ssm/silu.h"

#include <algorithm>
#include <cmath>
#include <vector>

namespace {

// tanh through exp, which gcc vectorises (libmvec): 1 - 2 / (1 + e^{2a}), e^{2a} kept below overflow.
template <typename T>
inline T tanh_by_exp(T a) {
  return T(1) - T(2) / (T(1) + std::exp(std::min(T(2) * a, T(80))));
}

constexpr int64_t kRows = 4;    // rows stepped together: each weight loaded is used kRows times
constexpr int64_t kColumns = 16;  // hidden-product columns accumulated in registers at a time

// Rows begin .. end - 1, kRows at a time in lock-step from the earliest first item among them; a row whose first
// item is still ahead keeps a zero state and zero outputs. w_hh_t and b_hh have G >= 3H columns, G a multiple of
// kColumns (zero beyond 3H).
template <typename T>
void run_rows(const T* __restrict gi, const T* __restrict w_hh_t, const T* __restrict b_hh, const int64_t* start,
              T* __restrict y, int64_t begin, int64_t end, int64_t length, int64_t H, int64_t G) {
  std::vector<T> h_home(kRows * H), acc_home(kRows * G);
  T* __restrict h = h_home.data();
  T* __restrict acc = acc_home.data();
  for (int64_t r0 = begin; r0 < end; r0 += kRows) {
    const int64_t rows = std::min(kRows, end - r0);
    int64_t first[kRows];
    int64_t earliest = length;
    for (int64_t q = 0; q < kRows; ++q) {
      first[q] = q < rows ? std::clamp<int64_t>(start[r0 + q], 0, length) : length;
      earliest = std::min(earliest, first[q]);
      if (q < rows) std::fill(y + (r0 + q) * length * H, y + ((r0 + q) * length + first[q]) * H, T(0));
    }
    std::fill(h, h + kRows * H, T(0));
    for (int64_t t = earliest; t < length; ++t) {
      for (int64_t c = 0; c < G; c += kColumns) {  // acc = b_hh + h W_hh^T, kColumns columns of every row
        T block[kRows][kColumns];
        for (int64_t q = 0; q < kRows; ++q) {
#pragma omp simd
          for (int64_t j = 0; j < kColumns; ++j) block[q][j] = b_hh ? b_hh[c + j] : T(0);
        }
        for (int64_t k = 0; k < H; ++k) {
          const T* __restrict w = w_hh_t + k * G + c;
          for (int64_t q = 0; q < kRows; ++q) {
            const T h_k = h[q * H + k];
#pragma omp simd
            for (int64_t j = 0; j < kColumns; ++j) block[q][j] += h_k * w[j];
          }
        }
        for (int64_t q = 0; q < kRows; ++q) std::copy(block[q], block[q] + kColumns, acc + q * G + c);
      }
      for (int64_t q = 0; q < rows; ++q) {
        if (t < first[q]) continue;
        const T* __restrict g = gi + ((r0 + q) * length + t) * 3 * H;
        const T* __restrict a = acc + q * G;
        T* __restrict h_q = h + q * H;
        T* __restrict out = y + ((r0 + q) * length + t) * H;
#pragma omp simd
        for (int64_t i = 0; i < H; ++i) {
          const T reset = sigmoid(g[i] + a[i]);
          const T update = sigmoid(g[H + i] + a[H + i]);
          const T candidate = tanh_by_exp(g[2 * H + i] + reset * a[2 * H + i]);
          out[i] = candidate + update * (h_q[i] - candidate);
        }
        std::copy(out, out + H, h_q);
      }
    }
  }
}

void check(const at::Tensor& t, const char* name, at::ScalarType dtype) {
  TORCH_CHECK(t.device().is_cpu() && t.is_contiguous(), "gru: ", name, " must be a contiguous CPU tensor");
  TORCH_CHECK(t.scalar_type() == dtype, "gru: ", name, " must be ", dtype, ", got ", t.scalar_type());
}

at::Tensor forward(const at::Tensor& gi, const at::Tensor& w_hh_t, const at::Tensor& b_hh, const at::Tensor& start) {
  TORCH_CHECK(gi.scalar_type() == at::kFloat || gi.scalar_type() == at::kDouble, "gru: gi must be float32 or float64");
  check(gi, "gi", gi.scalar_type());
  check(w_hh_t, "w_hh_t", gi.scalar_type());
  check(start, "start", at::kLong);
  TORCH_CHECK(gi.dim() == 3 && w_hh_t.dim() == 2 && gi.size(2) == w_hh_t.size(1) && w_hh_t.size(1) == 3 * w_hh_t.size(0),
              "gru: expected gi (B, L, 3H) and w_hh_t (H, 3H), got ", gi.sizes(), " and ", w_hh_t.sizes());
  TORCH_CHECK(start.dim() == 1 && start.size(0) == gi.size(0), "gru: start must hold one slot per row");
  const bool has_bias = b_hh.numel() > 0;
  if (has_bias) {
    check(b_hh, "b_hh", gi.scalar_type());
    TORCH_CHECK(b_hh.numel() == gi.size(2), "gru: b_hh must have 3H values");
  }
  const int64_t rows = gi.size(0), length = gi.size(1), H = w_hh_t.size(0);
  const int64_t G = (3 * H + kColumns - 1) / kColumns * kColumns;  // columns padded with zeros
  const at::Tensor w_padded = at::constant_pad_nd(w_hh_t, {0, G - 3 * H}).contiguous();
  const at::Tensor b_padded = has_bias ? at::constant_pad_nd(b_hh, {0, G - 3 * H}).contiguous() : b_hh;
  at::Tensor y = at::empty({rows, length, H}, gi.options());
  AT_DISPATCH_FLOATING_TYPES(gi.scalar_type(), "gru_forward", [&] {
    const scalar_t *gi_p = gi.data_ptr<scalar_t>(), *w_p = w_padded.data_ptr<scalar_t>();
    const scalar_t* b_p = has_bias ? b_padded.data_ptr<scalar_t>() : nullptr;
    const int64_t* start_p = start.data_ptr<int64_t>();
    scalar_t* y_p = y.data_ptr<scalar_t>();
    at::parallel_for(0, (rows + kRows - 1) / kRows, 1, [&](int64_t begin, int64_t end) {
      run_rows(gi_p, w_p, b_p, start_p, y_p, begin * kRows, std::min(end * kRows, rows), length, H, G);
    });
  });
  return y;
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("forward", &forward, "one GRU layer over left-padded rows (inference)");
}
