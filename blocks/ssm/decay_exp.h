// Shared by the CPU scan kernels: a state decay exp(dt * A) (Mamba eq. 4, A-bar = exp(Delta A); SIGMA's decayed
// prefix readout), computed in base 2 as 2^(dt * rate) with rate = A log2(e) formed once per call
// (decay_rates). The scans spend most of their forward pass in these exponentials, one per state and step.
#pragma once

#include <ATen/ATen.h>

#include <cmath>
#include <cstdint>
#include <cstring>

#if defined(__AVX512F__)
#include <immintrin.h>
#endif

constexpr double kLog2e = 1.4426950408889634;  // log2(e): exp(x) = 2^(x log2 e)
constexpr double kLn2 = 0.6931471805599453;    // d 2^y / dy = ln 2 * 2^y, so dL/dx = ln 2 * dL/dy for y = x log2 e

// A (any shape) as the base-2 rates decay_exp2 takes: A log2(e), contiguous, in A's dtype.
inline at::Tensor decay_rates(const at::Tensor& A) { return (A * kLog2e).contiguous(); }

// float64: the library's exp2 (the reference precision the tests compare against).
template <typename T>
inline T decay_exp2(T y) {
  return std::exp2(y);
}

// The polynomial for 2^r on [-1/2, 1/2] shared by both float32 forms below, highest degree first.
constexpr float kExp2Poly[6] = {0.0013264727313071489f, 0.0096715129911899567f, 0.055507335811853409f,
                                0.24022242426872253f, 0.69314700365066528f, 1.0f};

// float32: 2^y = 2^k 2^r with k = rint(y) and r = y - k in [-1/2, 1/2] (exact), 2^r by a degree-5 polynomial with
// constant term 1 (the minimax fit of e^s on [-ln2/2, ln2/2], fitted by Lawson's reweighted least squares, with its
// coefficients c_i scaled by ln2^i for s = r ln 2 and rounded to float), and k added to the result's exponent bits.
// Within 1.7e-7 relative of exp2 for y in [-126, 127] (about 1.4 units in the last place; 4e7 points checked
// against the double exp2), exactly 1 at y = 0, and vectorised by gcc with the rest of a loop: about 12 vector
// operations, against 15 for the same polynomial in base e with the exponent split by Cody & Waite's two-part ln 2
// and libmvec's expf costing 1.5x more again (a Mamba scan's forward ran 1.18-1.25x faster than with the base-e form).
// Below -126 it returns 2^-126 = 1.2e-38 instead of a denormal or 0: a decay that small leaves no trace of the
// state either way.
template <>
inline float decay_exp2<float>(float y) {
  y = y < -126.0f ? -126.0f : y;
  const float k = __builtin_rintf(y);
  const float r = y - k;
  // Written out: as a loop over kExp2Poly, gcc left the callers' simd loops scalar (the decayed prefix readout
  // ran 10x slower).
  float p = __builtin_fmaf(kExp2Poly[0], r, kExp2Poly[1]);
  p = __builtin_fmaf(p, r, kExp2Poly[2]);
  p = __builtin_fmaf(p, r, kExp2Poly[3]);
  p = __builtin_fmaf(p, r, kExp2Poly[4]);
  p = __builtin_fmaf(p, r, kExp2Poly[5]);
  int32_t bits;
  std::memcpy(&bits, &p, sizeof bits);
  bits += static_cast<int32_t>(k) << 23;
  float out;
  std::memcpy(&out, &bits, sizeof out);
  return out;
}

#if defined(__AVX512F__)
// decay_exp2<float> on 16 lanes, with the scaling by 2^k done by one vscalefps instead of three integer
// operations (10 vector operations against 12). With the portable form's clamp at -126 its values are the
// portable form's bit for bit (without it, scalef would return denormals below 2^-126).
inline __m512 decay_exp2_x16(__m512 y) {
  y = _mm512_max_ps(y, _mm512_set1_ps(-126.0f));
  const __m512 k = _mm512_roundscale_ps(y, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  const __m512 r = _mm512_sub_ps(y, k);
  __m512 p = _mm512_set1_ps(kExp2Poly[0]);
  for (int i = 1; i < 6; ++i) p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(kExp2Poly[i]));
  return _mm512_scalef_ps(p, k);
}
#endif
