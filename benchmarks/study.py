"""The accuracy study: every recipe on ml-100k with one protocol, several seeds, mean and standard error.

Each (recipe, seed) is ``zoo.train(recipe, "ml-100k", RUNS/<recipe>/seed-<seed>, seed=seed)`` with the
recipe's own defaults: leave-one-out by time, L = 50, early stopping on validation NDCG@10, the
best-validation weights tested, every metric over full ranking (all 1,682 items; ConvRec's recipes also
report their paper's 1 + 100 sampled protocol). Runs go to their own subprocesses, ``--jobs`` at a time;
a run folder that already holds ``result.json`` counts as done and an interrupted one resumes, so the
command can be stopped and run again (also on another machine: copy the run folders). Popularity
(every user gets the items with the most training interactions) is the floor.

Writes ``--out`` (JSON: every run's test metrics and best epoch, each recipe's mean and standard error
over its seeds, the command and the machine), a Markdown table beside it and a PNG: test NDCG@10 per
recipe, mean with standard-error bars and each seed's value, grouped by paper.

Usage::

    .venv/bin/python benchmarks/study.py --runs runs/study                         # everything, 3 seeds
    .venv/bin/python benchmarks/study.py --runs runs/study --recipes 'sigma*' mamba4rec --seeds 0 1 2
    .venv/bin/python benchmarks/study.py --runs runs/study --collect-only          # tables from finished runs
    python benchmarks/study.py --runs runs/study --device cuda --jobs 16 --precision fp32
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import math
import os
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any

HERE = Path(__file__).resolve().parent
PROTOCOL = "ml-100k, leave-one-out by time, L=50, full ranking, early stopping on validation NDCG@10"
sys.path.insert(0, str(HERE))

import measure  # noqa: E402  (benchmarks/measure.py: the command line and the machine)

if TYPE_CHECKING:
    import numpy as np
    import torch

METRICS = ("hr@10", "ndcg@10", "mrr@10")
RESULT = "result.json"
# Papers and what their recipes are, for the table's grouping (recipe -> group).
GROUPS = {
    "sasrec": "baseline", "gru4rec": "baseline", "bert4rec": "baseline", "mamba4rec": "baseline",
    "sigma": "SIGMA", "sigma-code": "SIGMA", "sigma-no-flip": "SIGMA", "sigma-no-gate": "SIGMA",
    "sigma-no-gru": "SIGMA",
    "cnn-mamba": "CNN-Mamba", "cnn-mamba-cnn-only": "CNN-Mamba", "cnn-mamba-ssm-only": "CNN-Mamba",
    "convrec": "ConvRec", "convrec-avgpool": "ConvRec", "convrec-no-intervals": "ConvRec",
    "convrec-no-residuals": "ConvRec", "convrec-one-conv": "ConvRec",
    "m2rec": "M2Rec",
    "conv-pf-mamba": "hybrid", "ssd-pyramid": "hybrid", "fmlp-sigma": "hybrid", "mamba-gru": "hybrid",
}


# Accuracy claims checked on test NDCG@10 (full ranking): (paper, the claim as stated and where, recipe, compared with).
CLAIMS = [
    ("SIGMA (AAAI 2025)", "SIGMA beats Mamba4Rec (Table 2)", "sigma", "mamba4rec"),
    ("SIGMA (AAAI 2025)", "SIGMA beats SASRec (Table 2)", "sigma", "sasrec"),
    ("SIGMA (AAAI 2025)", "SIGMA beats BERT4Rec (Table 2)", "sigma", "bert4rec"),
    ("SIGMA (AAAI 2025)", "SIGMA beats GRU4Rec (Table 2)", "sigma", "gru4rec"),
    ("SIGMA (AAAI 2025)", "removing partial flipping hurts (Table 4, 0.0604 -> 0.0586 on Beauty)", "sigma", "sigma-no-flip"),
    ("SIGMA (AAAI 2025)", "removing the DS gate hurts (Table 4, 0.0604 -> 0.0571)", "sigma", "sigma-no-gate"),
    ("SIGMA (AAAI 2025)", "removing FE-GRU hurts most (Table 4, 0.0604 -> 0.0470)", "sigma", "sigma-no-gru"),
    ("SIGMA (AAAI 2025)", "the released code computes the paper's model (no claim; paper form vs code form)", "sigma", "sigma-code"),
    ("CNN-Mamba", "CNN-Mamba beats CNN-only (Table 3)", "cnn-mamba", "cnn-mamba-cnn-only"),
    ("CNN-Mamba", "CNN-Mamba beats SSM-only (Table 3)", "cnn-mamba", "cnn-mamba-ssm-only"),
    ("ConvRec", "removing time intervals hurts (Table 4)", "convrec", "convrec-no-intervals"),
    ("ConvRec", "removing the residuals hurts (Table 4)", "convrec", "convrec-no-residuals"),
    ("ConvRec", "learned strided convolutions beat average pooling (Table 4)", "convrec", "convrec-avgpool"),
    ("ConvRec", "the pyramid beats one convolution (Table 4)", "convrec", "convrec-one-conv"),
    ("M2Rec", "M2Rec beats Mamba-based models, HR@10 +3.2% (abstract)", "m2rec", "mamba4rec"),
    ("hybrid", "conv-pf-mamba beats its parent SIGMA", "conv-pf-mamba", "sigma"),
    ("hybrid", "conv-pf-mamba beats its parent CNN-Mamba", "conv-pf-mamba", "cnn-mamba"),
    ("hybrid", "mamba-gru beats its parent Mamba4Rec", "mamba-gru", "mamba4rec"),
    ("hybrid", "mamba-gru beats its parent GRU4Rec", "mamba-gru", "gru4rec"),
    ("hybrid", "fmlp-sigma beats its parent SIGMA", "fmlp-sigma", "sigma"),
    ("hybrid", "ssd-pyramid beats its parent ConvRec", "ssd-pyramid", "convrec"),
    ("hybrid", "ssd-pyramid beats its parent Mamba4Rec", "ssd-pyramid", "mamba4rec"),
]
GROUP_ORDER = list(dict.fromkeys(GROUPS.values()))  # baselines first, then each paper, then the hybrids
NOISE = 2.0  # a difference counts when it exceeds this many standard errors of the difference


def verdict(rows: dict[str, Any], recipe: str, other: str) -> dict[str, Any]:
    """``recipe`` against ``other`` on mean test NDCG@10 (full ranking): the difference, its standard error
    (both recipes' standard errors combined) and a verdict; fewer than 2 seeds on either side is not testable."""
    if recipe not in rows or other not in rows or rows[recipe]["n"] < 2 or rows[other]["n"] < 2:
        seeds = {name: rows.get(name, {}).get("n", 0) for name in (recipe, other)}
        return {"verdict": "not testable yet", "why": f"seeds run: {seeds} (2 or more each needed)"}
    a, b = rows[recipe]["full"]["ndcg@10"], rows[other]["full"]["ndcg@10"]
    difference, se = a["mean"] - b["mean"], math.hypot(a["se"], b["se"])
    if difference > NOISE * se:
        outcome = "holds"
    elif difference < -NOISE * se:
        outcome = "does not hold (reversed)"
    else:
        outcome = "not shown (within noise)"
    checked = {"verdict": outcome, "difference": difference, "se": se}
    if "sampled" in rows[recipe] and "sampled" in rows[other]:  # the paper's own protocol, shown beside
        a, b = rows[recipe]["sampled"]["ndcg@10"], rows[other]["sampled"]["ndcg@10"]
        checked["sampled_difference"], checked["sampled_se"] = a["mean"] - b["mean"], math.hypot(a["se"], b["se"])
    return checked


def claims_table(checked: list[dict[str, Any]]) -> str:
    lines = ["| paper | claim | measured: test NDCG@10, difference ± SE | verdict |", "|---|---|---|---|"]
    for claim in checked:
        measured = (f"{claim['recipe']} - {claim['other']}: {claim['difference']:+.4f} ± {claim['se']:.4f}"
                    if "difference" in claim else claim["why"])
        if "sampled_difference" in claim:
            measured += f" (1 + 100 sampled: {claim['sampled_difference']:+.4f} ± {claim['sampled_se']:.4f})"
        lines.append(f"| {claim['paper']} | {claim['claim']} | {measured} | {claim['verdict']} |")
    return "\n".join(lines) + "\n"


def chosen_recipes(patterns: list[str] | None) -> list[str]:
    from zoo.catalog import list_models

    every = list_models()
    if not patterns:
        return every
    chosen = [name for pattern in patterns for name in every if fnmatch.fnmatch(name, pattern)]
    unknown = [p for p in patterns if not any(fnmatch.fnmatch(name, p) for name in every)]
    if unknown:
        raise SystemExit(f"no bundled recipe matches {unknown}; bundled: {', '.join(every)}")
    return list(dict.fromkeys(chosen))


def run_folder(runs: Path, recipe: str, seed: int) -> Path:
    return runs / recipe / f"seed-{seed}"


def side_file(runs: Path, recipe: str, seed: int, suffix: str) -> Path:
    """``seed-N.log`` (the run's output) or ``seed-N.json`` (where it ran) beside the run folder."""
    return runs / recipe / f"seed-{seed}{suffix}"


def train_one(recipe: str, seed: int, folder: str, device: str, precision: str) -> None:
    """The child: one run, resumed when the folder holds a checkpoint."""
    from zoo.train import train

    train(recipe, "ml-100k", folder, seed=seed, device=device, precision=precision, progress=False,
          save_model=False, plot=False)


def launch(recipe: str, seed: int, runs: Path, args: argparse.Namespace) -> tuple[str, int, int, float]:
    """Run one (recipe, seed) in a subprocess, its output in ``seed-N.log``; (recipe, seed, exit code, seconds)."""
    folder = run_folder(runs, recipe, seed)
    if (folder / RESULT).is_file():  # finished meanwhile (by another invocation sharing the folders): keep its record
        print(f"{recipe} seed {seed}: already done", flush=True)
        return recipe, seed, 0, 0.0
    folder.parent.mkdir(parents=True, exist_ok=True)
    child = json.dumps({"recipe": recipe, "seed": seed, "folder": str(folder), "device": args.device,
                        "precision": args.precision})
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
    begun = time.perf_counter()
    with open(side_file(runs, recipe, seed, ".log"), "a", encoding="utf-8") as log:
        code = subprocess.run([sys.executable, __file__, "--child", child], stdout=log, stderr=subprocess.STDOUT,
                              env=env).returncode
    seconds = time.perf_counter() - begun
    machine = measure.environment(args.device)
    result = folder / RESULT  # the precision the run trained in ("auto" resolves per recipe and machine)
    precision = json.loads(result.read_text(encoding="utf-8")).get("precision", args.precision) if result.is_file() \
        else args.precision
    trained_on = {"device": args.device, "hardware": machine.get("gpu", machine["cpu"]), "precision": precision,
                  "threads": args.threads, "jobs": args.jobs, "seconds": round(seconds, 1), "exit_code": code}
    side_file(runs, recipe, seed, ".json").write_text(json.dumps(trained_on, indent=2) + "\n", encoding="utf-8")
    outcome = "done" if code == 0 else f"FAILED (exit {code}, see {side_file(runs, recipe, seed, '.log')})"
    print(f"{recipe} seed {seed}: {outcome} in {seconds:.0f} s", flush=True)
    return recipe, seed, code, seconds


def train_all(recipes: list[str], seeds: list[int], runs: Path, args: argparse.Namespace) -> list[tuple[str, int]]:
    """Train every (recipe, seed) without a result yet, ``--jobs`` at a time; the failed ones."""
    todo = [(r, s) for r in recipes for s in seeds if not (run_folder(runs, r, s) / RESULT).is_file()]
    print(f"{len(todo)} runs to train ({len(recipes) * len(seeds) - len(todo)} done already), {args.jobs} at a time",
          flush=True)
    with ThreadPoolExecutor(max_workers=args.jobs) as pool:
        finished = list(pool.map(lambda job: launch(*job, runs, args), todo))
    return [(r, s) for r, s, code, _ in finished if code != 0]


class Popularity:
    """Scores every item by its number of training interactions, whatever the history (the floor)."""

    max_len = 50

    def __init__(self, items: "np.ndarray", num_items: int) -> None:
        import numpy as np
        import torch

        counts = np.bincount(items, minlength=num_items + 1).astype(np.float32)
        counts[0] = -1.0  # padding is never a candidate anyway
        self.num_items = num_items
        self.counts = torch.from_numpy(counts)

    def score(self, item_ids: "torch.Tensor", timestamps: "torch.Tensor | None" = None) -> "torch.Tensor":
        return self.counts.expand(item_ids.shape[0], -1)


def popularity_floor() -> dict[str, float]:
    """Test HR / NDCG / MRR @10 of the popularity ranking, through the same evaluator (full ranking, pessimistic
    ties) as every model."""
    from zoo.data import load_dataset
    from zoo.evaluate import evaluate

    split = load_dataset("ml-100k").split("loo")
    result = evaluate(Popularity(split.train.items, split.dataset.num_items), split, which="test", ks=(10,))
    return {m: result.metrics[m.upper()] for m in METRICS}  # the evaluator labels them HR@10, NDCG@10, ...


def mean_se(values: list[float]) -> tuple[float, float | None]:
    """The mean and the standard error of the mean (sample standard deviation / sqrt(n)); no error for one value."""
    if len(values) < 2:
        return values[0], None
    return statistics.mean(values), statistics.stdev(values) / math.sqrt(len(values))


def finished_run(result_path: Path, provenance: Path) -> dict[str, Any]:
    """One finished run's entry: best epoch, full-ranking test metrics, sampled ones when it validated on the
    sampled protocol, and where it ran (``provenance``, when that file exists)."""
    result = json.loads(result_path.read_text(encoding="utf-8"))
    full = result.get("full_ranking", {}).get("test", result["test"])
    entry = {"best_epoch": result["best_epoch"], "full": {m: full[m] for m in METRICS}}
    if result.get("protocol", {}).get("mode") == "sampled":
        entry["sampled"] = {m: result["test"][m] for m in METRICS}
    if provenance.is_file():
        entry["trained_on"] = json.loads(provenance.read_text(encoding="utf-8"))
    return entry


def collect(recipes: list[str], seeds: list[int], runs: Path, kept: dict[str, Any] | None = None) -> dict[str, Any]:
    """Every finished run's metrics and each recipe's mean ± standard error over its finished seeds.

    ``kept``: the ``recipes`` of an earlier report; its run of a (recipe, seed) with no finished folder under
    ``runs`` is used as it stands."""
    rows: dict[str, Any] = {}
    for recipe in recipes:
        found = {}
        for seed in seeds:
            path = run_folder(runs, recipe, seed) / RESULT
            earlier = (kept or {}).get(recipe, {}).get("seeds", {}).get(str(seed))
            if path.is_file():
                found[seed] = finished_run(path, side_file(runs, recipe, seed, ".json"))
            elif earlier is not None:
                found[seed] = earlier
        if not found:
            continue
        summary = {}
        for protocol in ("full", "sampled"):
            values = [run[protocol] for run in found.values() if protocol in run]
            if values:
                summary[protocol] = {m: dict(zip(("mean", "se"), mean_se([v[m] for v in values]))) for m in METRICS}
        rows[recipe] = {"group": GROUPS.get(recipe, "other"), "seeds": {str(s): r for s, r in found.items()},
                        "n": len(found), **summary}
    return rows


def cell(stats: dict[str, float | None]) -> str:
    return f"{stats['mean']:.4f}" + (f" ± {stats['se']:.4f}" if stats["se"] is not None else "")


def table(rows: dict[str, Any], floor: dict[str, float], missing: list[str] = ()) -> str:
    """The accuracy table: one row per recipe with finished runs, then the chosen recipes without any."""
    lines = ["| group | recipe | seeds | test HR@10 | NDCG@10 | MRR@10 | sampled-100 NDCG@10 |",
             "|---|---|---:|---|---|---|---|"]
    for recipe, row in sorted(rows.items(), key=lambda kv: (GROUP_ORDER.index(kv[1]["group"])
                                                            if kv[1]["group"] in GROUP_ORDER else 99, kv[0])):
        sampled = cell(row["sampled"]["ndcg@10"]) if "sampled" in row else ""
        lines.append(f"| {row['group']} | {recipe} | {row['n']} | " + " | ".join(cell(row["full"][m]) for m in METRICS)
                     + f" | {sampled} |")
    lines += [f"| {GROUPS.get(recipe, 'other')} | {recipe} | 0 | not run yet | | | |" for recipe in missing]
    lines.append("| floor | popularity | - | " + " | ".join(f"{floor[m]:.4f}" for m in METRICS) + " | |")
    return "\n".join(lines) + "\n"


def plot(rows: dict[str, Any], floor: dict[str, float], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    order = [r for g in GROUP_ORDER for r in rows if rows[r]["group"] == g]
    order += [r for r in rows if r not in order]
    colours = {g: f"C{i}" for i, g in enumerate(GROUP_ORDER)}
    fig, ax = plt.subplots(figsize=(max(6.0, 0.45 * len(order) + 2), 4.5))
    for x, recipe in enumerate(order):
        row = rows[recipe]
        stats = row["full"]["ndcg@10"]
        ax.bar(x, stats["mean"], color=colours.get(row["group"], "grey"), alpha=0.6,
               yerr=stats["se"] if stats["se"] is not None else None, capsize=3)
        seeds = [run["full"]["ndcg@10"] for run in row["seeds"].values()]
        ax.scatter([x] * len(seeds), seeds, color="black", s=8, zorder=3)
    ax.axhline(floor["ndcg@10"], color="grey", linestyle="--", linewidth=1, label="popularity")
    ax.set_xticks(range(len(order)), order, rotation=60, ha="right", fontsize=8)
    ax.set_ylabel("test NDCG@10 (full ranking)")
    ax.set_title("ml-100k, leave-one-out by time: mean ± standard error over seeds (dots: each seed)")
    handles = [plt.Rectangle((0, 0), 1, 1, color=c, alpha=0.6) for c in colours.values()]
    ax.legend(handles + ax.get_legend_handles_labels()[0], list(colours) + ["popularity"], fontsize=7, ncol=4)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=Path, default=Path("runs/study"), help="where the run folders go")
    parser.add_argument("--recipes", nargs="+", default=None, help="bundled recipe names or patterns (default: all)")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--jobs", type=int, default=1, help="runs at once (each its own process)")
    parser.add_argument("--threads", type=int, default=None, help="threads per run (default: cores / jobs)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--precision", default="fp32", choices=["fp32", "bf16", "fp16", "auto"],
                        help="zoo.train's precision (fp32 everywhere by default; auto: each recipe's, e.g. ConvRec's "
                        "bf16 on CPUs with AMX); each run records the one it trained in")
    parser.add_argument("--collect-only", action="store_true", help="write the tables from the finished runs")
    parser.add_argument("--keep", type=Path, default=None,
                        help="an earlier report (e.g. results/study.json) whose runs count for the (recipe, seed) pairs "
                             "that have no finished run folder under --runs")
    parser.add_argument("--out", type=Path, default=HERE / "results" / "study.json", help="the JSON; .md and .png beside it")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.threads is None:
        args.threads = max(1, (os.cpu_count() or 1) // args.jobs)
    return args


def main() -> None:
    args = parse_args()
    if args.child:
        task = json.loads(args.child)
        import torch

        torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
        train_one(task["recipe"], task["seed"], task["folder"], task["device"], task["precision"])
        return
    recipes = chosen_recipes(args.recipes)
    kept = None
    if args.keep is not None:
        if not args.keep.is_file():
            raise SystemExit(f"--keep {args.keep}: no such report")
        kept = json.loads(args.keep.read_text(encoding="utf-8"))
        if kept.get("protocol") != PROTOCOL:
            raise SystemExit(f"--keep {args.keep}: its protocol is {kept.get('protocol')!r}, this study's {PROTOCOL!r}")
    failed = [] if args.collect_only else train_all(recipes, args.seeds, args.runs, args)
    rows = collect(recipes, args.seeds, args.runs, kept["recipes"] if kept else None)
    floor = popularity_floor()
    checked = [{"paper": paper, "claim": claim, "recipe": recipe, "other": other, **verdict(rows, recipe, other)}
               for paper, claim, recipe, other in CLAIMS]
    report = {"command": measure.command_line(), "environment": measure.environment(args.device),
              "protocol": PROTOCOL,
              "seeds": args.seeds, "popularity": floor, "recipes": rows, "claims_rule": f"holds when the mean "
              f"difference exceeds {NOISE} standard errors of the difference; reversed when below minus that",
              "claims": checked}
    if kept is not None:
        report["kept_from"] = {"file": str(args.keep), "command": kept.get("command")}
        if "kept_from" in kept:
            report["kept_from"]["kept_from"] = kept["kept_from"]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    summary = table(rows, floor, [r for r in recipes if r not in rows]) + "\n" + claims_table(checked)
    args.out.with_suffix(".md").write_text(summary, encoding="utf-8")
    plot(rows, floor, args.out.with_suffix(".png"))
    print(summary)
    if failed:
        raise SystemExit(f"{len(failed)} runs failed: {failed}")


if __name__ == "__main__":
    main()
