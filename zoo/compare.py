"""``zoo compare``: the metrics, training time and size of several runs side by side, and one plot of
their validation curves.

A run is a folder written by :func:`zoo.train.train` (``zoo train --out DIR``): ``result.json`` (the
best weights' metrics, epochs, training time), ``metrics.jsonl`` (one line per epoch) and the trained
folder's ``config.json`` (the recipe, the item count and the evaluation protocol). Test metrics are
compared with full ranking (``full_ranking`` in ``result.json``), whatever protocol a recipe selects
its checkpoint with, so every row is comparable.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence


@dataclass
class RunSummary:
    """What one run folder says about itself."""

    folder: Path
    recipe: str
    test: dict[str, float]
    best_epoch: int
    epochs: int
    train_seconds: float
    parameters: int | None
    curve: list[tuple[int, float]]
    curve_label: str


def _read_json(path: Path) -> Any:
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist: compare folders written by `zoo train --out DIR` (after training ends)")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"{path}: not valid JSON ({exc})") from None


def _parameters(folder: Path) -> int | None:
    """The parameter count from the weights file's header (no model is built; tied tensors count once)."""
    weights = folder / "model.safetensors"
    if not weights.is_file():
        return None
    from safetensors import safe_open

    with safe_open(str(weights), framework="numpy") as f:
        total = 0
        for key in f.keys():
            count = 1
            for size in f.get_slice(key).get_shape():
                count *= size
            total += count
    return total


def read_run(folder: str | Path) -> RunSummary:
    """The summary of one run folder (clear errors when it is not one)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder} is not a folder")
    result = _read_json(folder / "result.json")
    config = _read_json(folder / "config.json")
    test = (result.get("full_ranking") or {}).get("test") or result["test"]
    metric = "ndcg@10"
    mode = (result.get("protocol") or {}).get("mode", "full")
    curve = []
    log = folder / "metrics.jsonl"
    if log.is_file():
        for line in log.read_text(encoding="utf-8").splitlines():
            if line.strip():
                record = json.loads(line)
                curve.append((int(record["epoch"]), float(record["valid"][metric])))
    return RunSummary(
        folder=folder, recipe=config["recipe"]["name"], test=test, best_epoch=int(result["best_epoch"]),
        epochs=int(result["epochs_run"]), train_seconds=float(result["train_seconds"]), parameters=_parameters(folder),
        curve=curve, curve_label=f"validation NDCG@10 ({mode} ranking)",
    )


def comparison_table(runs: Sequence[RunSummary], metrics: Sequence[str] = ("hr@10", "ndcg@10", "mrr@10")) -> str:
    """A Markdown table, one row per run: recipe, test metrics (full ranking), epochs, time, parameters."""
    header = ["run", "recipe", *[f"test {m.upper()}" for m in metrics], "best epoch / epochs", "training", "parameters"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in runs:
        cells = [str(r.folder), r.recipe, *[f"{r.test[m]:.4f}" if m in r.test else "" for m in metrics],
                 f"{r.best_epoch} / {r.epochs}", f"{r.train_seconds / 60:.1f} min",
                 "" if r.parameters is None else f"{r.parameters:,}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def plot_curves(runs: Sequence[RunSummary], path: str | Path) -> Path:
    """One PNG: each run's validation NDCG@10 per epoch (sampled-protocol runs are dotted and say so)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    fig, ax = plt.subplots(figsize=(8, 4.5))
    for r in runs:
        if r.curve:
            epochs, values = zip(*r.curve)
            sampled = "full ranking" not in r.curve_label
            ax.plot(epochs, values, marker=".", linestyle=":" if sampled else "-",
                    label=f"{r.folder.name} ({r.recipe})" + (", sampled protocol" if sampled else ""))
    ax.set(xlabel="epoch", ylabel="validation NDCG@10", title="validation curves")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
