// Shared by the CPU scan kernels: exp of a state decay's exponent, dt * A with dt >= 0 and A < 0 (Mamba
// eq. 4, A-bar = exp(Delta A); Mamba2's exp(dt * A)). The scans spend most of their forward pass in these
// exponentials, one per state and step.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>

// float64: the library's exp (the reference precision the tests compare against).
template <typename T>
inline T decay_exp(T x) {
  return std::exp(x);
}

// float32: exp(x) = 2^k e^r with k = rint(x / ln 2) and r = x - k ln 2 in [-ln2/2, ln2/2] (ln 2 split in two
// parts, Cody & Waite, so k ln 2 adds no rounding), e^r by a degree-5 polynomial with constant term 1 whose other
// coefficients minimise the largest relative error on that interval (fitted by Lawson's reweighted least squares,
// then rounded to float: 9.5e-8 relative before the float arithmetic), and 2^k written into the exponent bits.
// Within 1.7e-7 relative of exp for x in [-87.3, 88] (about 1.5 units in the last place; 4e7 points checked
// against the double exp), exactly 1 at x = 0, and vectorised by gcc with the rest of a loop (libmvec's expf,
// which -ffast-math calls otherwise, handles every input and costs about 1.5x as much in the scans; Taylor's
// degree 7 took the Mamba scan 1.06x longer). Below -87.3 it returns exp(-87.3) = 1.2e-38 instead of a denormal
// or 0: a decay that small leaves no trace of the state either way.
template <>
inline float decay_exp<float>(float x) {
  x = x < -87.3365f ? -87.3365f : x;
  const float k = __builtin_rintf(x * 1.44269504088896341f);
  float r = __builtin_fmaf(k, -0.693145751953125f, x);
  r = __builtin_fmaf(k, -1.428606765330187e-06f, r);
  float p = 0.008290315046906471f;
  p = __builtin_fmaf(p, r, 0.04189793020486832f);
  p = __builtin_fmaf(p, r, 0.1666763573884964f);
  p = __builtin_fmaf(p, r, 0.4999915063381195f);
  p = __builtin_fmaf(p, r, 0.9999997019767761f);
  p = __builtin_fmaf(p, r, 1.0f);
  const int32_t bits = (static_cast<int32_t>(k) + 127) << 23;
  float scale;
  std::memcpy(&scale, &bits, sizeof scale);
  return p * scale;
}
