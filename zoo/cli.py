"""The ``zoo`` command line: list, info, train, eval, recommend."""

from __future__ import annotations

import argparse
import sys
from typing import Sequence

import zoo
from zoo.builder import resolve_recipe
from zoo.info import block_tree, count_parameters, flops_per_sequence
from zoo.registry import get_block


def table(rows: list[Sequence[str]], header: Sequence[str]) -> str:
    """A plain aligned text table."""
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    line = lambda r: "  ".join(str(c).ljust(w) for c, w in zip(r, widths)).rstrip()
    return "\n".join([line(header), line(["-" * w for w in widths]), *map(line, rows)])


def parse_sets(pairs: Sequence[str]) -> dict[str, str]:
    """``key=value`` strings (``--set encoder.0.d_state=64``) -> a dotted-override dict."""
    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise SystemExit(f"--set expects key=value, got {pair!r}")
        out[key.strip()] = value
    return out


def cmd_list(args: argparse.Namespace) -> int:
    if args.blocks:
        rows = []
        for name in zoo.list_blocks(args.pattern, kind=args.kind):
            cls = get_block(name)
            summary = (cls.__doc__ or "").strip().splitlines()[0]
            rows.append([name, cls.kind, "yes" if cls.causal else "no", "yes" if cls.streaming else "no", summary[:70]])
        print(table(rows, ["block", "kind", "causal", "streaming", "what it computes"]))
        return 0
    rows = []
    for name in zoo.list_models(args.pattern):
        recipe = resolve_recipe(name)
        rows.append([name, recipe.fidelity, str(recipe.d_model), str(recipe.max_len), (recipe.paper or "")[:60]])
    print(table(rows, ["model", "fidelity", "d_model", "max_len", "paper"]))
    return 0


def cmd_info(args: argparse.Namespace) -> int:
    recipe = resolve_recipe(args.name, parse_sets(args.set))
    model = zoo.create(recipe, num_items=args.num_items if recipe.num_items is None else recipe.num_items)
    print(f"{recipe.name}: {recipe.paper or 'no paper'} (fidelity: {recipe.fidelity})")
    if recipe.description:
        print(f"  {recipe.description.strip()}")
    for deviation in recipe.deviations:
        print(f"  - {deviation}")
    print()
    print(table(
        [
            ["parameters", f"{count_parameters(model):,}"],
            ["items (incl. padding)", f"{model.num_items + 1:,}"],
            [f"FLOPs / sequence (L={min(args.length, model.max_len)})", f"{flops_per_sequence(model, args.length):,}"],
            ["d_model / max_len", f"{recipe.d_model} / {recipe.max_len}"],
            ["causal", "yes" if model.causal else "no"],
            ["streaming (step)", "yes" if model.supports_streaming else "no"],
            ["training", f"objective {recipe.train.objective}, loss {recipe.train.loss}, {recipe.train.optimizer} lr {recipe.train.lr}"],
        ],
        ["property", "value"],
    ))
    print()
    print("\n".join(block_tree(model)))
    return 0


def trained_name(path: str) -> str:
    """A trained folder argument as ``zoo.create`` takes it (a bare directory means ``local-dir:``)."""
    from zoo.factory import PRETRAINED_PREFIXES

    return path if path.startswith(PRETRAINED_PREFIXES) else f"local-dir:{path}"


def cmd_train(args: argparse.Namespace) -> int:
    from zoo.train import train

    result = train(
        args.recipe, args.data, args.out, epochs=args.epochs, seed=args.seed, overrides=parse_sets(args.set),
        resume=not args.restart, device=args.device, progress=not args.quiet,
    )
    rows = [[metric, f"{result.valid.get(metric, float('nan')):.4f}", f"{result.test[metric]:.4f}"] for metric in sorted(result.test)]
    print(f"best epoch {result.best_epoch} of {result.epochs_run} ({result.train_seconds:.0f} s training); trained folder: {result.out_dir}")
    print(table(rows, ["metric", "valid", "test"]))
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from zoo.data import load_dataset
    from zoo.evaluate import evaluate
    from zoo.hub import load_config

    name = trained_name(args.model)
    model = zoo.create(name, pretrained=True)
    facts = load_config(name).get("dataset", {})
    dataset = load_dataset(args.data, **facts.get("preprocessing", {}))
    stored = getattr(model, "item_vocab", None)
    if stored is not None and list(stored.raw_ids) != list(dataset.item_vocab.raw_ids):
        raise ValueError(f"{args.data}'s items differ from the items {args.model} was trained on; evaluate on the same data")
    split = dataset.split(facts.get("split", {}).get("method", "loo"))
    result = evaluate(model, split, which=args.split, mode=args.mode, ks=args.k, num_negatives=args.negatives, seed=args.seed,
                      precision=args.precision)
    print(f"{model.recipe.name} on {args.data} ({args.split} split, {args.mode} ranking, {len(result.ranks)} users, "
          f"{args.precision})")
    print(result.table())
    return 0


def cmd_recommend(args: argparse.Namespace) -> int:
    model = zoo.create(trained_name(args.model), pretrained=True)
    raw = [r.strip() for r in args.history.split(",") if r.strip()]
    history = model.encode_items(raw, unknown=args.unknown).tolist()
    if not history:
        raise ValueError(f"none of the history's items {raw} is known to the model; nothing to recommend from")
    top = model.recommend([history], k=args.k, exclude_seen=args.exclude_seen)
    items = model.decode_items(top.items[0])
    print(table([[str(i + 1), item, f"{score:.4f}"] for i, (item, score) in enumerate(zip(items, top.scores[0].tolist()))],
                ["rank", "item", "score"]))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="zoo", description="seqrec-zoo: sequential recommendation models from recipes")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("list", help="list bundled models (or blocks with --blocks)")
    p.add_argument("pattern", nargs="?", default="*", help="shell-style filter, e.g. 'sigma*'")
    p.add_argument("--blocks", action="store_true", help="list registered blocks instead of models")
    p.add_argument("--kind", choices=["sequence", "fusion", "readout", "item-encoder", "head"], help="with --blocks: one kind only")
    p.set_defaults(func=cmd_list)

    p = sub.add_parser("info", help="recipe, parameters, FLOPs, streaming and block tree of a model")
    p.add_argument("name", help="bundled model name or recipe path")
    p.add_argument("--num-items", type=int, default=12101, help="item count to size the item table (default: Amazon Beauty's 12,101)")
    p.add_argument("--length", type=int, default=50, help="sequence length for the FLOP count")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="dotted recipe override, repeatable")
    p.set_defaults(func=cmd_info)

    p = sub.add_parser("train", help="train a recipe on a dataset; writes a trained folder (Hub layout)")
    p.add_argument("recipe", help="bundled model name or recipe path")
    p.add_argument("--data", required=True, help="'ml-100k', a RecBole .inter file/folder, or a CSV/TSV log")
    p.add_argument("--out", required=True, help="output folder (checkpoints, metrics.jsonl, curve.png, the trained model)")
    p.add_argument("--epochs", type=int, help="maximum epochs (default: the recipe's)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="dotted recipe override, e.g. train.lr=3e-4")
    p.add_argument("--device", default="cpu")
    p.add_argument("--restart", action="store_true", help="start over instead of resuming from the folder's checkpoint")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("eval", help="evaluate a trained folder on a dataset's test (or valid) split")
    p.add_argument("model", help="trained folder (DIR or local-dir:DIR) or hf-hub:org/name")
    p.add_argument("--data", required=True)
    p.add_argument("--split", choices=["test", "valid"], default="test")
    p.add_argument("--mode", choices=["full", "sampled"], default="full", help="rank against all items or 1 + N sampled")
    p.add_argument("--negatives", type=int, default=100, help="with --mode sampled: negatives per user")
    p.add_argument("--k", type=int, nargs="+", default=[5, 10, 20])
    p.add_argument("--seed", type=int, default=0, help="with --mode sampled: the negatives' seed")
    p.add_argument("--precision", choices=["fp32", "bf16"], default="fp32",
                   help="bf16: the encoder under bf16 autocast (item scores stay fp32)")
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("recommend", help="top-k items after a history of raw item ids")
    p.add_argument("model", help="trained folder (DIR or local-dir:DIR) or hf-hub:org/name")
    p.add_argument("--history", required=True, help="raw item ids, oldest first, comma-separated")
    p.add_argument("-k", type=int, default=10)
    p.add_argument("--exclude-seen", action="store_true", help="never recommend an item of the history")
    p.add_argument("--unknown", choices=["error", "skip"], default="error", help="what to do with ids the model does not know")
    p.set_defaults(func=cmd_recommend)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, FileNotFoundError, KeyError, RuntimeError) as exc:
        message = exc.args[0] if isinstance(exc, KeyError) and exc.args else exc
        print(f"zoo {args.command}: error: {message}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
