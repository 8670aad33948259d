// LayerNorm over one row, shared by the compiled inference passes (transformer_layer_cpu.cpp,
// item_embedding_cpu.cpp).

#pragma once

#include <cmath>
#include <cstdint>

namespace seqrec_zoo {

// y = LayerNorm(v) with weight and bias, in place over `width` values.
template <typename A>
inline void layer_norm(A* v, int64_t width, const A* weight, const A* bias, double eps) {
  A mean = 0, var = 0;
  for (int64_t c = 0; c < width; ++c) mean += v[c];
  mean /= width;
  for (int64_t c = 0; c < width; ++c) var += (v[c] - mean) * (v[c] - mean);
  const A inverse = A(1) / std::sqrt(var / width + A(eps));
  for (int64_t c = 0; c < width; ++c) v[c] = (v[c] - mean) * inverse * weight[c] + bias[c];
}

}  // namespace seqrec_zoo
