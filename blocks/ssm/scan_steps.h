// Shared by the CPU selective-scan kernels: one step of Mamba's recurrence (eq. 2a) over a channel's
// n states, and the readout's dot product (eq. 2b).
#pragma once

#include <cmath>
#include <cstdint>

#include "decay_exp.h"

// h <- exp(dt * A) * h + dtu * Bt, elementwise over the n states, from A's base-2 rates (decay_rates).
template <typename T>
inline void advance(T* __restrict h, const T* __restrict rate, const T* __restrict Bt, T dt, T dtu, int64_t n) {
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) h[i] = decay_exp2(dt * rate[i]) * h[i] + dtu * Bt[i];
}

template <typename T>
inline T dot(const T* __restrict x, const T* __restrict y, int64_t n) {
  T sum = 0;
#pragma omp simd reduction(+ : sum)
  for (int64_t i = 0; i < n; ++i) sum += x[i] * y[i];
  return sum;
}
