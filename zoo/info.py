"""What ``zoo info`` shows: the block tree with parameter counts, FLOPs, streaming."""

from __future__ import annotations

from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from zoo import combinators
from zoo.model import SeqRecModel


def count_parameters(module: nn.Module) -> int:
    """Trainable parameters, each shared tensor counted once."""
    return sum(p.numel() for p in {id(p): p for p in module.parameters() if p.requires_grad}.values())


def _describe(module: nn.Module) -> str:
    if isinstance(module, combinators.Sequential):
        return "sequential"
    if isinstance(module, combinators.Parallel):
        return f"parallel ({len(module.branches)} branches)"
    if isinstance(module, combinators.Residual):
        order = "pre-norm" if module.norm_first else "post-norm"
        return f"residual (dropout {module.dropout.p}, {type(module.norm).__name__}, {order})"
    args = ", ".join(f"{k}={v}" for k, v in getattr(module, "recipe_args", {}).items())
    return f"{getattr(module, 'block_name', type(module).__name__)}({args})"


def _children(module: nn.Module) -> list[tuple[str, nn.Module]]:
    if isinstance(module, combinators.Sequential):
        return [(f"[{i}]", m) for i, m in enumerate(module.layers)]
    if isinstance(module, combinators.Parallel):
        return [(f"branch {i}", m) for i, m in enumerate(module.branches)] + [("fuse", module.fuse)]
    if isinstance(module, combinators.Residual):
        return [("", module.inner)]
    return []


def block_tree(model: SeqRecModel) -> list[str]:
    """Lines of the model's block tree, each with its parameter count."""
    lines: list[str] = []

    def walk(label: str, module: nn.Module, prefix: str, last: bool, root: bool = False) -> None:
        branch = "" if root else ("└─ " if last else "├─ ")
        text = f"{label}: {_describe(module)}" if label else _describe(module)
        lines.append(f"{prefix}{branch}{text}  [{count_parameters(module):,} params]")
        kids = _children(module)
        for i, (child_label, child) in enumerate(kids):
            extension = "" if root else ("   " if last else "│  ")
            walk(child_label, child, prefix + extension, i == len(kids) - 1)

    for name in ("item_encoder", "encoder", "readout", "head"):
        walk(name, getattr(model, name), "", True, root=True)
    return lines


def flops_per_sequence(model: SeqRecModel, length: int) -> int:
    """Matmul/convolution FLOPs of scoring one sequence of ``length`` items (torch's FLOP counter).

    Counts the operations torch's counter knows (matmuls, convolutions, attention); elementwise
    work such as a state-space scan's recurrence is not included.
    """
    import torch

    length = min(length, model.max_len)
    ids = torch.randint(1, model.num_items + 1, (1, length))
    timestamps = torch.arange(length, dtype=torch.float64).unsqueeze(0) * 86400 + 8.8e8
    was_training = model.training
    model.eval()
    counter = FlopCounterMode(display=False)
    with counter:
        model.score(ids, timestamps)
    model.train(was_training)
    return counter.get_total_flops()


def block_arguments(cls: type) -> list[tuple[str, str, str]]:
    """``(name, type, default)`` of the arguments a recipe may give block ``cls`` (its constructor's, less the
    model-level facts ``d_model`` / ``num_items`` / ``max_len`` that the builder passes itself)."""
    import inspect

    from zoo.registry import CONTEXT_ARGS

    rows = []
    for name, parameter in inspect.signature(cls.__init__).parameters.items():
        if name == "self" or name in CONTEXT_ARGS or parameter.kind in (parameter.VAR_POSITIONAL, parameter.VAR_KEYWORD):
            continue
        annotation = parameter.annotation
        kind = "" if annotation is parameter.empty else (annotation if isinstance(annotation, str) else
                                                         getattr(annotation, "__name__", str(annotation)))
        default = "required" if parameter.default is parameter.empty else repr(parameter.default)
        rows.append((name, kind, default))
    return rows


def block_page(name: str) -> list[str]:
    """What ``zoo info BLOCK`` prints: the block's kind, causality, streaming, docstring and arguments."""
    import inspect

    from zoo.registry import get_block

    cls = get_block(name)
    lines = [f"{name}: {cls.kind} block ({cls.__module__}.{cls.__qualname__})",
             f"  causal: {'yes' if cls.causal else 'no'}; streaming (step): {'yes' if cls.streaming else 'no'}", ""]
    lines += [f"  {line}" if line else "" for line in inspect.cleandoc(cls.__doc__ or "(no description)").splitlines()]
    lines += ["", "arguments (a recipe writes them beside `block:`; d_model, num_items and max_len come from the model):"]
    arguments = block_arguments(cls)
    width = max((len(n) for n, _, _ in arguments), default=0)
    type_width = max((len(k) for _, k, _ in arguments), default=0)
    lines += [f"  {n:<{width}}  {k:<{type_width}}  {d}" for n, k, d in arguments] or ["  (none)"]
    return lines
