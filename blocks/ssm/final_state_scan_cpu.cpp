// Many short selective scans read out at their last step only, as one fused CPU loop per channel
// (Gu & Dao 2023, "Mamba", eq. 2a-2b; see blocks/ssm/final_state_scan.py for where SIGMA needs it).
//
// Built on first use by blocks/compiled.py (on by default; SEQREC_ZOO_CPU_KERNEL=0 turns it off).
//
// For row r and channel e, over the steps k = 0 .. S - 1 (S small), from h = 0:
//
//     h_k = exp((delta[r, e, k] + [k == at] extra[r, e]) * A[e]) * h_{k-1} + delta[r, e, k] * u[r, e, k] * B[r, k, :]
//     y[r, e] = <C[r, :], h_{S-1}> + D[e] * u[r, e, S - 1]
//
// extra (optional, (rows, dim)) is a step that only decays, folded into step `at`'s decay: the same as a step of
// size extra with no input just before step `at` (exp(x A) exp(y A) = exp((x + y) A)), for one exponential
// instead of two. SIGMA's every-prefix pass decays each prefix's state through its reversed run that way.
//
// The general scan kernel (selective_scan_cpu.cpp) reads out every step and keeps chunk-start states
// for its backward; with a handful of steps per row, that readout and bookkeeping cost as much as the
// recurrence. Here the forward keeps nothing (and skips the steps whose delta is 0, which leave the state as it
// is: a scoring batch's padded positions), and the backward recomputes a row's few states into a buffer of
// S * n values per channel before the reverse-time adjoint sweep
//
//     g_{S-1} = dy * C,   g_{k-1} = exp(delta_k A) * g_k.
//
// projected_forward forms the steps itself, for inference (scoring), from the Mamba layer's low-rank input:
//
//     delta[r, e, k] = valid[r, k] * softplus(bias[e] + sum_j low[r, k, j] * weight[e, j])
//
// a row at a time into a small buffer, so the (rows, S, dim) steps are never written and reread, and a step that
// is not valid (a padded position) costs no softplus. With gradients wanted, the caller forms the steps and calls
// forward / backward.
//
// Layouts: u, delta (rows, dim, S) with any strides (scoring passes them time-major, (rows, S, dim) in memory, as the
// projections give them, which saves two transposing copies); their gradients take their strides. Contiguous:
// B (rows, S, n); C (rows, n); A (dim, n); D (dim,); extra (rows, dim) or empty; y (rows, dim). The projected form's
// low (rows, S, R) with any row and step strides (a slice of x_proj's output); weight (dim, R), bias (dim,), valid
// (rows, S) or empty, contiguous.

#include <torch/extension.h>

#include <ATen/Parallel.h>

#include "flush_denormals.h"

#include "project_row.h"
#include "scan_steps.h"
#include "step_size.h"
#include "fixed_size.h"

#include <algorithm>
#include <cmath>
#include <vector>

namespace {

struct Shape {
  int64_t rows, dim, steps, n;
};

Shape shape_of(const at::Tensor& u, const at::Tensor& A) { return {u.size(0), u.size(1), u.size(2), A.size(1)}; }

// A (rows, dim, S) tensor read or written through its strides: the steps of row r, channel e.
template <typename T>
struct Steps {
  T* data;
  int64_t row, dim, step;

  Steps(const at::Tensor& t) : data(t.data_ptr<std::remove_const_t<T>>()), row(t.stride(0)), dim(t.stride(1)), step(t.stride(2)) {}
  T* at(int64_t r, int64_t e) const { return data + r * row + e * dim; }
};

// The step that only decays (extra in the header), folded into step `at`: its size per (row, channel), or none.
template <typename T>
struct ExtraDecay {
  const T* data;
  int64_t at;

  ExtraDecay(const at::Tensor& extra, int64_t at) : data(extra.numel() ? extra.data_ptr<T>() : nullptr), at(at) {}
  // The size of step k's decay: delta_k, plus extra at step `at`.
  T decay_step(int64_t pair, int64_t k, T dt) const { return data && k == at ? dt + data[pair] : dt; }
};

// Where the forward reads a row's steps: the given delta through its strides, or formed from the low-rank input
// into a row buffer (see the header).
template <typename T>
struct RowSteps {
  const T* delta;  // the given steps, or null for the projected form
  int64_t row_stride, dim_stride, step_stride;
  const T *low, *weight, *bias, *valid;  // the projected form: low (rows, S, R), weight (R, dim), bias (dim,), valid
  int64_t low_row, low_step, rank, dim, steps;

  explicit RowSteps(const at::Tensor& given)
      : delta(given.data_ptr<T>()), row_stride(given.stride(0)), dim_stride(given.stride(1)),
        step_stride(given.stride(2)), low(nullptr), weight(nullptr), bias(nullptr), valid(nullptr), low_row(0),
        low_step(0), rank(0), dim(given.size(1)), steps(given.size(2)) {}

  // weight_by_rank: the weight transposed, (R, dim), so that a rank's weights lie side by side over the channels.
  RowSteps(const at::Tensor& low_, const at::Tensor& weight_by_rank, const at::Tensor& bias_, const at::Tensor& valid_)
      : delta(nullptr), row_stride(0), dim_stride(1), step_stride(weight_by_rank.size(1)), low(low_.data_ptr<T>()),
        weight(weight_by_rank.data_ptr<T>()), bias(bias_.data_ptr<T>()),
        valid(valid_.numel() ? valid_.data_ptr<T>() : nullptr), low_row(low_.stride(0)), low_step(low_.stride(1)),
        rank(weight_by_rank.size(0)), dim(weight_by_rank.size(1)), steps(low_.size(1)) {}

  // Row r's steps, (dim, S) through dim_stride and step_stride: the given tensor's, or formed into `buffer`
  // (S * dim values, step-major) in the projected form.
  const T* row(int64_t r, T* __restrict buffer) const {
    if (delta) return delta + r * row_stride;
    const StepSize<T> softplus = StepSize<T>::unclamped_rule(true);
    for (int64_t k = 0; k < steps; ++k) {
      T* __restrict out = buffer + k * dim;
      if (valid && valid[r * steps + k] == T(0)) {  // a padded position: step 0, no softplus
        std::fill(out, out + dim, T(0));
        continue;
      }
      project_row(low + r * low_row + k * low_step, weight, bias, rank, dim, out);
#pragma omp simd
      for (int64_t e = 0; e < dim; ++e) out[e] = softplus(out[e]);
    }
    return buffer;
  }
};

template <typename T, typename States>
void final_forward(States states, const at::Tensor& u, const RowSteps<T>& steps_in, const at::Tensor& rates,
                   const at::Tensor& B, const at::Tensor& C, const at::Tensor& D, const ExtraDecay<T>& extra,
                   at::Tensor& y) {
  const auto s = shape_of(u, rates);
  const Steps<const T> u_s(u);
  const T *rate_p = rates.data_ptr<T>(), *B_p = B.data_ptr<T>(), *C_p = C.data_ptr<T>(), *D_p = D.data_ptr<T>();
  T* y_p = y.data_ptr<T>();
  at::parallel_for(0, s.rows, 1, [&](int64_t begin, int64_t end) {
    const FlushDenormals flush;
    const int64_t n = states.n;
    std::vector<T> h_home(n), row_steps(steps_in.delta ? 0 : s.steps * s.dim);
    for (int64_t r = begin; r < end; ++r) {
      const T *B_r = B_p + r * s.steps * n, *C_r = C_p + r * n;
      const T* delta_r = steps_in.row(r, row_steps.data());
      for (int64_t e = 0; e < s.dim; ++e) {
        const T *u_re = u_s.at(r, e), *delta_re = delta_r + e * steps_in.dim_stride;
        const int64_t u_step = u_s.step, delta_step = steps_in.step_stride;
        std::fill(h_home.begin(), h_home.end(), T(0));
        Held<const T, States> rate(states, rate_p + e * n);
        Held<T, States> h(states, h_home.data());
        for (int64_t k = 0; k < s.steps; ++k) {
          const T dt = delta_re[k * delta_step], decay_dt = extra.decay_step(r * s.dim + e, k, dt);
          if (dt != T(0) || decay_dt != T(0))  // else the step leaves h as it is
            advance(h.get(), rate.get(), B_r + k * n, decay_dt, dt * u_re[k * u_step], n);
        }
        y_p[r * s.dim + e] = dot(h.get(), C_r, n) + D_p[e] * u_re[(s.steps - 1) * u_step];
      }
    }
  });
}

// A task is a run of rows; it owns their dB and dC rows. dA and dD are summed per thread into
// (threads, dim, n) and (threads, dim) buffers, which the caller adds up.
template <typename T, typename States>
void final_backward(States state_count,
                    const at::Tensor& u, const at::Tensor& delta, const at::Tensor& rates, const at::Tensor& B,
                    const at::Tensor& C, const at::Tensor& D, const ExtraDecay<T>& extra, const at::Tensor& grad_y,
                    at::Tensor& du, at::Tensor& ddelta, at::Tensor& dA, at::Tensor& dB, at::Tensor& dC, at::Tensor& dD,
                    at::Tensor& dextra) {
  const auto s = shape_of(u, rates);
  const int64_t n = state_count.n, S = s.steps;
  const Steps<const T> u_s(u), delta_s(delta);
  const Steps<T> du_s(du), ddelta_s(ddelta);
  const T *rate_p = rates.data_ptr<T>(), *B_p = B.data_ptr<T>();
  const T *C_p = C.data_ptr<T>(), *D_p = D.data_ptr<T>(), *gy_p = grad_y.data_ptr<T>();
  T *dA_p = dA.data_ptr<T>(), *dB_p = dB.data_ptr<T>();
  T *dC_p = dC.data_ptr<T>(), *dD_p = dD.data_ptr<T>();
  T* dextra_p = dextra.numel() ? dextra.data_ptr<T>() : nullptr;
  std::fill(dA_p, dA_p + dA.numel(), T(0));
  std::fill(dD_p, dD_p + dD.numel(), T(0));
  std::fill(dB_p, dB_p + dB.numel(), T(0));
  std::fill(dC_p, dC_p + dC.numel(), T(0));
  at::parallel_for(0, s.rows, 1, [&](int64_t begin, int64_t end) {
    const FlushDenormals flush;
    const int64_t thread = at::get_thread_num();
    T *dA_t = dA_p + thread * s.dim * n, *dD_t = dD_p + thread * s.dim;
    std::vector<T> states((S + 1) * n), decays(S * n), g_home(n);
    for (int64_t r = begin; r < end; ++r) {
      const T *B_r = B_p + r * S * n, *C_r = C_p + r * n;
      T *dB_r = dB_p + r * S * n, *dC_r = dC_p + r * n;
      for (int64_t e = 0; e < s.dim; ++e) {
        const int64_t pair = r * s.dim + e;
        const T *u_re = u_s.at(r, e), *delta_re = delta_s.at(r, e);
        T *du_re = du_s.at(r, e), *ddelta_re = ddelta_s.at(r, e);
        const int64_t us = u_s.step, ds = delta_s.step, dus = du_s.step, dds = ddelta_s.step;
        Held<const T, States> rate_held(state_count, rate_p + e * n);
        Held<T, States> dA_held(state_count, dA_t + e * n), g_held(state_count, g_home.data());
        const T* rate = rate_held.get();
        T *dA_e = dA_held.get(), *g = g_held.get();
        const T gy = gy_p[pair];
        std::fill(states.begin(), states.begin() + n, T(0));  // states[k + 1] = h_k
        for (int64_t k = 0; k < S; ++k) {
          const T dt = delta_re[k * ds];
          advance_from<true>(states.data() + (k + 1) * n, states.data() + k * n, decays.data() + k * n, rate,
                             B_r + k * n, extra.decay_step(pair, k, dt), dt * u_re[k * us], n);
        }
        const T* last = states.data() + S * n;
#pragma omp simd
        for (int64_t i = 0; i < n; ++i) {
          dC_r[i] += gy * last[i];
          g[i] = gy * C_r[i];
        }
        for (int64_t k = S - 1; k >= 0; --k) {
          const T dt = delta_re[k * ds], uk = u_re[k * us], decay_dt = extra.decay_step(pair, k, dt);
          const T *previous = states.data() + k * n, *decay = decays.data() + k * n, *Bk = B_r + k * n;
          T* dBk = dB_r + k * n;
          T through_B = 0, through_decay = 0;
#pragma omp simd reduction(+ : through_B, through_decay)
          for (int64_t i = 0; i < n; ++i) {
            const T w = g[i] * decay[i] * previous[i];  // dL/d(dt * A[i])
            dA_e[i] += w * decay_dt;
            through_decay += w * rate[i];  // ln 2 * sum_i w A[i] after the loop
            through_B += g[i] * Bk[i];
            dBk[i] += g[i] * dt * uk;
            g[i] *= decay[i];
          }
          du_re[k * dus] = dt * through_B;
          ddelta_re[k * dds] = uk * through_B + T(kLn2) * through_decay;
          if (dextra_p && k == extra.at) dextra_p[pair] = T(kLn2) * through_decay;
        }
        du_re[(S - 1) * dus] += D_p[e] * gy;
        dD_t[e] += gy * u_re[(S - 1) * us];
      }
    }
  });
}

void check(const at::Tensor& u, const at::Tensor& delta, const at::Tensor& A, const at::Tensor& B,
           const at::Tensor& C, const at::Tensor& D, const at::Tensor& extra, int64_t extra_at) {
  for (const at::Tensor* t : {&u, &delta, &A, &B, &C, &D}) {
    TORCH_CHECK(t->device().is_cpu() && t->scalar_type() == u.scalar_type(), "final_state_scan_cpu: inputs must be CPU "
                "tensors of one dtype");
    TORCH_CHECK(t->is_contiguous() || ((t == &u || t == &delta) && t->is_non_overlapping_and_dense()),
                "final_state_scan_cpu: A, B, C, D must be contiguous, u and delta dense");
  }
  TORCH_CHECK(u.dim() == 3 && delta.sizes() == u.sizes() && u.size(2) >= 1,
              "final_state_scan_cpu: u, delta (rows, d, steps >= 1) expected");
  TORCH_CHECK(A.dim() == 2 && A.size(0) == u.size(1) && D.dim() == 1 && D.size(0) == u.size(1),
              "final_state_scan_cpu: A (d, n) and D (d,) expected");
  TORCH_CHECK(B.dim() == 3 && B.size(0) == u.size(0) && B.size(1) == u.size(2) && B.size(2) == A.size(1),
              "final_state_scan_cpu: B (rows, steps, n) expected");
  TORCH_CHECK(C.dim() == 2 && C.size(0) == u.size(0) && C.size(1) == A.size(1), "final_state_scan_cpu: C (rows, n) expected");
  TORCH_CHECK(extra.numel() == 0 || (extra.is_contiguous() && extra.scalar_type() == u.scalar_type() && extra.dim() == 2 &&
                                     extra.size(0) == u.size(0) && extra.size(1) == u.size(1) && extra_at >= 0 &&
                                     extra_at < u.size(2)),
              "final_state_scan_cpu: extra (rows, d), contiguous, or empty, and 0 <= extra_at < steps expected");
}

at::Tensor forward(const at::Tensor& u, const at::Tensor& delta, const at::Tensor& A, const at::Tensor& B,
                   const at::Tensor& C, const at::Tensor& D, const at::Tensor& extra, int64_t extra_at) {
  check(u, delta, A, B, C, D, extra, extra_at);
  auto y = at::empty({u.size(0), u.size(1)}, u.options());
  const auto rates = decay_rates(A);
  AT_DISPATCH_FLOATING_TYPES(u.scalar_type(), "final_state_scan_cpu_forward", [&] {
    with_size<16, 32, 64>(A.size(1), [&](auto states) {
      final_forward<scalar_t>(states, u, RowSteps<scalar_t>(delta), rates, B, C, D, ExtraDecay<scalar_t>(extra, extra_at),
                              y);
    });
  });
  return y;
}

// The forward with the steps formed from the low-rank input (see the header); no extra decay.
at::Tensor projected_forward(const at::Tensor& u, const at::Tensor& low, const at::Tensor& weight, const at::Tensor& bias,
                             const at::Tensor& valid, const at::Tensor& A, const at::Tensor& B, const at::Tensor& C,
                             const at::Tensor& D) {
  const auto no_extra = at::empty({0}, u.options());
  check(u, u, A, B, C, D, no_extra, 0);
  for (const at::Tensor* t : {&low, &weight, &bias, &valid})
    TORCH_CHECK(t->device().is_cpu() && t->scalar_type() == u.scalar_type(), "final_state_scan_cpu: low, weight, "
                "bias and valid must be CPU tensors of u's dtype");
  TORCH_CHECK(low.dim() == 3 && low.size(0) == u.size(0) && low.size(1) == u.size(2) && low.stride(2) == 1 &&
                  weight.dim() == 2 && weight.is_contiguous() && weight.size(0) == u.size(1) &&
                  weight.size(1) == low.size(2) && bias.dim() == 1 && bias.is_contiguous() && bias.size(0) == u.size(1),
              "final_state_scan_cpu: low (rows, steps, R) with contiguous R, weight (d, R) and bias (d,) expected");
  TORCH_CHECK(valid.numel() == 0 || (valid.is_contiguous() && valid.dim() == 2 && valid.size(0) == u.size(0) &&
                                     valid.size(1) == u.size(2)),
              "final_state_scan_cpu: valid (rows, steps), contiguous, or empty expected");
  auto y = at::empty({u.size(0), u.size(1)}, u.options());
  const auto rates = decay_rates(A);
  const auto weight_by_rank = weight.t().contiguous();  // (R, d)
  AT_DISPATCH_FLOATING_TYPES(u.scalar_type(), "final_state_scan_cpu_projected_forward", [&] {
    with_size<16, 32, 64>(A.size(1), [&](auto states) {
      final_forward<scalar_t>(states, u, RowSteps<scalar_t>(low, weight_by_rank, bias, valid), rates, B, C, D,
                              ExtraDecay<scalar_t>(no_extra, 0), y);
    });
  });
  return y;
}

// Returns du, ddelta, dA per thread (threads, d, n), dB, dC, dD per thread (threads, d), dextra (empty without extra).
std::vector<at::Tensor> backward(const at::Tensor& u, const at::Tensor& delta, const at::Tensor& A,
                                 const at::Tensor& B, const at::Tensor& C, const at::Tensor& D,
                                 const at::Tensor& extra, int64_t extra_at, const at::Tensor& grad_y) {
  check(u, delta, A, B, C, D, extra, extra_at);
  TORCH_CHECK(grad_y.is_contiguous() && grad_y.scalar_type() == u.scalar_type() && grad_y.dim() == 2 &&
                  grad_y.size(0) == u.size(0) && grad_y.size(1) == u.size(1),
              "final_state_scan_cpu: the gradient of y (rows, d) expected");
  const int64_t threads = at::get_num_threads();
  auto du = at::empty_like(u), ddelta = at::empty_like(delta), dB = at::empty_like(B), dC = at::empty_like(C);
  auto dA = at::empty({threads, A.size(0), A.size(1)}, u.options());
  auto dD = at::empty({threads, D.size(0)}, u.options());
  auto dextra = at::empty_like(extra);
  const auto rates = decay_rates(A);
  AT_DISPATCH_FLOATING_TYPES(u.scalar_type(), "final_state_scan_cpu_backward", [&] {
    with_size<16, 32, 64>(A.size(1), [&](auto states) {
      final_backward<scalar_t>(states, u, delta, rates, B, C, D, ExtraDecay<scalar_t>(extra, extra_at), grad_y, du,
                               ddelta, dA, dB, dC, dD, dextra);
    });
  });
  return {du, ddelta, dA, dB, dC, dD, dextra};
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("forward", &forward, "final-state scan forward: y (rows, d)");
  m.def("projected_forward", &projected_forward, "final-state scan forward, steps formed from the low-rank input: y");
  m.def("backward", &backward, "final-state scan backward: (du, ddelta, dA per thread, dB, dC, dD per thread, dextra)");
}
