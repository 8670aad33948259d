"""Per-sequence cost side by side: a Mamba layer against SASRec's Transformer layer, whole models against
``sasrec``, in training (forward + backward) and in full-ranking evaluation.

All in one process, with glibc's malloc keeping freed memory as ``zoo train`` and ``zoo.evaluate`` run
(:func:`zoo.memory.keep_freed_memory`), in alternating rounds (``--rounds``, each case once per round, best time kept), so
that the machine's drift hits every case alike; the verdicts are ratios to the Transformer layer /
``sasrec`` of the same run.

* **Layers** (L=50, D=64, batch ``--batch``): the ``mamba`` block (d_state 32, expand 2, d_conv 4) and
  the ``transformer_layer`` block (2 heads, GELU feed-forward x4), forward + backward of a sum of the
  outputs, per sequence; and the ``mamba`` block's selective scan alone (its z gate included) on inputs
  of the layer's shapes (128 channels, 32 states), the part of the layer no projection can shorten.
* **Models, training**: one optimiser step (Adam) of each recipe with its own objective on a batch of
  ``--batch`` random ml-100k-shaped sequences (1,682 items, length 50), per sequence.
* **Models, evaluation**: ``zoo.evaluate`` full ranking of ml-100k's 943 test users (real data).

Usage: ``.venv/bin/python benchmarks/layer_cost.py [--out benchmarks/results/layer_cost.json]``
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

import zoo
from measure import build_model, training_batch
from zoo.blocks.ssm.mamba import Mamba
from zoo.blocks.ssm.selective_scan import selective_scan
from zoo.blocks.transformer_layer import TransformerLayer
from zoo.memory import keep_freed_memory

MODELS = ["sasrec", "mamba4rec", "sigma", "sigma-code", "cnn-mamba", "m2rec", "conv-pf-mamba", "mamba-gru"]
GOALS = {"mamba layer": 1.5, "sigma": 3.0}


def layer_case(block: torch.nn.Module, batch: int):
    x = torch.randn(batch, 50, 64, requires_grad=True)
    mask = torch.ones(batch, 50, dtype=torch.bool)

    def run():
        block(x, mask).sum().backward()
    return run


def scan_case(batch: int):
    """The Mamba layer's selective scan alone, forward + backward: u, delta, z (b, 128, 50), A (128, 32), B, C
    (b, 32, 50)."""
    g = torch.Generator().manual_seed(0)
    channels, states, length = 128, 32, 50

    def leaf(*shape, scale=1.0, shift=0.0):
        return (torch.randn(*shape, generator=g) * scale + shift).requires_grad_()

    u, delta, z = (leaf(batch, channels, length) for _ in range(3))
    B, C = (leaf(batch, states, length) for _ in range(2))
    A = (-torch.arange(1.0, states + 1).repeat(channels, 1)).requires_grad_()  # the layer's initial A = -exp(A_log)
    D, bias = leaf(channels), leaf(channels, scale=0.5, shift=-3.0)  # steps softplus(delta + bias) around 0.05

    def run():
        selective_scan(u, delta, A, B, C, D, z=z, delta_bias=bias, delta_softplus=True).sum().backward()
    return run


def train_case(name: str, batch: int):
    model = build_model(name).train()  # random item texts: only the cost is measured
    optimizer = torch.optim.Adam(model.parameters(), 1e-3)
    data = training_batch(model, batch, 50)

    def run():
        optimizer.zero_grad()
        model.loss(data).backward()
        optimizer.step()
    return run


def eval_case(name: str, split):
    from zoo.evaluate import evaluate

    torch.manual_seed(0)
    model = zoo.create(name, num_items=split.dataset.num_items).eval()

    def run():
        evaluate(model, split, which="test", ks=(10,))
    return run


def best_times(cases: dict, rounds: int) -> dict[str, float]:
    for run in cases.values():  # warm-up: kernels built, buffers allocated
        run()
    best = {name: float("inf") for name in cases}
    for _ in range(rounds):
        for name, run in cases.items():
            begun = time.perf_counter()
            run()
            best[name] = min(best[name], time.perf_counter() - begun)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--models", nargs="*", default=MODELS)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    keep_freed_memory()
    from zoo.data import load_dataset

    split = load_dataset("ml-100k").split("loo")
    torch.manual_seed(0)
    layers = best_times({"transformer layer": layer_case(TransformerLayer(64, 2), args.batch),
                         "mamba layer": layer_case(Mamba(64, d_state=32, d_conv=4, expand=2), args.batch),
                         "selective scan alone": scan_case(args.batch)}, args.rounds)
    training = best_times({name: train_case(name, args.batch) for name in args.models}, args.rounds)
    evaluation = best_times({name: eval_case(name, split) for name in args.models}, args.rounds)
    report = {"batch": args.batch, "rounds": args.rounds, "threads": torch.get_num_threads(),
              "layers_ms_per_sequence": {k: 1000 * v / args.batch for k, v in layers.items()},
              "train_ms_per_sequence": {k: 1000 * v / args.batch for k, v in training.items()},
              "eval_seconds": evaluation}
    print(f"{'case':22} {'ms/seq f+b':>11} {'x ref':>7}")
    ref = report["layers_ms_per_sequence"]["transformer layer"]
    for name, value in report["layers_ms_per_sequence"].items():
        print(f"{name:22} {value:11.3f} {value / ref:7.2f}")
    ref = report["train_ms_per_sequence"]["sasrec"]
    print(f"\n{'model (own objective)':22} {'ms/seq f+b':>11} {'x sasrec':>8} | {'eval 943 users':>15} {'x sasrec':>8}")
    for name in args.models:
        t, e = report["train_ms_per_sequence"][name], report["eval_seconds"][name]
        print(f"{name:22} {t:11.3f} {t / ref:8.2f} | {e:13.3f} s {e / report['eval_seconds']['sasrec']:8.2f}")
    if args.out:
        args.out.write_text(json.dumps(report, indent=2), encoding="utf-8")


if __name__ == "__main__":
    main()
