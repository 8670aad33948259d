"""Checkpoints: atomic files, optimiser/RNG round trips that continue bit for bit, the latest pointer."""

from __future__ import annotations

import json
import os
import random

import numpy as np
import pytest
import torch
from torch import nn

from zoo import checkpoint as ckpt


def tiny_model(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(4, 8), nn.LayerNorm(8), nn.Linear(8, 2))


def steps(model, optimizer, n, seed):
    g = torch.Generator().manual_seed(seed)
    for _ in range(n):
        x = torch.randn(16, 4, generator=g)
        loss = model(x).pow(2).mean() + torch.nn.functional.dropout(x, 0.5).sum() * 0  # touches the global RNG
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()


def test_atomic_write_replaces_whole_files_and_leaves_no_temp_on_failure(tmp_path):
    path = tmp_path / "state.json"
    ckpt.atomic_write_text(path, "old")

    def broken(p):
        p.write_text("half")
        raise RuntimeError("killed while writing")

    with pytest.raises(RuntimeError):
        ckpt.atomic_write(path, broken)
    assert path.read_text() == "old"
    assert os.listdir(tmp_path) == ["state.json"]
    ckpt.atomic_write_text(path, "new")
    assert path.read_text() == "new" and os.listdir(tmp_path) == ["state.json"]


@pytest.mark.parametrize("name", ["adamw", "sgd"])
def test_optimizer_state_round_trip_continues_exactly(tmp_path, name):
    from safetensors.torch import load, save
    from timm.optim import create_optimizer_v2

    reference = tiny_model()
    opt = create_optimizer_v2(reference, opt=name, lr=1e-2, weight_decay=0.1)
    steps(reference, opt, 3, seed=1)
    tensors, rest = ckpt.split_optimizer_state(opt.state_dict())
    assert tensors and all(isinstance(v, torch.Tensor) for v in tensors.values())
    json.dumps(rest)  # the rest is plain JSON
    restored = tiny_model(seed=5)
    restored.load_state_dict(reference.state_dict())
    opt2 = create_optimizer_v2(restored, opt=name, lr=1e-2, weight_decay=0.1)
    stored = load(save(tensors))  # through safetensors bytes, as on disk
    opt2.load_state_dict(ckpt.join_optimizer_state(stored, json.loads(json.dumps(rest)), opt2.state_dict()))
    assert [type(g.get("betas")) for g in opt2.param_groups] == [type(g.get("betas")) for g in opt.param_groups]
    steps(reference, opt, 2, seed=2)
    steps(restored, opt2, 2, seed=2)
    for a, b in zip(reference.parameters(), restored.parameters()):
        assert torch.equal(a, b)


def test_rng_state_round_trip():
    torch.manual_seed(3), np.random.seed(3), random.seed(3)
    state = json.loads(json.dumps(ckpt.rng_state()))
    first = (torch.rand(3), np.random.rand(3), random.random(), np.random.randn())
    torch.manual_seed(99), np.random.seed(99), random.seed(99)
    ckpt.set_rng_state(state)
    again = (torch.rand(3), np.random.rand(3), random.random(), np.random.randn())
    assert torch.equal(first[0], again[0]) and np.array_equal(first[1], again[1])
    assert first[2] == again[2] and first[3] == again[3]


def test_checkpoint_round_trip_resumes_training_bit_for_bit(tmp_path):
    model = tiny_model()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    steps(model, opt, 2, seed=0)
    best = {k: v.clone() for k, v in model.state_dict().items()}
    torch.manual_seed(7)
    folder = ckpt.save_checkpoint(tmp_path, "step-000000002", model, opt, {"epoch": 1, "rng": ckpt.rng_state()}, best=best)
    assert ckpt.latest_checkpoint(tmp_path) == folder
    assert sorted(os.listdir(folder)) == sorted([ckpt.MODEL_FILE, ckpt.OPTIMIZER_FILE, ckpt.BEST_FILE, ckpt.STATE_FILE])
    steps(model, opt, 3, seed=4)
    expected = [p.detach().clone() for p in model.parameters()]

    other = tiny_model(seed=1)
    opt2 = torch.optim.Adam(other.parameters(), lr=1e-2)
    state = ckpt.load_checkpoint(folder, other, opt2)
    assert state["epoch"] == 1
    ckpt.set_rng_state(state["rng"])
    steps(other, opt2, 3, seed=4)
    for a, b in zip(expected, other.parameters()):
        assert torch.equal(a, b)
    loaded_best = ckpt.load_best_weights(folder)
    assert all(torch.equal(loaded_best[k], v) for k, v in best.items())


def test_unchanged_best_is_linked_and_old_checkpoints_are_removed(tmp_path):
    model = tiny_model()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    best = {k: v.clone() for k, v in model.state_dict().items()}
    first = ckpt.save_checkpoint(tmp_path, "step-000000001", model, opt, {}, best=best)
    inode = os.stat(first / ckpt.BEST_FILE).st_ino
    steps(model, opt, 1, seed=0)
    second = ckpt.save_checkpoint(tmp_path, "step-000000002", model, opt, {})
    assert not first.exists() and ckpt.latest_checkpoint(tmp_path) == second
    assert os.stat(second / ckpt.BEST_FILE).st_ino == inode
    assert not [p for p in os.listdir(tmp_path) if p.startswith(".")]  # no staging folders left


def test_strict_weights_and_format_errors(tmp_path):
    model = tiny_model()
    ckpt.save_weights(model, tmp_path / "w.safetensors")
    with pytest.raises(ValueError, match="does not fit"):
        ckpt.load_weights(nn.Sequential(nn.Linear(4, 8)), tmp_path / "w.safetensors")
    folder = ckpt.save_checkpoint(tmp_path / "c", "step-1", model, torch.optim.SGD(model.parameters(), lr=0.1), {})
    document = json.loads((folder / ckpt.STATE_FILE).read_text())
    document["format_version"] = 99
    (folder / ckpt.STATE_FILE).write_text(json.dumps(document))
    with pytest.raises(ValueError, match="format 99"):
        ckpt.load_checkpoint(folder, model, torch.optim.SGD(model.parameters(), lr=0.1))
    assert ckpt.latest_checkpoint(tmp_path / "missing") is None


class SharedBuffer(nn.Module):
    """Two parameters that are views into one buffer, as an RNN's weights are once cuDNN flattens them on a GPU,
    beside a weight tied to another module's (as a tied output head is)."""

    def __init__(self):
        super().__init__()
        flat = torch.arange(20, dtype=torch.float32)
        self.a = nn.Parameter(flat[:12].view(3, 4))
        self.b = nn.Parameter(flat[12:].view(2, 4))
        self.embed = nn.Embedding(5, 4)
        self.head = nn.Linear(4, 5, bias=False)
        self.head.weight = self.embed.weight


def test_parameters_sharing_one_buffer_save_and_load(tmp_path):
    model = SharedBuffer()
    assert model.a.untyped_storage().data_ptr() == model.b.untyped_storage().data_ptr()
    path = ckpt.save_weights(model, tmp_path / "w.safetensors")
    stored = ckpt.read_safetensors(path)
    assert sorted(stored) == ["a", "b", "embed.weight"]  # the tied head is stored once, under the first name
    fresh = SharedBuffer()
    with torch.no_grad():
        for p in fresh.parameters():
            p.zero_()
    ckpt.load_weights(fresh, path)
    for name, value in model.state_dict().items():
        assert torch.equal(fresh.state_dict()[name], value), name
    assert fresh.head.weight is fresh.embed.weight
