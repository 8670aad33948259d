// Shared by the CPU kernels that apply SiLU (Mamba's convolution activation and its z gate, Mamba eq. 3 /
// Fig. 3): silu(a) = a * sigmoid(a), silu'(a) = s (1 + a (1 - s)) with s = sigmoid(a).
#pragma once

#include <algorithm>
#include <cmath>

// exp's argument is kept below overflow, where sigmoid is 0 to the last bit in either precision anyway
// (the kernels are built with -ffast-math, which assumes no infinities).
template <typename T>
inline T sigmoid(T a) {
  return T(1) / (T(1) + std::exp(std::min(-a, T(80))));
}

template <typename T>
inline T silu(T a) {
  return a * sigmoid(a);
}

template <typename T>
inline T silu_slope(T a) {
  const T s = sigmoid(a);
  return s * (T(1) + a * (T(1) - s));
}
