// Shared by the CPU selective-scan kernels: one step of Mamba's recurrence (eq. 2a) over a channel's
// n states, and the readout's dot product (eq. 2b).
#pragma once

#include <cmath>
#include <cstdint>
#include <type_traits>

#include "decay_exp.h"

// next = exp(dt * A) * previous + dtu * Bt over the n states, from A's base-2 rates (decay_rates); next may be
// previous itself. With KeepDecays, each state's exp(dt * A) is also written to `decays` (the backward passes keep
// them for their reverse sweep). In float32 on an AVX-512 CPU, whole 16-state blocks go through decay_exp2_x16 and
// the rest through the portable loop.
template <bool KeepDecays, typename T>
inline void advance_from(T* next, const T* previous, T* __restrict decays, const T* __restrict rate,
                         const T* __restrict Bt, T dt, T dtu, int64_t n) {
#if defined(__AVX512F__)
  if constexpr (std::is_same_v<T, float>) {
    const __m512 step = _mm512_set1_ps(dt), input = _mm512_set1_ps(dtu);
    const int64_t blocks = n - n % 16;
    for (int64_t i = 0; i < blocks; i += 16) {
      const __m512 decay = decay_exp2_x16(_mm512_mul_ps(step, _mm512_loadu_ps(rate + i)));
      if constexpr (KeepDecays) _mm512_storeu_ps(decays + i, decay);
      const __m512 added = _mm512_mul_ps(input, _mm512_loadu_ps(Bt + i));
      _mm512_storeu_ps(next + i, _mm512_fmadd_ps(decay, _mm512_loadu_ps(previous + i), added));
    }
    next += blocks, previous += blocks, rate += blocks, Bt += blocks, n -= blocks;
    if constexpr (KeepDecays) decays += blocks;
  }
#endif
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) {
    const T decay = decay_exp2(dt * rate[i]);
    if constexpr (KeepDecays) decays[i] = decay;
    next[i] = decay * previous[i] + dtu * Bt[i];
  }
}

// h <- exp(dt * A) * h + dtu * Bt in place (see advance_from).
template <typename T>
inline void advance(T* h, const T* __restrict rate, const T* __restrict Bt, T dt, T dtu, int64_t n) {
  advance_from<false>(h, h, static_cast<T*>(nullptr), rate, Bt, dt, dtu, n);
}

template <typename T>
inline T dot(const T* __restrict x, const T* __restrict y, int64_t n) {
  T sum = 0;
#pragma omp simd reduction(+ : sum)
  for (int64_t i = 0; i < n; ++i) sum += x[i] * y[i];
  return sum;
}
