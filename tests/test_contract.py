"""The block contract, checked for every registered block (and each block's ``contract_variants``).

Parametrised over the registry, so a new block is checked without new test code. Tolerances:
float32, ``atol=2e-5, rtol=1e-4`` for comparisons of the same computation batched differently.
"""

from __future__ import annotations

import pytest
import torch

from padding import left_padded as padded_inputs
from zoo.registry import context_kwargs, get_block, list_blocks

D, V, L = 16, 30, 12
LENGTHS = [L, 7, 1, 4]
ATOL, RTOL = 2e-5, 1e-4


def _cases() -> list:
    cases = []
    for name in list_blocks():
        cls = get_block(name)
        variants = ({},) + tuple(getattr(cls, "contract_variants", ()))
        for i, kwargs in enumerate(variants):
            cases.append(pytest.param(name, kwargs, id=f"{name}-{i}" if i else name))
    return cases


CASES = _cases()


def build(name: str, kwargs: dict):
    cls = get_block(name)
    torch.manual_seed(0)
    block = cls(**context_kwargs(cls, d_model=D, num_items=V, max_len=L), **kwargs)
    return block.eval()


def left_padded(lengths: list[int], width: int, seed: int = 1):
    """Random inputs with GARBAGE at padded positions, the mask, item ids and timestamps."""
    g = torch.Generator().manual_seed(seed)
    x, mask = padded_inputs(lengths, width, D, garbage=10.0, generator=g)
    ids = torch.randint(1, V + 1, mask.shape, generator=g) * mask
    start = 8.8e8 + 1e7 * torch.rand(len(lengths), 1, generator=g)
    gaps = 86400 * 30 * torch.rand(mask.shape, generator=g)
    timestamps = torch.where(mask, start + gaps.cumsum(1), 1e9 * torch.rand(mask.shape, generator=g)).double()
    return x, mask, ids, timestamps


def widen(x, mask, ids, timestamps, extra: int = 3):
    """The same batch with ``extra`` more padded columns on the left (garbage inputs there)."""
    pad = lambda t, fill: torch.cat([fill, t], 1)
    g = torch.Generator().manual_seed(7)
    return (
        pad(x, 10 * torch.randn(x.shape[0], extra, D, generator=g)),
        pad(mask, torch.zeros(mask.shape[0], extra, dtype=torch.bool)),
        pad(ids, torch.zeros(ids.shape[0], extra, dtype=ids.dtype)),
        pad(timestamps, 1e9 * torch.rand(timestamps.shape[0], extra, generator=g, dtype=timestamps.dtype)),
    )


def run(block, x, mask, ids, timestamps, streams: int):
    """Apply a block of any kind to the shared inputs."""
    kind = block.kind
    if kind == "sequence":
        return block(x, mask)
    if kind == "fusion":
        parts = [x * (1 + i) + 0.1 * i for i in range(streams)]
        return block([torch.tanh(p) for p in parts], mask, x)
    if kind == "readout":
        return block(x, mask)
    if kind == "item-encoder":
        return block(ids, mask, timestamps)
    raise AssertionError(kind)


def n_streams(block) -> int:
    return getattr(block, "min_inputs", 2) if block.kind == "fusion" else 0


def sequence_cases():
    return [c for c in CASES if get_block(c.values[0]).kind != "head"]


def per_position_cases():
    return [c for c in CASES if get_block(c.values[0]).kind in ("sequence", "fusion", "item-encoder")]


def test_registry_is_populated():
    assert {"item_id", "self_attention", "ffn", "gru", "last", "mean", "tied_dot"} <= set(list_blocks())


@pytest.mark.parametrize("name,kwargs", CASES)
def test_metadata_and_docstring(name, kwargs):
    cls = get_block(name)
    block = build(name, kwargs)
    assert cls.kind in ("sequence", "fusion", "readout", "item-encoder", "head")
    assert isinstance(block.causal, bool) and isinstance(block.streaming, bool)
    assert cls.__doc__ and len(cls.__doc__.strip()) > 40, f"{name} needs a docstring stating its equation and source"


@pytest.mark.parametrize("name,kwargs", sequence_cases())
def test_shape_finite_and_gradients(name, kwargs):
    block = build(name, kwargs)
    x, mask, ids, ts = left_padded(LENGTHS, L)
    x.requires_grad_(True)
    y = run(block, x, mask, ids, ts, n_streams(block))
    expected = (len(LENGTHS), D) if block.kind == "readout" else (len(LENGTHS), L, D)
    assert tuple(y.shape) == expected
    real = y if block.kind == "readout" else y[mask]
    assert torch.isfinite(real).all()
    weights = torch.randn(real.shape, generator=torch.Generator().manual_seed(3))
    (real * weights).sum().backward()
    grads = [p.grad for p in block.parameters() if p.requires_grad]
    assert all(g is None or torch.isfinite(g).all() for g in grads)
    if grads:
        assert any(g is not None and g.abs().sum() > 0 for g in grads), f"{name}: no parameter receives gradient"
    if block.kind != "item-encoder":
        assert torch.isfinite(x.grad).all()
        assert x.grad[~mask].abs().max() <= 1e-7, f"{name}: padded inputs influence real outputs"


@pytest.mark.parametrize("name,kwargs", sequence_cases())
def test_padding_invariance(name, kwargs):
    block = build(name, kwargs)
    x, mask, ids, ts = left_padded(LENGTHS, L)
    streams = n_streams(block)
    with torch.no_grad():
        batched = run(block, x, mask, ids, ts, streams)
        batched_wide = run(block, *widen(x, mask, ids, ts), streams)
        alone = []
        for b, n in enumerate(LENGTHS):
            sl = slice(L - n, L)
            alone.append(run(block, x[b:b + 1, sl], mask[b:b + 1, sl], ids[b:b + 1, sl], ts[b:b + 1, sl], streams))
    for b, n in enumerate(LENGTHS):
        if block.kind == "readout":
            pairs = [(batched[b], alone[b][0]), (batched_wide[b], alone[b][0])]
        else:
            pairs = [(batched[b, L - n:], alone[b][0]), (batched_wide[b, -n:], alone[b][0])]
        for got, want in pairs:
            torch.testing.assert_close(got, want, atol=ATOL, rtol=RTOL, msg=lambda m: f"{name}, length {n}: {m}")


@pytest.mark.parametrize("name,kwargs", [c for c in CASES if get_block(c.values[0]).kind == "sequence"])
def test_forward_last_is_the_newest_position_of_forward(name, kwargs):
    block = build(name, kwargs)
    x, mask, _, _ = left_padded(LENGTHS, L)
    with torch.no_grad():
        full, newest = block(x, mask), block.forward_last(x, mask)
    assert newest.shape == (len(LENGTHS), 1, D)
    torch.testing.assert_close(newest, full[:, -1:], atol=ATOL, rtol=RTOL)
    if not block.mixes_positions:  # a block declared position-wise must not read other positions
        torch.testing.assert_close(block(x[:, -1:], mask[:, -1:]), full[:, -1:], atol=ATOL, rtol=RTOL)


@pytest.mark.parametrize("name,kwargs", [c for c in CASES if get_block(c.values[0]).kind == "fusion"])
def test_fusion_forward_last_reads_the_newest_streams(name, kwargs):
    """A fusion that declares ``streams_positionwise`` gives ``forward[:, -1:]`` from the streams' newest position
    alone; one that does not refuses."""
    block = build(name, kwargs)
    x, mask, ids, ts = left_padded(LENGTHS, L)
    streams = [torch.tanh(x * (1 + i) + 0.1 * i) for i in range(n_streams(block))]
    if not block.streams_positionwise:
        with pytest.raises(NotImplementedError):
            block.forward_last([s[:, -1:] for s in streams], mask, x)
        return
    with torch.no_grad():
        full = block(streams, mask, x)
        garbled = [torch.cat([torch.randn_like(s[:, :-1]), s[:, -1:]], 1) for s in streams]  # other positions unread
        newest = block.forward_last([s[:, -1:] for s in garbled], mask, x)
        torch.testing.assert_close(block(garbled, mask, x)[:, -1:], full[:, -1:], atol=ATOL, rtol=RTOL)
    torch.testing.assert_close(newest, full[:, -1:], atol=ATOL, rtol=RTOL)


def declared_cases(flag: str) -> list:
    """Per-position cases whose instance declares ``flag`` (``causal`` / ``streaming``) true."""
    return [c for c in per_position_cases() if getattr(build(*c.values), flag)]


@pytest.mark.parametrize("name,kwargs", declared_cases("causal"))
def test_causal_blocks_do_not_look_ahead(name, kwargs):
    block = build(name, kwargs)
    x, mask, ids, ts = left_padded([L, L], L)
    cut = L // 2
    x2, ids2, ts2 = x.clone(), ids.clone(), ts.clone()
    x2[:, cut + 1:] = torch.randn_like(x2[:, cut + 1:])
    ids2[:, cut + 1:] = (ids2[:, cut + 1:] % V) + 1
    ts2[:, cut + 1:] += 12345.0
    with torch.no_grad():
        y1 = run(block, x, mask, ids, ts, n_streams(block))
        y2 = run(block, x2, mask, ids2, ts2, n_streams(block))
    torch.testing.assert_close(y1[:, : cut + 1], y2[:, : cut + 1], atol=ATOL, rtol=RTOL)


@pytest.mark.parametrize("name,kwargs", declared_cases("streaming"))
def test_streaming_step_equals_forward(name, kwargs):
    block = build(name, kwargs)
    assert block.causal, f"{name}: a streaming block must be causal"
    x, mask, ids, ts = left_padded([L, L], L)
    streams = n_streams(block)
    with torch.no_grad():
        full = run(block, x, mask, ids, ts, streams)
        state = block.init_state(2, device=x.device, dtype=x.dtype)
        for t in range(L):
            if block.kind == "item-encoder":
                y_t, state = block.step(ids[:, t], state, ts[:, t])
            elif block.kind == "fusion":
                parts = [torch.tanh(x[:, t] * (1 + i) + 0.1 * i) for i in range(streams)]
                y_t, state = block.step(parts, state, x[:, t])
            else:
                y_t, state = block.step(x[:, t], state)
            torch.testing.assert_close(y_t, full[:, t], atol=ATOL, rtol=RTOL, msg=lambda m: f"{name}, step {t}: {m}")


@pytest.mark.parametrize("name,kwargs", [c for c in CASES if get_block(c.values[0]).kind == "item-encoder"])
def test_item_encoder_table(name, kwargs):
    block = build(name, kwargs)
    table = block.item_table()
    assert tuple(table.shape) == (V + 1, D)
    assert torch.isfinite(table).all()


@pytest.mark.parametrize("name,kwargs", [c for c in CASES if get_block(c.values[0]).kind == "head"])
def test_head_scores_full_table_and_candidates_alike(name, kwargs):
    head = build(name, kwargs)
    g = torch.Generator().manual_seed(5)
    user = torch.randn(3, D, generator=g, requires_grad=True)
    table = torch.randn(V + 1, D, generator=g)
    ids = torch.arange(V + 1)
    full = head(user, table, ids)
    assert tuple(full.shape) == (3, V + 1)
    candidates = torch.randint(0, V + 1, (3, 6), generator=g)
    picked = head(user, table[candidates], candidates)
    torch.testing.assert_close(picked, full.gather(1, candidates), atol=ATOL, rtol=RTOL)
    full.sum().backward()
    assert torch.isfinite(user.grad).all() and user.grad.abs().sum() > 0
