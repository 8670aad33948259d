// The decayed prefix readout of SIGMA's every-prefix flipped scan as one fused CPU loop per channel
// (see blocks/ssm/decayed_prefix.py for where it comes from: the reversed run's share of the final state).
//
// Built on first use by blocks/compiled.py (on by default; SEQREC_ZOO_CPU_KERNEL=0 turns it off).
//
// For batch b, channel e and state i, over positions s = 0 .. length - 1:
//
//     Q_s[i]     = sum_{j <= s} exp(A[e, i] * before[b, e, j]) * w[b, e, j] * B[b, j, i]
//     out[b, e, s] = sum_i C[b, s, i] * exp(A[e, i] * after[b, e, s]) * Q_s[i]
//
// The pure-PyTorch form materialises Q as a (batch, length, dim, n) tensor (and as many again for its
// gradients); here each (b, e) keeps one Q of n states while it walks through time.
//
// Layouts, all contiguous: before, w, after, out: (batch, dim, length); B, C: (batch, length, n);
// A: (dim, n).
//
// Backward, with go = dL/dout: P_s[i] = go_s * C_s[i] * exp(A[i] after_s) is dL/dQ_s, so the gradient
// reaching term j of the sum is G_j[i] = sum_{s >= j} P_s[i] (a reverse-time sum). A forward sweep
// recomputes Q_s and takes the gradients of C, after and A's readout part; a reverse sweep then
// accumulates G and takes those of w, before, B and A's decay part. Per channel that needs a buffer of
// length * n values (P), never (length, dim, n).

#include <torch/extension.h>

#include <ATen/Parallel.h>

#include "decay_exp.h"
#include "flush_denormals.h"
#include "fixed_size.h"

#include <algorithm>
#include <cmath>
#include <vector>

namespace {

struct Shape {
  int64_t batch, dim, length, n;
};

Shape shape_of(const at::Tensor& w, const at::Tensor& A) { return {w.size(0), w.size(1), w.size(2), A.size(1)}; }

template <typename T, typename States>
void readout_forward(States states,
                     const at::Tensor& before, const at::Tensor& w, const at::Tensor& B, const at::Tensor& rates,
                     const at::Tensor& after, const at::Tensor& C, at::Tensor& out) {
  const auto s = shape_of(w, rates);
  const T *before_p = before.data_ptr<T>(), *w_p = w.data_ptr<T>(), *B_p = B.data_ptr<T>();
  const T *rate_p = rates.data_ptr<T>(), *after_p = after.data_ptr<T>(), *C_p = C.data_ptr<T>();
  T* out_p = out.data_ptr<T>();
  at::parallel_for(0, s.batch * s.dim, 1, [&](int64_t begin, int64_t end) {
    const FlushDenormals flush;
    const int64_t n = states.n;
    std::vector<T> Q(n);
    for (int64_t pair = begin; pair < end; ++pair) {
      const int64_t b = pair / s.dim, e = pair % s.dim;
      const T *B_b = B_p + b * s.length * n, *C_b = C_p + b * s.length * n;
      const T *before_be = before_p + pair * s.length, *w_be = w_p + pair * s.length;
      const T* after_be = after_p + pair * s.length;
      std::fill(Q.begin(), Q.end(), T(0));
      Held<const T, States> rate_held(states, rate_p + e * n);
      Held<T, States> Q_held(states, Q.data());
      const T* rate = rate_held.get();
      T* Qp = Q_held.get();
      for (int64_t t = 0; t < s.length; ++t) {
        const T into = before_be[t], weight = w_be[t], out_of = after_be[t];
        const T *Bt = B_b + t * n, *Ct = C_b + t * n;
        T sum = 0;
#pragma omp simd reduction(+ : sum)
        for (int64_t i = 0; i < n; ++i) {
          Qp[i] += decay_exp2(rate[i] * into) * weight * Bt[i];
          sum += Ct[i] * decay_exp2(rate[i] * out_of) * Qp[i];
        }
        out_p[pair * s.length + t] = sum;
      }
    }
  });
}

// Tasks are (split, b): split `split` of batch b's channels. A task owns dB[split, b] and dC[split, b],
// so no two tasks write the same memory; the caller sums the splits (and dA over the batch).
template <typename T, typename States>
void readout_backward(States states,
                      const at::Tensor& before, const at::Tensor& w, const at::Tensor& B, const at::Tensor& rates,
                      const at::Tensor& after, const at::Tensor& C, const at::Tensor& grad_out, at::Tensor& dbefore,
                      at::Tensor& dw, at::Tensor& dB, at::Tensor& dA, at::Tensor& dafter, at::Tensor& dC) {
  const auto s = shape_of(w, rates);
  const int64_t splits = dB.size(0), n = states.n, L = s.length;
  const int64_t per_split = (s.dim + splits - 1) / splits;
  const T *before_p = before.data_ptr<T>(), *w_p = w.data_ptr<T>(), *B_p = B.data_ptr<T>();
  const T *rate_p = rates.data_ptr<T>(), *after_p = after.data_ptr<T>(), *C_p = C.data_ptr<T>();
  const T* go_p = grad_out.data_ptr<T>();
  T *dbefore_p = dbefore.data_ptr<T>(), *dw_p = dw.data_ptr<T>(), *dB_p = dB.data_ptr<T>(), *dA_p = dA.data_ptr<T>();
  T *dafter_p = dafter.data_ptr<T>(), *dC_p = dC.data_ptr<T>();
  std::fill(dB_p, dB_p + dB.numel(), T(0));
  std::fill(dC_p, dC_p + dC.numel(), T(0));
  at::parallel_for(0, splits * s.batch, 1, [&](int64_t begin, int64_t end) {
    const FlushDenormals flush;
    std::vector<T> Q(n), G(n), P(L * n);
    for (int64_t task = begin; task < end; ++task) {
      const int64_t split = task / s.batch, b = task % s.batch;
      const int64_t e0 = split * per_split, e1 = std::min(s.dim, e0 + per_split);
      const T *B_b = B_p + b * L * n, *C_b = C_p + b * L * n;
      T *dB_b = dB_p + task * L * n, *dC_b = dC_p + task * L * n;  // task = split * batch + b
      for (int64_t e = e0; e < e1; ++e) {
        const int64_t pair = b * s.dim + e;
        const T *before_be = before_p + pair * L, *w_be = w_p + pair * L, *after_be = after_p + pair * L;
        const T* go_be = go_p + pair * L;
        std::fill(Q.begin(), Q.end(), T(0));
        std::fill(G.begin(), G.end(), T(0));
        std::fill(dA_p + pair * n, dA_p + (pair + 1) * n, T(0));
        Held<const T, States> rate_held(states, rate_p + e * n);
        Held<T, States> Q_held(states, Q.data()), G_held(states, G.data()), dA_held(states, dA_p + pair * n);
        const T* rate = rate_held.get();
        T *Qp = Q_held.get(), *Gp = G_held.get(), *dA_e = dA_held.get(), *Pp = P.data();
        for (int64_t t = 0; t < L; ++t) {  // forward: Q_s, P_s, and the readout's gradients
          const T into = before_be[t], weight = w_be[t], out_of = after_be[t], go = go_be[t];
          const T *Bt = B_b + t * n, *Ct = C_b + t * n;
          T* dCt = dC_b + t * n;
          T* Pt = Pp + t * n;
          T d_out_of = 0;
#pragma omp simd reduction(+ : d_out_of)
          for (int64_t i = 0; i < n; ++i) {
            Qp[i] += decay_exp2(rate[i] * into) * weight * Bt[i];
            const T decay = decay_exp2(rate[i] * out_of);
            Pt[i] = go * Ct[i] * decay;
            dCt[i] += go * decay * Qp[i];
            const T through = Pt[i] * Qp[i];  // dL / d(A[i] * after_s)
            d_out_of += through * rate[i];  // ln 2 * sum_i through A[i] after the loop
            dA_e[i] += through * out_of;
          }
          dafter_p[pair * L + t] = T(kLn2) * d_out_of;
        }
        for (int64_t t = L - 1; t >= 0; --t) {  // reverse: G_j = sum_{s >= j} P_s, and the terms' gradients
          const T into = before_be[t], weight = w_be[t];
          const T *Bt = B_b + t * n, *Pt = Pp + t * n;
          T* dBt = dB_b + t * n;
          T d_weight = 0, d_into = 0;
#pragma omp simd reduction(+ : d_weight, d_into)
          for (int64_t i = 0; i < n; ++i) {
            Gp[i] += Pt[i];
            const T reach = Gp[i] * decay_exp2(rate[i] * into);  // dL / d(w_j B_j[i])
            d_weight += reach * Bt[i];
            dBt[i] += reach * weight;
            const T through = reach * weight * Bt[i];  // dL / d(A[i] * before_j)
            d_into += through * rate[i];
            dA_e[i] += through * into;
          }
          dw_p[pair * L + t] = d_weight;
          dbefore_p[pair * L + t] = T(kLn2) * d_into;
        }
      }
    }
  });
}

void check(const at::Tensor& before, const at::Tensor& w, const at::Tensor& B, const at::Tensor& A,
           const at::Tensor& after, const at::Tensor& C) {
  for (const at::Tensor* t : {&before, &w, &B, &A, &after, &C}) {
    TORCH_CHECK(t->device().is_cpu() && t->scalar_type() == w.scalar_type() && t->is_contiguous(),
                "decayed_prefix_cpu: inputs must be contiguous CPU tensors of one dtype");
  }
  TORCH_CHECK(w.dim() == 3 && before.sizes() == w.sizes() && after.sizes() == w.sizes(),
              "decayed_prefix_cpu: before, w, after (b, d, l) expected");
  TORCH_CHECK(A.dim() == 2 && A.size(0) == w.size(1), "decayed_prefix_cpu: A (d, n) expected");
  TORCH_CHECK(B.dim() == 3 && B.sizes() == C.sizes() && B.size(0) == w.size(0) && B.size(1) == w.size(2) &&
                  B.size(2) == A.size(1),
              "decayed_prefix_cpu: B, C (b, l, n) expected");
}

at::Tensor forward(const at::Tensor& before, const at::Tensor& w, const at::Tensor& B, const at::Tensor& A,
                   const at::Tensor& after, const at::Tensor& C) {
  check(before, w, B, A, after, C);
  auto out = at::empty_like(w);
  const auto rates = decay_rates(A);
  AT_DISPATCH_FLOATING_TYPES(w.scalar_type(), "decayed_prefix_cpu_forward", [&] {
    with_size<16, 32, 64>(A.size(1), [&](auto states) {
      readout_forward<scalar_t>(states, before, w, B, rates, after, C, out);
    });
  });
  return out;
}

// Returns dbefore, dw, dB per split (splits, b, l, n), dA per batch (b, d, n), dafter, dC per split.
std::vector<at::Tensor> backward(const at::Tensor& before, const at::Tensor& w, const at::Tensor& B,
                                 const at::Tensor& A, const at::Tensor& after, const at::Tensor& C,
                                 const at::Tensor& grad_out, int64_t splits) {
  check(before, w, B, A, after, C);
  TORCH_CHECK(grad_out.sizes() == w.sizes() && grad_out.is_contiguous() && grad_out.scalar_type() == w.scalar_type(),
              "decayed_prefix_cpu: the gradient of out (b, d, l) expected");
  TORCH_CHECK(splits >= 1 && splits <= std::max<int64_t>(1, w.size(1)), "decayed_prefix_cpu: splits out of range");
  auto dbefore = at::empty_like(w), dw = at::empty_like(w), dafter = at::empty_like(w);
  auto dB = at::empty({splits, B.size(0), B.size(1), B.size(2)}, w.options());
  auto dC = at::empty_like(dB);
  auto dA = at::empty({w.size(0), w.size(1), A.size(1)}, w.options());
  const auto rates = decay_rates(A);
  AT_DISPATCH_FLOATING_TYPES(w.scalar_type(), "decayed_prefix_cpu_backward", [&] {
    with_size<16, 32, 64>(A.size(1), [&](auto states) {
      readout_backward<scalar_t>(states, before, w, B, rates, after, C, grad_out, dbefore, dw, dB, dA, dafter, dC);
    });
  });
  return {dbefore, dw, dB, dA, dafter, dC};
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("forward", &forward, "decayed prefix readout forward: out (b, d, l)");
  m.def("backward", &backward, "decayed prefix readout backward: (dbefore, dw, dB, dA, dafter, dC)");
}
