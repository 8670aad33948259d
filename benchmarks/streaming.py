"""Latency of one streamed interaction (``model.step``) against the history's length, beside re-scoring it.

Issue 25, point 4: a streaming model (``model.supports_streaming``: every block recurrent, the readout
position-wise) updates a user's scores for a new interaction from a carried state, in time that should
not grow with the history; re-scoring the whole history with ``model.score`` grows with it.

For each streaming recipe (default: every bundled recipe that streams) two models are built with
random weights (``measure.build_model``: ml-100k's 1,682 items, random item texts where used):

* **as the recipe** (its ``max_len``, 50 for the bundled ones). ``score`` keeps only the newest
  ``max_len`` items of a longer history, so past ``max_len`` its cost stops growing and it no longer
  scores the same history as ``step``, whose state carries every item streamed so far
  (``relative_difference`` says how far apart their scores are; random weights forget fast, so little);
* **long** (``max_len`` = the longest history + 1), for which ``score`` really re-reads the whole
  history, so ``step`` and ``score`` give the same scores at every length (``relative_difference_long``
  checks it: the largest difference over the largest score). A recipe whose blocks hold ``max_len``-sized state (M2Rec's causal Fourier filters keep
  the last ``max_len`` inputs) steps at a cost that grows with ``max_len``: both models' steps are timed.

For every ``n`` of ``--lengths`` the state after ``n`` random items is carried by stepping them one by
one (``init_state`` + ``step``; the zoo has no bulk prefill), and then, for one new item per user
(``--users`` users at once):

* ``step_ms`` / ``step_long_ms``: ``model.step(new item, state after n)``;
* ``score_ms``: ``model.score`` of the ``n + 1`` items (cut to ``max_len``: ``score_items`` says how many
  it read); ``score_long_ms``: the long model's ``score`` of all ``n + 1``.

Each is the median of ``--repeats`` calls after ``--warmup``, under ``torch.no_grad`` in eval mode;
``score_at_max_len_ms`` is the recipe model's ``score`` of exactly ``max_len`` items, the ceiling of
``score_ms``. Writes ``--out`` (JSON with the command line and the machine) and a PNG beside it.

Usage::

    .venv/bin/python benchmarks/streaming.py
    .venv/bin/python benchmarks/streaming.py --recipes mamba4rec --lengths 1 10 100 --repeats 20
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import torch

import measure
import zoo

HERE = Path(__file__).resolve().parent
LENGTHS = [1, 10, 100, 1000, 5000]


def streaming_recipes() -> list[str]:
    """The bundled recipes whose models stream (``supports_streaming``)."""
    return [name for name in zoo.list_models() if zoo.create(name, num_items=measure.NUM_ITEMS).supports_streaming]


def carry(model: Any, state: Any, items: torch.Tensor) -> Any:
    """``state`` after stepping ``items`` ``(B, T)`` one column at a time."""
    for column in items.unbind(1):
        state = model.step(column, state)[1]
    return state


def relative_difference(stepped: torch.Tensor, scored: torch.Tensor) -> float:
    """Largest difference between two score tables over the real items (column 0, padding, is ``-inf`` in
    both), relative to the largest score of ``scored``."""
    return float((stepped[:, 1:] - scored[:, 1:]).abs().max() / scored[:, 1:].abs().max())


def length_row(models: dict[str, Any], states: dict[str, Any], history: torch.Tensor, timing: dict[str, int]) -> dict[str, Any]:
    """Every timing and agreement for one history: ``history`` ``(B, n + 1)``, ``states`` after its first ``n`` items."""
    new = history[:, -1]
    row: dict[str, Any] = {"n": history.shape[1] - 1, "score_items": min(history.shape[1], models["recipe"].max_len)}
    for name, suffix in (("recipe", ""), ("long", "_long")):
        model, state = models[name], states[name]
        row[f"step{suffix}_ms"] = 1000 * measure.median_seconds(lambda: model.step(new, state), **timing)[0]
        row[f"score{suffix}_ms"] = 1000 * measure.median_seconds(lambda: model.score(history), **timing)[0]
        row[f"relative_difference{suffix}"] = relative_difference(model.step(new, state)[0], model.score(history))
    return row


def measure_recipe(recipe: str, lengths: list[int], users: int, timing: dict[str, int], seed: int) -> dict[str, Any]:
    """The rows of one recipe over ``lengths`` (see the module docstring)."""
    longest = max(lengths)
    models = {"recipe": measure.build_model(recipe, seed=seed).eval(),
              "long": measure.build_model(recipe, max_len=longest + 1, seed=seed).eval()}
    width = max(longest + 1, models["recipe"].max_len)
    items, _ = measure.random_histories(measure.NUM_ITEMS, users, width, torch.Generator().manual_seed(seed))
    for model in models.values():  # any compiled CPU kernel is built now, not in a timed call
        model.step(items[:, 0], model.init_state(users))
        model.score(items[:, :2])
    states = {name: model.init_state(users) for name, model in models.items()}
    rows, done = [], 0
    for n in sorted(lengths):
        states = {name: carry(models[name], state, items[:, done:n]) for name, state in states.items()}
        done = n
        rows.append(length_row(models, states, items[:, : n + 1], timing))
        print(summary(recipe, rows[-1]), flush=True)
    ceiling = items[:, : models["recipe"].max_len]
    return {"max_len": models["recipe"].max_len, "long_max_len": longest + 1, "rows": rows,
            "score_at_max_len_ms": 1000 * measure.median_seconds(lambda: models["recipe"].score(ceiling), **timing)[0]}


def summary(recipe: str, row: dict[str, Any]) -> str:
    """One printed line for a row."""
    return (f"{recipe:10} n={row['n']:5}  step {row['step_ms']:7.3f} ms (long {row['step_long_ms']:7.3f})  "
            f"score {row['score_ms']:7.3f} ms of {row['score_items']} items  score long {row['score_long_ms']:8.3f} ms  "
            f"step/score differ (long) {row['relative_difference_long']:.1e}")


def plot(results: dict[str, Any], path: Path) -> None:
    """Two log-log panels: the long models (``score`` reads the whole history) and the recipes' own ``max_len``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(14, 5.5), sharey=True)
    for index, (recipe, result) in enumerate(results.items()):
        lengths = [row["n"] for row in result["rows"]]
        color = f"C{index}"
        for ax, suffix in ((axes[0], "_long"), (axes[1], "")):
            ax.plot(lengths, [row[f"step{suffix}_ms"] for row in result["rows"]], "-o", color=color, label=f"{recipe}: step")
            ax.plot(lengths, [row[f"score{suffix}_ms"] for row in result["rows"]], ":s", color=color, label=f"{recipe}: score")
        axes[1].axhline(result["score_at_max_len_ms"], color=color, linewidth=0.8, linestyle="--",
                        label=f"{recipe}: score of max_len = {result['max_len']} items")
    any_result = next(iter(results.values()))
    axes[0].set_title(f"max_len = {any_result['long_max_len']}: score re-reads the whole history")
    axes[1].set_title("the recipes' max_len: score reads the newest max_len items only")
    for ax in axes:
        ax.set(xscale="log", yscale="log", xlabel="history length n before the new item", ylabel="ms per new interaction")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipes", nargs="+", default=None, help="default: every bundled recipe that streams")
    parser.add_argument("--lengths", nargs="+", type=int, default=LENGTHS, help="history lengths n (>= 1)")
    parser.add_argument("--users", type=int, default=1, help="users streamed at once (the batch of step and score)")
    parser.add_argument("--repeats", type=int, default=20, help="timed calls per measurement (the median is kept)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed calls before them")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=HERE / "results" / "streaming.json", help="the JSON; the PNG goes beside it")
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if min(args.lengths) < 1:
        raise SystemExit("--lengths: history lengths must be >= 1")
    recipes = args.recipes or streaming_recipes()
    timing = {"repeats": args.repeats, "warmup": args.warmup}
    with torch.no_grad():
        results = {recipe: measure_recipe(recipe, args.lengths, args.users, timing, args.seed) for recipe in recipes}
    report = {"command": measure.command_line(),
              "settings": {"recipes": recipes, "lengths": args.lengths, "users": args.users, **timing, "seed": args.seed},
              "environment": measure.environment(), "models": results}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2), encoding="utf-8")
    plot(results, args.out.with_suffix(".png"))


if __name__ == "__main__":
    main()
