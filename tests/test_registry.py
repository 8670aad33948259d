"""The block registry: names, aliases, wildcards, kinds, duplicates, entry-point plugins."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest
import torch

import zoo
from zoo.blocks.base import PositionwiseBlock
from zoo import registry
from zoo.registry import BlockRegistryError, register_block


@pytest.fixture
def scratch_registry(monkeypatch):
    """Let a test register blocks without leaking them into the real registry."""
    zoo.list_blocks()
    monkeypatch.setattr(registry, "_BLOCKS", dict(registry._BLOCKS))
    monkeypatch.setattr(registry, "_ALIASES", dict(registry._ALIASES))


def make_block_class(doc="Doubles its input: y = 2 x (a test block)."):
    class Double(PositionwiseBlock):
        __doc__ = doc

        def __init__(self, d_model: int, factor: float = 2.0) -> None:
            super().__init__()
            self.factor = factor

        def transform(self, x):
            return self.factor * x

    return Double


def test_wildcards_and_kinds():
    assert zoo.list_blocks("self_*") == ["self_attention"]
    assert "tied_dot" in zoo.list_blocks(kind="head")
    assert all(zoo.get_block(n).kind == "readout" for n in zoo.list_blocks(kind="readout"))
    with pytest.raises(BlockRegistryError, match="unknown block kind"):
        zoo.list_blocks(kind="sideways")


def test_alias_resolves_to_the_same_class():
    assert zoo.get_block("attention") is zoo.get_block("self_attention")


def test_create_block_and_unknown_names():
    block = zoo.create_block("ffn", d_model=8, expansion=2)
    assert block(torch.randn(2, 3, 8), torch.ones(2, 3, dtype=torch.bool)).shape == (2, 3, 8)
    with pytest.raises(BlockRegistryError, match="did you mean 'gru'"):
        zoo.get_block("gruu")


def test_duplicate_names_are_errors_unless_overriding(scratch_registry):
    first = register_block("double_test")(make_block_class())
    with pytest.raises(BlockRegistryError, match="already registered"):
        register_block("double_test")(make_block_class())
    second = register_block("double_test", override=True)(make_block_class())
    assert zoo.get_block("double_test") is second is not first
    with pytest.raises(BlockRegistryError, match="already registered"):
        register_block("ffn")(make_block_class())


def test_registration_needs_kind_and_causal(scratch_registry):
    class NoKind(torch.nn.Module):
        causal = True

    with pytest.raises(BlockRegistryError, match="must declare kind"):
        register_block("no_kind")(NoKind)


def test_registered_block_is_usable_in_a_recipe(scratch_registry):
    register_block("double_test")(make_block_class())
    model = zoo.create(zoo.Recipe(name="t", d_model=8, encoder=[{"block": "double_test", "factor": 3.0}]), num_items=5)
    assert model.encoder.factor == 3.0


def test_third_party_blocks_register_through_entry_points(tmp_path):
    (tmp_path / "my_blocks.py").write_text(textwrap.dedent('''
        from zoo.blocks.base import PositionwiseBlock
        from zoo.registry import register_block

        @register_block("plugin_scale")
        class Scale(PositionwiseBlock):
            """Scales its input: y = 3 x (a plugin block)."""
            def __init__(self, d_model: int) -> None:
                super().__init__()
            def transform(self, x):
                return 3 * x
    '''))
    dist = tmp_path / "my_blocks-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: my-blocks\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[seqrec_zoo.blocks]\nmy_blocks = my_blocks\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")])}
    out = subprocess.run(
        [sys.executable, "-c", "import zoo; print('plugin_scale' in zoo.list_blocks(), zoo.get_block('plugin_scale').kind)"],
        capture_output=True, text=True, env=env, cwd=tmp_path,
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["True", "sequence"]
