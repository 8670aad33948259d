"""Validation NDCG@10 against wall time for several training runs on one plot (e.g. one model trained two ways).

Each run folder is one ``zoo train`` output; its ``metrics.jsonl`` holds a record per epoch with the
run's wall time. A label is ``NAME=DIR`` (or the folder's name). Prints each run's best validation
NDCG@10, the wall time it was reached and the epochs run.

Usage::

    .venv/bin/python benchmarks/curves.py "mamba4rec, all=runs/train-all/mamba4rec" \\
        "mamba4rec, last=runs/slow-mamba4rec" --out benchmarks/results/protocol_mamba4rec.png
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def read_curve(folder: Path) -> list[tuple[float, float, int]]:
    """(wall seconds, validation NDCG@10, epoch) of every validated epoch of a run folder."""
    lines = (folder / "metrics.jsonl").read_text(encoding="utf-8").splitlines()
    records = [json.loads(line) for line in lines if line.strip()]
    return [(r["wall"], r["valid"]["ndcg@10"], r["epoch"]) for r in records if "valid" in r]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", help="DIR or LABEL=DIR")
    parser.add_argument("--out", type=Path, required=True, help="the PNG to write")
    parser.add_argument("--title", default="ml-100k, validation NDCG@10 (full ranking)")
    parser.add_argument("--log-time", action="store_true", help="wall time on a log scale (runs of minutes and hours)")
    args = parser.parse_args()
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5))
    for spec in args.runs:
        label, _, folder = spec.rpartition("=") if "=" in spec else (Path(spec).name, "", spec)
        curve = read_curve(Path(folder))
        walls, values, epochs = zip(*curve)
        best = max(range(len(values)), key=values.__getitem__)
        print(f"{label:30} best {values[best]:.4f} at {walls[best] / 60:6.1f} min (epoch {epochs[best]} of {epochs[-1]})")
        ax.plot([w / 60 for w in walls], values, marker=".", label=label)
    if args.log_time:
        ax.set_xscale("log")
    ax.set_xlabel("wall time (minutes, evaluation included)")
    ax.set_ylabel("validation NDCG@10")
    ax.set_title(args.title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(args.out, dpi=120)


if __name__ == "__main__":
    main()
