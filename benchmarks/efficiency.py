"""Time and peak memory of a training step and of a full-ranking scoring pass against the sequence length.

The papers' efficiency claims (issue 25, point 3): the SSM and convolution models grow linearly in the
sequence length L where the Transformers grow quadratically; ConvRec's memory goes from 2.8 to 6.1 GB
for L 50 -> 500; SIGMA is faster than SASRec; M2Rec is 20% faster than the Transformers.

For each recipe (``--recipes``) and each L (``--lengths``) the model is built with
``zoo.create(name, num_items=1682, max_len=L)`` (ml-100k's catalog; random stand-ins for item texts and
attributes), and two phases are measured, each in its own fresh subprocess (``--in-process``: all in
this one, which saves the processes' start-up, seconds each on a GPU, where the peak memory is reset
per point anyway):

* **train**: one optimiser step (zero_grad, ``model.loss`` with the recipe's own objective and loss,
  backward, the recipe's optimiser step) on a fixed batch of ``--batch`` random full-length histories
  of L items (``measure.training_batch``);
* **eval**: ``model.score`` (every item's score after each history, the full-ranking pass) under
  ``torch.no_grad`` on ``--batch`` random histories of L items, in eval mode.

Time: the median of ``--repeats`` calls after ``--warmup`` untimed ones. Memory: the growth of the
process's peak resident set over its resident set once the model and the batch were built (``VmHWM``
reset through ``/proc/self/clear_refs``; else ``ru_maxrss``); with ``--device cuda`` also
``torch.cuda.max_memory_allocated`` over what was allocated then. A call over ``--time-limit``
seconds, a process whose resident set passes ``--memory-limit`` GB (or that the allocator refuses, or
that the system's out-of-memory killer ends) records the point as skipped with the reason, and the
longer lengths of that recipe and phase are skipped too; any other error records it as failed (and the
script exits with an error once the results are written). The compiled CPU kernels are built before any timing (one tiny run of each recipe here).

The slope of log time against log L is fitted per recipe and phase by least squares over all
measured lengths and over L >= 200 alone, and the claims are checked on the measured numbers
(``claims`` in the JSON). Writes ``--out`` (JSON, with the command line and the machine) and a PNG
beside it: log-log time of the training step and of the evaluation, and peak memory, one line per
model, slopes in the legends.

Usage::

    .venv/bin/python benchmarks/efficiency.py                                   # the issue's grid
    .venv/bin/python benchmarks/efficiency.py --recipes sasrec mamba4rec --lengths 50 200 --repeats 3
    python benchmarks/efficiency.py --device cuda --in-process --out benchmarks/results/efficiency_cuda.json
"""

from __future__ import annotations

import argparse
import gc
import json
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import torch

import measure
from zoo.model import is_allocation_failure
from zoo.train import build_optimizer

HERE = Path(__file__).resolve().parent
RECIPES = ["sasrec", "bert4rec", "mamba4rec", "sigma", "cnn-mamba", "convrec", "m2rec"]
TRANSFORMERS = ("sasrec", "bert4rec")
LENGTHS = [50, 100, 200, 500, 1000, 2000]
PHASES = ("train", "eval")
LONG = 200  # the second slope is fitted over L >= LONG
LINEAR_AT_MOST, QUADRATIC_AT_LEAST = 1.25, 1.75  # log-log slopes read as linear / quadratic growth


# ---------------------------------------------------------------------------------------------- one point


def train_call(model: Any, batch: int, length: int, device: torch.device, seed: int) -> Callable[[], None]:
    """One optimiser step of the recipe's objective, loss and optimiser on a fixed random batch."""
    model.train()
    data = {k: v.to(device) for k, v in measure.training_batch(model, batch, length, seed).items()}
    optimizer = build_optimizer(model, model.recipe.train)

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        model.loss(data).backward()
        optimizer.step()
    return step


def eval_call(model: Any, batch: int, length: int, device: torch.device, seed: int) -> Callable[[], None]:
    """``model.score`` of every item after each of a fixed batch of random histories, without gradients."""
    model.eval()
    ids, times = (t.to(device) for t in measure.random_histories(model.num_items, batch, length,
                                                               torch.Generator().manual_seed(seed)))

    def score() -> None:
        with torch.no_grad():
            model.score(ids, times)
    return score


CALLS = {"train": train_call, "eval": eval_call}


def measure_point(recipe: str, length: int, phase: str, settings: dict[str, Any]) -> dict[str, Any]:
    """Time and peak memory of one phase of one recipe at one length, in this process (a fresh one)."""
    device = torch.device(settings["device"])
    cuda = device.type == "cuda"
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    record: dict[str, Any] = {"recipe": recipe, "length": length, "phase": phase}
    model = measure.build_model(recipe, length, device, settings["seed"])
    config = model.recipe.train
    record.update(objective=config.objective, loss=config.loss, optimizer=config.optimizer,
                  parameters=sum(p.numel() for p in model.parameters()))
    call = CALLS[phase](model, settings["batch"], length, device, settings["seed"])
    gc.collect()  # what an earlier point left (--in-process) is freed before the baseline
    if cuda:
        torch.cuda.empty_cache()
    sync()
    reset = measure.reset_peak_rss()
    rss_before = measure.proc_status_kib("VmRSS")
    if cuda:
        torch.cuda.reset_peak_memory_stats(device)
        cuda_before = torch.cuda.memory_allocated(device)
    try:
        median, times = measure.median_seconds(call, settings["repeats"], settings["warmup"], sync, settings["time_limit"])
    except measure.TimeLimit as error:
        return {**record, "status": "skipped", "reason": f"time: {error}"}
    except (RuntimeError, MemoryError) as error:
        if not is_allocation_failure(error):
            raise
        return {**record, "status": "skipped", "reason": f"memory: {str(error).splitlines()[0][:200]}"}
    record.update(status="ok", median_s=median, times_s=times,
                  peak_rss_increase_mb=(measure.peak_rss_kib(reset) - rss_before) / 1024,
                  rss_peak_source="VmHWM" if reset else "ru_maxrss")
    if cuda:
        record["cuda_peak_increase_mb"] = (torch.cuda.max_memory_allocated(device) - cuda_before) / 2**20
    return record


# ---------------------------------------------------------------------------------------------- the parent


def child_rss_kib(pid: int) -> int:
    """The resident set of process ``pid`` in KiB (0 once it is gone)."""
    try:
        return measure.proc_status_kib("VmRSS", f"/proc/{pid}/status")
    except (OSError, RuntimeError):  # gone, or a zombie without VmRSS
        return 0


def watch(process: subprocess.Popen, memory_limit_kib: float, timeout: float) -> str | None:
    """Wait for ``process``; kill it and say why when its resident set passes the limit or it runs past ``timeout``."""
    begun = time.monotonic()
    while process.poll() is None:
        if child_rss_kib(process.pid) > memory_limit_kib:
            process.kill()
            process.wait()
            return f"memory: the process's resident set passed --memory-limit {memory_limit_kib / 2**20:.1f} GB"
        if time.monotonic() - begun > timeout:
            process.kill()
            process.wait()
            return f"time: the process ran past {timeout:.0f} s"
        time.sleep(0.05)
    return None


def run_point(recipe: str, length: int, phase: str, settings: dict[str, Any]) -> dict[str, Any]:
    """:func:`measure_point` in a fresh subprocess, watched for memory and time; a failure becomes a skipped record."""
    point = {"recipe": recipe, "length": length, "phase": phase}
    # Startup and the model's build, then every call at most at the limit.
    timeout = 120 + settings["time_limit"] * (settings["warmup"] + settings["repeats"])
    command = [sys.executable, __file__, "--child", json.dumps({**point, "settings": settings})]
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        process = subprocess.Popen(command, stdout=out, stderr=err, text=True)
        killed = watch(process, settings["memory_limit_gb"] * 2**20, timeout)
        out.seek(0)
        err.seek(0)
        lines = out.read().strip().splitlines()
        error = err.read().strip()
    if killed:
        return {**point, "status": "skipped", "reason": killed}
    if process.returncode == 0 and lines:
        return json.loads(lines[-1])
    if process.returncode == -signal.SIGKILL:  # not ours: the kernel's out-of-memory killer, most likely
        return {**point, "status": "skipped", "reason": "memory: killed by SIGKILL (the system ran out of memory?)"}
    how = (f"killed by signal {signal.Signals(-process.returncode).name}" if process.returncode < 0
           else f"exit code {process.returncode}")
    return {**point, "status": "failed", "reason": f"{how}: {error[-500:]}"}


def run_in_process(recipe: str, length: int, phase: str, settings: dict[str, Any]) -> dict[str, Any]:
    """:func:`measure_point` in this process (``--in-process``); an error becomes a failed record."""
    try:
        return measure_point(recipe, length, phase, settings)
    except Exception as error:  # noqa: BLE001 -- recorded, and the script exits with an error at the end
        return {"recipe": recipe, "length": length, "phase": phase, "status": "failed",
                "reason": f"{type(error).__name__}: {error}"[:500]}


def prime_kernels(recipes: list[str], device: torch.device) -> None:
    """Run each recipe once at a tiny size in this process, so every compiled CPU kernel it uses is built
    (and cached on disk) before a timed call could include the build."""
    for recipe in recipes:
        model = measure.build_model(recipe, 8, device)
        for make in CALLS.values():
            make(model, 2, 8, device, 0)()


def measure_all(recipes: list[str], lengths: list[int], settings: dict[str, Any]) -> list[dict[str, Any]]:
    """Every (recipe, length, phase), shortest length first; after a point that was skipped (over a limit) or
    failed (any other error: ``status`` ``failed``), the longer ones of that recipe and phase are skipped
    without running."""
    points = []
    for recipe in recipes:
        for phase in PHASES:
            over: int | None = None
            for length in sorted(lengths):
                if over is not None:
                    point = {"recipe": recipe, "length": length, "phase": phase, "status": "skipped",
                             "reason": f"L={over} was already over a limit or failed"}
                else:
                    point = (run_in_process if settings["in_process"] else run_point)(recipe, length, phase, settings)
                    over = length if point["status"] != "ok" else None
                points.append(point)
                print(summary(point), flush=True)
    return points


def summary(point: dict[str, Any]) -> str:
    """One printed line for a point."""
    head = f"{point['recipe']:10} L={point['length']:5} {point['phase']:5}"
    if point["status"] != "ok":
        return f"{head} {point['status']}: {point['reason']}"
    cuda = f", CUDA +{point['cuda_peak_increase_mb']:.0f} MB" if "cuda_peak_increase_mb" in point else ""
    return f"{head} {1000 * point['median_s']:10.2f} ms, peak RSS +{point['peak_rss_increase_mb']:.0f} MB{cuda}"


# ---------------------------------------------------------------------------------------------- analysis


def series(points: list[dict[str, Any]], recipe: str, phase: str, key: str = "median_s") -> dict[int, float]:
    """``{L: value}`` of the measured points of one recipe and phase."""
    return {p["length"]: p[key] for p in points
            if p["recipe"] == recipe and p["phase"] == phase and p["status"] == "ok" and p.get(key) is not None}


def memory_key(points: list[dict[str, Any]]) -> str:
    """The memory the results speak of: the GPU's when measured on one, else the resident set."""
    return "cuda_peak_increase_mb" if any("cuda_peak_increase_mb" in p for p in points) else "peak_rss_increase_mb"


def fit(values: dict[int, float], shortest: int = 0) -> float | None:
    """Log-log slope over the lengths >= ``shortest`` with a positive value."""
    kept = {length: v for length, v in values.items() if length >= shortest and v > 0}
    return measure.loglog_slope(list(kept), list(kept.values()))


def slopes(points: list[dict[str, Any]], recipes: list[str]) -> dict[str, dict[str, dict[str, float | None]]]:
    """Per recipe: the log-log slopes of time (all lengths, L >= 200) per phase, and of the training step's memory."""
    key = memory_key(points)
    out = {}
    for recipe in recipes:
        out[recipe] = {phase: {"all": fit(series(points, recipe, phase)), f"L>={LONG}": fit(series(points, recipe, phase), LONG)}
                       for phase in PHASES}
        out[recipe]["train_memory"] = {"all": fit(series(points, recipe, "train", key)),
                                       f"L>={LONG}": fit(series(points, recipe, "train", key), LONG)}
    return out


def growth(slope: float | None) -> str | None:
    """How a log-log slope reads: ``linear`` (at most 1.25: linear or slower), ``quadratic`` (at least 1.75) or
    ``between``; None when unmeasured."""
    if slope is None:
        return None
    return "linear" if slope <= LINEAR_AT_MOST else "quadratic" if slope >= QUADRATIC_AT_LEAST else "between"


def growth_claim(claim: str, recipe: str, slopes_by_phase: dict[str, float | None], expected: str) -> dict[str, Any]:
    """A claim that ``recipe`` grows as ``expected`` (``linear`` / ``quadratic``), judged on each of its slopes."""
    measured = {phase: {"slope": slope, "growth": growth(slope),
                        "holds": None if slope is None else growth(slope) == expected}
                for phase, slope in slopes_by_phase.items()}
    return {"claim": claim, "recipe": recipe, "measured": measured,
            "rule": f"log-log slope over L >= {LONG}: <= {LINEAR_AT_MOST} linear (or slower), >= {QUADRATIC_AT_LEAST} "
                    f"quadratic (or faster), else between; holds when it reads {expected}"}


def ratio_claim(points: list[dict[str, Any]], claim: str, recipe: str, references: tuple[str, ...],
                at_most: float) -> dict[str, Any]:
    """``recipe``'s time over the fastest of ``references`` at every length both measured, per phase; the
    claim holds at a length where the ratio is at most ``at_most``."""
    measured = {}
    for phase in PHASES:
        ours = series(points, recipe, phase)
        theirs = [series(points, name, phase) for name in references]
        ratios = {length: ours[length] / min(s[length] for s in theirs)
                  for length in sorted(ours) if all(length in s for s in theirs)}
        held = [length for length, ratio in ratios.items() if ratio <= at_most]
        verdict = ("not measured" if not ratios else "holds at every length" if len(held) == len(ratios)
                   else "holds nowhere" if not held else f"holds at L = {', '.join(map(str, held))} only")
        measured[phase] = {"ratio_by_length": ratios, "verdict": verdict}
    return {"claim": claim, "recipe": recipe, "against": list(references), "holds_when_ratio_at_most": at_most,
            "measured": measured}


def claims(points: list[dict[str, Any]], fitted: dict[str, Any]) -> list[dict[str, Any]]:
    """The papers' efficiency claims, each with what was measured here and a verdict by a stated rule."""
    out = []
    for recipe, slope in fitted.items():
        expected = "quadratic" if recipe in TRANSFORMERS else "linear"
        out.append(growth_claim(f"time grows {'quadratically' if expected == 'quadratic' else 'linearly'} in L", recipe,
                                {phase: slope[phase][f"L>={LONG}"] for phase in PHASES}, expected))
    if "convrec" in fitted:
        memory = series(points, "convrec", "train", memory_key(points))
        claim = growth_claim("ConvRec's training memory grows linearly in L (2.8 -> 6.1 GB for L 50 -> 500)", "convrec",
                             {"train_memory": fitted["convrec"]["train_memory"][f"L>={LONG}"]}, "linear")
        claim["measured"]["train_memory"].update(
            mb_by_length=memory, ratio_500_over_50=memory[500] / memory[50] if {50, 500} <= set(memory) else None)
        claim["note"] = ("the paper's two points are a constant 2.43 GB plus 7.3 MB per position; here the growth over the "
                         "built model is measured (other data, batch and device: the GB are not comparable)")
        out.append(claim)
    out.append(ratio_claim(points, "SIGMA is faster than SASRec", "sigma", ("sasrec",), 1.0))
    out.append(ratio_claim(points, "M2Rec is 20% faster than the Transformers", "m2rec", TRANSFORMERS, 0.8))
    return [c for c in out if c["recipe"] in fitted and all(r in fitted for r in c.get("against", ()))]


# ---------------------------------------------------------------------------------------------- output


def plot(points: list[dict[str, Any]], fitted: dict[str, Any], recipes: list[str], batch: int, path: Path) -> None:
    """Three log-log panels: training-step time, evaluation time (slopes in the legends), peak memory."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import NullLocator

    key = memory_key(points)
    fig, axes = plt.subplots(1, 3, figsize=(18, 5.5))
    titles = {"train": "one training step (median)", "eval": "one full-ranking scoring pass (median)"}
    for ax, phase in zip(axes, PHASES):
        for index, recipe in enumerate(recipes):
            values = series(points, recipe, phase)
            if values:
                s = fitted[recipe][phase]
                label = f"{recipe} (slope {fmt(s['all'])}; L>={LONG}: {fmt(s[f'L>={LONG}'])})"
                ax.plot(list(values), [1000 * v for v in values.values()], marker="o", color=f"C{index}", label=label)
        ax.set(title=titles[phase], xlabel="sequence length L", ylabel="ms")
    for index, recipe in enumerate(recipes):
        for phase, style in (("train", "-"), ("eval", ":")):
            values = {length: v for length, v in series(points, recipe, phase, key).items() if v > 0}
            if values:
                axes[2].plot(list(values), list(values.values()), style, marker="o", color=f"C{index}",
                             label=recipe if phase == "train" else None)
    axes[2].set(title=f"peak {'GPU memory' if key.startswith('cuda') else 'resident set'} growth "
                      "(training solid, evaluation dotted)", xlabel="sequence length L", ylabel="MB")
    lengths = sorted({p["length"] for p in points})
    for ax in axes:
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xticks(lengths, [str(length) for length in lengths])
        ax.xaxis.set_minor_locator(NullLocator())
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    missing = sum(p["status"] != "ok" for p in points)
    fig.suptitle(f"batch of {batch} random full-length histories, {measure.NUM_ITEMS} items; "
                 f"{missing} points skipped or failed (see the JSON)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def fmt(value: float | None) -> str:
    """A slope for the legend."""
    return "-" if value is None else f"{value:.2f}"


def default_memory_limit_gb() -> float:
    """80% of the memory available now."""
    return 0.8 * measure.proc_status_kib("MemAvailable", "/proc/meminfo") / 2**20


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipes", nargs="+", default=RECIPES)
    parser.add_argument("--lengths", nargs="+", type=int, default=LENGTHS)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=5, help="timed calls per point (the median is kept)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed calls before them")
    parser.add_argument("--time-limit", type=float, default=60.0, help="seconds one call may take")
    parser.add_argument("--memory-limit", type=float, default=None, help="GB a point's process may hold (default: 80%% of the available)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--in-process", action="store_true",
                        help="measure every point in this process, not one fresh process each: for a GPU, whose peak "
                        "memory is reset per point (a CPU's resident set then carries what earlier points left; no "
                        "--memory-limit watch)")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=HERE / "results" / "efficiency.json", help="the JSON; the PNG goes beside it")
    parser.add_argument("--keep", type=Path, default=None,
                        help="an earlier results JSON measured with the same settings: its points for the recipes not "
                        "measured now join this run's (its command and environment are recorded beside)")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    return parser.parse_args()


def kept_points(path: Path, measured: list[str], settings: dict[str, Any]) -> tuple[list[dict[str, Any]], list[str], dict[str, Any]]:
    """An earlier run's points for the recipes not in ``measured``, the order of every recipe, and where they came from."""
    if not path.is_file():
        raise SystemExit(f"--keep {path}: no such results file")
    earlier = json.loads(path.read_text(encoding="utf-8"))
    for key in ("batch", "repeats", "warmup", "device", "in_process", "threads"):
        if earlier["settings"].get(key) != settings[key]:
            raise SystemExit(f"--keep {path}: its {key} is {earlier['settings'].get(key)!r} and this run's {settings[key]!r}; "
                             "points measured differently do not share one table")
    kept = [r for r in earlier["settings"]["recipes"] if r not in measured]
    order = earlier["settings"]["recipes"] + [r for r in measured if r not in earlier["settings"]["recipes"]]
    source = {"file": str(path), "recipes": kept, "command": earlier["command"], "environment": earlier["environment"]}
    return [p for p in earlier["points"] if p["recipe"] in kept], order, source


def main() -> None:
    args = parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.child:
        task = json.loads(args.child)
        torch.set_num_threads(task["settings"]["threads"])
        print(json.dumps(measure_point(task["recipe"], task["length"], task["phase"], task["settings"])))
        return
    settings = {"batch": args.batch, "repeats": args.repeats, "warmup": args.warmup, "time_limit": args.time_limit,
                "memory_limit_gb": args.memory_limit or default_memory_limit_gb(), "device": args.device,
                "in_process": args.in_process,
                "seed": args.seed, "threads": torch.get_num_threads()}
    kept, recipes, source = kept_points(args.keep, args.recipes, settings) if args.keep else ([], args.recipes, None)
    prime_kernels(args.recipes, torch.device(args.device))
    environment = measure.environment(args.device)
    points = kept + measure_all(args.recipes, args.lengths, settings)
    fitted = slopes(points, recipes)
    report = {"command": measure.command_line(), "settings": {**settings, "recipes": recipes, "lengths": args.lengths},
              "environment": environment, "points": points, "slopes": fitted, "claims": claims(points, fitted)}
    if source:
        report["kept_from"] = source
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2), encoding="utf-8")
    plot(points, fitted, recipes, args.batch, args.out.with_suffix(".png"))
    print(json.dumps(fitted, indent=2))
    if any(p["status"] == "failed" for p in points):
        raise SystemExit(f"some points failed (status 'failed' in {args.out})")


if __name__ == "__main__":
    main()
