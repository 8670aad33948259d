// One post-norm Transformer layer for inference, fused into one CPU call over chunks of sequences
// (Vaswani et al. 2017 §3.1 with post-norm residuals, as SASRec, Kang & McAuley 2018 §III-C-D, and
// BERT4Rec use it):
//
//     a = zero_pads(MHA(zero_pads(x)))            MHA: attention.h, then the output projection W_o
//     h = LayerNorm_1(x + a)
//     y = LayerNorm_2(h + act(h W_1 + b_1) W_2 + b_2)
//
// Built on first use by blocks/compiled.py (on by default; SEQREC_ZOO_CPU_KERNEL=0 turns it off) and called by the
// transformer_layer block (blocks/transformer_layer.py) when no gradient is needed. PyTorch runs this as
// about twenty operations, each a pass over the batch with its own dispatch, temporary and (under
// autocast) casts. Here the batch goes through kChunkRows rows (whole sequences) at a time so that each
// intermediate is still in cache when the next pass reads it: the matrix products (Q and V side by side, K
// transposed, W_o, W_1, W_2) go to ATen's GEMM (multi-threaded), and everything between them is one
// threaded pass each: padding; attention with Q's and V's biases; W_o's bias, residual and LayerNorm_1;
// W_1's bias and the activation; W_2's bias, residual and LayerNorm_2.
//
// Layouts: x (batch, length, width) float or double, contiguous; mask (batch, length) bool, True at
// real items; weights as nn.Linear keeps them, (out, in). newest_only computes the output at the last
// position only, (batch, 1, width), with the attention's projections folded into the query and the
// output (attend_newest_row below), so that no product runs over all positions. The products run in the
// weights' dtype G (float, double, or bfloat16 as under autocast); every other step, the folded
// attention's two small products included, is in the accumulation type A (float for float and bfloat16,
// double for double), the output too.

#include "attention.h"
#include "layer_norm.h"

#include <ATen/Parallel.h>

#include <array>
#include <cmath>
#include <optional>

namespace {

using seqrec_zoo::layer_norm;

constexpr int64_t kRowsPerTask = 64;               // grain of the row-wise passes
constexpr int64_t kChunkRows = 4096;               // rows (whole sequences) taken through the layer at a time
constexpr int64_t kFfnRows = 1024;                 // rows of the feed-forward taken at a time
constexpr int64_t kKeptBytes = int64_t(16) << 20;  // largest buffer kept between calls

enum class Activation : int64_t { identity = 0, relu = 1, gelu = 2, silu = 3, tanh = 4, sigmoid = 5 };

// erf in float by Abramowitz & Stegun (1964) 7.1.26, |error| <= 1.5e-7 (a float's resolution near 1); the
// approximation PyTorch's own vectorised float erf, and so its float GELU, uses. A few multiply-adds and
// one exp, which vectorise, where the vector math library's erff costs several times as much.
inline float erf_float(float v) {
  const float t = 1.0f / (1.0f + 0.3275911f * std::fabs(v));
  const float poly =
      t * (0.254829592f + t * (-0.284496736f + t * (1.421413741f + t * (-1.453152027f + t * 1.061405429f))));
  return std::copysign(1.0f - poly * std::exp(-v * v), v);
}

template <typename A>
A erf_of(A v) {
  if constexpr (std::is_same_v<A, float>) return erf_float(v);
  return std::erf(v);
}

template <Activation kind, typename A>
A activate(A v) {
  if constexpr (kind == Activation::relu) return v > A(0) ? v : A(0);
  if constexpr (kind == Activation::gelu) return A(0.5) * v * (A(1) + erf_of(v * A(M_SQRT1_2)));
  if constexpr (kind == Activation::silu) return v / (A(1) + std::exp(-v));
  if constexpr (kind == Activation::tanh) return std::tanh(v);
  if constexpr (kind == Activation::sigmoid) return A(1) / (A(1) + std::exp(-v));
  return v;
}

// out[i] = act(in[i] + bias[i % width]) for rows x width values; one loop per activation so that
// the compiler vectorises it (erf and exp from the vector math library).
template <Activation kind, typename A, typename G>
void bias_activate(const G* in, const A* bias, G* out, int64_t rows, int64_t width) {
  for (int64_t r = 0; r < rows; ++r) {
#pragma omp simd
    for (int64_t c = 0; c < width; ++c)
      out[r * width + c] = narrow_to<G>(activate<kind>(widen(in[r * width + c]) + bias[c]));
  }
}

template <typename A, typename G>
void bias_activate(Activation kind, const G* in, const A* bias, G* out, int64_t rows, int64_t width) {
  switch (kind) {
    case Activation::relu: return bias_activate<Activation::relu>(in, bias, out, rows, width);
    case Activation::gelu: return bias_activate<Activation::gelu>(in, bias, out, rows, width);
    case Activation::silu: return bias_activate<Activation::silu>(in, bias, out, rows, width);
    case Activation::tanh: return bias_activate<Activation::tanh>(in, bias, out, rows, width);
    case Activation::sigmoid: return bias_activate<Activation::sigmoid>(in, bias, out, rows, width);
    default: return bias_activate<Activation::identity>(in, bias, out, rows, width);
  }
}

struct Weights {
  at::Tensor qkv, qkv_bias, out, out_bias, norm1, norm1_bias, ffn_in, ffn_in_bias, ffn_out, ffn_out_bias, norm2,
      norm2_bias;
  double eps1, eps2;
  at::Tensor query_value;  // W_q above W_v, (2 width, width), when every row attends (undefined with newest_only)
};

// The intermediates of a call, kept between calls on the same thread: evaluation calls the layer once
// per batch, and fresh buffers of several megabytes would be new pages for the OS to fault in each time.
// A buffer over kKeptBytes is allocated for its call alone.
enum Buffer {
  kPadded, kQueryValue, kKeys, kAttended, kOutProjected, kFoldedQuery, kFoldedContext, kFoldedProjected, kNormed,
  kNormedGemm, kInner, kFfn, kBuffers
};

at::Tensor buffer(Buffer which, int64_t rows, int64_t columns, const at::TensorOptions& options) {
  thread_local std::array<at::Tensor, kBuffers> kept;
  const int64_t size = rows * columns;
  if (size * int64_t(options.dtype().itemsize()) > kKeptBytes) return at::empty({rows, columns}, options);
  at::Tensor& slot = kept[which];
  if (!slot.defined() || slot.numel() < size || slot.dtype() != options.dtype()) slot = at::empty({size}, options);
  return slot.narrow(0, 0, size).view({rows, columns});
}

// a b into `out` with ATen's GEMM; returns out.
at::Tensor product(at::Tensor out, const at::Tensor& a, const at::Tensor& b) {
  at::mm_out(out, a, b);
  return out;
}

// body(r) for every row r < rows, on the intra-op threads.
template <typename F>
void each_row(int64_t rows, const F& body) {
  at::parallel_for(0, rows, kRowsPerTask, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) body(r);
  });
}

// Q and V of the zero-padded input as rows, K transposed (width rows of all `rows` keys, so that each
// sequence's keys of a column are contiguous), none with its bias (attention adds Q's and V's; K's
// cancels in softmax); attention of every query; the heads' outputs times W_o, without b_o: (rows, width)
// in G.
template <typename A, typename G>
at::Tensor attend_every_row(const A* xp, const bool* real, int64_t batch, int64_t length, int64_t width,
                            const Weights& w, int64_t heads, bool causal) {
  const int64_t rows = batch * length;
  const at::TensorOptions g = w.qkv.options();
  at::Tensor padded = buffer(kPadded, rows, width, g);
  G* pp = padded.template data_ptr<G>();
  each_row(rows, [&](int64_t r) {
    const A* in = xp + r * width;
    G* out = pp + r * width;
    if (real[r]) {
#pragma omp simd
      for (int64_t c = 0; c < width; ++c) out[c] = narrow_to<G>(in[c]);
    } else {
      std::fill(out, out + width, G(0));
    }
  });
  // Q and V side by side in one product: row r holds r's query, then its value.
  const at::Tensor qv = product(buffer(kQueryValue, rows, 2 * width, g), padded, w.query_value.t());
  // Keys: a whole block of lanes readable past the last one, zeros (attend_head reads whole blocks).
  at::Tensor keys_storage = buffer(kKeys, 1, width * rows + Lanes<A>::count, g);
  keys_storage.narrow(1, width * rows, Lanes<A>::count).zero_();
  product(keys_storage.narrow(1, 0, width * rows).view({width, rows}), w.qkv.narrow(0, width, width), padded.t());
  const G *qp = qv.template data_ptr<G>(), *vp = qp + width, *kp = keys_storage.template data_ptr<G>();
  const A* qkv_bias = w.qkv_bias.data_ptr<A>();
  const int64_t d_head = width / heads;
  at::Tensor attended = buffer(kAttended, rows, width, g);
  G* ap = attended.template data_ptr<G>();
  at::parallel_for(0, batch * heads, 1, [&](int64_t begin, int64_t end) {
    AttentionScratch<A> scratch(length, d_head);
    for (int64_t task = begin; task < end; ++task) {
      const int64_t b = task / heads, column = (task % heads) * d_head, first = b * length * 2 * width + column;
      const HeadOperands<G, G> operands{qp + first, 2 * width, kp + column * rows + b * length, rows, vp + first,
                                        2 * width};
      attend_head<G, G, A, G>(operands, length, length, d_head, real + b * length, causal, qkv_bias + column,
                              qkv_bias + 2 * width + column, ap + b * length * width + column, width, scratch);
    }
  });
  return product(buffer(kOutProjected, rows, width, g), attended, w.out.t());
}

// Attention for the newest query alone, with the projections folded into two width x width maps per head
// (matrix products are associative). Head h's score of key j, up to a shift that is the same for every
// key and cancels in softmax, is
//     q_h . k_j = (W_q,h x + b_q,h)^T W_k,h x_j = (x^T M_h + c_h) x_j,  M_h = W_q,h^T W_k,h, c_h = b_q,h^T W_k,h
// and, since a query's weights p_hj sum to one, the output projection of its attention is
//     W_o concat_h(sum_j p_hj (W_v,h x_j + b_v,h)) + b_o = sum_h (sum_j p_hj x_j)^T N_h + (W_o b_v + b_o),
//     N_h = W_v,h^T W_o,h^T      (W_o,h: the d_head columns of W_o that take head h).
// So neither keys nor values are projected: every head attends over the input rows themselves, and the
// layer's cost over all positions is one pass reading them (instead of two products and a padding pass).
struct FoldedAttention {
  at::Tensor query_key;       // (width, heads * width): columns h * width... are M_h / sqrt(d_head)
  at::Tensor query_key_bias;  // (heads * width): c_h / sqrt(d_head)
  at::Tensor value_out;       // (heads * width, width): rows h * width... are N_h
  at::Tensor out_bias;        // (width): W_o b_v + b_o
};

FoldedAttention fold_attention(const Weights& w, int64_t heads) {
  const at::ScalarType acc = w.qkv_bias.scalar_type();
  const int64_t width = w.out.size(0), d_head = width / heads;
  const at::Tensor qkv = w.qkv.to(acc).view({3, heads, d_head, width}), out = w.out.to(acc);
  const at::Tensor query = qkv[0], key = qkv[1], value = qkv[2];  // (heads, d_head, width) each
  const double scale = 1.0 / std::sqrt(double(d_head));
  const at::Tensor query_bias = w.qkv_bias.narrow(0, 0, width).view({heads, 1, d_head});
  return {query.transpose(1, 2).bmm(key).mul_(scale).permute({1, 0, 2}).reshape({width, heads * width}),
          query_bias.bmm(key).mul_(scale).reshape({heads * width}),
          value.transpose(1, 2).bmm(out.view({width, heads, d_head}).permute({1, 2, 0})).reshape({heads * width, width}),
          out.mv(w.qkv_bias.narrow(0, 2 * width, width)) + w.out_bias};
}

// One sequence's newest query, every head: context_h = sum_j softmax_j(query_h . x_j) x_j over the keys it
// sees (the real ones; its own row is real, the caller skips sequences whose newest row is padding).
// query: heads rows of width values; rows: the sequence's length input rows; weights: length values.
template <typename A>
void attend_newest(const A* query, const A* rows, const bool* real, int64_t length, int64_t width, int64_t heads,
                   A* context, A* weights) {
  for (int64_t h = 0; h < heads; ++h) {
    const A* q = query + h * width;
    A largest = std::numeric_limits<A>::lowest();
    for (int64_t j = 0; j < length; ++j) {
      if (!real[j]) continue;
      const A* x = rows + j * width;
      A score = 0;
#pragma omp simd reduction(+ : score)
      for (int64_t c = 0; c < width; ++c) score += q[c] * x[c];
      weights[j] = score;
      largest = std::max(largest, score);
    }
    A total = 0;
    for (int64_t j = 0; j < length; ++j)
      if (real[j]) total += weights[j] = std::exp(weights[j] - largest);
    A* out = context + h * width;
    std::fill(out, out + width, A(0));
    for (int64_t j = 0; j < length; ++j) {
      if (!real[j]) continue;
      const A* x = rows + j * width;
      const A p = weights[j] / total;
#pragma omp simd
      for (int64_t c = 0; c < width; ++c) out[c] += p * x[c];
    }
  }
}

// The heads' outputs times W_o, without the folded bias (W_o b_v + b_o), at each sequence's newest position:
// (batch, width) in A.
template <typename A>
at::Tensor attend_newest_row(const A* xp, const bool* real, int64_t batch, int64_t length, int64_t width,
                             int64_t heads, const FoldedAttention& folded) {
  const at::TensorOptions a = folded.query_key.options();
  const at::Tensor newest = at::from_blob(const_cast<A*>(xp), {batch, length, width}, a).select(1, length - 1);
  at::Tensor query = buffer(kFoldedQuery, batch, heads * width, a);
  at::addmm_out(query, folded.query_key_bias, newest, folded.query_key);
  at::Tensor context = buffer(kFoldedContext, batch, heads * width, a);
  const A* qp = query.data_ptr<A>();
  A* cp = context.data_ptr<A>();
  at::parallel_for(0, batch, kRowsPerTask, [&](int64_t begin, int64_t end) {
    std::vector<A> weights(length);
    for (int64_t b = begin; b < end; ++b) {
      A* out = cp + b * heads * width;
      if (real[b * length + length - 1])
        attend_newest(qp + b * heads * width, xp + b * length * width, real + b * length, length, width, heads, out,
                      weights.data());
      else  // a padded query's attention is not used (zero_pads); zeros keep the product below finite
        std::fill(out, out + heads * width, A(0));
    }
  });
  return product(buffer(kFoldedProjected, batch, width, a), context, folded.value_out);
}

// The rest of the layer on query_rows rows, given `projected` (P: A or G), the attention's output times W_o:
//     h = LayerNorm_1(x + zero_pads(projected + out_bias))     (kept in A for the residual, in G for W_1)
//     y = LayerNorm_2(h + act(h W_1 + b_1) W_2 + b_2)
// Query row r reads input row r, or with newest_only the newest row of sequence r.
template <typename A, typename G, typename P>
void finish_layer(const A* xp, const bool* real, A* yp, int64_t query_rows, int64_t length, bool newest_only,
                  const P* op, const A* out_bias, const Weights& w, Activation activation) {
  const int64_t width = w.out.size(0), hidden_width = w.ffn_in.size(0);
  const at::TensorOptions g = w.qkv.options(), a = w.qkv_bias.options();
  at::Tensor normed = buffer(kNormed, query_rows, width, a);
  at::Tensor normed_g = std::is_same_v<A, G> ? normed : buffer(kNormedGemm, query_rows, width, g);
  A* hp = normed.data_ptr<A>();
  G* hg = normed_g.template data_ptr<G>();
  const A *norm1 = w.norm1.data_ptr<A>(), *norm1_bias = w.norm1_bias.data_ptr<A>();
  each_row(query_rows, [&](int64_t r) {
    const int64_t source = newest_only ? r * length + length - 1 : r;
    A* h = hp + r * width;
    const A* in = xp + source * width;
    const P* attended_row = op + r * width;
    if (real[source]) {
#pragma omp simd
      for (int64_t c = 0; c < width; ++c) h[c] = in[c] + widen(attended_row[c]) + out_bias[c];
    } else {
      std::copy(in, in + width, h);
    }
    layer_norm(h, width, norm1, norm1_bias, w.eps1);
    if constexpr (!std::is_same_v<A, G>) {
      G* h_gemm = hg + r * width;
#pragma omp simd
      for (int64_t c = 0; c < width; ++c) h_gemm[c] = narrow_to<G>(h[c]);
    }
  });

  // kFfnRows rows at a time, so that the hidden-width intermediate stays in cache between the two products.
  const A *in_bias = w.ffn_in_bias.data_ptr<A>(), *ffn_out_bias = w.ffn_out_bias.data_ptr<A>();
  const A *norm2 = w.norm2.data_ptr<A>(), *norm2_bias = w.norm2_bias.data_ptr<A>();
  for (int64_t start = 0; start < query_rows; start += kFfnRows) {
    const int64_t count = std::min(kFfnRows, query_rows - start);
    at::Tensor inner = product(buffer(kInner, count, hidden_width, g), normed_g.narrow(0, start, count), w.ffn_in.t());
    G* ip = inner.template data_ptr<G>();
    at::parallel_for(0, count, kRowsPerTask, [&](int64_t begin, int64_t end) {
      bias_activate<A, G>(activation, ip + begin * hidden_width, in_bias, ip + begin * hidden_width, end - begin,
                          hidden_width);
    });
    const G* fp = product(buffer(kFfn, count, width, g), inner, w.ffn_out.t()).template data_ptr<G>();
    each_row(count, [&](int64_t i) {
      const int64_t r = start + i;
      A* out = yp + r * width;
      const A* h = hp + r * width;
      const G* ffn_row = fp + i * width;
#pragma omp simd
      for (int64_t c = 0; c < width; ++c) out[c] = h[c] + widen(ffn_row[c]) + ffn_out_bias[c];
      layer_norm(out, width, norm2, norm2_bias, w.eps2);
    });
  }
}

// The layer on `batch` whole sequences whose rows start at xp, real (their mask) and yp (the output);
// `folded` (newest_only only) holds the attention's folded weights.
template <typename A, typename G>
void layer_chunk(const A* xp, const bool* real, A* yp, int64_t batch, int64_t length, int64_t width, const Weights& w,
                 int64_t heads, bool causal, const FoldedAttention* folded, Activation activation) {
  if (folded) {
    const at::Tensor projected = attend_newest_row<A>(xp, real, batch, length, width, heads, *folded);
    finish_layer<A, G, A>(xp, real, yp, batch, length, true, projected.data_ptr<A>(),
                          folded->out_bias.data_ptr<A>(), w, activation);
  } else {
    const at::Tensor projected = attend_every_row<A, G>(xp, real, batch, length, width, w, heads, causal);
    finish_layer<A, G, G>(xp, real, yp, batch * length, length, false, projected.template data_ptr<G>(),
                          w.out_bias.data_ptr<A>(), w, activation);
  }
}

// The whole batch a chunk of whole sequences at a time: kChunkRows rows, so that every intermediate of a
// chunk stays in cache from the pass that writes it to the one that reads it; with newest_only, whose
// intermediates have one row per sequence, kFfnRows sequences.
template <typename A, typename G>
at::Tensor layer_all(const at::Tensor& x, const at::Tensor& mask, const Weights& w, int64_t heads, bool causal,
                     bool newest_only, Activation activation) {
  const int64_t batch = x.size(0), length = x.size(1), width = x.size(2), queries = newest_only ? 1 : length;
  at::Tensor y = at::empty({batch, queries, width}, x.options());
  const std::optional<FoldedAttention> folded = newest_only ? std::optional(fold_attention(w, heads)) : std::nullopt;
  const int64_t per_chunk = newest_only ? kFfnRows : std::max<int64_t>(1, kChunkRows / length);
  for (int64_t first = 0; first < batch; first += per_chunk)
    layer_chunk<A, G>(x.data_ptr<A>() + first * length * width, mask.data_ptr<bool>() + first * length,
                      y.data_ptr<A>() + first * queries * width, std::min(per_chunk, batch - first), length, width, w,
                      heads, causal, folded ? &*folded : nullptr, activation);
  return y;
}

at::Tensor forward(const at::Tensor& x, const at::Tensor& mask, const at::Tensor& qkv, const at::Tensor& qkv_bias,
                   const at::Tensor& out, const at::Tensor& out_bias, const at::Tensor& norm1,
                   const at::Tensor& norm1_bias, double eps1, const at::Tensor& ffn_in, const at::Tensor& ffn_in_bias,
                   const at::Tensor& ffn_out, const at::Tensor& ffn_out_bias, const at::Tensor& norm2,
                   const at::Tensor& norm2_bias, double eps2, int64_t heads, bool causal, bool newest_only,
                   int64_t activation) {
  TORCH_CHECK(x.dim() == 3 && x.is_contiguous(), "transformer layer: x must be a contiguous (batch, length, width)");
  TORCH_CHECK(x.scalar_type() == at::kFloat || x.scalar_type() == at::kDouble, "transformer layer: x float or double");
  const int64_t width = x.size(2);
  TORCH_CHECK(mask.scalar_type() == at::kBool && mask.is_contiguous() && mask.dim() == 2 &&
                  mask.size(0) == x.size(0) && mask.size(1) == x.size(1),
              "transformer layer: mask must be a contiguous (batch, length) bool tensor");
  TORCH_CHECK(heads >= 1 && width % heads == 0, "transformer layer: the width must be divisible by the heads");
  TORCH_CHECK(qkv.size(0) == 3 * width && qkv.size(1) == width && out.size(0) == width && out.size(1) == width &&
                  ffn_in.size(1) == width && ffn_out.size(0) == width && ffn_out.size(1) == ffn_in.size(0),
              "transformer layer: weight shapes do not match the width");
  for (const at::Tensor* vector : {&qkv_bias, &out_bias, &norm1, &norm1_bias, &ffn_in_bias, &ffn_out_bias, &norm2,
                                   &norm2_bias})
    TORCH_CHECK(vector->scalar_type() == x.scalar_type() && vector->is_contiguous(),
                "transformer layer: biases and norm weights must be contiguous, in x's dtype");
  at::NoGradGuard no_grad;  // nothing here is differentiated (zoo/fused_layer.py runs it for inference only)
  // The products run in the weights' dtype as given (autocast's choice was made by the caller).
  const c10::impl::ExcludeDispatchKeyGuard no_autocast(c10::autocast_dispatch_keyset);
  const Weights w{qkv, qkv_bias, out, out_bias, norm1, norm1_bias, ffn_in, ffn_in_bias, ffn_out, ffn_out_bias,
                  norm2, norm2_bias, eps1, eps2,
                  newest_only ? at::Tensor() : at::cat({qkv.narrow(0, 0, width), qkv.narrow(0, 2 * width, width)})};
  const auto kind = static_cast<Activation>(activation);
  const auto gemm = qkv.scalar_type();
  for (const at::Tensor* matrix : {&out, &ffn_in, &ffn_out})
    TORCH_CHECK(matrix->scalar_type() == gemm, "transformer layer: the four weight matrices must share a dtype");
  if (x.scalar_type() == at::kDouble) {
    TORCH_CHECK(gemm == at::kDouble, "transformer layer: double inputs need double weights");
    return layer_all<double, double>(x, mask, w, heads, causal, newest_only, kind);
  }
  if (gemm == at::kBFloat16) return layer_all<float, at::BFloat16>(x, mask, w, heads, causal, newest_only, kind);
  TORCH_CHECK(gemm == at::kFloat, "transformer layer: float inputs need float or bfloat16 weights");
  return layer_all<float, float>(x, mask, w, heads, causal, newest_only, kind);
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("forward", &forward, "one post-norm Transformer layer (self-attention, then feed-forward) for inference");
}
