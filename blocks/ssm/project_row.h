// Shared by the CPU kernels that form Mamba's step from its low-rank input (softplus_cpu.cpp, final_state_scan_cpu.cpp):
// the pre-activation of one position's steps, dt_proj of x_proj's rank-R dt (Mamba Algorithm 2, s_Delta).
#pragma once

#include <algorithm>
#include <cstdint>

// pre[e] = bias[e] + sum_j low[j] * w[j, e] for e < channels (bias null: 0); w is (R, channels), a rank's weights
// side by side over the channels so that the loop over them vectorises.
template <typename T>
inline void project_row(const T* __restrict low, const T* __restrict w, const T* bias, int64_t rank, int64_t channels,
                        T* __restrict pre) {
  if (bias) {
    std::copy(bias, bias + channels, pre);
  } else {
    std::fill(pre, pre + channels, T(0));
  }
  for (int64_t j = 0; j < rank; ++j) {
    const T a = low[j];
    const T* __restrict w_j = w + j * channels;
#pragma omp simd
    for (int64_t e = 0; e < channels; ++e) pre[e] += a * w_j[e];
  }
}
