"""Train every bundled recipe on ml-100k with its own defaults; one table and one figure.

For each recipe, in a fresh subprocess (so peak memory is that recipe's alone):

* **ms per sequence (f+b)**: one optimiser step (forward, backward, the trainer's optimiser) on a real
  training batch of the recipe's objective and batch size, best of 3 after 2 warm-up steps, divided by
  the batch's sequences;
* **training**: ``zoo.train(recipe, "ml-100k", ...)`` with the recipe's defaults (early stopping on
  validation NDCG@10, full ranking, leave-one-out by time), resumable (``--out`` keeps the runs);
* from the run's history: epochs, targets per second, **time to best** (wall time when the best
  validation NDCG@10 was reached, evaluation included), test HR / NDCG / MRR @10 of the best weights,
  and the process's peak resident memory.

Writes ``OUT/results.json`` (every row and each run's validation curve), ``OUT/table.md`` and
``OUT/curves.png`` (validation NDCG@10 against wall time, every model in one figure, full-ranking and
sampled validation side by side). RecBole's SASRec
stays the external yardstick: its row is read from the side-by-side run of ``train_eval.py``
(``--recbole FILE``, default ``benchmarks/results/train_eval_seeds.json``); the official Mamba4Rec and
SIGMA code need CUDA (mamba-ssm), so they have no CPU row.

Usage::

    .venv/bin/python benchmarks/train_all.py --out runs/train-all                 # every recipe
    .venv/bin/python benchmarks/train_all.py --out runs/train-all --recipes 'sigma*' mamba4rec
    .venv/bin/python benchmarks/train_all.py --out runs/more --recipes convrec --keep benchmarks/results/train_all.json
    .venv/bin/python benchmarks/train_all.py --out runs/all --recipes --collect runs/a runs/b   # tables only
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
RECBOLE_DEFAULT = HERE / "results" / "train_eval_seeds.json"


def step_seconds(recipe: str, seed: int) -> tuple[float, int, int]:
    """Best-of-3 seconds of one training step at the recipe's batch size, its sequences and targets."""
    import numpy as np
    import torch

    import zoo
    from zoo.data import load_dataset
    from zoo.objectives import count_targets, training_samples
    from zoo.train import build_optimizer, give_item_features

    split = load_dataset("ml-100k").split("loo")
    torch.manual_seed(seed)
    model = zoo.create(recipe, num_items=split.dataset.num_items).train()
    give_item_features(model, split)
    config = model.recipe.train
    samples = training_samples(model, split.train, config, seed=seed)
    rng = np.random.default_rng(seed)
    indices = rng.permutation(samples.epoch_size(0))[: config.batch_size]
    batch = samples.batch(indices, 0, rng)
    optimizer = build_optimizer(model, config)
    times = []
    for i in range(5):
        begun = time.perf_counter()
        optimizer.zero_grad()
        model.loss(batch).backward()
        optimizer.step()
        if i >= 2:
            times.append(time.perf_counter() - begun)
    return min(times), int(batch["item_ids"].shape[0]), count_targets(batch)


def run_one(recipe: str, out: Path, seed: int) -> dict:
    """Measure and train one recipe (in this process); returns its row."""
    from zoo.train import train

    seconds, sequences, targets = step_seconds(recipe, seed)
    result = train(recipe, "ml-100k", out / recipe, seed=seed, progress=False, plot=False)
    history = result.history
    best = next((h for h in history if h["epoch"] == result.best_epoch), history[-1])  # one record per validated epoch
    train_time = sum(h["train_seconds"] for h in history)
    trained = sum((h["targets_per_second"] or 0) * h["train_seconds"] for h in history)
    return {
        "recipe": recipe,
        "objective": result.model.recipe.train.objective,
        "ms_per_sequence": 1000 * seconds / sequences,
        "step_targets": targets,
        "targets_per_second": trained / train_time if train_time else None,
        "epochs": result.epochs_run,
        "best_epoch": result.best_epoch,
        "time_to_best_s": best["wall"],
        "wall_s": history[-1]["wall"],
        "test": {k: result.full_ranking["test"][k] for k in ("hr@10", "ndcg@10", "mrr@10")},
        "protocol": result.protocol,
        "protocol_test": {k: result.test[k] for k in ("hr@10", "ndcg@10", "mrr@10")},
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "curve": [(h["wall"], h["valid"]["ndcg@10"]) for h in history],
        "curve_metric": f"valid NDCG@10 ({result.protocol['mode']} ranking)",
    }


def recbole_row(path: Path) -> dict | None:
    """RecBole SASRec's row, the mean over its seeds in a stored ``train_eval.py`` result, if that file exists."""
    if not path.is_file():
        return None
    runs = [s for s in json.loads(path.read_text(encoding="utf-8")).get("systems", []) if s["system"].startswith("RecBole")]
    if not runs:
        return None
    mean = lambda values: sum(values) / len(values)  # noqa: E731
    best_walls = [max(s["curve"], key=lambda point: point[1])[0] for s in runs]
    return {"recipe": f"RecBole 1.2.1 SASRec (mean of {len(runs)} seeds, {path.name})", "objective": "last",
            "epochs": round(mean([s["epochs"] for s in runs])), "time_to_best_s": mean(best_walls),
            "test": {k: mean([s["test"][k] for s in runs]) for k in ("hr@10", "ndcg@10", "mrr@10")},
            "peak_rss_mb": mean([s["max_rss_mb"] for s in runs])}


def kept_rows(path: Path | None, fresh: set[str]) -> list[dict]:
    """Rows of an earlier ``results.json`` for bundled recipes not measured in this run (the yardstick is re-read)."""
    if path is None:
        return []
    if not path.is_file():
        raise SystemExit(f"--keep {path}: no such results file")
    import zoo

    bundled = set(zoo.list_models())
    return [r for r in json.loads(path.read_text(encoding="utf-8")) if r["recipe"] in bundled and r["recipe"] not in fresh]


def table(rows: list[dict]) -> str:
    def cell(value, fmt):
        return "" if value is None else format(value, fmt)

    lines = ["| recipe | objective | ms/seq f+b | targets/s | epochs | time to best | HR@10 | NDCG@10 | MRR@10 | peak RSS |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        test = r.get("test", {})
        best = r.get("time_to_best_s")
        lines.append(
            f"| {r['recipe']}{' *' if r.get('note') else ''} | {r.get('objective', '')} | {cell(r.get('ms_per_sequence'), '.2f')} | "
            f"{cell(r.get('targets_per_second'), ',.0f')} | {r.get('epochs', '')} | "
            f"{'' if best is None else f'{best / 60:.1f} min'} | {cell(test.get('hr@10'), '.4f')} | "
            f"{cell(test.get('ndcg@10'), '.4f')} | {cell(test.get('mrr@10'), '.4f')} | "
            f"{cell(r.get('peak_rss_mb'), ',.0f')}{' MB' if r.get('peak_rss_mb') else ''} |")
    notes = sorted({r["note"] for r in rows if r.get("note")})
    return "\n".join(lines + [""] + [f"\\* {n}" for n in notes]) + "\n"


def plot(rows: list[dict], path: Path) -> None:
    """Validation NDCG@10 against wall time: full-ranking recipes on the left, sampled-protocol ones on the right
    (their values are on another scale), each recipe with its own colour and marker."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    curves = [r for r in rows if r.get("curve")]
    sampled = [r.get("protocol", {}).get("mode", "full") != "full" for r in curves]
    fig, (full_ax, sampled_ax) = plt.subplots(1, 2, figsize=(12, 5.5), gridspec_kw={"width_ratios": [2.2, 1]})
    colours, markers = plt.get_cmap("tab20").colors, "o^sDvP*Xh<>"
    for i, (r, is_sampled) in enumerate(zip(curves, sampled)):
        walls, values = zip(*r["curve"])
        ax = sampled_ax if is_sampled else full_ax
        ax.plot([w / 60 for w in walls], values, color=colours[i % len(colours)], marker=markers[i % len(markers)],
                markersize=3, linewidth=1.2, label=r["recipe"])
    full_ax.set_ylabel("validation NDCG@10")
    full_ax.set_title("full ranking over all items")
    sampled_ax.set_title("1 + 100 sampled candidates")
    for ax in (full_ax, sampled_ax):
        ax.set_xlabel("wall time (minutes, evaluation included)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, ncol=2 if ax is full_ax else 1, loc="lower right")
    fig.suptitle("ml-100k, each recipe's defaults, one seed, 2-core CPU")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="folder for the runs and the results")
    parser.add_argument("--recipes", nargs="*", default=["*"], help="shell-style patterns (default: every recipe)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--recbole", type=Path, default=RECBOLE_DEFAULT, help="train_eval.py results with RecBole runs")
    parser.add_argument("--keep", type=Path, help="an earlier results.json whose rows for recipes not run now join the table")
    parser.add_argument("--collect", type=Path, nargs="*", default=[],
                        help="other --out folders whose finished rows (RECIPE/benchmark_row.json) join the table")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    if args.child:
        row = run_one(args.child, args.out, args.seed)
        (args.out / args.child / "benchmark_row.json").write_text(json.dumps(row, indent=2), encoding="utf-8")
        return

    import zoo

    names = [n for n in zoo.list_models() if any(fnmatch.fnmatchcase(n, p) for p in args.recipes)]
    rows = [json.loads(f.read_text(encoding="utf-8")) for folder in args.collect for f in sorted(folder.glob("*/benchmark_row.json"))]
    for name in names:
        print(f"== {name}", flush=True)
        done = subprocess.run([sys.executable, __file__, "--out", str(args.out), "--seed", str(args.seed), "--child", name])
        row_file = args.out / name / "benchmark_row.json"
        if done.returncode or not row_file.is_file():
            print(f"   {name} failed (exit {done.returncode})", flush=True)
            continue
        rows.append(json.loads(row_file.read_text(encoding="utf-8")))
        print(table(rows[-1:]).splitlines()[-1], flush=True)
    rows = sorted(rows + kept_rows(args.keep, {r["recipe"] for r in rows}), key=lambda r: r["recipe"])
    yardstick = recbole_row(args.recbole)
    everything = rows + ([yardstick] if yardstick else [])
    (args.out / "results.json").write_text(json.dumps(everything, indent=2), encoding="utf-8")
    (args.out / "table.md").write_text(table(everything), encoding="utf-8")
    plot(rows, args.out / "curves.png")
    print(table(everything))


if __name__ == "__main__":
    main()
