"""The wheel: it builds, installs into a fresh venv, and creates a model from a bundled recipe there."""

from __future__ import annotations

import os
import subprocess
import sys
import sysconfig
import venv
from pathlib import Path

import pytest

pytestmark = pytest.mark.kernel_independent  # the kernels-off pass leaves it out (pyproject.toml)

ROOT = Path(__file__).resolve().parent.parent


def run(cmd: list[str], **kwargs) -> subprocess.CompletedProcess:
    done = subprocess.run(cmd, capture_output=True, text=True, **kwargs)
    assert done.returncode == 0, f"{cmd[:3]} failed:\n{done.stdout}\n{done.stderr}"
    return done


def test_wheel_installs_and_finds_bundled_recipes(tmp_path):
    run([sys.executable, "-m", "build", "--wheel", "--no-isolation", "--outdir", str(tmp_path / "dist"), str(ROOT)])
    wheel = next((tmp_path / "dist").glob("seqrec_zoo-*.whl"))
    env_dir = tmp_path / "fresh"
    venv.create(env_dir, with_pip=True)
    python = env_dir / "bin" / "python"
    run([str(python), "-m", "pip", "install", "--no-deps", "--no-index", "-q", str(wheel)])
    # Dependencies (torch, pydantic, ...) come from this interpreter's site-packages; the project
    # itself must come from the fresh install, not from the checkout.
    env = {**os.environ, "PYTHONPATH": sysconfig.get_paths()["purelib"]}
    script = (
        "import zoo, zoo.builder, pathlib;"
        "m = zoo.create('sasrec', num_items=7);"
        "print(pathlib.Path(zoo.__file__).resolve());"
        "print(zoo.builder.recipes_dir().resolve());"
        "import zoo.blocks.compiled as k; print(all(p.is_file() for p in k.SOURCES.values()));"
        "here = pathlib.Path(k.__file__).parent;"
        "print(sorted(str(p.relative_to(here)) for p in here.rglob('*') if p.suffix in ('.cpp', '.h')));"
        "print(sorted(zoo.list_models()));"
        "print(m.recommend([[1, 2, 3]], k=2).items.shape)"
    )
    out = run([str(python), "-c", script], cwd=tmp_path, env=env)
    module_path, recipes, kernel_source, native_files, models, shape = out.stdout.strip().splitlines()
    assert module_path.startswith(str(env_dir.resolve())), module_path
    assert recipes.startswith(str(env_dir.resolve())), recipes
    assert kernel_source == "True"  # the C++ sources of the optional CPU kernels ship in the wheel
    checkout = ROOT / "blocks"
    assert native_files == str(sorted(str(p.relative_to(checkout)) for p in checkout.rglob("*") if p.suffix in (".cpp", ".h")))
    assert "'sasrec'" in models and "'gru4rec'" in models
    assert shape == "torch.Size([1, 2])"
    assert "sasrec" in run([str(env_dir / "bin" / "zoo"), "list"], cwd=tmp_path, env=env).stdout
