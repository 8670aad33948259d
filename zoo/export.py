"""Export a model's inference path for serving: a ``torch.export`` program (``.pt2``) or ONNX.

:func:`export_model` writes the **score** program, ``item_ids (B, max_len) int64`` (left-padded with 0)
-> ``scores (B, num_items + 1) float32`` (column 0 ``-inf``), with ``timestamps (B, max_len) float64``
as a second input for a model whose item encoder reads them. For a streaming model
(``model.supports_streaming``) it also writes the **step** program beside it (``NAME.step.pt2`` /
``NAME.step.onnx``): ``item_ids_t (B,)`` (and ``timestamps_t (B,)``) and the state tensors in, the
scores and the next state tensors out; the initial state is zeros. The batch size ``B`` is dynamic;
the length is fixed at ``max_len`` (Mamba's scans and the GRU trace as ``max_len`` unrolled steps).

The programs run :meth:`~zoo.model.SeqRecModel.score_unchecked` and
:meth:`~zoo.model.SeqRecModel.step_unchecked`: the eager input checks read tensor values, which a tracer
cannot follow, so the caller of an exported program guarantees what they would check (ids in
``0..num_items``, left padding, at least one item per row, finite timestamps). While a tracer records,
blocks take their traceable pure paths (:func:`zoo.blocks.compiled.tracing`): no compiled CPU kernels,
the step-by-step reference scans, an unpacked GRU. Each file carries its signature as JSON
(:func:`read_signature`). See docs/export.md.
"""

from __future__ import annotations

import json
import re
import traceback
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, get_args

import torch
from torch import Tensor, nn
from torch.export import Dim, ExportedProgram
from torch.utils import _pytree as pytree

from zoo.blocks.base import Block, State
from zoo.model import SeqRecModel

Format = Literal["torch-export", "onnx"]
FORMATS: tuple[str, ...] = get_args(Format)
ONNX_OPSET = 18  # DFT (the FFT filters of M2Rec and FMLP-SIGMA) needs >= 17; onnxruntime has long run 18
SIGNATURE_KEY = "seqrec_zoo"  # a .pt2's extra file seqrec_zoo.json, an ONNX model's metadata_props key
BATCH = "batch"  # the name of the dynamic batch dimension
EXAMPLE_TIME = 1.6e9  # Unix seconds (2020-09-13) of the example inputs' oldest item
DAY = 86400.0


class ExportError(RuntimeError):
    """A model (or one of its blocks) that cannot be exported in the asked format, and why."""


@dataclass(frozen=True)
class Exported:
    """What :func:`export_model` wrote: the ``score`` file and, for a streaming model, the ``step`` file, and
    each program's signature by its name (as :func:`read_signature` reads it back)."""

    score: Path
    step: Path | None
    signatures: dict[str, dict[str, Any]]


class ScoreProgram(nn.Module):
    """``forward(item_ids (B, max_len) int64, [timestamps (B, max_len) float64]) -> scores (B, num_items + 1)``,
    unchecked; the timestamps are given to a time-aware model only."""

    def __init__(self, model: SeqRecModel) -> None:
        super().__init__()
        self.model = model

    def forward(self, *inputs: Tensor) -> Tensor:
        return self.model.score_unchecked(*inputs)


class ItemEncoding(nn.Module):
    """``forward(item_ids, timestamps)``: the model's item encoder alone (to see whether it reads the time)."""

    def __init__(self, model: SeqRecModel) -> None:
        super().__init__()
        self.item_encoder = model.item_encoder

    def forward(self, item_ids: Tensor, timestamps: Tensor) -> Tensor:
        return self.item_encoder(item_ids, item_ids > 0, timestamps)


class StepProgram(nn.Module):
    """``forward(item_ids_t (B,), [timestamps_t (B,),] *state) -> (scores, *next_state)``, unchecked.

    ``state`` is the model's streaming state flattened to its tensors in :func:`torch.utils._pytree` order;
    its ``None`` leaves (position-wise blocks keep no state) stay out of the program's inputs and outputs."""

    def __init__(self, model: SeqRecModel, example_state: State, timed: bool) -> None:
        super().__init__()
        self.model, self.timed = model, timed
        leaves, self.spec = pytree.tree_flatten(example_state)
        self.width = len(leaves)
        self.slots = [i for i, leaf in enumerate(leaves) if leaf is not None]

    def forward(self, *inputs: Tensor) -> tuple[Tensor, ...]:
        item_ids_t, *rest = inputs
        timestamps_t, tensors = (rest[0], rest[1:]) if self.timed else (None, rest)
        leaves: list[Tensor | None] = [None] * self.width
        for slot, tensor in zip(self.slots, tensors):
            leaves[slot] = tensor
        scores, state = self.model.step_unchecked(item_ids_t, pytree.tree_unflatten(leaves, self.spec), timestamps_t)
        return (scores, *(leaf for leaf in pytree.tree_leaves(state) if leaf is not None))


def export_model(
    model_or_name: SeqRecModel | str,
    out_path: str | Path,
    format: Format = "torch-export",
    *,
    batch_size: int = 2,
    num_items: int | None = None,
) -> Exported:
    """Export a model's inference path to ``out_path`` (see the module docstring); returns the files written.

    ``model_or_name`` is a model or a name for ``zoo.create(name, pretrained=True)`` (a published tag,
    ``local-dir:DIR``, ``hf-hub:org/name``); with ``num_items``, a recipe for the untrained
    ``zoo.create(name, num_items=num_items)``. ``batch_size`` (>= 2) is the example batch traced; the
    exported batch dimension is dynamic (1 included). The model must be on the CPU; it is traced in eval
    mode and left in its mode."""
    if format not in FORMATS:
        raise ValueError(f"format must be one of {', '.join(FORMATS)}, got {format!r}")
    if batch_size < 2:
        raise ValueError(f"batch_size must be >= 2, got {batch_size}: torch.export fixes a dimension traced at size 1")
    model = model_or_name if isinstance(model_or_name, SeqRecModel) else load_model(model_or_name, num_items)
    if model._all_items.device.type != "cpu":
        raise ValueError(f"export traces the model on the CPU; move it there first (model.cpu()), it is on {model._all_items.device}")
    out_path = Path(out_path)
    training = model.training
    model.eval()
    try:
        with torch.no_grad():
            timed = reads_timestamps(model)
            score, score_signature = export_score(model, timed, batch_size)
            signatures = {"score": score_signature}
            paths = {"score": save(score, score_signature, out_path, format, model)}
            if model.supports_streaming:
                step, signatures["step"] = export_step(model, timed, batch_size)
                paths["step"] = save(step, signatures["step"], step_path(out_path), format, model)
    finally:
        model.train(training)
    return Exported(paths["score"], paths.get("step"), signatures)


def load_model(name: str, num_items: int | None) -> SeqRecModel:
    """``zoo.create(name, pretrained=True)``, or with ``num_items`` the untrained ``zoo.create(name, num_items=...)``."""
    from zoo.factory import create

    return create(name, pretrained=True) if num_items is None else create(name, num_items=num_items)


def step_path(out_path: Path) -> Path:
    """Where the step program of ``out_path``'s model goes: ``model.onnx`` -> ``model.step.onnx``."""
    return out_path.with_name(f"{out_path.stem}.step{out_path.suffix}")


def reads_timestamps(model: SeqRecModel) -> bool:
    """Whether the model's item encoder reads timestamps: its traced graph uses its timestamps input."""
    item_ids, timestamps = example_history(model, 2)
    program = trace(ItemEncoding(model).eval(), (item_ids, timestamps), None, model)
    placeholder = next(node for node in program.graph.nodes if node.name == program.graph_signature.user_inputs[1])
    return bool(placeholder.users)


def example_history(model: SeqRecModel, batch_size: int) -> tuple[Tensor, Tensor]:
    """Left-padded example inputs ``(batch_size, max_len)``, the first row full, the others shorter, and
    daily timestamps."""
    width = model.max_len
    lengths = width - torch.arange(batch_size) % width
    positions = torch.arange(width)
    real = positions >= width - lengths.unsqueeze(1)
    item_ids = torch.where(real, positions % model.num_items + 1, 0)
    timestamps = torch.where(real, EXAMPLE_TIME + DAY * positions.double(), 0.0)
    return item_ids, timestamps


def export_score(model: SeqRecModel, timed: bool, batch_size: int) -> tuple[ExportedProgram, dict[str, Any]]:
    """The traced score program and its signature."""
    item_ids, timestamps = example_history(model, batch_size)
    inputs = [("item_ids", item_ids, 0)] + ([("timestamps", timestamps, 0)] if timed else [])
    return trace_program(ScoreProgram(model), model, "score", inputs, [("scores", 0)])


def export_step(model: SeqRecModel, timed: bool, batch_size: int) -> tuple[ExportedProgram, dict[str, Any]]:
    """The traced step program and its signature, one new item per user from the zero state."""
    item_ids, timestamps = example_history(model, batch_size)
    inputs = [("item_ids_t", item_ids[:, -1], 0)] + ([("timestamps_t", timestamps[:, -1], 0)] if timed else [])
    state = state_layout(model, batch_size)
    outputs = [("scores", 0)] + [(f"next_{name}", dim) for name, _, dim in state]
    program = StepProgram(model, model.init_state(batch_size), timed)
    return trace_program(program, model, "step", inputs + state, outputs)


def state_layout(model: SeqRecModel, batch_size: int) -> list[tuple[str, Tensor, int | None]]:
    """The streaming state's tensors for ``batch_size`` users: name (``state_`` and the place in the state,
    e.g. ``state_1_0_ssm``), initial value and batch dimension (None: the same for any batch)."""
    leaves = pytree.tree_flatten_with_path(model.init_state(batch_size))[0]
    wider = pytree.tree_leaves(model.init_state(batch_size + 1))
    layout = []
    for (path, leaf), other in zip(leaves, wider):
        if leaf is None:
            continue
        name = "state_" + re.sub(r"\W+", "_", pytree.keystr(path)).strip("_")
        if not isinstance(leaf, Tensor):
            raise ExportError(f"{who(model)}: streaming state {name} is a {type(leaf).__name__}, not a tensor; "
                              "the step program passes the state as tensors")
        if leaf.count_nonzero():
            raise ExportError(f"{who(model)}: streaming state {name} does not start at zero; the step program's "
                              "users start from zero tensors")
        dims = [d for d in range(leaf.dim()) if leaf.shape[d] != other.shape[d]]
        layout.append((name, leaf, dims[0] if dims else None))
    return layout


def trace_program(
    program: nn.Module,
    model: SeqRecModel,
    kind: str,
    inputs: list[tuple[str, Tensor, int | None]],
    outputs: list[tuple[str, int | None]],
) -> tuple[ExportedProgram, dict[str, Any]]:
    """``torch.export`` of ``program`` on ``inputs`` (name, example, batch dimension), the batch dimension
    dynamic, and the signature naming its ``inputs`` and ``outputs`` (name, batch dimension)."""
    program.eval()
    args = tuple(example for _, example, _ in inputs)
    batch = Dim(BATCH)
    shapes = tuple(None if dim is None else {dim: batch} for _, _, dim in inputs)
    exported = trace(program, args, (shapes,), model)  # one entry: forward(*inputs)
    results = program(*args)
    results = (results,) if isinstance(results, Tensor) else results
    signature = {
        "program": kind, "recipe": model.recipe.name, "num_items": model.num_items, "max_len": model.max_len,
        "inputs": [io_entry(name, example, dim) for name, example, dim in inputs],
        "outputs": [io_entry(name, value, dim) for (name, dim), value in zip(outputs, results)],
    }
    return exported, signature


def io_entry(name: str, value: Tensor, batch_dim: int | None) -> dict[str, Any]:
    """A signature's description of an input or output: name, dtype and shape with ``"batch"`` where dynamic."""
    shape = [BATCH if dim == batch_dim else size for dim, size in enumerate(value.shape)]
    return {"name": name, "dtype": str(value.dtype).removeprefix("torch."), "shape": shape}


def trace(program: nn.Module, args: tuple[Tensor, ...], dynamic_shapes: Any, model: SeqRecModel) -> ExportedProgram:
    """``torch.export.export`` under which every block takes its traceable path; a failure names the block."""
    try:
        with warnings.catch_warnings():
            # nn.GRU re-assigns its _flat_weights list while traced; they are its registered parameters all the same
            warnings.filterwarnings("ignore", message="The tensor attributes .*_flat_weights.* were assigned during export")
            return torch.export.export(program, args, dynamic_shapes=dynamic_shapes)
    except Exception as error:  # noqa: BLE001 -- tracing fails in many ways; each is reported with its block
        raise ExportError(f"{who(model)}: torch.export cannot trace {failing_block(error, model)}: "
                          f"{type(error).__name__}: {first_line(error)}") from error


def failing_block(error: BaseException, model: SeqRecModel) -> str:
    """The innermost block running where ``error`` (or an exception it chains) was raised, as
    ``block 'gru' (encoder.layers.0)``; ``the model`` when no block was running."""
    paths = {id(module): path for path, module in model.named_modules()}
    chain: list[BaseException] = []
    while error is not None and error not in chain:
        chain.append(error)
        error = error.__cause__ or error.__context__
    for raised in chain:
        owners = [frame.f_locals.get("self") for frame, _ in traceback.walk_tb(raised.__traceback__)]
        blocks = [owner for owner in owners if isinstance(owner, Block) and id(owner) in paths]
        if blocks:
            return f"block {type(blocks[-1]).block_name!r} ({paths[id(blocks[-1])]})"
    return "the model"


def first_line(error: BaseException) -> str:
    """The first line of an exception's message."""
    return (str(error).strip().splitlines() or [""])[0]


def who(model: SeqRecModel) -> str:
    """``model 'sasrec'``: how errors name the model."""
    return f"model {model.recipe.name!r}"


def save(program: ExportedProgram, signature: dict[str, Any], path: Path, format: Format, model: SeqRecModel) -> Path:
    """Write ``program`` as ``format`` to ``path``, its signature inside (:func:`read_signature`); returns ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps({**signature, "format": format})
    if format == "torch-export":
        torch.export.save(program, path, extra_files={f"{SIGNATURE_KEY}.json": text})
    else:
        save_onnx(program, signature, text, path, model)
    return path


def save_onnx(program: ExportedProgram, signature: dict[str, Any], text: str, path: Path, model: SeqRecModel) -> None:
    """The traced program through the dynamo ONNX exporter, its dynamic dimension named ``batch``."""
    try:
        onnx_program = torch.onnx.export(
            program, dynamo=True, opset_version=ONNX_OPSET, verbose=False,
            input_names=[entry["name"] for entry in signature["inputs"]],
            output_names=[entry["name"] for entry in signature["outputs"]],
        )
    except ImportError as error:
        raise ExportError(f"ONNX export needs onnx and onnxscript ({error}): pip install 'seqrec-zoo[export]'") from error
    except Exception as error:  # noqa: BLE001 -- an operator without an ONNX translation, and the like
        raise ExportError(f"{who(model)}: the ONNX exporter cannot translate the traced program: "
                          f"{type(error).__name__}: {first_line(error)}") from error
    name_batch_dimension(onnx_program.model.graph)
    onnx_program.model.metadata_props[SIGNATURE_KEY] = text
    onnx_program.save(path)


def name_batch_dimension(graph: Any) -> None:
    """Rename the symbol of the first input's batch dimension to ``batch`` wherever a value's shape has it."""
    import onnx_ir as ir

    symbol = graph.inputs[0].shape[0]
    for value in [*graph.inputs, *(output for node in graph.all_nodes() for output in node.outputs)]:
        if value.shape is not None and symbol in value.shape:
            value.shape = ir.Shape([ir.SymbolicDim(BATCH) if dim == symbol else dim for dim in value.shape])


def describe(signature: dict[str, Any]) -> str:
    """A signature on one line: ``item_ids [batch, 50] int64 -> scores [batch, 1683] float32``."""
    def part(entries: list[dict[str, Any]]) -> str:
        return ", ".join(f"{e['name']} [{', '.join(map(str, e['shape']))}] {e['dtype']}" for e in entries)

    return f"{part(signature['inputs'])} -> {part(signature['outputs'])}"


def read_signature(path: str | Path) -> dict[str, Any]:
    """The signature :func:`export_model` stored in a ``.pt2`` or ``.onnx`` file: ``program`` (``score`` /
    ``step``), ``format``, ``recipe``, ``num_items``, ``max_len``, and ``inputs`` / ``outputs`` in order,
    each ``{"name", "dtype", "shape"}`` with ``"batch"`` for the dynamic dimension."""
    path = Path(path)
    if path.suffix == ".onnx":
        import onnx

        stored = {prop.key: prop.value for prop in onnx.load(str(path), load_external_data=False).metadata_props}
        text = stored.get(SIGNATURE_KEY, "")
    else:
        extra = {f"{SIGNATURE_KEY}.json": ""}
        torch.export.load(path, extra_files=extra)
        text = extra[f"{SIGNATURE_KEY}.json"]
    if not text:
        raise ValueError(f"{path} holds no seqrec-zoo signature (not written by zoo.export)")
    return json.loads(text)
