// Shared by the CPU scan kernels: the step size a scan takes from its raw input (Mamba's delta,
// Mamba2's dt) and the channel's or head's bias,
//
//     step = clamp(softplus(raw + bias), lo, hi)        (raw + bias in place of softplus when it is off)
//
// with torch.nn.functional.softplus's threshold (the identity above 20) and torch.clamp's gradient
// (passed where lo <= value <= hi, both bounds included), so the kernels' gradients equal those of
// the PyTorch expression. lo and hi must be finite: the kernels are compiled with -ffast-math, so an
// open side is the dtype's largest value, never an infinity.
#pragma once

#include <algorithm>
#include <cmath>
#include <limits>

template <typename T>
struct StepSize {
  bool softplus;
  T lo, hi;

  static constexpr T kThreshold = T(20);

  // softplus(raw + bias) (or raw + bias without softplus), never clamped: Mamba's step.
  static StepSize unclamped_rule(bool softplus) {
    return {softplus, -std::numeric_limits<T>::max(), std::numeric_limits<T>::max()};
  }

  inline bool smooth(T x) const { return softplus && x <= kThreshold; }

  // Below kFastest the vectorised exp (glibc's libmvec) leaves its fast path for a scalar fallback, which made a
  // tensor half of padding (whose raw steps hold the dtype's lowest value) 4x slower. exp(x) is taken as 0 there:
  // the step softplus(x) = log(1 + e^x) is then exactly 0 where it is below e^kFastest (about 1.6e-38 in float32,
  // 3.3e-308 in float64), the denormal range the scans flush to zero anyway (flush_denormals.h).
  static constexpr T kFastest = sizeof(T) == 4 ? T(-87) : T(-708);

  // exp(x) capped at the threshold (so no infinity arises in either branch of a vectorised select) and 0 below
  // kFastest.
  static inline T capped_exp(T x) {
    const T e = std::exp(std::max(std::min(x, kThreshold), kFastest));
    return x < kFastest ? T(0) : e;
  }

  // x = raw + bias; e = capped_exp(x).
  inline T unclamped(T x, T e) const { return smooth(x) ? std::log1p(e) : x; }

  inline T operator()(T x) const { return std::min(std::max(unclamped(x, capped_exp(x)), lo), hi); }

  // d step / dx: the softplus's sigmoid (1 without softplus or above the threshold), 0 where clamped.
  inline T slope(T x) const {
    const T e = capped_exp(x), value = unclamped(x, e);
    if (value < lo || value > hi) return T(0);
    return smooth(x) ? e / (T(1) + e) : T(1);
  }
};
