// Mamba2's SSD recurrence as one fused CPU loop per head (Dao & Gu 2024, "Transformers are SSMs",
// §3 eq. (1)-(2) with the scalar-times-identity A of SSD, §6).
//
// Built on first use by blocks/ssm/cpu_kernel.py (on by default; SEQREC_ZOO_CPU_KERNEL=0 turns it off). The recurrence,
// dt's bias, softplus and limits, and the skip term D x live here; the z gate stays in PyTorch.
//
// For batch b and head h (in group g = h / (heads / groups)), with a state S of shape (p, n) and the
// step dt_t = clamp(softplus(raw_t + bias[h]), lo, hi) (see step_size.h), raw being the input dt:
//
//     S_t = exp(dt_t * A[h]) * S_{t-1} + (dt_t * x_t) B_t^T        S_{-1} = the initial state
//     y_t = S_t C_t + D[h] * x_t        (D[h] a vector of p, elementwise with x_t)
//
// Layouts (all contiguous): x, y: (batch, length, heads, p); dt: (batch, length, heads); A, bias: (heads,);
// B, C: (batch, length, groups, n); D: (heads, p); initial and final states: (batch, heads, p, n).
//
// Each (b, h) pair is an independent recurrence. The forward pass holds the state transposed (n rows
// of p) and is vectorised along p; the backward pass holds it as p rows of n, vectorised along n.
// The backward pass is the reverse-time adjoint recurrence
//
//     G_t = dy_t C_t^T + exp(dt_{t+1} A) G_{t+1}        (G_{L-1} also gets the final state's gradient)
//
// which needs S_{t-1} at every t: a first sweep keeps the state at each chunk start (kChunk steps),
// and each chunk's states are recomputed into a small buffer just before the reverse sweep walks
// through it, so the memory per head is O(p n (length / kChunk + kChunk)), never O(length p n).
// Both passes go chunk by chunk over all heads a thread owns, so a chunk of B and C is read from
// cache by every head of its group.

#include <torch/extension.h>

#include <ATen/Parallel.h>

#include "flush_denormals.h"

#include "fixed_size.h"
#include "group_runs.h"
#include "step_size.h"

#include <algorithm>
#include <cmath>
#include <vector>

namespace {

constexpr int64_t kChunk = 64;

struct SsdShape {
  int64_t batch, length, heads, p, groups, n;
  int64_t heads_per_group() const { return heads / groups; }
  int64_t state_size() const { return p * n; }
};

SsdShape shape_of(const at::Tensor& x, const at::Tensor& B) {
  return {x.size(0), x.size(1), x.size(2), x.size(3), B.size(2), B.size(3)};
}

// Pointers to what head h of batch b reads at step t, and its step rule (bias and StepSize).
template <typename T>
struct HeadView {
  const SsdShape& s;
  const T *x, *dt, *B, *C;
  int64_t b, h;
  T bias;
  StepSize<T> rule;
  const T* x_at(int64_t t) const { return x + ((b * s.length + t) * s.heads + h) * s.p; }
  // out[t - first] = f(raw dt_t + bias) over [first, stop), vectorised over time: f = rule gives the
  // steps, f = rule.slope their derivatives.
  template <typename F>
  void over_time(int64_t first, int64_t stop, F f, T* __restrict out) const {
    const T* raw = dt + (b * s.length) * s.heads + h;
#pragma omp simd
    for (int64_t t = first; t < stop; ++t) out[t - first] = f(raw[t * s.heads] + bias);
  }
  void steps(int64_t first, int64_t stop, T* out) const { over_time(first, stop, rule, out); }
  const T* B_at(int64_t t) const { return B + ((b * s.length + t) * s.groups + h / s.heads_per_group()) * s.n; }
  const T* C_at(int64_t t) const { return C + ((b * s.length + t) * s.groups + h / s.heads_per_group()) * s.n; }
};

// The step rule of every head: its bias and the shared StepSize.
template <typename T>
struct HeadSteps {
  const T* bias;
  StepSize<T> rule;
};

// S <- decay * S + (dt * x) B^T, row by row.
template <typename T>
inline void advance(T* __restrict S, const T* __restrict x, const T* __restrict Bt, T decay, T dt, int64_t p, int64_t n) {
  for (int64_t i = 0; i < p; ++i) {
    T* row = S + i * n;
    const T input = dt * x[i];
#pragma omp simd
    for (int64_t j = 0; j < n; ++j) row[j] = decay * row[j] + input * Bt[j];
  }
}

// One forward step of a head whose state is held transposed, St = S^T of shape (n, p): every
// update and the readout run along p, so y_t = S_t C_t accumulates over the n rows of St with no
// horizontal sums (with S as p rows of n, each of the p outputs would end in one). P is p when it is
// known at compile time, so that dt * x and the p outputs stay in registers across the n rows; with
// P = 0 they live in `scratch` and y.
template <typename T, int64_t P>
inline void forward_step(T* __restrict St, const T* __restrict x, const T* __restrict Bt, const T* __restrict Ct,
                         const T* __restrict D, T decay, T dt, int64_t p, int64_t n, T* __restrict scratch,
                         T* __restrict y) {
  if constexpr (P > 0) p = P;
  T local_input[P > 0 ? P : 1], local_acc[P > 0 ? P : 1];
  T* __restrict input = P > 0 ? local_input : scratch;
  T* __restrict acc = P > 0 ? local_acc : y;
  for (int64_t i = 0; i < p; ++i) {
    input[i] = dt * x[i];
    acc[i] = 0;
  }
  for (int64_t j = 0; j < n; ++j) {
    T* row = St + j * p;
    const T b = Bt[j], c = Ct[j];
#pragma omp simd
    for (int64_t i = 0; i < p; ++i) {
      row[i] = decay * row[i] + b * input[i];
      acc[i] += c * row[i];
    }
  }
  for (int64_t i = 0; i < p; ++i) y[i] = acc[i] + D[i] * x[i];
}

// out (cols, rows) = in (rows, cols)^T
template <typename T>
void transpose(const T* in, T* out, int64_t rows, int64_t cols) {
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t c = 0; c < cols; ++c) out[c * rows + r] = in[r * cols + c];
}

template <typename T, int64_t P>
void scan_forward(const at::Tensor& x, const at::Tensor& dt, const at::Tensor& A, const at::Tensor& B,
                  const at::Tensor& C, const at::Tensor& D, const HeadSteps<T>& rules, const at::Tensor& initial,
                  at::Tensor& y, at::Tensor& final_state) {
  const auto s = shape_of(x, B);
  const int64_t size = s.state_size();
  const T *A_p = A.data_ptr<T>(), *D_p = D.data_ptr<T>(), *init_p = initial.data_ptr<T>();
  T *y_p = y.data_ptr<T>(), *final_p = final_state.data_ptr<T>();
  at::parallel_for(0, s.batch * s.heads, 1, [&](int64_t begin, int64_t end) {
    const FlushDenormals flush;
    std::vector<T> transposed(s.heads_per_group() * size), scratch(s.p);
    T chunk_steps[kChunk];
    // Chunk by chunk over the heads of one (b, g): a chunk of the group's B and C stays in cache while
    // its heads read them (walking each head through all of time would evict them at long lengths).
    for_each_group_run(s.heads_per_group(), begin, end, [&](int64_t first_pair, int64_t stop_pair) {
      for (int64_t pair = first_pair; pair < stop_pair; ++pair)
        transpose(init_p + pair * size, transposed.data() + (pair - first_pair) * size, s.p, s.n);
      for (int64_t first = 0; first < s.length; first += kChunk) {
        for (int64_t pair = first_pair; pair < stop_pair; ++pair) {
          const int64_t b = pair / s.heads, h = pair % s.heads;
          const HeadView<T> view{s, x.data_ptr<T>(), dt.data_ptr<T>(), B.data_ptr<T>(), C.data_ptr<T>(), b, h,
                                 rules.bias[h], rules.rule};
          T* St = transposed.data() + (pair - first_pair) * size;
          const int64_t stop = std::min(s.length, first + kChunk);
          view.steps(first, stop, chunk_steps);
          for (int64_t t = first; t < stop; ++t) {
            const T step = chunk_steps[t - first];
            forward_step<T, P>(St, view.x_at(t), view.B_at(t), view.C_at(t), D_p + h * s.p, std::exp(step * A_p[h]),
                               step, s.p, s.n, scratch.data(), y_p + ((b * s.length + t) * s.heads + h) * s.p);
          }
        }
      }
      for (int64_t pair = first_pair; pair < stop_pair; ++pair)
        transpose(transposed.data() + (pair - first_pair) * size, final_p + pair * size, s.n, s.p);
    });
  });
}

// scan_forward with the head size as a compile-time constant for the common sizes (8: CNN-Mamba's heads, whose
// scoring ran 1.22x faster than through the run-time loop).
template <typename T>
void scan_forward_any(const at::Tensor& x, const at::Tensor& dt, const at::Tensor& A, const at::Tensor& B,
                      const at::Tensor& C, const at::Tensor& D, const HeadSteps<T>& rules, const at::Tensor& initial,
                      at::Tensor& y, at::Tensor& final_state) {
  with_size<8, 16, 32, 64>(x.size(3), [&](auto p) {
    scan_forward<T, decltype(p)::held>(x, dt, A, B, C, D, rules, initial, y, final_state);
  });
}

// Output pointers of the backward pass.
template <typename T>
struct Gradients {
  T *dx, *ddt, *dA, *dB, *dC, *dD, *dinitial;
};

// One chunk [first, stop) of head h of batch b, in reverse: recompute its states from `start`
// (S_{first-1}) into `states`, then walk back carrying the adjoint G (dL/dS_t, updated in place) and
// adding to dA and to the head's dD (p values). dB_bg / dC_bg are (length, n) accumulators of the
// head's group (strided by groups * n), owned by the calling task alone. Each step's dB_t, dC_t and
// the decay gradient are summed over the p rows in `acc` (3 n values: registers when N, the state
// size, is a compile-time constant, else `scratch`) before they touch memory. The raw dt's gradient
// is the step's times the step rule's slope.
template <typename T, int64_t N>
void chunk_backward(const HeadView<T>& view, T A_h, const T* D_h, int64_t first, int64_t stop, const T* start,
                    const T* grad_y, const Gradients<T>& out, T* dB_bg, T* dC_bg, std::vector<T>& states, T* G,
                    T& dA, T* dD_h, T* scratch) {
  const SsdShape& s = view.s;
  const int64_t n = N > 0 ? N : s.n, size = s.p * n, row_stride = s.groups * n;
  T local[N > 0 ? 3 * N : 1];
  T* __restrict acc = N > 0 ? local : scratch;
  T *acc_B = acc, *acc_C = acc + n, *acc_decay = acc + 2 * n;
  T steps[kChunk], slopes[kChunk];
  view.steps(first, stop, steps);
  view.over_time(first, stop, [&](T raw) { return view.rule.slope(raw); }, slopes);
  std::copy(start, start + size, states.data());
  for (int64_t t = first; t < stop; ++t) {
    T* next = states.data() + (t - first + 1) * size;
    std::copy(next - size, next, next);
    advance(next, view.x_at(t), view.B_at(t), std::exp(steps[t - first] * A_h), steps[t - first], s.p, n);
  }
  for (int64_t t = stop - 1; t >= first; --t) {
    const T step = steps[t - first], decay = std::exp(step * A_h);
    const T *xt = view.x_at(t), *Bt = view.B_at(t), *Ct = view.C_at(t);
    const T* gy = grad_y + ((view.b * s.length + t) * s.heads + view.h) * s.p;
    const T* previous = states.data() + (t - first) * size;  // S_{t-1}
    const T* current = previous + size;                      // S_t
    T *dBt = dB_bg + t * row_stride, *dCt = dC_bg + t * row_stride;
    T* dxt = out.dx + ((view.b * s.length + t) * s.heads + view.h) * s.p;
    T ddt = 0;
    std::fill(acc, acc + 3 * n, T(0));
    for (int64_t i = 0; i < s.p; ++i) {
      T* g = G + i * n;
      const T *prev = previous + i * n, *cur = current + i * n;
      const T gyi = gy[i], input = step * xt[i];
      T through_B = 0;
#pragma omp simd reduction(+ : through_B)
      for (int64_t j = 0; j < n; ++j) {
        const T gij = g[j] + gyi * Ct[j];  // dL/dS_t
        acc_C[j] += gyi * cur[j];
        acc_B[j] += gij * input;
        acc_decay[j] += gij * prev[j];
        through_B += gij * Bt[j];
        g[j] = decay * gij;
      }
      dxt[i] = step * through_B + D_h[i] * gyi;
      dD_h[i] += gyi * xt[i];
      ddt += xt[i] * through_B;
    }
    T through_decay = 0;
#pragma omp simd reduction(+ : through_decay)
    for (int64_t j = 0; j < n; ++j) {
      dBt[j] += acc_B[j];
      dCt[j] += acc_C[j];
      through_decay += acc_decay[j];
    }
    // decay = exp(dt A): dL/d(dt) gains A decay sum(G_t * S_{t-1}), dL/dA gains dt decay sum(...).
    out.ddt[(view.b * s.length + t) * s.heads + view.h] = (ddt + A_h * decay * through_decay) * slopes[t - first];
    dA += step * decay * through_decay;
  }
}

template <typename T, int64_t N>
void scan_backward(const at::Tensor& x, const at::Tensor& dt, const at::Tensor& A, const at::Tensor& B,
                   const at::Tensor& C, const at::Tensor& D, const HeadSteps<T>& rules, const at::Tensor& initial,
                   const at::Tensor& grad_y,
                   const at::Tensor& grad_final, at::Tensor& dx, at::Tensor& ddt, at::Tensor& dA, at::Tensor& dB,
                   at::Tensor& dC, at::Tensor& dD, at::Tensor& dinitial) {
  const auto s = shape_of(x, B);
  const int64_t splits = dB.size(0), per_group = s.heads_per_group();
  const int64_t per_split = (per_group + splits - 1) / splits, group_stride = s.length * s.groups * s.n;
  const Gradients<T> out{dx.data_ptr<T>(), ddt.data_ptr<T>(), dA.data_ptr<T>(), dB.data_ptr<T>(),
                         dC.data_ptr<T>(), dD.data_ptr<T>(), dinitial.data_ptr<T>()};
  const T *A_p = A.data_ptr<T>(), *D_p = D.data_ptr<T>(), *init_p = initial.data_ptr<T>();
  const T *gy_p = grad_y.data_ptr<T>(), *gf_p = grad_final.data_ptr<T>();
  // Task (split, b, g) owns the group-g columns of dB[split, b] and dC[split, b]: no two tasks write
  // the same memory.
  const int64_t size = s.state_size(), chunks = (s.length + kChunk - 1) / kChunk;
  at::parallel_for(0, splits * s.batch * s.groups, 1, [&](int64_t begin, int64_t end) {
    const FlushDenormals flush;
    // Per head of a task: its states at every chunk start, its adjoint, its dA.
    std::vector<T> starts(per_split * chunks * size), adjoints(per_split * size), dA_heads(per_split);
    std::vector<T> states((kChunk + 1) * size), scratch(3 * s.n);
    T chunk_steps[kChunk];
    for (int64_t task = begin; task < end; ++task) {
      const int64_t split = task / (s.batch * s.groups), b = (task / s.groups) % s.batch, g = task % s.groups;
      T* dB_bg = out.dB + (split * s.batch + b) * group_stride + g * s.n;
      T* dC_bg = out.dC + (split * s.batch + b) * group_stride + g * s.n;
      const int64_t head0 = g * per_group + split * per_split;
      const int64_t count = std::max<int64_t>(0, std::min(per_group - split * per_split, per_split));
      auto view_of = [&](int64_t k) {
        return HeadView<T>{s, x.data_ptr<T>(), dt.data_ptr<T>(), B.data_ptr<T>(), C.data_ptr<T>(),
                           b, head0 + k,       rules.bias[head0 + k], rules.rule};
      };
      // Chunk by chunk over the task's heads (see scan_forward): first the chunk-start states...
      for (int64_t k = 0; k < count; ++k) {
        const int64_t pair = b * s.heads + head0 + k;
        std::copy(init_p + pair * size, init_p + (pair + 1) * size, adjoints.data() + k * size);
      }
      for (int64_t c = 0; c < chunks; ++c) {
        for (int64_t k = 0; k < count; ++k) {
          const auto view = view_of(k);
          T* S = adjoints.data() + k * size;  // borrowed as the running state
          std::copy(S, S + size, starts.data() + (k * chunks + c) * size);
          const T A_h = A_p[view.h];
          const int64_t first = c * kChunk, stop = std::min(s.length, first + kChunk);
          view.steps(first, stop, chunk_steps);
          for (int64_t t = first; t < stop; ++t)
            advance(S, view.x_at(t), view.B_at(t), std::exp(chunk_steps[t - first] * A_h), chunk_steps[t - first], s.p,
                    s.n);
        }
      }
      // ...then the reverse sweep, last chunk first.
      for (int64_t k = 0; k < count; ++k) {
        const int64_t pair = b * s.heads + head0 + k;
        std::copy(gf_p + pair * size, gf_p + (pair + 1) * size, adjoints.data() + k * size);
        std::fill(out.dD + pair * s.p, out.dD + (pair + 1) * s.p, T(0));  // this task's heads alone
        dA_heads[k] = 0;
      }
      for (int64_t c = chunks - 1; c >= 0; --c) {
        // The chunk's rows of dB and dC start from zero here, not all at once, so they are in cache.
        for (int64_t t = c * kChunk; t < std::min(s.length, (c + 1) * kChunk); ++t) {
          std::fill(dB_bg + t * s.groups * s.n, dB_bg + t * s.groups * s.n + s.n, T(0));
          std::fill(dC_bg + t * s.groups * s.n, dC_bg + t * s.groups * s.n + s.n, T(0));
        }
        for (int64_t k = 0; k < count; ++k) {
          const auto view = view_of(k);
          chunk_backward<T, N>(view, A_p[view.h], D_p + view.h * s.p, c * kChunk, std::min(s.length, (c + 1) * kChunk),
                               starts.data() + (k * chunks + c) * size, gy_p, out, dB_bg, dC_bg, states,
                               adjoints.data() + k * size, dA_heads[k], out.dD + (b * s.heads + view.h) * s.p,
                               scratch.data());
        }
      }
      for (int64_t k = 0; k < count; ++k) {
        const int64_t pair = b * s.heads + head0 + k;
        out.dA[pair] = dA_heads[k];
        std::copy(adjoints.data() + k * size, adjoints.data() + (k + 1) * size, out.dinitial + pair * size);
      }
    }
  });
}

// scan_backward with the state size as a compile-time constant for the common sizes.
template <typename T>
void scan_backward_any(const at::Tensor& x, const at::Tensor& dt, const at::Tensor& A, const at::Tensor& B,
                       const at::Tensor& C, const at::Tensor& D, const HeadSteps<T>& rules, const at::Tensor& initial,
                       const at::Tensor& grad_y,
                       const at::Tensor& grad_final, at::Tensor& dx, at::Tensor& ddt, at::Tensor& dA, at::Tensor& dB,
                       at::Tensor& dC, at::Tensor& dD, at::Tensor& dinitial) {
  with_size<16, 32, 64, 128>(B.size(3), [&](auto n) {
    scan_backward<T, decltype(n)::held>(x, dt, A, B, C, D, rules, initial, grad_y, grad_final, dx, ddt, dA, dB, dC, dD,
                                        dinitial);
  });
}

void check(const at::Tensor& x, const at::Tensor& dt, const at::Tensor& A, const at::Tensor& B, const at::Tensor& C,
           const at::Tensor& D, const at::Tensor& bias, const at::Tensor& initial) {
  for (const at::Tensor* t : {&x, &dt, &A, &B, &C, &D, &bias, &initial}) {
    TORCH_CHECK(t->device().is_cpu() && t->is_contiguous() && t->scalar_type() == x.scalar_type(),
                "ssd_scan_cpu: inputs must be contiguous CPU tensors of one dtype");
  }
  TORCH_CHECK(x.dim() == 4 && dt.dim() == 3 && dt.size(0) == x.size(0) && dt.size(1) == x.size(1) &&
                  dt.size(2) == x.size(2) && A.dim() == 1 && A.size(0) == x.size(2) && bias.sizes() == A.sizes(),
              "ssd_scan_cpu: x (b, l, h, p), dt (b, l, h), A and the dt bias (h,) expected");
  TORCH_CHECK(B.dim() == 4 && B.sizes() == C.sizes() && B.size(0) == x.size(0) && B.size(1) == x.size(1) &&
                  x.size(2) % B.size(2) == 0,
              "ssd_scan_cpu: B, C (b, l, g, n) expected");
  TORCH_CHECK(D.sizes() == at::IntArrayRef({x.size(2), x.size(3)}), "ssd_scan_cpu: D (h, p) expected");
  TORCH_CHECK(initial.sizes() == at::IntArrayRef({x.size(0), x.size(2), x.size(3), B.size(3)}),
              "ssd_scan_cpu: initial state (b, h, p, n) expected");
}

// dt is the raw input: the kernel forms each step as clamp(softplus?(dt + bias), lo, hi) itself; lo and hi
// must be finite (step_size.h).
std::vector<at::Tensor> forward(const at::Tensor& x, const at::Tensor& dt, const at::Tensor& A, const at::Tensor& B,
                                const at::Tensor& C, const at::Tensor& D, const at::Tensor& bias, bool softplus,
                                double lo, double hi, const at::Tensor& initial) {
  check(x, dt, A, B, C, D, bias, initial);
  auto y = at::empty_like(x);
  auto final_state = at::empty_like(initial);
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "ssd_scan_cpu_forward", [&] {
    const HeadSteps<scalar_t> rules{bias.data_ptr<scalar_t>(), {softplus, scalar_t(lo), scalar_t(hi)}};
    scan_forward_any<scalar_t>(x, dt, A, B, C, D, rules, initial, y, final_state);
  });
  return {y, final_state};
}

// Returns dx, the raw dt's gradient, dA per batch (b, h), dB and dC per split of each group's heads
// (splits, b, l, g, n), dD per batch (b, h, p) and the initial state's gradient; the caller sums over
// batch and splits (and the bias's gradient).
std::vector<at::Tensor> backward(const at::Tensor& x, const at::Tensor& dt, const at::Tensor& A, const at::Tensor& B,
                                 const at::Tensor& C, const at::Tensor& D, const at::Tensor& bias, bool softplus,
                                 double lo, double hi, const at::Tensor& initial, const at::Tensor& grad_y,
                                 const at::Tensor& grad_final, int64_t splits) {
  check(x, dt, A, B, C, D, bias, initial);
  TORCH_CHECK(grad_y.sizes() == x.sizes() && grad_y.is_contiguous() && grad_final.sizes() == initial.sizes() &&
                  grad_final.is_contiguous(),
              "ssd_scan_cpu: gradients of y (b, l, h, p) and of the final state (b, h, p, n) expected");
  TORCH_CHECK(splits >= 1 && splits <= x.size(2) / B.size(2), "ssd_scan_cpu: splits out of range");
  auto dx = at::empty_like(x), ddt = at::empty_like(dt), dinitial = at::empty_like(initial);
  auto dA = at::empty({x.size(0), x.size(2)}, x.options());
  auto dB = at::empty({splits, B.size(0), B.size(1), B.size(2), B.size(3)}, x.options());
  auto dC = at::empty_like(dB);
  auto dD = at::empty({x.size(0), x.size(2), x.size(3)}, x.options());
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "ssd_scan_cpu_backward", [&] {
    const HeadSteps<scalar_t> rules{bias.data_ptr<scalar_t>(), {softplus, scalar_t(lo), scalar_t(hi)}};
    scan_backward_any<scalar_t>(x, dt, A, B, C, D, rules, initial, grad_y, grad_final, dx, ddt, dA, dB, dC, dD,
                                dinitial);
  });
  return {dx, ddt, dA, dB, dC, dD, dinitial};
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("forward", &forward, "SSD scan forward: (y, final state)");
  m.def("backward", &backward, "SSD scan backward: (dx, ddt, dA, dB, dC, dD, dinitial)");
}
