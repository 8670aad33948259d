"""The optional TensorBoard log (``loggers=("tensorboard",)``, ``zoo train --log tensorboard``): its scalars equal
``metrics.jsonl``, a resumed run logs every epoch once, and an unknown logger or a missing package fails first."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from zoo.cli import main
from zoo.data.synthetic import generate_dataset
from zoo.tensorboard_log import LOG_EXTRA_INSTALL, TENSORBOARD_DIR, epoch_scalars
from zoo.train import train

pytest.importorskip("tensorboard", reason=f"needs the log extra: {LOG_EXTRA_INSTALL}")
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator  # noqa: E402

TINY = {"d_model": 16, "encoder.0.repeat": 1, "train.batch_size": 16}
SETTINGS = dict(seed=0, overrides=TINY, progress=False, save_model=False, plot=False, loggers=("tensorboard",))

pytestmark = [pytest.mark.usefixtures("one_thread"),  # conftest.py
              pytest.mark.kernel_independent]  # the kernels-off pass leaves it out (pyproject.toml)


@pytest.fixture(scope="module")
def data():
    return generate_dataset(num_users=40, num_items=20, length=(6, 12), pattern="markov", noise=0.1,
                            seed=0).split("loo")


def read_events(out: Path) -> EventAccumulator:
    """The event files of ``out/tensorboard/``, every point kept."""
    return EventAccumulator(str(out / TENSORBOARD_DIR), size_guidance={"scalars": 0}).Reload()


def read_scalars(out: Path) -> dict[str, list[tuple[int, float]]]:
    """Every scalar tag of ``out/tensorboard/`` as (step, value) points, in the order written."""
    events = read_events(out)
    return {tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}


def metrics_log(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def expected_scalars(records: list[dict], test: dict[str, float],
                     best_epoch: int) -> dict[str, list[tuple[int, float]]]:
    """The points the log must hold: each record's scalars at its epoch, the test metrics at the best epoch."""
    expected: dict[str, list[tuple[int, float]]] = {}
    for record in records:
        for tag, value in epoch_scalars(record).items():
            expected.setdefault(tag, []).append((record["epoch"], value))
    for metric, value in test.items():
        expected[f"test/{metric}"] = [(best_epoch, value)]
    return expected


def as_float32(points: dict[str, list[tuple[int, float]]]) -> dict[str, list[tuple[int, np.float32]]]:
    """Event files store scalars as float32: compare at that precision."""
    return {tag: [(step, np.float32(value)) for step, value in series] for tag, series in points.items()}


def test_scalars_equal_the_metrics_log_per_epoch(data, tmp_path):
    result = train("sasrec", data, tmp_path, epochs=2, **SETTINGS)
    records = metrics_log(tmp_path)
    scalars = read_scalars(tmp_path)
    assert {"train/loss", "train/lr", "train/targets_per_second", "valid/ndcg@10", "valid/hr@20",
            "test/ndcg@10"} <= set(scalars)
    assert as_float32(scalars) == as_float32(expected_scalars(records, result.test, result.best_epoch))
    assert result.paths["tensorboard"] == tmp_path / TENSORBOARD_DIR


def test_a_resumed_run_logs_every_epoch_once(data, tmp_path):
    """2 epochs, then 3 on the same folder: one event file, each epoch once, the test of the longer run only."""
    train("sasrec", data, tmp_path, epochs=2, **SETTINGS)
    longer = train("sasrec", data, tmp_path, epochs=3, **SETTINGS)
    assert len(list((tmp_path / TENSORBOARD_DIR).iterdir())) == 1
    scalars = read_scalars(tmp_path)
    assert [step for step, _ in scalars["train/loss"]] == [1, 2, 3]
    records = metrics_log(tmp_path)
    assert as_float32(scalars) == as_float32(expected_scalars(records, longer.test, longer.best_epoch))
    # Rewritten epochs keep their times: the gaps between points are those of the records' run time.
    walls = [event.wall_time for event in read_events(tmp_path).Scalars("train/loss")]
    assert np.diff(walls) == pytest.approx(np.diff([r["wall"] for r in records]), abs=1e-3)


def test_unknown_logger_lists_the_known_ones(data, tmp_path):
    with pytest.raises(ValueError, match="unknown logger 'wandb'; known loggers: tensorboard"):
        train("sasrec", data, tmp_path / "run", epochs=1, **{**SETTINGS, "loggers": ("tensorboard", "wandb")})
    assert not (tmp_path / "run").exists()


def test_a_missing_tensorboard_fails_before_training_naming_the_install(data, tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # `from torch.utils.tensorboard import` fails
    with pytest.raises(ImportError, match="tensorboard") as info:
        train("sasrec", data, tmp_path / "run", epochs=1, **SETTINGS)
    assert LOG_EXTRA_INSTALL in str(info.value)
    assert not (tmp_path / "run").exists()
    with pytest.raises(SystemExit) as exit_info:  # the command line: a usage error, no traceback
        main(["train", "sasrec", "--data", "ml-100k", "--out", str(tmp_path / "run"), "--log", "tensorboard"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert LOG_EXTRA_INSTALL in err and "Traceback" not in err
    assert not (tmp_path / "run").exists()


def test_cli_log_tensorboard(tmp_path):
    """``zoo train ... --log tensorboard`` in a subprocess, as a user runs it: the log holds every epoch."""
    log_csv = tmp_path / "log.csv"
    rng = np.random.default_rng(0)
    lines = ["user,item,timestamp"]
    for user in range(30):
        start = rng.integers(0, 20)
        lines += [f"u{user},i{(start + t * 5 + user % 5) % 20},{1_000_000 + 3600 * t}"
                  for t in range(int(rng.integers(6, 12)))]
    log_csv.write_text("\n".join(lines) + "\n")
    out = tmp_path / "run"
    done = subprocess.run([sys.executable, "-m", "zoo.cli", "--threads", "1", "train", "gru4rec", "--data", str(log_csv),
                           "--out", str(out), "--epochs", "2", "--set", "d_model=16", "--set", "train.batch_size=32",
                           "--quiet", "--log", "tensorboard"], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    scalars = read_scalars(out)
    records = metrics_log(out)
    assert [step for step, _ in scalars["train/loss"]] == [1, 2]
    assert np.float32(scalars["valid/ndcg@10"][-1][1]) == np.float32(records[-1]["valid"]["ndcg@10"])
    tested = {tag.removeprefix("test/") for tag in scalars if tag.startswith("test/")}
    assert tested == set(json.loads((out / "result.json").read_text())["test"])
