// Mamba's selective scan as one fused CPU loop per channel (Gu & Dao 2023, "Mamba", eq. 2a-2b).
//
// Built on first use by blocks/ssm/cpu_kernel.py (on by default; SEQREC_ZOO_CPU_KERNEL=0 turns it off). The
// recurrence, delta's bias and softplus, the skip term D u and the optional z gate all live here.
//
// For batch b and channel d (in group g = d / (dim / groups)), with state h of size n and the step
// delta_t = softplus(raw_t + bias[d]) (or raw_t + bias[d] without softplus), raw being the input delta:
//
//     h_t = exp(delta_t * A[d]) * h_{t-1} + delta_t * u_t * B[b, g, :, t]        h_{-1} = 0
//     y_t = <C[b, g, :, t], h_t> + D[d] * u_t
//     out_t = y_t * silu(z_t)        (with a gate z; out_t = y_t without one)
//
// Layouts: u, delta, z, y: (batch, dim, length); A: (dim, n); bias, D: (dim,); last state: (batch, dim, n),
// all contiguous; B, C: (batch, groups, n, length) with any strides, read in place (a contiguous
// time-last tensor and the Mamba layer's strided slice of its x_proj output alike); their gradients
// come out contiguous in that shape.
//
// Each (b, d) pair is an independent recurrence over time, vectorised over the n states; pairs run
// on the intra-op threads, each thread going chunk by chunk through time over all of its channels
// that share one B and C: a chunk of B and C is copied once into a small position-major tile that
// every channel of the group then reads from cache.
// The backward pass is the reverse-time adjoint recurrence
//
//     g_t = C_t * dy_t + exp(delta_{t+1} A) * g_{t+1}        (g_{L-1} also gets the last state's gradient)
//
// from which every input gradient follows position by position (with a gate, dy_t = dout_t * silu(z_t) and
// dz_t = dout_t * y_t * silu'(z_t), y_t kept by the forward pass). It needs h_{t-1} at every t: the
// forward pass, when gradients will be wanted, keeps the state at each chunk start (kChunk positions),
// and each chunk's states are recomputed into a small buffer just before the reverse sweep walks
// through it, so the memory per channel is O(n * length / kChunk) plus one O(n * kChunk) buffer per
// thread, never O(length * n), and the backward reads its inputs once.

#include <torch/extension.h>

#include <ATen/Parallel.h>

#include "flush_denormals.h"

#include "group_runs.h"
#include "scan_steps.h"
#include "silu.h"
#include "fixed_size.h"
#include "step_size.h"

#include <algorithm>
#include <cmath>
#include <vector>

namespace {

constexpr int64_t kChunk = 64;

struct ScanShape {
  int64_t batch, dim, length, n, groups;
  int64_t heads() const { return dim / groups; }
};

ScanShape shape_of(const at::Tensor& u, const at::Tensor& A, const at::Tensor& B) {  // B: (b, g, n, l)
  return {u.size(0), u.size(1), u.size(2), A.size(1), B.size(1)};
}

// B or C (or a gradient of theirs) as (batch, groups, n, length) with its strides.
template <typename T>
struct StateInput {
  T* data;
  int64_t batch_stride, group_stride, state_stride, time_stride;

  explicit StateInput(const at::Tensor& t)
      : data(t.data_ptr<T>()), batch_stride(t.stride(0)), group_stride(t.stride(1)), state_stride(t.stride(2)),
        time_stride(t.stride(3)) {}

  T* at(int64_t b, int64_t g) const { return data + b * batch_stride + g * group_stride; }

  // tile[(t - first) * n + j] = this[b, g, j, t] for t in [first, stop): one chunk, position-major.
  void gather(int64_t b, int64_t g, int64_t first, int64_t stop, int64_t n, T* __restrict tile) const {
    const T* bg = at(b, g);
    for (int64_t j = 0; j < n; ++j)
      for (int64_t t = first; t < stop; ++t) tile[(t - first) * n + j] = bg[j * state_stride + t * time_stride];
  }

  // this[b, g, j, t] = tile[(t - first) * n + j]: the inverse of gather.
  void scatter(int64_t b, int64_t g, int64_t first, int64_t stop, int64_t n, const T* __restrict tile) const {
    T* bg = at(b, g);
    for (int64_t j = 0; j < n; ++j)
      for (int64_t t = first; t < stop; ++t) bg[j * state_stride + t * time_stride] = tile[(t - first) * n + j];
  }
};

// The steps of channel positions [first, stop): out[t - first] = delta_t from the raw input delta,
// vectorised over time.
template <typename T>
inline void discretize(const T* __restrict raw, T bias, const StepSize<T>& step, int64_t first, int64_t stop,
                       T* __restrict out) {
#pragma omp simd
  for (int64_t t = first; t < stop; ++t) out[t - first] = step(raw[t] + bias);
}

// grad[t] *= d delta_t / d raw_t over [first, stop).
template <typename T>
inline void chain_through_step(const T* __restrict raw, T bias, const StepSize<T>& step, int64_t first, int64_t stop,
                               T* __restrict grad) {
#pragma omp simd
  for (int64_t t = first; t < stop; ++t) grad[t] *= step.slope(raw[t] + bias);
}

// out[t] = y[t] * silu(z[t]) over [first, stop).
template <typename T>
inline void gate(const T* __restrict y, const T* __restrict z, int64_t first, int64_t stop, T* __restrict out) {
#pragma omp simd
  for (int64_t t = first; t < stop; ++t) out[t] = y[t] * silu(z[t]);
}

// Through the gate over [first, stop): dy[t - first] = dout[t] silu(z[t]), dz[t] = dout[t] y[t] silu'(z[t]).
template <typename T>
inline void ungate(const T* __restrict dout, const T* __restrict y, const T* __restrict z, int64_t first, int64_t stop,
                   T* __restrict dy, T* __restrict dz) {
#pragma omp simd
  for (int64_t t = first; t < stop; ++t) {
    dy[t - first] = dout[t] * silu(z[t]);
    dz[t] = dout[t] * y[t] * silu_slope(z[t]);
  }
}

// One chunk [first, stop) of channel (b, d): its state h (n values at h_home, h_{first-1} in, h_{stop-1} out)
// through the chunk's steps, and y_t = <C_t, h_t> + D u_t. B, C: the chunk's tiles of the channel's group
// (position-major, see StateInput::gather); steps[t - first] = delta_t.
template <typename T, typename States>
void chunk_forward(States states, int64_t first, int64_t stop, const T* rate_home, const T* B, const T* C,
                   const T* steps, const T* u, T D, T* y, T* h_home) {
  Held<const T, States> rate(states, rate_home);
  Held<T, States> h(states, h_home);
  const int64_t n = states.n;
  for (int64_t t = first; t < stop; ++t) {
    const T dt = steps[t - first];
    advance(h.get(), rate.get(), B + (t - first) * n, dt, dt * u[t], n);
    y[t] = dot(h.get(), C + (t - first) * n, n) + D * u[t];
  }
}

template <typename T, typename States>
void scan_forward(States states, const at::Tensor& u, const at::Tensor& delta, const at::Tensor& rates, const at::Tensor& B,
                  const at::Tensor& C, const at::Tensor& D, const at::Tensor& bias, const at::Tensor& z, bool softplus,
                  at::Tensor& y, at::Tensor& gated, at::Tensor& last, at::Tensor& starts) {
  const auto s = shape_of(u, rates, B);
  const int64_t chunks = (s.length + kChunk - 1) / kChunk;
  T* starts_p = starts.numel() ? starts.data_ptr<T>() : nullptr;
  const T *u_p = u.data_ptr<T>(), *delta_p = delta.data_ptr<T>(), *rate_p = rates.data_ptr<T>(), *bias_p = bias.data_ptr<T>();
  const T* D_p = D.data_ptr<T>();
  const StateInput<T> B_in(B), C_in(C);
  T *y_p = y.data_ptr<T>(), *last_p = last.data_ptr<T>();
  const T* z_p = z.numel() ? z.data_ptr<T>() : nullptr;
  T* gated_p = z.numel() ? gated.data_ptr<T>() : nullptr;
  at::parallel_for(0, s.batch * s.dim, 1, [&](int64_t begin, int64_t end) {
    const FlushDenormals flush;
    std::fill(last_p + begin * s.n, last_p + end * s.n, T(0));
    T steps[kChunk];
    std::vector<T> B_tile(kChunk * s.n), C_tile(kChunk * s.n);
    // Chunk by chunk over the channels of one (b, g): a chunk of B and C stays in cache while every
    // channel of the group reads it (walking each channel through all of time evicts them at long lengths).
    for_each_group_run(s.heads(), begin, end, [&](int64_t first_pair, int64_t stop_pair) {
      const int64_t b = first_pair / s.dim, g = (first_pair % s.dim) / s.heads();
      for (int64_t first = 0; first < s.length; first += kChunk) {
        const int64_t stop = std::min(s.length, first + kChunk);
        B_in.gather(b, g, first, stop, s.n, B_tile.data());
        C_in.gather(b, g, first, stop, s.n, C_tile.data());
        for (int64_t pair = first_pair; pair < stop_pair; ++pair) {
          const T* u_bd = u_p + pair * s.length;
          const int64_t d = pair % s.dim;
          const T* rate_d = rate_p + d * s.n;
          T* y_bd = y_p + pair * s.length;
          T* h = last_p + pair * s.n;
          if (starts_p) std::copy(h, h + s.n, starts_p + (pair * chunks + first / kChunk) * s.n);
          discretize(delta_p + pair * s.length, bias_p[d], StepSize<T>::unclamped_rule(softplus), first, stop, steps);
          chunk_forward(states, first, stop, rate_d, B_tile.data(), C_tile.data(), steps, u_bd, D_p[d], y_bd, h);
          if (z_p) gate(y_bd, z_p + pair * s.length, first, stop, gated_p + pair * s.length);
        }
      }
    });
  });
}

// One chunk [first, stop) of channel (b, d), in reverse: recompute its states from `start` (h_{first-1})
// into `states` and their decays into `decays` (one exp per state and step for the whole backward), then
// walk back carrying the adjoint g (dL/dh_t, updated in place), writing du and the raw delta's gradient
// and adding to dA, dD and the bias's gradient dbias. B, C are the chunk's tiles of the channel's group
// (position-major, see StateInput::gather) and dB / dC the task's accumulators in the same layout.
template <typename T, typename States>
void chunk_backward(States state_count, int64_t first, int64_t stop, const T* u, const T* raw_delta, T bias,
                    const StepSize<T>& step, const T* rate_home, const T* B, const T* C, T D, const T* grad_out,
                    const T* y, const T* z, T* dz, const T* start, T* du, T* ddelta, T* dA_home, T* dB, T* dC,
                    T& dD, T& dbias, std::vector<T>& states, std::vector<T>& decays, T* g_home) {
  const int64_t n = state_count.n;
  Held<const T, States> rate_held(state_count, rate_home);
  Held<T, States> dA_held(state_count, dA_home), g_held(state_count, g_home);
  const T* rate = rate_held.get();
  T *dA = dA_held.get(), *g = g_held.get();
  T steps[kChunk], grad_y[kChunk];  // grad_y[t - first]: dL/dy_t, before the gate
  discretize(raw_delta, bias, step, first, stop, steps);
  if (z) {
    ungate(grad_out, y, z, first, stop, grad_y, dz);
  } else {
    std::copy(grad_out + first, grad_out + stop, grad_y);
  }
  std::copy(start, start + n, states.data());
  for (int64_t t = first; t < stop; ++t) {  // the states and each step's decay exp(delta_t A), kept for the sweep
    const T* previous = states.data() + (t - first) * n;
    const T dt = steps[t - first];
    advance_from<true>(states.data() + (t - first + 1) * n, previous, decays.data() + (t - first) * n, rate,
                       B + (t - first) * n, dt, dt * u[t], n);
  }
  for (int64_t t = stop - 1; t >= first; --t) {
    const T dt = steps[t - first], ut = u[t], gy = grad_y[t - first];
    const T* previous = states.data() + (t - first) * n;  // h_{t-1}
    const T* current = previous + n;                      // h_t
    const T *Bt = B + (t - first) * n, *Ct = C + (t - first) * n;
    T *dBt = dB + (t - first) * n, *dCt = dC + (t - first) * n;
    T through_B = 0, through_decay = 0;
#pragma omp simd reduction(+ : through_B, through_decay)
    for (int64_t i = 0; i < n; ++i) {
      const T gi = g[i] + gy * Ct[i];
      const T decay = decays[(t - first) * n + i];
      const T w = gi * decay * previous[i];  // dL/d(dt * A[i])
      dCt[i] += gy * current[i];
      dBt[i] += gi * dt * ut;
      dA[i] += w * dt;
      through_decay += w * rate[i];  // ln 2 * sum_i w A[i] after the loop
      through_B += gi * Bt[i];
      g[i] = decay * gi;
    }
    du[t] = dt * through_B + D * gy;
    dD += gy * ut;
    ddelta[t] = ut * through_B + T(kLn2) * through_decay;
  }
  chain_through_step(raw_delta, bias, step, first, stop, ddelta);
  T chunk_sum = 0;  // the raw delta's gradient is the bias's, position by position
#pragma omp simd reduction(+ : chunk_sum)
  for (int64_t t = first; t < stop; ++t) chunk_sum += ddelta[t];
  dbias += chunk_sum;
}

template <typename T, typename States>
void scan_backward(States state_count,
                   const at::Tensor& u, const at::Tensor& delta, const at::Tensor& rates, const at::Tensor& B,
                   const at::Tensor& C, const at::Tensor& D, const at::Tensor& bias, const at::Tensor& z,
                   const at::Tensor& y, bool softplus, const at::Tensor& starts, const at::Tensor& grad_out,
                   const at::Tensor& grad_last, at::Tensor& du, at::Tensor& ddelta, at::Tensor& dz, at::Tensor& dA,
                   at::Tensor& dB, at::Tensor& dC, at::Tensor& dD, at::Tensor& dbias) {
  const auto s = shape_of(u, rates, B);
  const int64_t splits = dB.size(0), heads = s.heads(), n = s.n;
  const int64_t per_split = (heads + splits - 1) / splits, chunks = (s.length + kChunk - 1) / kChunk;
  const T *u_p = u.data_ptr<T>(), *delta_p = delta.data_ptr<T>(), *rate_p = rates.data_ptr<T>(), *bias_p = bias.data_ptr<T>();
  const T* D_p = D.data_ptr<T>();
  const T *gout_p = grad_out.data_ptr<T>(), *gl_p = grad_last.data_ptr<T>(), *starts_p = starts.data_ptr<T>();
  const bool gated = z.numel() > 0;
  const T *z_p = gated ? z.data_ptr<T>() : nullptr, *y_p = gated ? y.data_ptr<T>() : nullptr;
  T* dz_p = gated ? dz.data_ptr<T>() : nullptr;
  T *du_p = du.data_ptr<T>(), *ddelta_p = ddelta.data_ptr<T>(), *dA_p = dA.data_ptr<T>(), *dD_p = dD.data_ptr<T>();
  T* dbias_p = dbias.data_ptr<T>();
  const StateInput<T> B_in(B), C_in(C);
  // dB, dC: (splits, b, g, n, l), viewed as (splits * b, g, n, l).
  const StateInput<T> dB_out(dB.flatten(0, 1)), dC_out(dC.flatten(0, 1));
  // Task (split, b, g) owns dB[split, b, g] and dC[split, b, g]: no two tasks write the same memory.
  at::parallel_for(0, splits * s.batch * s.groups, 1, [&](int64_t begin, int64_t end) {
    const FlushDenormals flush;
    // Per channel of a task: its adjoint.
    std::vector<T> adjoints(per_split * n), states((kChunk + 1) * n), decays(kChunk * n);
    std::vector<T> B_tile(kChunk * n), C_tile(kChunk * n), dB_tile(kChunk * n), dC_tile(kChunk * n);
    for (int64_t task = begin; task < end; ++task) {
      const int64_t split = task / (s.batch * s.groups), bg = task % (s.batch * s.groups);
      const int64_t b = bg / s.groups, g = bg % s.groups, b_out = split * s.batch + b;
      const int64_t d0 = g * heads + split * per_split;
      const int64_t count = std::max<int64_t>(0, std::min(heads - split * per_split, per_split));
      const int64_t pair0 = b * s.dim + d0;
      // The reverse sweep, newest chunk first, each chunk's states recomputed from the start the forward kept.
      std::copy(gl_p + pair0 * n, gl_p + (pair0 + count) * n, adjoints.data());
      std::fill(dA_p + pair0 * n, dA_p + (pair0 + count) * n, T(0));
      std::fill(dD_p + pair0, dD_p + pair0 + count, T(0));
      std::fill(dbias_p + pair0, dbias_p + pair0 + count, T(0));
      for (int64_t c = chunks - 1; c >= 0; --c) {
        const int64_t first = c * kChunk, stop = std::min(s.length, first + kChunk);
        B_in.gather(b, g, first, stop, n, B_tile.data());
        C_in.gather(b, g, first, stop, n, C_tile.data());
        std::fill(dB_tile.begin(), dB_tile.end(), T(0));
        std::fill(dC_tile.begin(), dC_tile.end(), T(0));
        for (int64_t k = 0; k < count; ++k) {
          const int64_t pair = pair0 + k, offset_l = pair * s.length;
          chunk_backward<T>(state_count, first, stop, u_p + offset_l, delta_p + offset_l, bias_p[d0 + k],
                            StepSize<T>::unclamped_rule(softplus), rate_p + (d0 + k) * n, B_tile.data(), C_tile.data(), D_p[d0 + k],
                            gout_p + offset_l, gated ? y_p + offset_l : nullptr, gated ? z_p + offset_l : nullptr,
                            gated ? dz_p + offset_l : nullptr, starts_p + (pair * chunks + c) * n, du_p + offset_l,
                            ddelta_p + offset_l, dA_p + pair * n, dB_tile.data(), dC_tile.data(), dD_p[pair], dbias_p[pair], states,
                            decays, adjoints.data() + k * n);
        }
        dB_out.scatter(b_out, g, first, stop, n, dB_tile.data());  // every chunk, so a split with no
        dC_out.scatter(b_out, g, first, stop, n, dC_tile.data());  // channels still writes its zeros
      }
    }
  });
}

void check(const at::Tensor& u, const at::Tensor& delta, const at::Tensor& A, const at::Tensor& B,
           const at::Tensor& C, const at::Tensor& D, const at::Tensor& bias) {
  for (const at::Tensor* t : {&u, &delta, &A, &B, &C, &D, &bias}) {
    TORCH_CHECK(t->device().is_cpu() && t->scalar_type() == u.scalar_type(),
                "selective_scan_cpu: inputs must be CPU tensors of one dtype");
  }
  for (const at::Tensor* t : {&u, &delta, &A, &D, &bias})
    TORCH_CHECK(t->is_contiguous(), "selective_scan_cpu: u, delta, A, D and the bias must be contiguous");
  TORCH_CHECK(u.dim() == 3 && delta.sizes() == u.sizes() && A.dim() == 2 && A.size(0) == u.size(1),
              "selective_scan_cpu: u, delta (b, d, l) and A (d, n) expected");
  TORCH_CHECK(D.dim() == 1 && D.size(0) == u.size(1) && bias.dim() == 1 && bias.size(0) == u.size(1),
              "selective_scan_cpu: D and the delta bias (d,) expected");
  TORCH_CHECK(B.dim() == 4 && B.sizes() == C.sizes() && B.size(0) == u.size(0) && B.size(2) == A.size(1) &&
                  B.size(3) == u.size(2) && u.size(1) % B.size(1) == 0,
              "selective_scan_cpu: B, C (b, g, n, l) expected");
}

// z: the gate (b, d, l), or an empty tensor for none.
void check_gate(const at::Tensor& u, const at::Tensor& z) {
  TORCH_CHECK(z.numel() == 0 || (z.sizes() == u.sizes() && z.is_contiguous() && z.scalar_type() == u.scalar_type() &&
                                 z.device().is_cpu()),
              "selective_scan_cpu: the gate z (b, d, l), contiguous, or an empty tensor expected");
}

// Returns the output (gated when z is given), the last state, the chunk-start states (empty unless
// keep_starts) and y before the gate (what the backward pass needs with a gate; empty otherwise).
std::vector<at::Tensor> forward(const at::Tensor& u, const at::Tensor& delta, const at::Tensor& A,
                                const at::Tensor& B, const at::Tensor& C, const at::Tensor& D, const at::Tensor& bias,
                                const at::Tensor& z, bool softplus, bool keep_starts) {
  check(u, delta, A, B, C, D, bias);
  check_gate(u, z);
  auto y = at::empty_like(u);
  auto gated = z.numel() ? at::empty_like(u) : at::empty({0}, u.options());
  auto last = at::empty({u.size(0), u.size(1), A.size(1)}, u.options());
  const int64_t chunks = keep_starts ? (u.size(2) + kChunk - 1) / kChunk : 0;
  auto starts = at::empty({u.size(0), u.size(1), chunks, A.size(1)}, u.options());
  const auto rates = decay_rates(A);
  AT_DISPATCH_FLOATING_TYPES(u.scalar_type(), "selective_scan_cpu_forward", [&] {
    with_size<16, 32, 64>(A.size(1), [&](auto states) {
      scan_forward<scalar_t>(states, u, delta, rates, B, C, D, bias, z, softplus, y, gated, last, starts);
    });
  });
  if (!z.numel()) return {y, last, starts, at::empty({0}, u.options())};
  return {gated, last, starts, keep_starts ? y : at::empty({0}, u.options())};
}

// Returns du, the raw delta's gradient, dz (empty without a gate), dA per batch (b, d, n), dB, dC per split
// of each group's channels (splits, b, g, n, l), dD and the bias's gradient per batch (b, d); the caller sums over
// batch and splits. y: the pre-gate output the forward pass returned (with a gate).
std::vector<at::Tensor> backward(const at::Tensor& u, const at::Tensor& delta, const at::Tensor& A,
                                 const at::Tensor& B, const at::Tensor& C, const at::Tensor& D, const at::Tensor& bias,
                                 const at::Tensor& z, const at::Tensor& y, bool softplus, const at::Tensor& starts,
                                 const at::Tensor& grad_out, const at::Tensor& grad_last, int64_t splits) {
  check(u, delta, A, B, C, D, bias);
  check_gate(u, z);
  TORCH_CHECK(z.numel() == 0 || (y.sizes() == u.sizes() && y.is_contiguous() && y.scalar_type() == u.scalar_type()),
              "selective_scan_cpu: with a gate, the pre-gate output y (b, d, l) kept by forward expected");
  const int64_t chunks = (u.size(2) + kChunk - 1) / kChunk;
  TORCH_CHECK(starts.is_contiguous() && starts.sizes() == at::IntArrayRef({u.size(0), u.size(1), chunks, A.size(1)}),
              "selective_scan_cpu: the chunk-start states kept by forward (b, d, chunks, n) expected");
  TORCH_CHECK(grad_out.sizes() == u.sizes() && grad_out.is_contiguous() && grad_last.is_contiguous() &&
                  grad_last.sizes() == at::IntArrayRef({u.size(0), u.size(1), A.size(1)}),
              "selective_scan_cpu: gradients of the output (b, d, l) and of the last state (b, d, n) expected");
  TORCH_CHECK(splits >= 1 && splits <= u.size(1) / B.size(1), "selective_scan_cpu: splits out of range");
  auto du = at::empty_like(u), ddelta = at::empty_like(u);
  auto dz = z.numel() ? at::empty_like(u) : at::empty({0}, u.options());
  auto dA = at::empty({u.size(0), u.size(1), A.size(1)}, u.options());
  auto dB = at::empty({splits, B.size(0), B.size(1), B.size(2), B.size(3)}, u.options());
  auto dC = at::empty_like(dB);
  auto dD = at::empty({u.size(0), u.size(1)}, u.options()), dbias = at::empty_like(dD);
  const auto rates = decay_rates(A);
  AT_DISPATCH_FLOATING_TYPES(u.scalar_type(), "selective_scan_cpu_backward", [&] {
    with_size<16, 32, 64>(A.size(1), [&](auto states) {
      scan_backward<scalar_t>(states, u, delta, rates, B, C, D, bias, z, y, softplus, starts, grad_out, grad_last, du,
                              ddelta, dz, dA, dB, dC, dD, dbias);
    });
  });
  return {du, ddelta, dz, dA, dB, dC, dD, dbias};
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("forward", &forward, "selective scan forward: (output, last state, chunk-start states, pre-gate y)");
  m.def("backward", &backward, "selective scan backward: (du, ddelta, dz, dA, dB, dC, dD, dbias)");
}
