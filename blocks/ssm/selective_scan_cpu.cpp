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
// The raw step comes either whole, delta (batch, dim, length), or in the Mamba layer's low-rank form
//
//     raw[b, d, t] = sum_r weight[d, r] * low[b, r, t]        (dt_proj of x_proj's dt, rank R = 4 at D = 64)
//
// formed here a chunk at a time, so the (batch, dim, length) step is never written, nor its gradient: the kernel
// returns the gradients of low and weight instead. An optional 0/1 `valid` (batch, length) zeroes the step where
// it is 0 (a padded position: no decay, no input) and the raw step's gradient with it.
//
// Layouts: u, z and the output's gradient: (batch, dim, length) with any strides, the output and du in u's layout
// and dz in z's (the Mamba layer's time-major projections are read and written in place, a block at a time through
// a small buffer: strided_block.h); delta, y before the gate: (batch, dim, length); A: (dim, n); bias, D: (dim,);
// last state: (batch, dim, n); weight: (dim, R); valid: (batch, length), all contiguous; B, C: (batch, groups, n,
// length) and low (batch, R, length) with any strides, read in place (a contiguous time-last tensor and the Mamba
// layer's strided slices of its x_proj output alike); their gradients come out contiguous in those shapes.
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
#include "strided_block.h"

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

// out[i] += a * x[i] over count values.
template <typename T>
inline void multiply_add(T* __restrict out, T a, const T* __restrict x, int64_t count) {
#pragma omp simd
  for (int64_t i = 0; i < count; ++i) out[i] += a * x[i];
}

// The raw step of one channel: whole from a (batch, dim, length) tensor, or formed from the low-rank input and the
// channel's weights (see the top of the file), one chunk at a time.
template <typename T>
struct RawSteps {
  const T* whole;   // (batch, dim, length), or null for the low-rank form
  const T* low;     // (batch, R, length), any strides
  int64_t low_batch_stride, low_rank_stride, low_time_stride, rank;
  const T* weight;  // (dim, R)
  const T* valid;   // (batch, length), or null: every step kept
  int64_t dim, length;

  RawSteps(const at::Tensor& delta, const at::Tensor& weight_, const at::Tensor& valid_)
      : whole(weight_.numel() ? nullptr : delta.data_ptr<T>()),
        low(weight_.numel() ? delta.data_ptr<T>() : nullptr),
        low_batch_stride(delta.stride(0)), low_rank_stride(delta.stride(1)), low_time_stride(delta.stride(2)),
        rank(weight_.numel() ? weight_.size(1) : 0), weight(weight_.numel() ? weight_.data_ptr<T>() : nullptr),
        valid(valid_.numel() ? valid_.data_ptr<T>() : nullptr), dim(weight_.numel() ? weight_.size(0) : delta.size(1)),
        length(delta.size(2)) {}

  // The low-rank input of sequence b over [first, stop) as tile[r * kChunk + t - first] (one row per rank, so a
  // channel's loop over time reads it contiguously); nothing for a whole step.
  void gather(int64_t b, int64_t first, int64_t stop, T* __restrict tile) const {
    if (!low) return;
    const T* lb = low + b * low_batch_stride;
    for (int64_t r = 0; r < rank; ++r)
      for (int64_t t = first; t < stop; ++t) tile[r * kChunk + t - first] = lb[r * low_rank_stride + t * low_time_stride];
  }

  // raw[t - first] for channel d of sequence b over [first, stop), from gather's tile in the low-rank form.
  void fill(int64_t b, int64_t d, int64_t first, int64_t stop, const T* __restrict tile, T* __restrict raw) const {
    const int64_t count = stop - first;
    if (whole) {
      std::copy(whole + (b * dim + d) * length + first, whole + (b * dim + d) * length + stop, raw);
      return;
    }
    const T* w = weight + d * rank;
    std::fill(raw, raw + count, T(0));
    for (int64_t r = 0; r < rank; ++r) multiply_add(raw, w[r], tile + r * kChunk, count);
  }

  // The step's 0/1 weight of sequence b from position first on, or null when every step is kept.
  const T* kept(int64_t b, int64_t first) const { return valid ? valid + b * length + first : nullptr; }

  // The raw step's gradient draw[t - first] of channel d of sequence b over [first, stop), passed on: into the
  // whole step's gradient `whole_grad` (batch, dim, length), or in the low-rank form added to the low input's
  // gradient tile (gather's layout, `tile` holding the input) and to the channel's R weight gradients dweight.
  void pass_back(int64_t b, int64_t d, int64_t first, int64_t stop, const T* __restrict draw, const T* __restrict tile,
                 T* whole_grad, T* __restrict low_grad_tile, T* __restrict dweight) const {
    const int64_t count = stop - first;
    if (whole) {
      std::copy(draw, draw + count, whole_grad + (b * dim + d) * length + first);
      return;
    }
    const T* w = weight + d * rank;
    for (int64_t r = 0; r < rank; ++r) {
      multiply_add(low_grad_tile + r * kChunk, w[r], draw, count);
      T sum = 0;
#pragma omp simd reduction(+ : sum)
      for (int64_t i = 0; i < count; ++i) sum += draw[i] * tile[r * kChunk + i];
      dweight[r] += sum;
    }
  }
};

// steps[i] = delta from raw[i] (times kept[i] when given) over count positions, vectorised over time.
template <typename T>
inline void discretize(const T* __restrict raw, T bias, const StepSize<T>& step, const T* __restrict kept,
                       int64_t count, T* __restrict steps) {
  if (kept) {
#pragma omp simd
    for (int64_t i = 0; i < count; ++i) steps[i] = kept[i] * step(raw[i] + bias);
  } else {
#pragma omp simd
    for (int64_t i = 0; i < count; ++i) steps[i] = step(raw[i] + bias);
  }
}

// grad[i] *= d delta_i / d raw_i (times kept[i] when given) over count positions.
template <typename T>
inline void chain_through_step(const T* __restrict raw, T bias, const StepSize<T>& step, const T* __restrict kept,
                               int64_t count, T* __restrict grad) {
  if (kept) {
#pragma omp simd
    for (int64_t i = 0; i < count; ++i) grad[i] *= kept[i] * step.slope(raw[i] + bias);
  } else {
#pragma omp simd
    for (int64_t i = 0; i < count; ++i) grad[i] *= step.slope(raw[i] + bias);
  }
}

// out[i] = y[i] * silu(z[i]) over count positions.
template <typename T>
inline void gate(const T* __restrict y, const T* __restrict z, int64_t count, T* __restrict out) {
#pragma omp simd
  for (int64_t i = 0; i < count; ++i) out[i] = y[i] * silu(z[i]);
}

// Through the gate over count positions: dy[i] = dout[i] silu(z[i]), dz[i] = dout[i] y[i] silu'(z[i]).
template <typename T>
inline void ungate(const T* __restrict dout, const T* __restrict y, const T* __restrict z, int64_t count,
                   T* __restrict dy, T* __restrict dz) {
#pragma omp simd
  for (int64_t i = 0; i < count; ++i) {
    dy[i] = dout[i] * silu(z[i]);
    dz[i] = dout[i] * y[i] * silu_slope(z[i]);
  }
}

// One chunk of `count` positions of channel (b, d): its state h (n values at h_home, the state before the chunk
// in, after it out) through the chunk's steps, and y[i] = <C_i, h_i> + D u[i]. B, C: the chunk's tiles of the
// channel's group (position-major, see StateInput::gather); steps, u, y: the chunk's positions.
template <typename T, typename States>
void chunk_forward(States states, int64_t count, const T* rate_home, const T* B, const T* C, const T* steps,
                   const T* u, T D, T* y, T* h_home) {
  Held<const T, States> rate(states, rate_home);
  Held<T, States> h(states, h_home);
  const int64_t n = states.n;
  for (int64_t i = 0; i < count; ++i) {
    const T dt = steps[i];
    advance(h.get(), rate.get(), B + i * n, dt, dt * u[i], n);
    y[i] = dot(h.get(), C + i * n, n) + D * u[i];
  }
}

// u, z and the output are read and written in their own layouts (see strided_block.h), a block of a group's
// channels by a chunk of positions at a time; y before the gate (with a gate) is the kernel's own (b, d, l) tensor.
template <typename T, typename States>
void scan_forward(States states, const at::Tensor& u, const RawSteps<T>& raw_steps, const at::Tensor& rates,
                  const at::Tensor& B, const at::Tensor& C, const at::Tensor& D, const at::Tensor& bias,
                  const at::Tensor& z, bool softplus, at::Tensor& y, at::Tensor& out, at::Tensor& last,
                  at::Tensor& starts) {
  const auto s = shape_of(u, rates, B);
  const int64_t chunks = (s.length + kChunk - 1) / kChunk;
  T* starts_p = starts.numel() ? starts.data_ptr<T>() : nullptr;
  const T *rate_p = rates.data_ptr<T>(), *bias_p = bias.data_ptr<T>(), *D_p = D.data_ptr<T>();
  const StateInput<T> B_in(B), C_in(C);
  const ChannelsTime<T> u_in(u), z_in(z), out_at(out);
  const bool gated = z.numel() > 0;
  T *y_p = gated ? y.data_ptr<T>() : nullptr, *last_p = last.data_ptr<T>();
  at::parallel_for(0, s.batch * s.dim, 1, [&](int64_t begin, int64_t end) {
    const FlushDenormals flush;
    std::fill(last_p + begin * s.n, last_p + end * s.n, T(0));
    T raw[kChunk], steps[kChunk];
    std::vector<T> B_tile(kChunk * s.n), C_tile(kChunk * s.n), low_tile(kChunk * raw_steps.rank);
    std::vector<T> u_block(s.heads() * kChunk), z_block(gated ? s.heads() * kChunk : 0), out_block(s.heads() * kChunk);
    // Chunk by chunk over the channels of one (b, g): a chunk of B and C stays in cache while every
    // channel of the group reads it (walking each channel through all of time evicts them at long lengths).
    for_each_group_run(s.heads(), begin, end, [&](int64_t first_pair, int64_t stop_pair) {
      const int64_t b = first_pair / s.dim, d_first = first_pair % s.dim, g = d_first / s.heads();
      const int64_t channels = stop_pair - first_pair;
      for (int64_t first = 0; first < s.length; first += kChunk) {
        const int64_t stop = std::min(s.length, first + kChunk), count = stop - first;
        B_in.gather(b, g, first, stop, s.n, B_tile.data());
        C_in.gather(b, g, first, stop, s.n, C_tile.data());
        raw_steps.gather(b, first, stop, low_tile.data());
        u_in.gather(b, d_first, channels, first, stop, u_block.data(), kChunk);
        if (gated) z_in.gather(b, d_first, channels, first, stop, z_block.data(), kChunk);
        for (int64_t k = 0; k < channels; ++k) {
          const int64_t pair = first_pair + k, d = d_first + k;
          T* h = last_p + pair * s.n;
          if (starts_p) std::copy(h, h + s.n, starts_p + (pair * chunks + first / kChunk) * s.n);
          raw_steps.fill(b, d, first, stop, low_tile.data(), raw);
          discretize(raw, bias_p[d], StepSize<T>::unclamped_rule(softplus), raw_steps.kept(b, first), count, steps);
          T* out_k = out_block.data() + k * kChunk;
          T* y_k = gated ? y_p + pair * s.length + first : out_k;
          chunk_forward(states, count, rate_p + d * s.n, B_tile.data(), C_tile.data(), steps,
                        u_block.data() + k * kChunk, D_p[d], y_k, h);
          if (gated) gate(y_k, z_block.data() + k * kChunk, count, out_k);
        }
        out_at.scatter(b, d_first, channels, first, stop, out_block.data(), kChunk);
      }
    });
  });
}

// The per-channel inputs and outputs of one chunk of `count` positions in the backward pass (each pointing at the
// chunk's first position): u, the output's gradient, y before the gate and z (null without a gate), and the
// gradients it writes: du, dz (null without a gate) and the raw step's draw.
template <typename T>
struct ChunkIO {
  const T *u, *grad_out, *y, *z;
  T *du, *dz, *draw;
};

// One chunk of channel (b, d), in reverse: recompute its states from `start` (the state before the chunk) into
// `states` and their decays into `decays` (one exp per state and step for the whole backward), then walk back
// carrying the adjoint g (dL/dh_t, updated in place), writing du and the raw step's gradient draw and adding to dA,
// dD and the bias's gradient dbias. raw is the chunk's raw step, kept its 0/1 weights (or null); B, C are the
// chunk's tiles of the channel's group (position-major, see StateInput::gather) and dB / dC the task's
// accumulators in the same layout.
template <typename T, typename States>
void chunk_backward(States state_count, int64_t count, const ChunkIO<T>& io, const T* raw, const T* kept, T bias,
                    const StepSize<T>& step, const T* rate_home, const T* B, const T* C, T D, const T* start,
                    T* dA_home, T* dB, T* dC, T& dD, T& dbias, std::vector<T>& states, std::vector<T>& decays,
                    T* g_home) {
  const int64_t n = state_count.n;
  Held<const T, States> rate_held(state_count, rate_home);
  Held<T, States> dA_held(state_count, dA_home), g_held(state_count, g_home);
  const T* rate = rate_held.get();
  T *dA = dA_held.get(), *g = g_held.get();
  const T* u = io.u;
  T* draw = io.draw;
  T steps[kChunk], grad_y[kChunk];  // grad_y[i]: dL/dy_i, before the gate
  discretize(raw, bias, step, kept, count, steps);
  if (io.z) {
    ungate(io.grad_out, io.y, io.z, count, grad_y, io.dz);
  } else {
    std::copy(io.grad_out, io.grad_out + count, grad_y);
  }
  std::copy(start, start + n, states.data());
  for (int64_t i = 0; i < count; ++i) {  // the states and each step's decay exp(delta_t A), kept for the sweep
    const T dt = steps[i];
    advance_from<true>(states.data() + (i + 1) * n, states.data() + i * n, decays.data() + i * n, rate, B + i * n, dt,
                       dt * u[i], n);
  }
  for (int64_t i = count - 1; i >= 0; --i) {
    const T dt = steps[i], ui = u[i], gy = grad_y[i];
    const T* previous = states.data() + i * n;  // h_{t-1}
    const T* current = previous + n;            // h_t
    const T *Bt = B + i * n, *Ct = C + i * n;
    T *dBt = dB + i * n, *dCt = dC + i * n;
    T through_B = 0, through_decay = 0;
#pragma omp simd reduction(+ : through_B, through_decay)
    for (int64_t j = 0; j < n; ++j) {
      const T gj = g[j] + gy * Ct[j];
      const T decay = decays[i * n + j];
      const T w = gj * decay * previous[j];  // dL/d(dt * A[j])
      dCt[j] += gy * current[j];
      dBt[j] += gj * dt * ui;
      dA[j] += w * dt;
      through_decay += w * rate[j];  // ln 2 * sum_j w A[j] after the loop
      through_B += gj * Bt[j];
      g[j] = decay * gj;
    }
    io.du[i] = dt * through_B + D * gy;
    dD += gy * ui;
    draw[i] = ui * through_B + T(kLn2) * through_decay;
  }
  chain_through_step(raw, bias, step, kept, count, draw);
  T chunk_sum = 0;  // the raw step's gradient is the bias's, position by position
#pragma omp simd reduction(+ : chunk_sum)
  for (int64_t i = 0; i < count; ++i) chunk_sum += draw[i];
  dbias += chunk_sum;
}

// u, z, the output's gradient, du and dz are read and written in their own layouts (see strided_block.h), a block
// of a task's channels by a chunk of positions at a time.
template <typename T, typename States>
void scan_backward(States state_count,
                   const at::Tensor& u, const RawSteps<T>& raw_steps, const at::Tensor& rates, const at::Tensor& B,
                   const at::Tensor& C, const at::Tensor& D, const at::Tensor& bias, const at::Tensor& z,
                   const at::Tensor& y, bool softplus, const at::Tensor& starts, const at::Tensor& grad_out,
                   const at::Tensor& grad_last, at::Tensor& du, at::Tensor& ddelta, at::Tensor& dlow,
                   at::Tensor& dweight, at::Tensor& dz, at::Tensor& dA, at::Tensor& dB, at::Tensor& dC, at::Tensor& dD,
                   at::Tensor& dbias) {
  const auto s = shape_of(u, rates, B);
  const int64_t splits = dB.size(0), heads = s.heads(), n = s.n;
  const int64_t per_split = (heads + splits - 1) / splits, chunks = (s.length + kChunk - 1) / kChunk;
  const T *rate_p = rates.data_ptr<T>(), *bias_p = bias.data_ptr<T>(), *D_p = D.data_ptr<T>();
  const T *gl_p = grad_last.data_ptr<T>(), *starts_p = starts.data_ptr<T>();
  const bool gated = z.numel() > 0;
  const T* y_p = gated ? y.data_ptr<T>() : nullptr;
  const ChannelsTime<T> u_in(u), z_in(z), grad_out_in(grad_out), du_at(du), dz_at(dz);
  T *dA_p = dA.data_ptr<T>(), *dD_p = dD.data_ptr<T>();
  T *dbias_p = dbias.data_ptr<T>(), *ddelta_p = ddelta.numel() ? ddelta.data_ptr<T>() : nullptr;
  T* dweight_p = dweight.numel() ? dweight.data_ptr<T>() : nullptr;
  const int64_t rank = raw_steps.rank;
  const StateInput<T> B_in(B), C_in(C);
  // dB, dC: (splits, b, g, n, l), viewed as (splits * b, g, n, l); the low-rank input's dlow: (splits, b, g, R, l).
  const StateInput<T> dB_out(dB.flatten(0, 1)), dC_out(dC.flatten(0, 1));
  T* dlow_p = rank ? dlow.data_ptr<T>() : nullptr;
  // Task (split, b, g) owns dB[split, b, g], dC[split, b, g] and dlow[split, b, g]: no two tasks write the same
  // memory.
  at::parallel_for(0, splits * s.batch * s.groups, 1, [&](int64_t begin, int64_t end) {
    const FlushDenormals flush;
    // Per channel of a task: its adjoint.
    std::vector<T> adjoints(per_split * n), states((kChunk + 1) * n), decays(kChunk * n);
    std::vector<T> B_tile(kChunk * n), C_tile(kChunk * n), dB_tile(kChunk * n), dC_tile(kChunk * n);
    std::vector<T> low_tile(kChunk * rank), dlow_tile(kChunk * rank);
    const int64_t block = per_split * kChunk;
    std::vector<T> u_block(block), grad_out_block(block), du_block(block);
    std::vector<T> z_block(gated ? block : 0), dz_block(gated ? block : 0);
    T raw[kChunk], draw[kChunk];
    for (int64_t task = begin; task < end; ++task) {
      const int64_t split = task / (s.batch * s.groups), bg = task % (s.batch * s.groups);
      const int64_t b = bg / s.groups, g = bg % s.groups, b_out = split * s.batch + b;
      const int64_t d0 = g * heads + split * per_split;
      const int64_t channels = std::max<int64_t>(0, std::min(heads - split * per_split, per_split));
      const int64_t pair0 = b * s.dim + d0;
      // The reverse sweep, newest chunk first, each chunk's states recomputed from the start the forward kept.
      std::copy(gl_p + pair0 * n, gl_p + (pair0 + channels) * n, adjoints.data());
      std::fill(dA_p + pair0 * n, dA_p + (pair0 + channels) * n, T(0));
      std::fill(dD_p + pair0, dD_p + pair0 + channels, T(0));
      std::fill(dbias_p + pair0, dbias_p + pair0 + channels, T(0));
      if (dweight_p) std::fill(dweight_p + pair0 * rank, dweight_p + (pair0 + channels) * rank, T(0));
      for (int64_t c = chunks - 1; c >= 0; --c) {
        const int64_t first = c * kChunk, stop = std::min(s.length, first + kChunk), count = stop - first;
        B_in.gather(b, g, first, stop, n, B_tile.data());
        C_in.gather(b, g, first, stop, n, C_tile.data());
        std::fill(dB_tile.begin(), dB_tile.end(), T(0));
        std::fill(dC_tile.begin(), dC_tile.end(), T(0));
        raw_steps.gather(b, first, stop, low_tile.data());
        std::fill(dlow_tile.begin(), dlow_tile.end(), T(0));
        u_in.gather(b, d0, channels, first, stop, u_block.data(), kChunk);
        grad_out_in.gather(b, d0, channels, first, stop, grad_out_block.data(), kChunk);
        if (gated) z_in.gather(b, d0, channels, first, stop, z_block.data(), kChunk);
        const T* kept = raw_steps.kept(b, first);
        for (int64_t k = 0; k < channels; ++k) {
          const int64_t pair = pair0 + k, d = d0 + k, at = k * kChunk;
          const ChunkIO<T> io{u_block.data() + at, grad_out_block.data() + at,
                              gated ? y_p + pair * s.length + first : nullptr, gated ? z_block.data() + at : nullptr,
                              du_block.data() + at, gated ? dz_block.data() + at : nullptr, draw};
          raw_steps.fill(b, d, first, stop, low_tile.data(), raw);
          chunk_backward<T>(state_count, count, io, raw, kept, bias_p[d], StepSize<T>::unclamped_rule(softplus),
                            rate_p + d * n, B_tile.data(), C_tile.data(), D_p[d], starts_p + (pair * chunks + c) * n,
                            dA_p + pair * n, dB_tile.data(), dC_tile.data(), dD_p[pair], dbias_p[pair], states, decays,
                            adjoints.data() + k * n);
          raw_steps.pass_back(b, d, first, stop, draw, low_tile.data(), ddelta_p, dlow_tile.data(),
                              dweight_p ? dweight_p + pair * rank : nullptr);
        }
        du_at.scatter(b, d0, channels, first, stop, du_block.data(), kChunk);
        if (gated) dz_at.scatter(b, d0, channels, first, stop, dz_block.data(), kChunk);
        dB_out.scatter(b_out, g, first, stop, n, dB_tile.data());  // every chunk, so a split with no
        dC_out.scatter(b_out, g, first, stop, n, dC_tile.data());  // channels still writes its zeros
        for (int64_t r = 0; r < rank; ++r)  // dlow[split, b, g, r, first:stop]
          std::copy(dlow_tile.begin() + r * kChunk, dlow_tile.begin() + r * kChunk + count,
                    dlow_p + ((b_out * s.groups + g) * rank + r) * s.length + first);
      }
    }
  });
}

// delta: the whole raw step (b, d, l), contiguous, when weight is empty; else the low-rank input (b, R, l), any
// strides, with weight (d, R). valid: (b, l) or empty.
void check(const at::Tensor& u, const at::Tensor& delta, const at::Tensor& A, const at::Tensor& B,
           const at::Tensor& C, const at::Tensor& D, const at::Tensor& bias, const at::Tensor& weight,
           const at::Tensor& valid) {
  for (const at::Tensor* t : {&u, &delta, &A, &B, &C, &D, &bias, &weight, &valid}) {
    TORCH_CHECK(t->device().is_cpu() && t->scalar_type() == u.scalar_type(),
                "selective_scan_cpu: inputs must be CPU tensors of one dtype");
  }
  for (const at::Tensor* t : {&A, &D, &bias, &weight, &valid})
    TORCH_CHECK(t->is_contiguous(), "selective_scan_cpu: A, D, the delta bias, weight and valid must be contiguous");
  TORCH_CHECK(u.dim() == 3 && A.dim() == 2 && A.size(0) == u.size(1), "selective_scan_cpu: u (b, d, l) and A (d, n) expected");
  if (weight.numel()) {
    TORCH_CHECK(weight.dim() == 2 && weight.size(0) == u.size(1) && delta.dim() == 3 && delta.size(0) == u.size(0) &&
                    delta.size(1) == weight.size(1) && delta.size(2) == u.size(2),
                "selective_scan_cpu: the low-rank step (b, R, l) with its weight (d, R) expected");
  } else {
    TORCH_CHECK(delta.sizes() == u.sizes() && delta.is_contiguous(), "selective_scan_cpu: delta (b, d, l), contiguous, expected");
  }
  TORCH_CHECK(valid.numel() == 0 || (valid.dim() == 2 && valid.size(0) == u.size(0) && valid.size(1) == u.size(2)),
              "selective_scan_cpu: valid (b, l) or empty expected");
  TORCH_CHECK(D.dim() == 1 && D.size(0) == u.size(1) && bias.dim() == 1 && bias.size(0) == u.size(1),
              "selective_scan_cpu: D and the delta bias (d,) expected");
  TORCH_CHECK(B.dim() == 4 && B.sizes() == C.sizes() && B.size(0) == u.size(0) && B.size(2) == A.size(1) &&
                  B.size(3) == u.size(2) && u.size(1) % B.size(1) == 0,
              "selective_scan_cpu: B, C (b, g, n, l) expected");
}

// z: the gate (b, d, l) with any strides, or an empty tensor for none.
void check_gate(const at::Tensor& u, const at::Tensor& z) {
  TORCH_CHECK(z.numel() == 0 || (z.sizes() == u.sizes() && z.scalar_type() == u.scalar_type() && z.device().is_cpu()),
              "selective_scan_cpu: the gate z (b, d, l) or an empty tensor expected");
}

// Returns the output (gated when z is given; in u's layout), the last state, the chunk-start states (empty unless
// keep_starts) and y before the gate (what the backward pass needs with a gate; empty otherwise).
std::vector<at::Tensor> forward(const at::Tensor& u, const at::Tensor& delta, const at::Tensor& A,
                                const at::Tensor& B, const at::Tensor& C, const at::Tensor& D, const at::Tensor& bias,
                                const at::Tensor& z, bool softplus, bool keep_starts, const at::Tensor& weight,
                                const at::Tensor& valid) {
  check(u, delta, A, B, C, D, bias, weight, valid);
  check_gate(u, z);
  auto out = at::empty_like(u);  // in u's layout
  auto y = z.numel() ? at::empty(u.sizes(), u.options()) : at::empty({0}, u.options());
  auto last = at::empty({u.size(0), u.size(1), A.size(1)}, u.options());
  const int64_t chunks = keep_starts ? (u.size(2) + kChunk - 1) / kChunk : 0;
  auto starts = at::empty({u.size(0), u.size(1), chunks, A.size(1)}, u.options());
  const auto rates = decay_rates(A);
  AT_DISPATCH_FLOATING_TYPES(u.scalar_type(), "selective_scan_cpu_forward", [&] {
    with_size<16, 32, 64>(A.size(1), [&](auto states) {
      scan_forward<scalar_t>(states, u, RawSteps<scalar_t>(delta, weight, valid), rates, B, C, D, bias, z, softplus, y,
                             out, last, starts);
    });
  });
  return {out, last, starts, keep_starts ? y : at::empty({0}, u.options())};
}

// Returns du (in u's layout), the whole raw step's gradient (b, d, l) (empty in the low-rank form), the low-rank input's gradient
// per split and group (splits, b, g, R, l) and its weight's per batch (b, d, R) (both empty for a whole step), dz
// (empty without a gate), dA per batch (b, d, n), dB, dC per split of each group's channels (splits, b, g, n, l),
// dD and the bias's gradient per batch (b, d); the caller sums over batch, splits and groups. y: the pre-gate
// output the forward pass returned (with a gate).
std::vector<at::Tensor> backward(const at::Tensor& u, const at::Tensor& delta, const at::Tensor& A,
                                 const at::Tensor& B, const at::Tensor& C, const at::Tensor& D, const at::Tensor& bias,
                                 const at::Tensor& z, const at::Tensor& y, bool softplus, const at::Tensor& starts,
                                 const at::Tensor& grad_out, const at::Tensor& grad_last, int64_t splits,
                                 const at::Tensor& weight, const at::Tensor& valid) {
  check(u, delta, A, B, C, D, bias, weight, valid);
  check_gate(u, z);
  TORCH_CHECK(z.numel() == 0 || (y.sizes() == u.sizes() && y.is_contiguous() && y.scalar_type() == u.scalar_type()),
              "selective_scan_cpu: with a gate, the pre-gate output y (b, d, l) kept by forward expected");
  const int64_t chunks = (u.size(2) + kChunk - 1) / kChunk;
  TORCH_CHECK(starts.is_contiguous() && starts.sizes() == at::IntArrayRef({u.size(0), u.size(1), chunks, A.size(1)}),
              "selective_scan_cpu: the chunk-start states kept by forward (b, d, chunks, n) expected");
  TORCH_CHECK(grad_out.sizes() == u.sizes() && grad_out.scalar_type() == u.scalar_type() && grad_last.is_contiguous() &&
                  grad_last.sizes() == at::IntArrayRef({u.size(0), u.size(1), A.size(1)}),
              "selective_scan_cpu: gradients of the output (b, d, l) and of the last state (b, d, n) expected");
  TORCH_CHECK(splits >= 1 && splits <= u.size(1) / B.size(1), "selective_scan_cpu: splits out of range");
  const int64_t rank = weight.numel() ? weight.size(1) : 0;
  auto du = at::empty_like(u);  // in u's layout
  auto ddelta = rank ? at::empty({0}, u.options()) : at::empty(u.sizes(), u.options());
  auto dlow = at::empty({rank ? splits : 0, u.size(0), B.size(1), rank, u.size(2)}, u.options());
  auto dweight = at::empty({rank ? u.size(0) : 0, u.size(1), rank}, u.options());
  auto dz = z.numel() ? at::empty_like(z) : at::empty({0}, u.options());  // in z's layout
  auto dA = at::empty({u.size(0), u.size(1), A.size(1)}, u.options());
  auto dB = at::empty({splits, B.size(0), B.size(1), B.size(2), B.size(3)}, u.options());
  auto dC = at::empty_like(dB);
  auto dD = at::empty({u.size(0), u.size(1)}, u.options()), dbias = at::empty_like(dD);
  const auto rates = decay_rates(A);
  AT_DISPATCH_FLOATING_TYPES(u.scalar_type(), "selective_scan_cpu_backward", [&] {
    with_size<16, 32, 64>(A.size(1), [&](auto states) {
      scan_backward<scalar_t>(states, u, RawSteps<scalar_t>(delta, weight, valid), rates, B, C, D, bias, z, y, softplus,
                              starts, grad_out, grad_last, du, ddelta, dlow, dweight, dz, dA, dB, dC, dD, dbias);
    });
  });
  return {du, ddelta, dlow, dweight, dz, dA, dB, dC, dD, dbias};
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("forward", &forward, "selective scan forward: (output, last state, chunk-start states, pre-gate y)");
  m.def("backward", &backward, "selective scan backward: (du, ddelta, dlow, dweight, dz, dA, dB, dC, dD, dbias)");
}
