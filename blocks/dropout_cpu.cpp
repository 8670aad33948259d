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

#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>

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
// T is the storage type and S the type the scaling is computed in (float for bfloat16 and half, as torch's
// opmath), so y = round(x * (1 / (1 - p))) with the factor itself not rounded to 16 bits.
template <typename T, typename S>
void mask_block(const T* __restrict x, T* __restrict y, int64_t count, uint32_t low, uint32_t key_low, uint32_t high,
                uint32_t threshold, S scale) {
#pragma omp simd
  for (int64_t j = 0; j < count; ++j) {
    const uint32_t draw = mix(mix((low + static_cast<uint32_t>(j)) ^ key_low) ^ high);
    y[j] = static_cast<T>(draw >= threshold ? static_cast<S>(x[j]) * scale : S(0));
  }
}

// bfloat16 through its bits, so that the loop vectorises (c10::BFloat16's conversions do not): the upper half of
// a float32, rounded to nearest even as c10 rounds, NaN kept a quiet NaN.
inline float widen(uint16_t bits) {
  const uint32_t wide = static_cast<uint32_t>(bits) << 16;
  float value;
  std::memcpy(&value, &wide, sizeof value);
  return value;
}

inline uint16_t narrow(float value) {
  uint32_t bits;
  std::memcpy(&bits, &value, sizeof bits);
  if ((bits & 0x7FFFFFFFU) > 0x7F800000U) return 0x7FC0;
  return static_cast<uint16_t>((bits + 0x7FFFU + ((bits >> 16) & 1U)) >> 16);
}

template <>
void mask_block<at::BFloat16, float>(const at::BFloat16* __restrict x, at::BFloat16* __restrict y, int64_t count,
                                     uint32_t low, uint32_t key_low, uint32_t high, uint32_t threshold, float scale) {
  const uint16_t* __restrict in = reinterpret_cast<const uint16_t*>(x);
  uint16_t* __restrict out = reinterpret_cast<uint16_t*>(y);
#pragma omp simd
  for (int64_t j = 0; j < count; ++j) {
    const uint32_t draw = mix(mix((low + static_cast<uint32_t>(j)) ^ key_low) ^ high);
    out[j] = narrow(draw >= threshold ? widen(in[j]) * scale : 0.0f);
  }
}

template <typename T, typename S>
void masked_scale(const T* x, T* y, int64_t numel, uint32_t threshold, S scale, uint64_t seed) {
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
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, x.scalar_type(), "dropout_cpu", [&] {
    using scale_t = at::opmath_type<scalar_t>;
    masked_scale<scalar_t, scale_t>(x.data_ptr<scalar_t>(), y.data_ptr<scalar_t>(), x.numel(), threshold,
                                    static_cast<scale_t>(1.0 / (1.0 - p)), static_cast<uint64_t>(seed));
  });
  return y;
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("apply", &apply, "y = keep(seed, i) * x / (1 - p), the mask from a counter-based hash");
}
