"""The ``zoo`` command line: list, info (train, eval and recommend build on zoo.train / zoo.evaluate)."""

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
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, FileNotFoundError) as exc:
        print(f"zoo {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
