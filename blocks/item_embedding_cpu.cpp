// The item_id encoder's inference pass, fused into one CPU call (blocks/item_id.py): item and position
// embeddings, scale and LayerNorm per position, one pass per sequence.
//
// Built on first use by blocks/compiled.py (on by default; SEQREC_ZOO_CPU_KERNEL=0 turns it off) and called by the item_id
// block when no gradient is needed.

#include "layer_norm.h"

#include <ATen/Parallel.h>
#include <torch/extension.h>

#include <algorithm>

namespace {

using seqrec_zoo::layer_norm;

// The item encoder in front of the layers (blocks/item_id.py, inference): for every position,
//     x = LayerNorm(E[item] scale + P[position])
// with position = real items so far - 1 (0 at padding before the first one), capped at P's last row; no
// P term when `positions` is empty and no LayerNorm when `norm_weight` is. One pass per sequence instead
// of PyTorch's gather, scale, cumulative sum, second gather, sum and LayerNorm over the batch.
template <typename A>
void embed_all(const int64_t* items, const bool* real, const A* table, double scale, const A* positions,
               int64_t position_rows, const A* norm_weight, const A* norm_bias, double eps, A* out, int64_t batch,
               int64_t length, int64_t width) {
  at::parallel_for(0, batch, 1, [&](int64_t begin, int64_t end) {
    for (int64_t b = begin; b < end; ++b) {
      int64_t seen = 0;
      for (int64_t t = 0; t < length; ++t) {
        const int64_t r = b * length + t;
        seen += real[r];
        const A* item = table + items[r] * width;
        const A* position = positions ? positions + std::min(std::max<int64_t>(seen - 1, 0), position_rows - 1) * width
                                      : nullptr;
        A* x = out + r * width;
        for (int64_t c = 0; c < width; ++c) x[c] = item[c] * A(scale) + (position ? position[c] : A(0));
        if (norm_weight) layer_norm(x, width, norm_weight, norm_bias, eps);
      }
    }
  });
}

at::Tensor embed(const at::Tensor& items, const at::Tensor& mask, const at::Tensor& table, double scale,
                 const at::Tensor& positions, const at::Tensor& norm_weight, const at::Tensor& norm_bias, double eps) {
  TORCH_CHECK(items.dim() == 2 && items.scalar_type() == at::kLong && items.is_contiguous(),
              "embed: item ids must be a contiguous (batch, length) int64 tensor");
  TORCH_CHECK(mask.scalar_type() == at::kBool && mask.is_contiguous() && mask.sizes() == items.sizes(),
              "embed: mask must be a contiguous bool tensor shaped like the item ids");
  TORCH_CHECK(table.dim() == 2 && table.is_contiguous(), "embed: the item table must be contiguous (items, width)");
  const int64_t width = table.size(1);
  for (const at::Tensor* t : {&positions, &norm_weight, &norm_bias})
    TORCH_CHECK(t->numel() == 0 || (t->scalar_type() == table.scalar_type() && t->is_contiguous() &&
                                    t->size(-1) == width),
                "embed: positions and norm parameters must be contiguous, in the table's dtype and width (or empty)");
  TORCH_CHECK((norm_weight.numel() == 0) == (norm_bias.numel() == 0), "embed: a LayerNorm needs weight and bias");
  TORCH_CHECK(items.numel() == 0 || (items.min().item<int64_t>() >= 0 && items.max().item<int64_t>() < table.size(0)),
              "embed: item ids outside the table");
  at::NoGradGuard no_grad;
  at::Tensor out = at::empty({items.size(0), items.size(1), width}, table.options());
  AT_DISPATCH_FLOATING_TYPES(table.scalar_type(), "embed", [&] {
    embed_all<scalar_t>(items.data_ptr<int64_t>(), mask.data_ptr<bool>(), table.data_ptr<scalar_t>(), scale,
                        positions.numel() ? positions.data_ptr<scalar_t>() : nullptr,
                        positions.numel() ? positions.size(0) : 0,
                        norm_weight.numel() ? norm_weight.data_ptr<scalar_t>() : nullptr,
                        norm_bias.numel() ? norm_bias.data_ptr<scalar_t>() : nullptr, eps, out.data_ptr<scalar_t>(),
                        items.size(0), items.size(1), width);
  });
  return out;
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("embed", &embed, "the item encoder (item and position embeddings, LayerNorm) for inference");
}
