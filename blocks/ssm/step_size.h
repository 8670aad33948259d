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

template <typename T>
struct StepSize {
  bool softplus;
  T lo, hi;

  static constexpr T kThreshold = T(20);

  // x = raw + bias. exp never sees more than the threshold, so no infinity arises in either branch of a
  // vectorised select.
  inline T unclamped(T x) const {
    return softplus && x <= kThreshold ? std::log1p(std::exp(std::min(x, kThreshold))) : x;
  }

  inline T operator()(T x) const { return std::min(std::max(unclamped(x), lo), hi); }

  // d step / dx: the softplus's sigmoid (1 without softplus or above the threshold), 0 where clamped.
  inline T slope(T x) const {
    const bool smooth = softplus && x <= kThreshold;
    const T e = std::exp(std::min(x, kThreshold)), value = smooth ? std::log1p(e) : x;  // unclamped(x), one exp
    if (value < lo || value > hi) return T(0);
    return smooth ? e / (T(1) + e) : T(1);
  }
};
