"""What an epoch of a recipe costs on ml-100k, without training it: milliseconds per optimiser step and
seconds per validation, measured through the trainer itself.

Each recipe is set up as ``zoo.train`` sets it up (ml-100k, leave-one-out by time, the recipe's defaults,
seed 0), and its steps are the trainer's own: the objective's real batches (real padding, the recipe's
negatives), forward, backward and the recipe's optimiser. Validation is the recipe's protocol (full
ranking, or ConvRec's 1 + 100 sampled). Recipes alternate in rounds (``--rounds``; each round times
``--steps`` steps and one validation of every recipe, after a warm-up) and the best round is kept, so
drift of the machine hits every recipe alike. Compare code versions by running the same command on each.
``--precision fp32 bf16`` also times each recipe under bf16 autocast (``zoo train --precision bf16``), in
the same rounds; those rows are named ``RECIPE@bf16`` (``auto``: the recipe's own ``train.cpu_precision``, rows
``RECIPE@auto``). An epoch is its steps plus its share of a validation (one every ``train.valid_every`` epochs).

Usage::

    .venv/bin/python benchmarks/train_step.py --recipes convrec sasrec
    .venv/bin/python benchmarks/train_step.py --recipes convrec --steps 16 --rounds 5 --out step.json
    .venv/bin/python benchmarks/train_step.py --recipes convrec --precision fp32 bf16
"""

from __future__ import annotations

import argparse
import json
import math
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

import measure
import zoo.train as trainer
from zoo import distributed
from zoo.memory import keep_freed_memory


def trainer_run(recipe: str, split, folder: Path, precision: str = "fp32") -> trainer._Run:
    """The trainer's state for ``recipe`` on ``split`` as ``zoo.train`` builds it (seed 0, CPU), nothing trained."""
    model, config = trainer.prepare_model(recipe, split, seed=0)
    context, device = distributed.setup("cpu")
    torch.manual_seed(0)
    return trainer._Run(model, split, config, folder, 0, device, context, precision, False, None, (10,), ())


def time_steps(run: trainer._Run, steps: int) -> float:
    """Mean seconds of ``steps`` optimiser steps over the first batches of epoch 0 (cycling when it has fewer)."""
    run.model.train()
    order = np.random.default_rng(0).permutation(run.samples.epoch_size(0))
    per_epoch = run.steps_in(0)
    begun = time.perf_counter()
    for step in range(steps):
        run._step(run._batch(order, step % per_epoch))
    return (time.perf_counter() - begun) / steps


def time_validation(run: trainer._Run) -> float:
    begun = time.perf_counter()
    run.evaluate(run.model, "valid")
    return time.perf_counter() - begun


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--recipes", nargs="+", required=True, help="bundled recipe names")
    parser.add_argument("--steps", type=int, default=8, help="timed steps per recipe and round (ConvRec's epoch is 8)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--precision", nargs="+", choices=["fp32", "bf16", "auto"], default=["fp32"],
                        help="training autocast, each timed in the same rounds (default fp32; auto: the recipe's)")
    parser.add_argument("--out", type=Path, default=None, help="also write the numbers as JSON")
    args = parser.parse_args()
    keep_freed_memory()  # as zoo.train runs
    if args.threads:
        torch.set_num_threads(args.threads)
    from zoo.data import load_dataset

    split = load_dataset("ml-100k").split("loo")
    with tempfile.TemporaryDirectory() as scratch:
        runs = {(name if precision == "fp32" else f"{name}@{precision}"):
                trainer_run(name, split, Path(scratch) / f"{name}-{precision}", precision)
                for name in args.recipes for precision in args.precision}
        for run in runs.values():  # warm-up: kernels built, allocator and caches settled
            time_steps(run, 2)
        best = {name: {"step_ms": math.inf, "validation_s": math.inf} for name in runs}
        for _ in range(args.rounds):
            for name, run in runs.items():
                best[name]["step_ms"] = min(best[name]["step_ms"], 1000 * time_steps(run, args.steps))
                best[name]["validation_s"] = min(best[name]["validation_s"], time_validation(run))
    for name, run in runs.items():
        best[name]["steps_per_epoch"] = run.steps_in(0)
        best[name]["valid_every"] = run.config.valid_every
        best[name]["trained_in"] = run.precision
        best[name]["epoch_s"] = (best[name]["steps_per_epoch"] * best[name]["step_ms"] / 1000
                                 + best[name]["validation_s"] / run.config.valid_every)
    print("| recipe | trained in | ms per step | steps per epoch | validation s | validated every | epoch s |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for name, row in best.items():
        print(f"| {name} | {row['trained_in']} | {row['step_ms']:.1f} | {row['steps_per_epoch']} | {row['validation_s']:.2f} | "
              f"{row['valid_every']} | {row['epoch_s']:.2f} |")
    if args.out:
        report = {"recipes": best, "steps": args.steps, "rounds": args.rounds, "threads": torch.get_num_threads(),
                  "precision": args.precision,
                  "command": measure.command_line(), "environment": measure.environment()}
        args.out.write_text(json.dumps(report, indent=1) + "\n")


if __name__ == "__main__":
    main()
