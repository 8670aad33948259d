"""benchmarks/study.py: the popularity floor against a direct count, mean and standard error, the claims'
verdicts, and the tables and plot from finished run folders (no training: the folders are written here)."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))

import study  # noqa: E402

pytestmark = pytest.mark.kernel_independent  # no model runs here


def write_run(runs: Path, recipe: str, seed: int, ndcg: float, sampled: bool = False) -> None:
    folder = study.run_folder(runs, recipe, seed)
    folder.mkdir(parents=True)
    full = {"hr@10": 2 * ndcg, "ndcg@10": ndcg, "mrr@10": ndcg / 2}
    result = {"best_epoch": 3 + seed, "protocol": {"mode": "sampled" if sampled else "full"},
              "test": {m: 7 * v for m, v in full.items()} if sampled else full, "full_ranking": {"test": full}}
    (folder / "result.json").write_text(json.dumps(result))


def test_popularity_floor_matches_a_direct_count():
    """Rank of each test target among all items by training count, ties counted against it (the evaluator's rule)."""
    from zoo.data import load_dataset

    split = load_dataset("ml-100k").split("loo")
    counts = np.bincount(split.train.items, minlength=split.dataset.num_items + 1)[1:]
    targets = split.dataset.sequences.items[split.test.ends]
    ranks = np.array([int((counts >= counts[t - 1]).sum()) for t in targets])  # the target and every item tied or above
    hit = ranks <= 10
    expected = {"hr@10": hit.mean(), "ndcg@10": (hit / np.log2(ranks + 1)).mean(), "mrr@10": (hit / ranks).mean()}
    floor = study.popularity_floor()
    for metric, value in expected.items():
        assert floor[metric] == pytest.approx(value, abs=1e-12), metric


def test_mean_and_standard_error():
    mean, se = study.mean_se([0.05, 0.06, 0.07])
    assert mean == pytest.approx(0.06) and se == pytest.approx(0.01 / math.sqrt(3))
    assert study.mean_se([0.05]) == (0.05, None)


def test_collect_and_verdicts(tmp_path):
    runs = tmp_path / "runs"
    for seed, value in enumerate([0.060, 0.062, 0.064]):
        write_run(runs, "sigma", seed, value)
        write_run(runs, "sigma-no-flip", seed, value - 0.010)   # clearly worse
        write_run(runs, "mamba4rec", seed, value + 0.001)       # within noise
        write_run(runs, "sigma-no-gate", seed, value + 0.010)   # clearly better
    write_run(runs, "sasrec", 0, 0.05)
    rows = study.collect(["sigma", "sigma-no-flip", "mamba4rec", "sigma-no-gate", "sasrec"], [0, 1, 2], runs)
    assert rows["sigma"]["n"] == 3 and rows["sigma"]["full"]["ndcg@10"]["mean"] == pytest.approx(0.062)
    assert rows["sasrec"]["full"]["ndcg@10"]["se"] is None
    assert study.verdict(rows, "sigma", "sigma-no-flip")["verdict"] == "holds"
    assert study.verdict(rows, "sigma", "mamba4rec")["verdict"] == "not shown (within noise)"
    assert study.verdict(rows, "sigma", "sigma-no-gate")["verdict"] == "does not hold (reversed)"
    assert study.verdict(rows, "sigma", "sasrec")["verdict"] == "not testable yet"
    assert study.verdict(rows, "sigma", "convrec")["verdict"] == "not testable yet"


def test_sampled_protocol_is_kept_beside_full_ranking(tmp_path):
    runs = tmp_path / "runs"
    for seed in (0, 1):
        write_run(runs, "cnn-mamba", seed, 0.06 + seed / 100, sampled=True)
        write_run(runs, "cnn-mamba-cnn-only", seed, 0.05 + seed / 100, sampled=True)
    rows = study.collect(["cnn-mamba", "cnn-mamba-cnn-only"], [0, 1], runs)
    assert rows["cnn-mamba"]["full"]["ndcg@10"]["mean"] == pytest.approx(0.065)
    assert rows["cnn-mamba"]["sampled"]["ndcg@10"]["mean"] == pytest.approx(7 * 0.065)
    checked = study.verdict(rows, "cnn-mamba", "cnn-mamba-cnn-only")
    assert checked["sampled_difference"] == pytest.approx(0.07)


def test_collect_only_writes_the_tables_and_plot(tmp_path):
    runs = tmp_path / "runs"
    for seed in (0, 1):
        write_run(runs, "sigma", seed, 0.06 + seed / 1000)
        write_run(runs, "mamba4rec", seed, 0.05 + seed / 1000)
    out = tmp_path / "study.json"
    done = subprocess.run([sys.executable, str(BENCHMARKS / "study.py"), "--runs", str(runs), "--recipes", "sigma",
                           "mamba4rec", "--seeds", "0", "1", "--collect-only", "--out", str(out)],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads(out.read_text())
    assert set(report["recipes"]) == {"sigma", "mamba4rec"} and report["popularity"]["ndcg@10"] > 0
    claim = next(c for c in report["claims"] if c["recipe"] == "sigma" and c["other"] == "mamba4rec")
    assert claim["verdict"] == "holds" and claim["difference"] == pytest.approx(0.01)
    table = out.with_suffix(".md").read_text()
    assert "| SIGMA | sigma | 2 | " in table and "| floor | popularity |" in table and "SIGMA beats Mamba4Rec" in table
    assert out.with_suffix(".png").read_bytes().startswith(b"\x89PNG")


def test_a_run_finished_meanwhile_is_not_run_again(tmp_path):
    """Two invocations sharing run folders: the second never retrains nor re-records a run the first finished."""
    import argparse

    runs = tmp_path / "runs"
    write_run(runs, "sasrec", 1, 0.05)
    args = argparse.Namespace(device="cpu", precision="fp32", threads=1, jobs=1)
    assert study.launch("sasrec", 1, runs, args) == ("sasrec", 1, 0, 0.0)
    assert not (runs / "sasrec" / "seed-1.json").exists() and not (runs / "sasrec" / "seed-1.log").exists()


def test_keep_joins_an_earlier_reports_runs_where_no_folder_is_finished(tmp_path):
    """``--keep``: an earlier report's runs count for (recipe, seed) pairs without a finished folder; a finished
    folder wins; a report of another protocol is refused."""
    first, second = tmp_path / "first", tmp_path / "second"
    for seed in (0, 1):
        write_run(first, "sigma", seed, 0.06 + seed / 1000)
    write_run(first, "mamba4rec", 0, 0.040)
    earlier = tmp_path / "earlier.json"

    def study_cli(runs, out, *extra):
        return subprocess.run([sys.executable, str(BENCHMARKS / "study.py"), "--runs", str(runs), "--recipes", "sigma",
                               "mamba4rec", "--seeds", "0", "1", "--collect-only", "--out", str(out), *extra],
                              capture_output=True, text=True, timeout=300)

    assert study_cli(first, earlier).returncode == 0
    write_run(second, "mamba4rec", 0, 0.050)  # replaces the earlier seed 0
    write_run(second, "mamba4rec", 1, 0.052)
    out = tmp_path / "study.json"
    done = study_cli(second, out, "--keep", str(earlier))
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads(out.read_text())
    assert report["recipes"]["sigma"]["n"] == 2
    assert report["recipes"]["sigma"]["full"]["ndcg@10"]["mean"] == pytest.approx(0.0605)
    assert report["recipes"]["mamba4rec"]["full"]["ndcg@10"]["mean"] == pytest.approx(0.051)
    assert report["kept_from"]["file"] == str(earlier) and "--collect-only" in report["kept_from"]["command"]
    other = json.loads(earlier.read_text())
    other["protocol"] = "ml-1m, something else"
    earlier.write_text(json.dumps(other))
    refused = study_cli(second, out, "--keep", str(earlier))
    assert refused.returncode != 0 and "its protocol is 'ml-1m, something else'" in refused.stderr
