"""Export for serving (zoo.export, `zoo export`): exported programs score as the eager model does.

Every bundled recipe is exported with torch.export and its scores checked against eager ``model.score``;
ONNX (run with onnxruntime) is checked on a subset that covers every block family, and on every recipe
with ``SEQREC_ZOO_TEST_ALL_ONNX=1``. Models are small (30 items, d_model 16, max_len 8: Mamba's scans and
the GRU trace as max_len unrolled steps, so a short max_len keeps the exports quick). Exports are traced
with a batch of 2 and run with batches of 3 and 1 (the batch dimension is dynamic). Scores are fp32 and
must match within 1e-4 (the eager side may run the compiled CPU kernels, the programs the pure paths);
the padding column is exactly -inf.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
import torch

import zoo
from zoo import registry
from zoo.blocks.base import PositionwiseBlock
from zoo.export import ExportError, export_model, read_signature
from zoo.model import left_pad
from zoo.registry import register_block

pytestmark = pytest.mark.kernel_independent  # the kernels-off pass leaves it out (pyproject.toml)

V, D, LEN = 30, 16, 8
TOLERANCE = {"atol": 1e-4, "rtol": 1e-4}
# The four hybrids (Mamba + GRU, bidirectional Mamba + causal convolution, FFT filter + bidirectional Mamba +
# FE-GRU, Mamba2 + conv pyramid) and the main other families: Transformer layers with [MASK] (bert4rec), ConvRec's
# time-aware encoder, M2Rec's text projector, multi-scale Mamba and causal FFT filter. Streaming: mamba-gru, m2rec.
ONNX_RECIPES = {"mamba-gru", "conv-pf-mamba", "fmlp-sigma", "ssd-pyramid", "bert4rec", "convrec", "m2rec"}
ALL_ONNX = os.environ.get("SEQREC_ZOO_TEST_ALL_ONNX") == "1"
ROOT = Path(__file__).resolve().parents[1]

onnxruntime = pytest.importorskip("onnxruntime", reason="the export extra: pip install 'seqrec-zoo[export]'")


def make(name: str) -> zoo.SeqRecModel:
    torch.manual_seed(0)
    model = zoo.create(name, num_items=V, d_model=D, max_len=LEN).eval()
    if "text" in getattr(model.item_encoder, "item_features", ()):
        model.set_item_features(text=torch.randn(V + 1, model.item_encoder.text_dim))
    return model


def histories(lengths: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Item ids and daily timestamps, left-padded with 0 to LEN."""
    g = torch.Generator().manual_seed(len(lengths))
    rows = [[0] * (LEN - n) + torch.randint(1, V + 1, (n,), generator=g).tolist() for n in lengths]
    times = [[0.0] * (LEN - n) + [8.8e8 + 86400.0 * i for i in range(n)] for n in lengths]
    return left_pad(rows), left_pad(times, dtype=torch.float64)


@pytest.fixture(scope="module")
def exported(tmp_path_factory, one_thread):
    """``exported(name, format)``: the model and what export_model wrote for it, each exported once."""
    done = {}

    def get(name: str, format: str):
        if (name, format) not in done:
            model = make(name)
            suffix = ".pt2" if format == "torch-export" else ".onnx"
            out = tmp_path_factory.mktemp(f"{name}-{format}") / f"{name}{suffix}"
            done[name, format] = model, export_model(model, out, format)
        return done[name, format]

    return get


def load(path: Path) -> Callable[..., list[torch.Tensor]]:
    """An exported program as a function of its input tensors to the list of its outputs: through
    torch.export.load, or an onnxruntime session."""
    if path.suffix == ".onnx":
        session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        names = [entry.name for entry in session.get_inputs()]

        def run_onnx(*inputs: torch.Tensor) -> list[torch.Tensor]:
            feeds = {name: tensor.numpy() for name, tensor in zip(names, inputs)}
            return [torch.from_numpy(np.asarray(out)) for out in session.run(None, feeds)]

        return run_onnx
    module = torch.export.load(path).module()

    def run_program(*inputs: torch.Tensor) -> list[torch.Tensor]:
        outputs = module(*inputs)
        return list(outputs) if isinstance(outputs, (tuple, list)) else [outputs]

    return run_program


def check_scores(model: zoo.SeqRecModel, path: Path, signature: dict) -> None:
    timed = [entry["name"] for entry in signature["inputs"]] == ["item_ids", "timestamps"]
    program = load(path)
    for lengths in ([LEN, 5, 1], [3]):  # batch sizes other than the traced 2
        item_ids, timestamps = histories(lengths)
        with torch.no_grad():
            eager = model.score(item_ids, timestamps)
        (scores,) = program(*([item_ids, timestamps] if timed else [item_ids]))
        assert scores.shape == (len(lengths), V + 1) and scores.dtype == torch.float32
        assert torch.isneginf(scores[:, 0]).all()
        torch.testing.assert_close(scores[:, 1:], eager[:, 1:], **TOLERANCE)


@pytest.mark.parametrize("name", zoo.list_models())
def test_torch_export_scores_equal_eager_scores(name, exported):
    model, files = exported(name, "torch-export")
    signature = files.signatures["score"]
    assert signature["inputs"][0] == {"name": "item_ids", "dtype": "int64", "shape": ["batch", LEN]}
    assert signature["outputs"] == [{"name": "scores", "dtype": "float32", "shape": ["batch", V + 1]}]
    assert (len(signature["inputs"]) == 2) == name.startswith("convrec")  # only ConvRec's encoder reads the time
    assert (files.step is not None) == model.supports_streaming
    check_scores(model, files.score, signature)


@pytest.mark.parametrize("name", [n for n in zoo.list_models() if ALL_ONNX or n in ONNX_RECIPES])
def test_onnx_scores_equal_eager_scores(name, exported):
    model, files = exported(name, "onnx")
    assert read_signature(files.score) == {**files.signatures["score"], "format": "onnx"}
    check_scores(model, files.score, files.signatures["score"])


STREAMING = [n for n in zoo.list_models() if make(n).supports_streaming]


@pytest.mark.parametrize("name, format", [(n, f) for n in STREAMING for f in ("torch-export", "onnx")
                                          if f == "torch-export" or ALL_ONNX or n in ONNX_RECIPES])
def test_exported_step_equals_eager_step(name, format, exported):
    model, files = exported(name, format)
    signature = read_signature(files.step)
    assert signature == {**files.signatures["step"], "format": format}
    assert [entry["name"] for entry in signature["outputs"]] == ["scores"] + [
        f"next_{entry['name']}" for entry in signature["inputs"][1:]]
    batch = 3
    state = [torch.zeros([batch if size == "batch" else size for size in entry["shape"]], dtype=getattr(torch, entry["dtype"]))
             for entry in signature["inputs"][1:]]  # the initial state is zeros
    eager_state = model.init_state(batch)
    program = load(files.step)
    for item_ids_t in torch.tensor([[3, 30, 1], [7, 7, 12], [1, 2, 30], [29, 5, 4]]):
        with torch.no_grad():
            eager, eager_state = model.step(item_ids_t, eager_state)
        scores, *state = program(item_ids_t, *state)
        assert torch.isneginf(scores[:, 0]).all()
        torch.testing.assert_close(scores[:, 1:], eager[:, 1:], **TOLERANCE)


def test_a_recipe_name_with_num_items_exports_untrained_and_the_file_holds_its_signature(tmp_path, one_thread):
    files = export_model("sasrec", tmp_path / "sasrec.pt2", num_items=V)
    assert files.step is None
    assert read_signature(files.score) == {**files.signatures["score"], "format": "torch-export"}
    assert files.signatures["score"]["num_items"] == V and files.signatures["score"]["recipe"] == "sasrec"


def test_bad_arguments_are_refused(tmp_path):
    model = make("sasrec")
    with pytest.raises(ValueError, match="format must be one of torch-export, onnx"):
        export_model(model, tmp_path / "m.tflite", "tflite")
    with pytest.raises(ValueError, match="batch_size must be >= 2"):
        export_model(model, tmp_path / "m.pt2", batch_size=1)


@pytest.fixture
def scratch_registry(monkeypatch):
    """Let a test register blocks without leaking them into the real registry."""
    zoo.list_blocks()
    monkeypatch.setattr(registry, "_BLOCKS", dict(registry._BLOCKS))
    monkeypatch.setattr(registry, "_ALIASES", dict(registry._ALIASES))


def test_an_untraceable_block_is_named_in_the_error(tmp_path, scratch_registry):
    @register_block("branchy_test")
    class Branchy(PositionwiseBlock):
        """Negates its input when it holds a positive value: a Python branch on tensor values (a test block)."""

        def __init__(self, d_model: int) -> None:
            super().__init__()

        def transform(self, x):
            return -x if bool((x > 0).any()) else x

    recipe = tmp_path / "branchy.yaml"
    recipe.write_text(textwrap.dedent("""\
        name: branchy
        fidelity: hybrid
        description: A test recipe whose one sequence block branches in Python on tensor values.
        d_model: 16
        max_len: 8
        item_encoder: item_id
        encoder:
          - {block: layernorm}
          - {block: branchy_test}
        readout: last
        head: tied_dot
        """))
    model = zoo.create(str(recipe), num_items=V)
    assert model.score(torch.tensor([[0, 1, 2]])).shape == (1, V + 1)  # eager runs
    with pytest.raises(ExportError, match=r"model 'branchy': torch.export cannot trace block 'branchy_test' \(encoder\.layers\.1"):
        export_model(model, tmp_path / "branchy.pt2")


def test_cli_exports_a_trained_model_to_onnx(tmp_path):
    out = tmp_path / "sasrec.onnx"
    done = subprocess.run([sys.executable, "-m", "zoo.cli", "--threads", "1", "export", "sasrec.ml-100k", "--format", "onnx",
                           "--out", str(out)], capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert done.returncode == 0, done.stderr
    assert f"score: {out}" in done.stdout and "item_ids [batch, 50] int64 -> scores [batch, 1683] float32" in done.stdout
    model = zoo.create("sasrec.ml-100k", pretrained=True)
    item_ids = left_pad([[0] * 47 + [50, 172, 133], list(range(1, 51))])
    with torch.no_grad():
        eager = model.score(item_ids)
    (scores,) = load(out)(item_ids)
    assert torch.isneginf(scores[:, 0]).all()
    torch.testing.assert_close(scores[:, 1:], eager[:, 1:], **TOLERANCE)
