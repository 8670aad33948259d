// Masked multi-head attention for inference, one fused CPU loop per (sequence, head)
// (Vaswani et al. 2017 Eq. 1: softmax(Q K^T / sqrt(d_head) + M) V).
//
// Built on first use by blocks/compiled.py (on by default; SEQREC_ZOO_CPU_KERNEL=0 turns it off) and called by the
// self_attention block when no gradient is needed. It replaces the chain of PyTorch operations around
// scaled_dot_product_attention (building the (B, 1, L, L) mask, splitting heads with permutes, the
// attention kernel, merging heads with a copy) by one pass that reads Q, K and V where the QKV
// projection wrote them and writes the merged heads where the output projection reads them.
//
// The loop itself, its layouts and mask rule are in attention.h.

#include "attention.h"

#include <ATen/Parallel.h>

namespace {

// Shapes and strides (in elements) of one call: q (batch, queries, width), k and v (batch, length, width).
struct Layout {
  int64_t batch, queries, length, width, heads, d_head;
  int64_t q_batch, q_row, k_batch, k_row, v_batch, v_row;
};

template <typename T, typename Acc>
void attend_all(const Layout& s, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& mask,
                at::Tensor& out, bool causal) {
  const T *qp = q.data_ptr<T>(), *kp = k.data_ptr<T>(), *vp = v.data_ptr<T>();
  const bool* mp = mask.data_ptr<bool>();
  T* op = out.data_ptr<T>();
  at::parallel_for(0, s.batch * s.heads, 1, [&](int64_t begin, int64_t end) {
    AttentionScratch<Acc> scratch(s.length, s.d_head);
    for (int64_t task = begin; task < end; ++task) {
      const int64_t b = task / s.heads, column = (task % s.heads) * s.d_head;
      const Acc* keys = transpose_keys(kp + b * s.k_batch + column, s.k_row, s.length, s.d_head, scratch);
      const HeadOperands<T, Acc> operands{qp + b * s.q_batch + column, s.q_row, keys, scratch.padded_length,
                                          vp + b * s.v_batch + column, s.v_row};
      attend_head<T, Acc, Acc, T>(operands, s.length, s.queries, s.d_head, mp + b * s.length, causal, nullptr,
                                  nullptr, op + b * s.queries * s.width + column, s.width, scratch);
    }
  });
}

at::Tensor attend(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& mask, int64_t heads,
                  bool causal) {
  TORCH_CHECK(q.dim() == 3 && k.dim() == 3 && v.dim() == 3, "attend: q, k, v must be (batch, rows, width)");
  TORCH_CHECK(k.sizes() == v.sizes(), "attend: k and v must have the same shape");
  TORCH_CHECK(q.size(0) == k.size(0) && q.size(2) == k.size(2), "attend: q and k differ in batch or width");
  TORCH_CHECK(q.size(1) >= 1 && q.size(1) <= k.size(1), "attend: between 1 and length query rows");
  TORCH_CHECK(q.stride(2) == 1 && k.stride(2) == 1 && v.stride(2) == 1, "attend: the width must be contiguous");
  TORCH_CHECK(q.scalar_type() == k.scalar_type() && q.scalar_type() == v.scalar_type(), "attend: q, k, v dtypes differ");
  TORCH_CHECK(mask.scalar_type() == at::kBool && mask.is_contiguous() && mask.size(0) == k.size(0) &&
                  mask.size(1) == k.size(1) && mask.dim() == 2,
              "attend: mask must be a contiguous (batch, length) bool tensor");
  TORCH_CHECK(heads >= 1 && q.size(2) % heads == 0, "attend: the width must be divisible by the heads");
  const Layout s{q.size(0), q.size(1),  k.size(1),   q.size(2),   heads,       q.size(2) / heads,
                 q.stride(0), q.stride(1), k.stride(0), k.stride(1), v.stride(0), v.stride(1)};
  at::Tensor out = at::empty({s.batch, s.queries, s.width}, q.options());
  switch (q.scalar_type()) {
    case at::kFloat: attend_all<float, float>(s, q, k, v, mask, out, causal); break;
    case at::kDouble: attend_all<double, double>(s, q, k, v, mask, out, causal); break;
    case at::kBFloat16: attend_all<at::BFloat16, float>(s, q, k, v, mask, out, causal); break;
    default: TORCH_CHECK(false, "attend: float32, float64 or bfloat16 inputs, got ", q.scalar_type());
  }
  return out;
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("attend", &attend, "masked multi-head attention for inference (merged heads out)");
}
