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
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from zoo.checkpoint import read_json, stored_shapes


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


class RunFolderError(ValueError):
    """A folder that is not a finished run, or one whose files are damaged; the message names the file."""


def _read_json(path: Path) -> Any:
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist: compare folders written by `zoo train --out DIR` (after training ends)")
    try:
        return read_json(path)
    except ValueError as exc:
        raise RunFolderError(f"{exc}: train the run again") from None


def _field(data: Any, path: Path, *keys: str, kind: type | tuple[type, ...] = object) -> Any:
    """``data[keys[0]][keys[1]]...`` of a file's content, of type ``kind``; anything else names the file and the field."""
    value = data
    for depth, key in enumerate(keys):
        if not isinstance(value, dict) or key not in value:
            where = ".".join(keys[:depth]) or "the top level"
            raise RunFolderError(f"{path}: no field {'.'.join(keys)!r} ({where} is not an object holding {key!r}); "
                                 "the file is damaged or not a run's: train the run again")
        value = value[key]
    if not isinstance(value, kind) or isinstance(value, bool) and kind is not bool:
        raise RunFolderError(f"{path}: field {'.'.join(keys)!r} is {type(value).__name__} {str(value)[:60]!r}, not the "
                             "expected kind; the file is damaged: train the run again")
    return value


def _metrics(data: Any, path: Path, *keys: str) -> dict[str, float]:
    table = _field(data, path, *keys, kind=dict)
    return {name: float(_field(table, path, name, kind=(int, float))) for name in table}


def _parameters(folder: Path) -> int | None:
    """The parameter count from the weights file's header (no model is built; tied tensors count once)."""
    weights = folder / "model.safetensors"
    if not weights.is_file():
        return None
    try:
        shapes = stored_shapes(weights)
    except ValueError as exc:
        raise RunFolderError(str(exc)) from None
    return sum(math.prod(shape) for shape in shapes.values())


def _curve(log: Path, metric: str) -> list[tuple[int, float]]:
    """``(epoch, validation metric)`` per line of ``metrics.jsonl``; a damaged line names the file and line."""
    if not log.is_file():
        return []
    try:
        lines = log.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as exc:
        raise RunFolderError(f"{log}: not UTF-8 text ({exc}); the file is damaged: train the run again") from None
    curve = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        where = Path(f"{log}, line {number}")
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise RunFolderError(f"{where}: not a JSON record ({exc}); the file is damaged: train the run again") from None
        curve.append((int(_field(record, where, "epoch", kind=int)),
                      float(_field(record, where, "valid", metric, kind=(int, float)))))
    return curve


def read_run(folder: str | Path) -> RunSummary:
    """The summary of one run folder; a missing file is a ``FileNotFoundError`` and a damaged one a
    :class:`RunFolderError`, each naming the file (and the field or line)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder} is not a folder")
    result_path, config_path = folder / "result.json", folder / "config.json"
    result, config = _read_json(result_path), _read_json(config_path)
    full = _field(result, result_path, "full_ranking", kind=dict) if isinstance(result, dict) and "full_ranking" in result else {}
    test = _metrics(full, result_path, "test") if "test" in full else _metrics(result, result_path, "test")
    protocol = _field(result, result_path, "protocol", kind=dict) if "protocol" in result else {}
    return RunSummary(
        folder=folder, recipe=_field(config, config_path, "recipe", "name", kind=str), test=test,
        best_epoch=_field(result, result_path, "best_epoch", kind=int),
        epochs=_field(result, result_path, "epochs_run", kind=int),
        train_seconds=float(_field(result, result_path, "train_seconds", kind=(int, float))),
        parameters=_parameters(folder), curve=_curve(folder / "metrics.jsonl", "ndcg@10"),
        curve_label=f"validation NDCG@10 ({protocol.get('mode', 'full')} ranking)",
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
