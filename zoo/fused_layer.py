"""A post-norm Transformer layer -- residual self-attention, then residual feed-forward -- run as one
compiled CPU pass for inference (``blocks/transformer_layer_cpu.cpp``).

Recipes build the layer from generic pieces (``residual: {block: self_attention}`` then ``residual:
{block: ffn}``, post-norm LayerNorm, as SASRec and BERT4Rec), which PyTorch runs as about twenty
operations over the whole batch. :class:`zoo.combinators.Sequential` recognises such a pair
(:func:`fusable`) and, when :func:`applies` -- ``SEQREC_ZOO_CPU_KERNEL=1``, CPU tensors, nothing to
differentiate, no active dropout -- hands it to the kernel, which takes a few thousand rows (whole
sequences) at a time through the whole layer while they are in cache. The result equals the pair's own
``forward`` (and ``forward_last``). Under bf16 autocast the matrix products run in bf16, as autocast
would run them; attention, LayerNorms, activation and residuals stay in fp32.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from blocks import compiled

ACTIVATION_CODES = {nn.Identity: 0, nn.ReLU: 1, nn.GELU: 2, nn.SiLU: 3, nn.Tanh: 4, nn.Sigmoid: 5}


def _post_norm(layer: nn.Module, block_name: str) -> bool:
    """A residual around the registered block ``block_name``, post-norm with an affine LayerNorm."""
    norm = getattr(layer, "norm", None)
    return (getattr(getattr(layer, "inner", None), "block_name", None) == block_name and not layer.norm_first
            and isinstance(norm, nn.LayerNorm) and norm.weight is not None and norm.bias is not None)


def _activation_code(activation: nn.Module) -> int | None:
    if isinstance(activation, nn.GELU) and activation.approximate != "none":
        return None
    return ACTIVATION_CODES.get(type(activation))


def fusable(first: nn.Module, second: nn.Module) -> bool:
    """Whether ``first, second`` are a post-norm (LayerNorm) residual ``self_attention`` and a post-norm
    residual ``ffn`` whose activation the kernel knows."""
    return (_post_norm(first, "self_attention") and _post_norm(second, "ffn")
            and _activation_code(second.inner.activation) is not None)


def applies(first: nn.Module, second: nn.Module, x: Tensor) -> bool:
    """Whether the fused kernel should run the pair on ``x`` now: requested, on the CPU, no gradient, and
    every dropout inactive."""
    dropouts = (first.dropout.p, first.inner.dropout, second.dropout.p, second.inner.dropout.p)
    dropout_active = (first.training or second.training) and any(dropouts)
    return compiled.serves_inference(x, first, second, dropout_active=dropout_active)


def forward(first: nn.Module, second: nn.Module, x: Tensor, mask: Tensor, newest_only: bool = False) -> Tensor:
    """``second(first(x, mask), mask)`` -- or, with ``newest_only``, its newest position ``(B, 1, D)`` --
    from the fused kernel."""
    attention, ffn = first.inner, second.inner
    dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
    gemm_dtype = torch.get_autocast_dtype("cpu") if torch.is_autocast_enabled("cpu") and dtype == torch.float32 else dtype

    def matrix(linear: nn.Linear) -> Tensor:
        return linear.weight.to(gemm_dtype)

    def vector(parameter: Tensor | None, size: int) -> Tensor:
        return torch.zeros(size, dtype=dtype) if parameter is None else parameter.to(dtype).contiguous()

    width = x.shape[-1]
    return compiled.load("transformer_layer").forward(
        x.to(dtype).contiguous(), mask.contiguous(),
        matrix(attention.qkv), vector(attention.qkv.bias, 3 * width),
        matrix(attention.out), vector(attention.out.bias, width),
        vector(first.norm.weight, width), vector(first.norm.bias, width), first.norm.eps,
        matrix(ffn.w1), vector(ffn.w1.bias, ffn.w1.out_features),
        matrix(ffn.w2), vector(ffn.w2.bias, width),
        vector(second.norm.weight, width), vector(second.norm.bias, width), second.norm.eps,
        attention.num_heads, attention.causal, newest_only, _activation_code(ffn.activation),
    )
