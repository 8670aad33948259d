"""Train the shipped pretrained models from scratch and put their folders into the package.

Every bundled recipe whose ``pretrained:`` section declares a tag for a built-in dataset (``ml-100k``) is
trained with ``zoo.train`` on that dataset, with the recipe's own defaults and seed 0 (leave-one-out by
time, early stopping on validation NDCG@10, full ranking unless the recipe names its paper's protocol),
and its trained folder (``config.json``, ``model.safetensors``, ``README.md``) is copied to
``zoo/weights/<model>.<tag>/``, where ``zoo.create("<model>.<tag>", pretrained=True)`` finds it.
Runs resume from ``--runs`` when interrupted; ``--copy-only`` copies finished runs without training.

Usage::

    .venv/bin/python scripts/train_pretrained.py                     # every declared tag
    .venv/bin/python scripts/train_pretrained.py --models sigma sasrec
    .venv/bin/python scripts/train_pretrained.py --models sigma-code convrec --device cuda
    .venv/bin/python scripts/train_pretrained.py --runs runs/weights --copy-only
    .venv/bin/python scripts/train_pretrained.py --cards-only        # new card template, same weights
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

from zoo.catalog import list_models
from zoo.hub import CARD_NAME, CONFIG_NAME, WEIGHTS_NAME
from zoo.model_card import render_model_card
from zoo.paths import recipes_dir, weights_dir
from zoo.pretrained import declared_tags

SHIPPED_FILES = (CONFIG_NAME, WEIGHTS_NAME, CARD_NAME)
TRAINING_NOTE = "Trained with `zoo.train`"  # how zoo.train's paragraph in a card begins (zoo.train._card_notes)


def declared(models: list[str] | None) -> list[tuple[str, str, str]]:
    """``(model, tag, dataset)`` for every tag the chosen bundled recipes declare."""
    chosen = models or list_models()
    return [(model, tag, spec.dataset) for model in chosen
            for tag, spec in declared_tags(recipes_dir() / f"{model}.yaml").items()]


def ship(run: Path, name: str) -> Path:
    """Copy a finished run's trained folder into the package as ``zoo/weights/<name>/`` (replacing it)."""
    missing = [f for f in SHIPPED_FILES if not (run / f).is_file()]
    if missing:
        raise SystemExit(f"{run} has no {', '.join(missing)}: train it first (without --copy-only)")
    target = weights_dir() / name
    staging = target.with_name(f".{name}.new")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    for file in SHIPPED_FILES:
        shutil.copyfile(run / file, staging / file)
    shutil.rmtree(target, ignore_errors=True)
    staging.rename(target)
    return target


def recard(folder: Path) -> Path:
    """Render ``folder``'s model card again from its ``config.json``, keeping the training paragraph that
    ``zoo.train`` wrote (epochs, minutes, the command to reproduce), which the config does not hold."""
    card = folder / CARD_NAME
    notes = [part for part in card.read_text(encoding="utf-8").split("\n\n") if part.startswith(TRAINING_NOTE)]
    if len(notes) != 1:
        raise SystemExit(f"{card}: no single paragraph starting with {TRAINING_NOTE!r}; retrain it instead")
    config = json.loads((folder / CONFIG_NAME).read_text(encoding="utf-8"))
    card.write_text(render_model_card(config, {"notes": notes[0]}), encoding="utf-8")
    return card


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="*", help="bundled recipe names (default: every recipe that declares a tag)")
    parser.add_argument("--runs", type=Path, default=Path("runs/pretrained"), help="where the training runs live")
    parser.add_argument("--copy-only", action="store_true", help="copy finished runs, train nothing")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cpu",
                        help="where to train (e.g. cuda: sigma-code and convrec take 40-70 minutes on a 2-core CPU, minutes on a GPU)")
    parser.add_argument("--cards-only", action="store_true",
                        help="rewrite the model cards of the shipped folders with this version's template, train nothing")
    args = parser.parse_args()
    targets = declared(args.models)
    if not targets:
        raise SystemExit("no recipe declares a pretrained tag (a 'pretrained:' section)")
    if args.cards_only:
        for model, tag, _ in targets:
            if (weights_dir() / f"{model}.{tag}").is_dir():
                print(f"{model}.{tag}: {recard(weights_dir() / f'{model}.{tag}')}")
        return
    for model, tag, dataset in targets:
        run = args.runs / model
        if not args.copy_only:
            from zoo.train import train

            train(model, dataset, run, seed=args.seed, device=args.device)
        folder = ship(run, f"{model}.{tag}")
        size = (folder / WEIGHTS_NAME).stat().st_size / 2**20
        print(f"{model}.{tag}: {folder} ({size:.1f} MB)")


if __name__ == "__main__":
    main()
