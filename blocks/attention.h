// Masked multi-head attention of one (sequence, head) pair, for inference: the loop shared by
// attention_cpu.cpp (the self_attention block) and transformer_layer_cpu.cpp (a whole post-norm layer).
// Vaswani et al. 2017 Eq. 1: softmax(Q K^T / sqrt(d_head) + M) V.
//
// Layouts: q (batch, queries, width), k and v (batch, length, width), given as pointers with batch and
// row strides, the width contiguous; head h owns columns [h d_head, (h+1) d_head). Query row i sits at
// sequence position length - queries + i (queries == length: every position; queries == 1: the newest
// only). mask (batch, length) is True at real items. Query i may attend to key j when mask[j] and
// (not causal or j <= its position), and always to itself, as the Python block's mask says. The head's
// keys and values (plus their biases, when given: the projection's bias not yet added) are converted to
// Acc once; scores, softmax and the weighted sum of values are accumulated in Acc; the result is
// written in the output's type O.

#pragma once

#include <torch/extension.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <type_traits>
#include <vector>

// Conversions between the accumulation type and the storage type (float, double or bfloat16).
// bfloat16 is the upper half of a float: widening is a shift, narrowing rounds to nearest even (no NaNs
// reach here). Written as bit operations so that the loops around them vectorise (c10's do not).
inline float widen(at::BFloat16 v) {
  const uint32_t bits = uint32_t(v.x) << 16;
  float f;
  std::memcpy(&f, &bits, sizeof f);
  return f;
}
inline float widen(float v) { return v; }
inline double widen(double v) { return v; }

template <typename S, typename A>
S narrow_to(A v) {
  if constexpr (std::is_same_v<S, at::BFloat16>) {
    uint32_t bits;
    std::memcpy(&bits, &v, sizeof bits);
    bits += 0x7FFFu + ((bits >> 16) & 1u);
    return at::BFloat16(uint16_t(bits >> 16), at::BFloat16::from_bits());
  } else {
    return S(v);
  }
}

// Shapes and strides of one call (strides in elements).
struct Layout {
  int64_t batch, queries, length, width, heads, d_head;
  int64_t q_batch, q_row, k_batch, k_row, v_batch, v_row;
};

// The two products (scores, weighted values) run on blocks of Lanes<Acc>::count keys or columns held
// in one 64-byte vector (GCC/Clang vector extension, so the accumulator stays in a register whatever
// the target's vector width); the head's keys and values are stored padded to whole blocks (zeros).
template <typename Acc>
struct Lanes {
  typedef Acc Vector __attribute__((vector_size(64)));
  static constexpr int64_t count = 64 / sizeof(Acc);
  static Vector load(const Acc* p) {
    Vector v;
    std::memcpy(&v, p, sizeof v);
    return v;
  }
  static int64_t whole(int64_t n) { return (n + count - 1) / count * count; }
};

// Queries are taken kQueryTile at a time: their products share each load of a key or value block and
// give the FMA units independent accumulators to interleave.
constexpr int64_t kQueryTile = 4;

// Scratch space of one thread for attend_head: keys transposed (d_head rows of the padded length),
// values (length rows of the padded d_head), and a tile of queries (scaled) and their scores.
template <typename Acc>
struct AttentionScratch {
  int64_t length, d_head;
  std::vector<Acc> keys, values, scores, query;
  AttentionScratch(int64_t length, int64_t d_head)
      : length(Lanes<Acc>::whole(length)),
        d_head(Lanes<Acc>::whole(d_head)),
        keys(d_head * this->length, Acc(0)),
        values(length * this->d_head, Acc(0)),
        scores(kQueryTile * this->length),
        query(kQueryTile * d_head) {}
};

// Optional per-column biases of q, k and v (width values each; nullptr: none).
template <typename Acc>
struct Biases {
  const Acc *q = nullptr, *k = nullptr, *v = nullptr;
};

// Attention of every query row of sequence b, head h of the call described by s. For a tile of
// queries, scores are formed a block of keys at a time (accumulated over the head's columns), then
// softmax per query, then the weighted values a block of columns at a time (accumulated over the keys).
// A key a query may not see gets a score far below any real one, whose weight exp() rounds to zero
// (finite, as -ffast-math requires); the tile runs over the keys its last query sees.
template <typename T, typename Acc, typename O>
void attend_head(const Layout& s, const T* q, const T* k, const T* v, const bool* mask, O* out, bool causal,
                 int64_t b, int64_t h, AttentionScratch<Acc>& scratch, Biases<Acc> bias = {}) {
  using L = Lanes<Acc>;
  using Vector = typename L::Vector;
  const int64_t dh = s.d_head, column = h * dh, length = s.length;
  const int64_t key_stride = scratch.length, value_stride = scratch.d_head;
  const bool* real = mask + b * length;
  Acc *keys = scratch.keys.data(), *values = scratch.values.data(), *scores = scratch.scores.data();
  Acc* query = scratch.query.data();
  const auto bias_of = [&](const Acc* vector, int64_t e) { return vector ? vector[column + e] : Acc(0); };
  for (int64_t j = 0; j < length; ++j) {
    const T* kj = k + b * s.k_batch + j * s.k_row + column;
    const T* vj = v + b * s.v_batch + j * s.v_row + column;
    for (int64_t e = 0; e < dh; ++e) {
      keys[e * key_stride + j] = widen(kj[e]) + bias_of(bias.k, e);
      values[j * value_stride + e] = widen(vj[e]) + bias_of(bias.v, e);
    }
  }
  const Acc scale = Acc(1) / std::sqrt(static_cast<Acc>(dh));
  const Acc hidden = std::numeric_limits<Acc>::lowest() / 4;
  for (int64_t i0 = 0; i0 < s.queries; i0 += kQueryTile) {
    const int64_t tile = std::min(kQueryTile, s.queries - i0);
    const int64_t first = length - s.queries + i0;  // position of the tile's first query
    const int64_t seen = causal ? first + tile : length;
    for (int64_t t = 0; t < kQueryTile; ++t) {  // a short tile repeats its last query
      const T* qi = q + b * s.q_batch + (i0 + std::min(t, tile - 1)) * s.q_row + column;
      for (int64_t e = 0; e < dh; ++e) query[t * dh + e] = (widen(qi[e]) + bias_of(bias.q, e)) * scale;
    }
    for (int64_t j0 = 0; j0 < seen; j0 += L::count) {
      Vector block[kQueryTile] = {};
      for (int64_t e = 0; e < dh; ++e) {
        const Vector key = L::load(keys + e * key_stride + j0);
        for (int64_t t = 0; t < kQueryTile; ++t) block[t] += query[t * dh + e] * key;
      }
      for (int64_t t = 0; t < kQueryTile; ++t) std::memcpy(scores + t * key_stride + j0, &block[t], sizeof(Vector));
    }
    Acc inverse[kQueryTile] = {};
    for (int64_t t = 0; t < tile; ++t) {
      const int64_t position = first + t, last = causal ? position : length - 1;
      Acc* row = scores + t * key_stride;
      Acc largest = hidden;
      for (int64_t j = 0; j < seen; ++j) {
        row[j] = (j <= last && (real[j] || j == position)) ? row[j] : hidden;
        largest = std::max(largest, row[j]);
      }
      Acc total = 0;
      for (int64_t j = 0; j < seen; ++j) {
        row[j] = std::exp(row[j] - largest);
        total += row[j];
      }
      inverse[t] = Acc(1) / total;
    }
    for (int64_t t = tile; t < kQueryTile; ++t) std::fill(scores + t * key_stride, scores + t * key_stride + seen, Acc(0));
    for (int64_t e0 = 0; e0 < dh; e0 += L::count) {
      Vector block[kQueryTile] = {};
      for (int64_t j = 0; j < seen; ++j) {
        const Vector value = L::load(values + j * value_stride + e0);
        for (int64_t t = 0; t < kQueryTile; ++t) block[t] += scores[t * key_stride + j] * value;
      }
      for (int64_t t = 0; t < tile; ++t) {
        O* target = out + (b * s.queries + i0 + t) * s.width + column;
        for (int64_t l = 0; l < L::count && e0 + l < dh; ++l) target[e0 + l] = narrow_to<O>(block[t][l] * inverse[t]);
      }
    }
  }
}
