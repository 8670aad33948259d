// Masked multi-head attention of one (sequence, head) pair, for inference: the loop shared by
// attention_cpu.cpp (the self_attention block) and transformer_layer_cpu.cpp (a whole post-norm layer).
// Vaswani et al. 2017 Eq. 1: softmax(Q K^T / sqrt(d_head) + M) V.
//
// Query row i of a sequence sits at position length - queries + i (queries == length: every position;
// queries == 1: the newest only). mask (length) is True at real items. Query i may attend to key j when
// mask[j] and (not causal or j <= its position), and always to itself, as the Python block's mask says.
// Operands are read where they lie, in their storage type T (float, double or bfloat16): the queries and
// values as rows, the keys transposed (one row per column of the head, the sequence's keys contiguous
// in it). Scores, softmax and the weighted sum of values are accumulated in Acc; the result is written
// in the output's type O. Projection biases: the query's and the value's are added here (the value's
// once, after the weighted sum, since the weights sum to one); the key's is not needed at all, since it
// adds the same q . b_k to every score of a query and softmax ignores such a shift.

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

// The two products (scores, weighted values) run on blocks of Lanes<Acc>::count keys or columns held
// in one 64-byte vector (GCC/Clang vector extension, so the accumulator stays in a register whatever
// the target's vector width).
template <typename Acc>
struct Lanes {
  typedef Acc Vector __attribute__((vector_size(64)));
  static constexpr int64_t count = 64 / sizeof(Acc);
  static int64_t whole(int64_t n) { return (n + count - 1) / count * count; }

  static Vector load(const Acc* p) {
    Vector v;
    std::memcpy(&v, p, sizeof v);
    return v;
  }
  static void store(Acc* p, const Vector& v) { std::memcpy(p, &v, sizeof v); }
  static Vector exp(Vector v) {  // one call of the vector math library's exp
    Acc a[count];
    std::memcpy(a, &v, sizeof v);
#pragma omp simd
    for (int64_t l = 0; l < count; ++l) a[l] = std::exp(a[l]);
    std::memcpy(&v, a, sizeof v);
    return v;
  }
  static Vector load(const at::BFloat16* p) {  // 16 bfloat16 -> 16 float (Acc is float)
    typedef uint16_t Halves __attribute__((vector_size(32)));
    typedef uint32_t Words __attribute__((vector_size(64)));
    Halves halves;
    std::memcpy(&halves, p, sizeof halves);
    const Words words = __builtin_convertvector(halves, Words) << 16;
    Vector v;
    std::memcpy(&v, &words, sizeof v);
    return v;
  }
};

// Queries are taken kQueryTile at a time: their products share each load of a key or value block and
// give the FMA units independent accumulators to interleave.
constexpr int64_t kQueryTile = 4;

// Softmax weights below exp(kLowest) (about 2e-35) are taken as exp(kLowest): far below a float's
// resolution next to the largest weight, 1.
constexpr double kLowest = -80.0;

// One (sequence, head): pointers to its first query, first key column and first value, and strides.
// Keys (type K: the storage type, or Acc for a transposed copy) must be readable for a whole block of
// lanes past `length` in every column (finite values; they are never used).
template <typename T, typename K>
struct HeadOperands {
  const T* q;
  int64_t q_row;  // query i: q + i q_row, d_head values
  const K* keys;
  int64_t key_column;  // key j, column e: keys + e key_column + j
  const T* v;
  int64_t v_row;  // value j: v + j v_row, d_head values
};

// Scratch space of one thread: a tile of queries (scaled, biased) and their scores, the key mask (0 at
// real keys, `hidden` at padded ones and past the end), and room for a transposed copy of keys. Rows
// are whole blocks of lanes long, which is as far as any block load reaches.
template <typename Acc>
struct AttentionScratch {
  int64_t padded_length;
  std::vector<Acc> scores, query, key_mask, keys;
  AttentionScratch(int64_t length, int64_t d_head)
      : padded_length(Lanes<Acc>::whole(length)),
        scores(kQueryTile * padded_length),
        query(kQueryTile * d_head),
        key_mask(padded_length),
        keys(d_head * padded_length, Acc(0)) {}
};

// Attention of the `queries` query rows of one (sequence, head) over its `length` keys, written to
// out + i out_row. q_bias and v_bias point at the head's d_head bias values (nullptr: none). For a tile
// of queries, scores are formed a block of keys at a time (accumulated over the head's columns), then
// softmax per query, then the weighted values a block of columns at a time (accumulated over the keys).
// A padded key gets a score far below any real one, whose weight exp() rounds to zero (finite, as
// -ffast-math requires); the tile runs over the keys its last query sees, the others' weights past
// their own keys are zero.
template <typename T, typename K, typename Acc, typename O>
void attend_head(const HeadOperands<T, K>& op, int64_t length, int64_t queries, int64_t dh, const bool* real,
                 bool causal, const Acc* q_bias, const Acc* v_bias, O* out, int64_t out_row,
                 AttentionScratch<Acc>& scratch) {
  using L = Lanes<Acc>;
  using Vector = typename L::Vector;
  const int64_t stride = scratch.padded_length;
  Acc *scores = scratch.scores.data(), *query = scratch.query.data(), *key_mask = scratch.key_mask.data();
  const Acc scale = Acc(1) / std::sqrt(static_cast<Acc>(dh));
  const Acc hidden = std::numeric_limits<Acc>::lowest() / 4;
  for (int64_t j = 0; j < stride; ++j) key_mask[j] = j < length && real[j] ? Acc(0) : hidden;
  Vector lane_index;  // 0, 1, ..., count - 1
  for (int64_t l = 0; l < L::count; ++l) lane_index[l] = Acc(l);
  for (int64_t i0 = 0; i0 < queries; i0 += kQueryTile) {
    const int64_t tile = std::min(kQueryTile, queries - i0);
    const int64_t first = length - queries + i0;  // position of the tile's first query
    const int64_t seen = causal ? first + tile : length;
    for (int64_t t = 0; t < kQueryTile; ++t) {  // a short tile repeats its last query
      const T* qi = op.q + (i0 + std::min(t, tile - 1)) * op.q_row;
      for (int64_t e = 0; e < dh; ++e) query[t * dh + e] = (widen(qi[e]) + (q_bias ? q_bias[e] : Acc(0))) * scale;
    }
    for (int64_t j0 = 0; j0 < seen; j0 += L::count) {
      Vector block[kQueryTile] = {};
      for (int64_t e = 0; e < dh; ++e) {
        const Vector key = L::load(op.keys + e * op.key_column + j0);
        for (int64_t t = 0; t < kQueryTile; ++t) block[t] += query[t * dh + e] * key;
      }
      for (int64_t t = 0; t < kQueryTile; ++t) L::store(scores + t * stride + j0, block[t]);
    }
    // Softmax of each query's row over whole blocks: keys it may not see (padded, or past its position
    // when causal) get `hidden`, so their weights come out as zeros.
    Acc inverse[kQueryTile] = {};
    for (int64_t t = 0; t < tile; ++t) {
      const int64_t position = first + t;
      const Acc visible = Acc(causal ? position + 1 : length);
      Acc* row = scores + t * stride;
      const Acc own = row[position];  // a query always sees itself, padded or not
      Vector largest = hidden - Vector{};
      for (int64_t j0 = 0; j0 < seen; j0 += L::count) {
        Vector block = L::load(row + j0);
        block = (lane_index + Acc(j0) < visible) & (L::load(key_mask + j0) == Acc(0)) ? block : hidden - Vector{};
        L::store(row + j0, block);
        largest = largest > block ? largest : block;
      }
      row[position] = own;
      Acc shift = own;
      for (int64_t l = 0; l < L::count; ++l) shift = std::max(shift, largest[l]);
      // exp's argument is kept above kLowest, where the vector exp needs no slow path for underflow; hidden
      // keys get an exact zero instead.
      Vector total = {};
      for (int64_t j0 = 0; j0 < seen; j0 += L::count) {
        const Vector block = L::load(row + j0), shifted = block - shift, low = Acc(kLowest) - Vector{};
        const Vector weights = block > hidden ? L::exp(shifted > low ? shifted : low) : Vector{};
        L::store(row + j0, weights);
        total += weights;
      }
      Acc sum = 0;
      for (int64_t l = 0; l < L::count; ++l) sum += total[l];
      inverse[t] = Acc(1) / sum;
    }
    for (int64_t t = tile; t < kQueryTile; ++t) std::fill(scores + t * stride, scores + t * stride + seen, Acc(0));
    for (int64_t e0 = 0; e0 < dh; e0 += L::count) {
      Vector block[kQueryTile] = {};
      if (e0 + L::count <= dh) {
        for (int64_t j = 0; j < seen; ++j) {
          const Vector value = L::load(op.v + j * op.v_row + e0);
          for (int64_t t = 0; t < kQueryTile; ++t) block[t] += scores[t * stride + j] * value;
        }
      } else {  // the head's last, partial block of columns
        for (int64_t j = 0; j < seen; ++j)
          for (int64_t l = 0; e0 + l < dh; ++l) {
            const Acc value = widen(op.v[j * op.v_row + e0 + l]);
            for (int64_t t = 0; t < kQueryTile; ++t) block[t][l] += scores[t * stride + j] * value;
          }
      }
      for (int64_t t = 0; t < tile; ++t) {
        O* target = out + (i0 + t) * out_row;
        for (int64_t l = 0; l < L::count && e0 + l < dh; ++l)
          target[e0 + l] = narrow_to<O>(block[t][l] * inverse[t] + (v_bias ? v_bias[e0 + l] : Acc(0)));
      }
    }
  }
}

// Keys of one (sequence, head) given as rows (key j: k + j k_row, d_head values) copied transposed into
// the scratch (zeros past the end); returns them, one column every scratch.padded_length values.
template <typename T, typename Acc>
const Acc* transpose_keys(const T* k, int64_t k_row, int64_t length, int64_t dh, AttentionScratch<Acc>& scratch) {
  Acc* keys = scratch.keys.data();
  const int64_t stride = scratch.padded_length;
  for (int64_t e = 0; e < dh; ++e)
    for (int64_t j = 0; j < length; ++j) keys[e * stride + j] = widen(k[j * k_row + e]);
  return keys;
}
