"""benchmarks/efficiency.py and benchmarks/streaming.py run end to end at tiny sizes and write what they promise."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def run(script: str, out: Path, *args: str) -> dict:
    """Run a benchmark script with one thread into ``out``; its JSON, after checking the PNG beside it."""
    done = subprocess.run([sys.executable, str(BENCHMARKS / script), "--threads", "1", "--out", str(out), *args],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert out.with_suffix(".png").read_bytes().startswith(PNG_MAGIC)
    report = json.loads(out.read_text(encoding="utf-8"))
    assert report["command"].endswith(f"--out {out} {' '.join(args)}".rstrip())
    assert report["environment"]["threads"] == 1 and report["environment"]["torch"]
    assert "cpu_kernel_mode" in report["environment"]
    return report


def test_efficiency_tiny(tmp_path):
    """One length (each point is a fresh process, seconds each): the analysis is checked on made-up points below."""
    report = run("efficiency.py", tmp_path / "eff.json", "--recipes", "sasrec", "--lengths", "8",
                 "--batch", "2", "--repeats", "2", "--warmup", "0")
    assert report["settings"]["lengths"] == [8] and report["settings"]["batch"] == 2
    points = report["points"]
    assert sorted(p["phase"] for p in points) == ["eval", "train"]
    for point in points:
        assert point["status"] == "ok", point
        assert point["recipe"] == "sasrec" and point["length"] == 8
        assert point["objective"] == "all" and point["loss"] == "ce" and point["parameters"] > 0
        assert len(point["times_s"]) == 2 and point["median_s"] > 0
        assert isinstance(point["peak_rss_increase_mb"], float)
    assert report["slopes"] == {"sasrec": {key: {"all": None, "L>=200": None} for key in ("train", "eval", "train_memory")}}
    assert [c["claim"] for c in report["claims"]] == ["time grows quadratically in L"]


def test_efficiency_keeps_the_other_recipes_of_an_earlier_run(tmp_path):
    """--keep: a re-measured recipe replaces its points; the earlier run's other recipes stay, named with their source."""
    first = tmp_path / "eff.json"
    tiny = ("--lengths", "8", "--batch", "2", "--repeats", "2", "--warmup", "0")
    run("efficiency.py", first, "--recipes", "sasrec", "mamba4rec", *tiny)
    earlier = json.loads(first.read_text(encoding="utf-8"))
    report = run("efficiency.py", tmp_path / "again.json", "--recipes", "mamba4rec", *tiny, "--keep", str(first))
    assert report["settings"]["recipes"] == ["sasrec", "mamba4rec"]
    assert report["kept_from"]["recipes"] == ["sasrec"] and report["kept_from"]["command"] == earlier["command"]
    kept = [p for p in report["points"] if p["recipe"] == "sasrec"]
    assert kept == [p for p in earlier["points"] if p["recipe"] == "sasrec"]
    assert sorted(p["phase"] for p in report["points"] if p["recipe"] == "mamba4rec") == ["eval", "train"]
    done = subprocess.run([sys.executable, str(BENCHMARKS / "efficiency.py"), "--threads", "1", "--out", str(tmp_path / "x.json"),
                           "--recipes", "mamba4rec", "--lengths", "8", "--batch", "3", "--keep", str(first)],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode != 0 and "its batch is 2 and this run's 3" in done.stderr


def made_up_points() -> list[dict]:
    """Points whose times grow as L**2 (the Transformers) or as L, with SIGMA twice SASRec's time at L = 50 and
    half of it at L = 2000, M2Rec at 0.7 of the faster Transformer, and ConvRec's memory growing linearly."""
    lengths = [50, 200, 500, 2000]
    law = {"sasrec": lambda L: 1e-5 * L**2 + 0.2, "bert4rec": lambda L: 2e-5 * L**2 + 0.2,
           "mamba4rec": lambda L: 1e-3 * L, "convrec": lambda L: 1e-3 * L}
    law["sigma"] = lambda L: 2 * law["sasrec"](L) if L == 50 else law["sasrec"](L) / 2
    law["m2rec"] = lambda L: 0.7 * law["sasrec"](L)
    return [{"recipe": recipe, "length": L, "phase": phase, "status": "ok", "median_s": f(L),
             "peak_rss_increase_mb": 100.0 + L}
            for recipe, f in law.items() for L in lengths for phase in ("train", "eval")]


def test_efficiency_slopes_claims_and_plot(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    import efficiency

    points = made_up_points()
    points.append({"recipe": "mamba4rec", "length": 4000, "phase": "train", "status": "skipped", "reason": "time: ..."})
    recipes = sorted({p["recipe"] for p in points})
    fitted = efficiency.slopes(points, recipes)
    assert abs(fitted["mamba4rec"]["train"]["all"] - 1) < 1e-9 and abs(fitted["mamba4rec"]["eval"]["L>=200"] - 1) < 1e-9
    assert fitted["sasrec"]["train"]["all"] < 1.75 < fitted["sasrec"]["train"]["L>=200"] < 2  # the constant weighs at L = 50
    verdicts = {(c["claim"], c["recipe"]): c["measured"] for c in efficiency.claims(points, fitted)}
    assert verdicts["time grows quadratically in L", "bert4rec"]["train"]["holds"] is True
    assert verdicts["time grows linearly in L", "mamba4rec"]["eval"] == {"slope": fitted["mamba4rec"]["eval"]["L>=200"],
                                                                        "growth": "linear", "holds": True}
    assert verdicts["time grows linearly in L", "sigma"]["train"]["growth"] == "quadratic"
    memory = verdicts["ConvRec's training memory grows linearly in L (2.8 -> 6.1 GB for L 50 -> 500)", "convrec"]
    assert memory["train_memory"]["holds"] is True and memory["train_memory"]["ratio_500_over_50"] == 600 / 150
    sigma = verdicts["SIGMA is faster than SASRec", "sigma"]["train"]
    assert sigma["ratio_by_length"][50] == 2 and sigma["verdict"] == "holds at L = 200, 500, 2000 only"
    assert verdicts["M2Rec is 20% faster than the Transformers", "m2rec"]["eval"]["verdict"] == "holds at every length"
    efficiency.plot(points, fitted, recipes, 32, tmp_path / "eff.png")
    assert (tmp_path / "eff.png").read_bytes().startswith(PNG_MAGIC)


def test_median_seconds_stops_at_the_time_limit(monkeypatch):
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    import measure

    median, times = measure.median_seconds(lambda: None, repeats=3, warmup=1)
    assert len(times) == 3 and median == sorted(times)[1]
    with pytest.raises(measure.TimeLimit, match="over the limit of 0.001 s"):
        measure.median_seconds(lambda: time.sleep(0.01), repeats=3, warmup=0, limit=0.001)


TINY = {"batch": 2, "repeats": 1, "warmup": 0, "time_limit": 60.0, "memory_limit_gb": 8.0, "device": "cpu",
        "seed": 0, "threads": 1, "in_process": True}


def test_in_process_points_and_their_slopes(monkeypatch):
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    import efficiency

    points = [efficiency.run_in_process("mamba4rec", length, phase, TINY) for length in (8, 16) for phase in ("train", "eval")]
    assert [p["status"] for p in points] == ["ok"] * 4, points
    fitted = efficiency.slopes(points, ["mamba4rec"])["mamba4rec"]
    assert all(isinstance(fitted[key]["all"], float) for key in ("train", "eval", "train_memory"))
    failed = efficiency.run_in_process("sasrec", 8, "sideways", TINY)
    assert failed["status"] == "failed" and failed["reason"].startswith("KeyError")


def test_a_point_over_the_memory_limit_is_skipped(monkeypatch):
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    import efficiency

    point = efficiency.run_point("sasrec", 8, "train", {**TINY, "memory_limit_gb": 0.001, "in_process": False})
    assert point == {"recipe": "sasrec", "length": 8, "phase": "train", "status": "skipped",
                     "reason": "memory: the process's resident set passed --memory-limit 0.0 GB"}


def test_longer_lengths_after_a_skipped_point_are_skipped_unrun(monkeypatch):
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    import efficiency

    ran = []

    def fake(recipe: str, length: int, phase: str, settings: dict) -> dict:
        ran.append((phase, length))
        if length == 16:
            return {"recipe": recipe, "length": length, "phase": phase, "status": "skipped", "reason": "time: made up"}
        return {"recipe": recipe, "length": length, "phase": phase, "status": "ok", "median_s": 1.0, "peak_rss_increase_mb": 1.0}
    monkeypatch.setattr(efficiency, "run_in_process", fake)
    points = efficiency.measure_all(["sasrec"], [32, 8, 16], {"in_process": True})
    assert ran == [("train", 8), ("train", 16), ("eval", 8), ("eval", 16)]
    assert [(p["length"], p["status"]) for p in points[:3]] == [(8, "ok"), (16, "skipped"), (32, "skipped")]
    assert points[2]["reason"] == "L=16 was already over a limit or failed"


def test_streaming_tiny(tmp_path):
    report = run("streaming.py", tmp_path / "stream.json", "--recipes", "gru4rec", "--lengths", "1", "4",
                 "--repeats", "2", "--warmup", "0")
    result = report["models"]["gru4rec"]
    assert result["max_len"] == 50 and result["long_max_len"] == 5 and result["score_at_max_len_ms"] > 0
    assert report["settings"] == {"recipes": ["gru4rec"], "lengths": [1, 4], "users": 1, "repeats": 2, "warmup": 0, "seed": 0}
    assert [row["n"] for row in result["rows"]] == [1, 4]
    for row in result["rows"]:
        assert row["score_items"] == row["n"] + 1
        assert min(row["step_ms"], row["step_long_ms"], row["score_ms"], row["score_long_ms"]) > 0
        assert row["relative_difference_long"] < 1e-4 and row["relative_difference"] < 1e-4  # both read the whole history


def test_layer_cost_tiny(tmp_path):
    """layer_cost.py at batch 2, one round: every case of its report, the scan alone included, timed."""
    out = tmp_path / "cost.json"
    done = subprocess.run([sys.executable, str(BENCHMARKS / "layer_cost.py"), "--batch", "2", "--rounds", "1",
                           "--models", "sasrec", "mamba4rec", "--out", str(out)], capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads(out.read_text(encoding="utf-8"))
    assert report["batch"] == 2 and report["rounds"] == 1
    assert sorted(report["layers_ms_per_sequence"]) == ["mamba layer", "selective scan alone", "transformer layer"]
    for section in ("layers_ms_per_sequence", "train_ms_per_sequence", "eval_seconds"):
        assert all(value > 0 for value in report[section].values()), section
    assert sorted(report["train_ms_per_sequence"]) == sorted(report["eval_seconds"]) == ["mamba4rec", "sasrec"]


def test_train_step_tiny(tmp_path):
    """train_step.py, one step and one round of two recipes in fp32 and bf16 (ConvRec's sampled validation among them): every number
    of its report, and the epoch as its steps plus its share of a validation (ConvRec validates every 10 epochs)."""
    out = tmp_path / "step.json"
    done = subprocess.run([sys.executable, str(BENCHMARKS / "train_step.py"), "--recipes", "gru4rec", "convrec", "--steps", "1",
                           "--rounds", "1", "--threads", "1", "--precision", "fp32", "bf16", "--out", str(out)],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads(out.read_text(encoding="utf-8"))
    assert report["steps"] == 1 and report["rounds"] == 1 and report["threads"] == 1
    assert report["precision"] == ["fp32", "bf16"]
    assert sorted(report["recipes"]) == ["convrec", "convrec@bf16", "gru4rec", "gru4rec@bf16"]
    assert report["recipes"]["convrec"]["steps_per_epoch"] == 8  # 943 users, one cut each, batches of 128
    for name, row in report["recipes"].items():
        assert row["step_ms"] > 0 and row["validation_s"] > 0, name
        assert row["valid_every"] == (10 if name.startswith("convrec") else 1), name
        assert row["trained_in"] == ("bf16" if name.endswith("@bf16") else "fp32"), name
        assert row["epoch_s"] == pytest.approx(row["steps_per_epoch"] * row["step_ms"] / 1000
                                               + row["validation_s"] / row["valid_every"], rel=1e-12)
    assert "| convrec | fp32 |" in done.stdout
