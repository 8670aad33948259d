// Inverted dropout (Srivastava et al. 2014, "Dropout", §4 and Eq. 2-3, scaled at training time) with its
// mask drawn from a counter-based hash instead of a stream of random numbers.
//
// Built on first use by blocks/compiled.py (on by default; SEQREC_ZOO_CPU_KERNEL=0 turns it off).
//
// For element i (the index in a contiguous tensor) and a 64-bit seed drawn once per call from torch's
// generator:
//
//     keep(i) = hash(seed, i) >= threshold,   threshold = round(p * 2^32)
//     y[i]    = keep(i) ? x[i] / (1 - p) : 0
//
// so P(drop) = threshold / 2^32, p to within 2^-33. The hash is two rounds of a 32-bit integer mixer (each a
// bijection with full avalanche) keyed by the seed's halves; the index's high half enters the second round.
// torch's CPU dropout draws one Bernoulli sample per element through its generator (about 20 ns per
// element here); this is a few integer operations per element, vectorised and on the intra-op threads,
// and the result does not depend on the number of threads.
//
// The gradient is the same operation on the output's gradient with the same seed (dx = keep * dy / (1 - p)),
// so nothing but the seed is kept between the passes.

#include <torch/extension.h>

#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <cstdint>

namespace {

// A 32-bit integer mixer (xorshift-multiply rounds with well-tested constants).
inline uint32_t mix(uint32_t x) {
  x ^= x >> 16;
  x *= 0x7feb352dU;
  x ^= x >> 15;
  x *= 0x846ca68bU;
  x ^= x >> 16;
  return x;
}

constexpr int64_t kBlock = 4096;  // divides 2^32: an index's high half is constant within a block

// One block: elements low + j, j < count, of the index space whose high half (plus the seed's) is `high`.
// A function of its own, so that the vectoriser sees plain values, not references captured by a lambda.
template <typename T>
void mask_block(const T* __restrict x, T* __restrict y, int64_t count, uint32_t low, uint32_t key_low, uint32_t high,
                uint32_t threshold, T scale) {
#pragma omp simd
  for (int64_t j = 0; j < count; ++j) {
    const uint32_t draw = mix(mix((low + static_cast<uint32_t>(j)) ^ key_low) ^ high);
    y[j] = draw >= threshold ? x[j] * scale : T(0);
  }
}

template <typename T>
void masked_scale(const T* x, T* y, int64_t numel, uint32_t threshold, T scale, uint64_t seed) {
  const uint32_t key_low = static_cast<uint32_t>(seed), key_high = static_cast<uint32_t>(seed >> 32);
  at::parallel_for(0, (numel + kBlock - 1) / kBlock, 4, [&](int64_t begin, int64_t end) {
    for (int64_t block = begin; block < end; ++block) {
      const int64_t first = block * kBlock;
      mask_block(x + first, y + first, std::min(kBlock, numel - first), static_cast<uint32_t>(first), key_low,
                 key_high + static_cast<uint32_t>(first >> 32), threshold, scale);
    }
  });
}

at::Tensor apply(const at::Tensor& x, double p, int64_t seed) {
  TORCH_CHECK(x.device().is_cpu() && x.is_contiguous(), "dropout_cpu: a contiguous CPU tensor expected");
  TORCH_CHECK(p >= 0.0 && p < 1.0, "dropout_cpu: p in [0, 1) expected");
  const uint32_t threshold = static_cast<uint32_t>(std::min<long long>(std::llround(p * 4294967296.0), 0xFFFFFFFFLL));
  auto y = at::empty_like(x);
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "dropout_cpu", [&] {
    masked_scale<scalar_t>(x.data_ptr<scalar_t>(), y.data_ptr<scalar_t>(), x.numel(), threshold,
                           static_cast<scalar_t>(1.0 / (1.0 - p)), static_cast<uint64_t>(seed));
  });
  return y;
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("apply", &apply, "y = keep(seed, i) * x / (1 - p), the mask from a counter-based hash");
}
