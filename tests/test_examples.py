"""The examples a newcomer starts from run as documented."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def run(script: str, *args: str, cwd: Path) -> str:
    done = subprocess.run([sys.executable, str(EXAMPLES / script), *args], cwd=cwd, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_custom_hybrid(tmp_path):
    out = run("custom_hybrid.py", cwd=tmp_path)
    assert "my-hybrid" in out and "did you mean 'num_layers'" in out and "top-5" in out


def test_quickstart_trains_and_recommends(tmp_path):
    pytest.importorskip("zoo.data").builtin_path("ml-100k")  # raises with the install command when missing
    out = run("quickstart.py", "1", cwd=tmp_path)
    assert "test HR@10" in out and "your sasrec, after Star Wars" in out
    assert "mamba4rec.ml-100k, after Star Wars" in out  # the shipped pretrained model, first
    assert (tmp_path / "runs" / "quickstart" / "model.safetensors").is_file()
