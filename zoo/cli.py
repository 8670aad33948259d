"""The ``zoo`` command line: list, info, train, eval, recommend."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any, Sequence

import zoo


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


COMPUTING_COMMANDS = ("info", "train", "eval", "recommend", "convert", "push", "export")


def set_threads(threads: int | None) -> None:
    """torch's intra-op threads: ``threads``, else the CPUs this process may run on (its affinity mask, which
    containers and ``taskset`` narrow, unlike torch's own default of the machine's cores). Only commands
    that compute import torch, so listing stays fast."""
    if threads is not None and threads < 1:
        raise ValueError(f"--threads must be >= 1, got {threads}")
    if threads is None and not hasattr(os, "sched_getaffinity"):
        return
    import torch

    torch.set_num_threads(threads if threads is not None else len(os.sched_getaffinity(0)))


def cmd_list(args: argparse.Namespace) -> int:
    if args.blocks:
        from zoo.registry import get_block

        rows = []
        for name in zoo.list_blocks(args.pattern, kind=args.kind):
            cls = get_block(name)
            summary = (cls.__doc__ or "").strip().splitlines()[0]
            rows.append([name, cls.kind, "yes" if cls.causal else "no", "yes" if cls.streaming else "no", summary[:70]])
        print(table(rows, ["block", "kind", "causal", "streaming", "what it computes"]))
        return 0
    if args.pretrained:
        return list_pretrained_table(args.pattern)
    import yaml

    from zoo.paths import recipes_dir

    rows = []
    for name in zoo.list_models(args.pattern):  # the bundled headers only: nothing is built, so no torch
        header = yaml.safe_load((recipes_dir() / f"{name}.yaml").read_text(encoding="utf-8"))
        rows.append([name, header.get("fidelity", "baseline"), str(header.get("d_model", 64)), str(header.get("max_len", 50)),
                     header.get("paper") or ""])
    print(table(rows, ["model", "fidelity", "d_model", "max_len", "paper"]))
    print("\nfidelity: paper = follows its paper, code = follows the released code, baseline = a standard "
          "re-implementation, hybrid = a new combination. `zoo info NAME` describes one.")
    return 0


def list_pretrained_table(pattern: str) -> int:
    from zoo.pretrained import find_pretrained, stored_test_ndcg

    rows = []
    for name in zoo.list_models(pattern, pretrained=True):
        _, tag = find_pretrained(name)
        ndcg = stored_test_ndcg(tag)
        where = "bundled" if tag.local_dir else f"hf-hub:{tag.hf_hub_id}" + (f"@{tag.revision}" if tag.revision else "")
        rows.append([name, tag.dataset, "" if ndcg is None else f"{ndcg:.4f}", where])
    print(table(rows, ["pretrained", "dataset", "test NDCG@10", "weights"]) if rows else "no pretrained weights match")
    return 0


def weights_line(name: str) -> str:
    """What ``zoo info`` says about a model's published weights."""
    from zoo.pretrained import find_pretrained, stored_test_ndcg

    tags = zoo.list_models(name, pretrained=True)
    if not tags:
        return "none published (train with `zoo train`)"
    default, _ = find_pretrained(name)
    parts = []
    for tag_name in tags:
        _, tag = find_pretrained(tag_name)
        ndcg = stored_test_ndcg(tag)
        parts.append(tag_name + (" (default" + ("" if ndcg is None else f", test NDCG@10 {ndcg:.4f}") + ")"
                                 if tag_name == default else "" if ndcg is None else f" (test NDCG@10 {ndcg:.4f})"))
    return ", ".join(parts)


def cmd_info(args: argparse.Namespace) -> int:
    from zoo.builder import resolve_recipe
    from zoo.info import block_page, block_tree, count_parameters, flops_per_sequence

    if args.name not in zoo.list_models() and not args.name.endswith((".yaml", ".yml")) and args.name in zoo.list_blocks():
        print("\n".join(block_page(args.name)))
        return 0
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
            ["training", f"objective {recipe.train.objective}, loss {recipe.train.loss}, {recipe.train.optimizer} lr {recipe.train.lr}"
                         + (f", {recipe.train.scheduler} schedule" if recipe.train.scheduler else "")],
            ["evaluation", "full ranking" if recipe.train.eval_protocol == "full"
             else f"1 + {recipe.train.eval_negatives} sampled candidates (full ranking also reported)"],
            ["pretrained weights", weights_line(recipe.name) if args.name == recipe.name else "none (a recipe file)"],
        ],
        ["property", "value"],
    ))
    print()
    print("\n".join(block_tree(model)))
    return 0


def trained_name(path: str) -> str:
    """A model argument as ``zoo.create(..., pretrained=True)`` takes it: ``local-dir:`` / ``hf-hub:`` names
    stay, a path (an existing folder, or anything with a path separator) means ``local-dir:``, and any
    other word is a published tag (``sigma.ml-100k``, or ``sigma`` for its default)."""
    from zoo.factory import PRETRAINED_PREFIXES

    if path.startswith(PRETRAINED_PREFIXES):
        return path
    if Path(path).exists() or any(sep in path for sep in "/\\"):
        return f"local-dir:{path}"
    return path


def metric_order(name: str) -> tuple[str, int]:
    """``hr@5`` before ``hr@10`` before ``ndcg@5``: by metric, then by cut-off as a number."""
    metric, _, k = name.partition("@")
    return metric, int(k) if k.isdigit() else 0


def logger_name(name: str) -> str:
    """A ``--log`` value checked when the command line is read: an unknown logger or a missing package is a
    usage error, reported before anything is loaded or trained."""
    from zoo.tensorboard_log import check_loggers

    try:
        return check_loggers(name)[0]
    except (ValueError, ImportError) as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc


def cmd_train(args: argparse.Namespace) -> int:
    from zoo.train import train

    result = train(
        args.recipe, args.data, args.out, epochs=args.epochs, seed=args.seed, overrides=parse_sets(args.set),
        resume=not args.restart, device=args.device, progress=not args.quiet,
        init_from=None if args.init_from is None else trained_name(args.init_from), loggers=args.log,
        precision=args.precision,
    )
    from zoo.model_card import protocol_label

    label = protocol_label(result.protocol)
    also_full = result.protocol["mode"] != "full"
    rows = [[metric, f"{result.valid.get(metric, float('nan')):.4f}", f"{result.test[metric]:.4f}"]
            + ([f"{result.full_ranking['test'][metric]:.4f}"] if also_full else [])
            for metric in sorted(result.test, key=metric_order)]
    print(f"best epoch {result.best_epoch} of {result.epochs_run} ({result.train_seconds:.0f} s training, "
          f"{result.precision}); trained folder: {result.out_dir}")
    print(table(rows, ["metric", f"valid ({label})", f"test ({label})"] + (["test (full ranking)"] if also_full else [])))
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from zoo.data import load_dataset
    from zoo.evaluate import evaluate
    from zoo.hub import load_config

    name = trained_name(args.model)
    model = zoo.create(name, pretrained=True)
    facts = load_config(name).get("dataset", {})
    data = args.data or facts.get("name")
    if not data:
        raise ValueError(f"{args.model} records no dataset name: pass --data")
    dataset = load_dataset(data, **facts.get("preprocessing", {}))
    stored = getattr(model, "item_vocab", None)
    if stored is not None and list(stored.raw_ids) != list(dataset.item_vocab.raw_ids):
        raise ValueError(f"{data}'s items differ from the items {args.model} was trained on; evaluate on the same data")
    split = dataset.split(facts.get("split", {}).get("method", "loo"))
    recipe_train = model.recipe.train  # the recipe's protocol unless --mode / --negatives say otherwise
    mode = args.mode or recipe_train.eval_protocol
    negatives = recipe_train.eval_negatives if args.negatives is None else args.negatives
    result = evaluate(model, split, which=args.split, mode=mode, ks=args.k, num_negatives=negatives, seed=args.seed,
                      precision=args.precision)
    chosen = "" if args.mode else ", the recipe's protocol"
    print(f"{model.recipe.name} on {data} ({args.split} split, {mode} ranking{chosen}, {len(result.ranks)} users, "
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
    titles = item_titles(trained_name(args.model), args.data)
    rows = [[str(i + 1), item, f"{score:.4f}"] for i, (item, score) in enumerate(zip(top.ids[0], top.scores[0].tolist()))]
    if titles:
        rows = [row + [titles.get(row[1], "")] for row in rows]
    print(table(rows, ["rank", "item", "score"] + (["title"] if titles else [])))
    return 0


def item_titles(name: str, data: str | None) -> dict[str, str]:
    """Raw item id -> the item's text (a title) from ``data``, or, without it, from the built-in dataset the
    model was trained on; empty when that dataset has no item texts, or when the model's dataset is not
    built in and no ``--data`` is given."""
    from zoo.data import builtin_names, load_dataset
    from zoo.hub import load_config

    source = data or load_config(name).get("dataset", {}).get("name")
    if source is None or (data is None and source not in builtin_names()):
        return {}
    dataset = load_dataset(source)
    if dataset.item_features is None or not dataset.item_features.num_with_text:
        return {}
    raw_ids = dataset.item_vocab.raw_ids
    return {str(raw): str(text) for raw, text in zip(raw_ids, dataset.item_features.text[dataset.item_vocab.offset:])}


def cmd_push(args: argparse.Namespace) -> int:
    from zoo.publish import push_to_hub

    folder = args.folder.removeprefix("local-dir:")
    options = {"commit_message": args.commit_message} if args.commit_message else {}
    url = push_to_hub(folder, args.repo, revision=args.revision, private=True if args.private else None, token=args.token,
                      endpoint=args.endpoint, dry_run=args.dry_run, **options)
    if not args.dry_run:
        commit = url.rstrip("/").rsplit("/", 1)[-1]
        print(f"published {folder} to hf-hub:{args.repo}: {url}\nload this commit with zoo.create('hf-hub:{args.repo}@{commit}')")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from zoo.export import describe, export_model

    name = args.model if args.num_items is not None else trained_name(args.model)
    exported = export_model(name, args.out, args.format, batch_size=args.batch, num_items=args.num_items)
    max_len = exported.signatures["score"]["max_len"]
    for kind, path in (("score", exported.score), ("step", exported.step)):
        if path is not None:
            print(f"{kind}: {path}\n  {describe(exported.signatures[kind])}")
    print(f"batch: any size; histories left-padded with 0 to max_len={max_len} (docs/export.md)")
    return 0


def cmd_convert(args: argparse.Namespace) -> int:
    from zoo.convert import convert_recbole
    from zoo.recipe import parse_yaml

    config = {key: parse_yaml(value, f"--config {key}={value!r:.60}")[0] for key, value in parse_sets(args.config).items()}
    out = convert_recbole(args.checkpoint, args.out, args.recipe, args.items, config=config)
    model = zoo.create(f"local-dir:{out}")
    print(f"{args.checkpoint} -> {out}: recipe {model.recipe.name}, {model.num_items} items "
          f"(load it with zoo.create('local-dir:{out}'))")
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    from zoo.compare import comparison_table, plot_curves, read_run

    runs = [read_run(folder) for folder in args.runs]
    print(comparison_table(runs), end="")
    if args.plot != "none":
        print(f"validation curves: {plot_curves(runs, args.plot)}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="zoo", description="seqrec-zoo: sequential recommendation models from recipes")
    parser.add_argument("--threads", type=int, metavar="N",
                        help="CPU threads for torch (default: the CPUs this process may run on; on a machine shared with "
                        "other jobs, fewer threads are often faster)")
    parser.add_argument("--debug", action="store_true", help="on an error, show the Python traceback")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("list", help="list bundled models (or blocks with --blocks)")
    p.add_argument("pattern", nargs="?", default="*", help="shell-style filter, e.g. 'sigma*'")
    p.add_argument("--blocks", action="store_true", help="list registered blocks instead of models")
    p.add_argument("--pretrained", action="store_true", help="list published weights (model.tag) with dataset and test NDCG@10")
    p.add_argument("--kind", choices=["sequence", "fusion", "readout", "item-encoder", "head"], help="with --blocks: one kind only")
    p.set_defaults(func=cmd_list)

    p = sub.add_parser("info", help="recipe, parameters, FLOPs, streaming and block tree of a model; a block's arguments")
    p.add_argument("name", help="bundled model name, recipe path, or block name (zoo list --blocks)")
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
    p.add_argument("--precision", choices=["auto", "fp32", "bf16", "fp16"], default="auto",
                   help="autocast for training: auto is bf16 on CUDA and, on the CPU, the recipe's train.cpu_precision "
                   "(fp32 unless it says bf16, which applies only on CPUs with AMX or AVX512-BF16); bf16 also runs on "
                   "any CPU, where CPUs with AMX multiply matrices several times faster (docs/training.md)")
    p.add_argument("--restart", action="store_true", help="start over instead of resuming from the folder's checkpoint")
    p.add_argument("--init-from", metavar="MODEL", help="start from pretrained weights of the same recipe: a published "
                   "tag (sigma.ml-100k), a trained folder or hf-hub:org/name (fine-tuning; item tables start fresh on "
                   "other items)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument("--log", action="append", default=[], type=logger_name, metavar="LOGGER",
                   help="also log losses and metrics with LOGGER, repeatable: 'tensorboard' writes OUT/tensorboard/ "
                   "(needs pip install 'seqrec-zoo[log]')")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("eval", help="evaluate a trained folder on a dataset's test (or valid) split")
    p.add_argument("model", help="trained folder (DIR or local-dir:DIR), hf-hub:org/name or a published tag (sigma.ml-100k)")
    p.add_argument("--data", help="the dataset (default: the one the model's config.json records, e.g. ml-100k)")
    p.add_argument("--split", choices=["test", "valid"], default="test")
    p.add_argument("--mode", choices=["full", "sampled"],
                   help="rank against all items or 1 + N sampled (default: the recipe's train.eval_protocol)")
    p.add_argument("--negatives", type=int,
                   help="with sampled ranking: negatives per user (default: the recipe's train.eval_negatives)")
    p.add_argument("--k", type=int, nargs="+", default=[5, 10, 20])
    p.add_argument("--seed", type=int, default=0, help="with --mode sampled: the negatives' seed")
    p.add_argument("--precision", choices=["fp32", "bf16"], default="fp32",
                   help="bf16: the encoder under bf16 autocast (item scores stay fp32)")
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("compare", help="the metrics, training time and size of trained runs side by side, and their curves")
    p.add_argument("runs", nargs="+", help="run folders written by `zoo train --out DIR`")
    p.add_argument("--plot", default="compare.png", help="where to write the validation curves (PNG), or 'none'")
    p.set_defaults(func=cmd_compare)

    p = sub.add_parser("recommend", help="top-k items after a history of raw item ids")
    p.add_argument("model", help="trained folder (DIR or local-dir:DIR), hf-hub:org/name or a published tag (sigma.ml-100k)")
    p.add_argument("--history", required=True, help="raw item ids, oldest first, comma-separated")
    p.add_argument("-k", type=int, default=10)
    p.add_argument("--exclude-seen", action="store_true", help="never recommend an item of the history")
    p.add_argument("--unknown", choices=["error", "skip"], default="error", help="what to do with ids the model does not know")
    p.add_argument("--data", help="dataset whose item texts (titles) to show beside the ids (default: the model's dataset "
                                  "when it is built in, e.g. ml-100k)")
    p.set_defaults(func=cmd_recommend)

    p = sub.add_parser("push", help="publish a trained folder to the Hugging Face Hub (after checking that it loads)")
    p.add_argument("folder", help="trained folder (DIR or local-dir:DIR); its config.json, model.safetensors and README.md are sent")
    p.add_argument("--repo", required=True, help="Hub repository 'org/name'; created if missing")
    p.add_argument("--revision", help="branch to commit to (created from main if missing; default: main)")
    p.add_argument("--private", action="store_true", help="create the repository private")
    p.add_argument("--commit-message", help="default: 'Upload seqrec-zoo model'")
    p.add_argument("--token", help="Hub token with write access (default: HF_TOKEN or the `hf auth login` token)")
    p.add_argument("--endpoint", help="Hub URL (default: HF_ENDPOINT or https://huggingface.co)")
    p.add_argument("--dry-run", action="store_true", help="check the folder and print what would be uploaded; send nothing")
    p.set_defaults(func=cmd_push)

    p = sub.add_parser("export", help="export a model's scoring (and streaming step) for serving: torch.export or ONNX")
    p.add_argument("model", help="trained folder (DIR or local-dir:DIR), hf-hub:org/name or a published tag (sasrec.ml-100k); "
                   "with --num-items, a bundled recipe name or recipe file, untrained")
    p.add_argument("--format", required=True, choices=["torch-export", "onnx"])
    p.add_argument("--out", required=True, help="the file to write (.pt2 or .onnx); a streaming model's step program "
                   "goes beside it (NAME.step.pt2 / NAME.step.onnx)")
    p.add_argument("--batch", type=int, default=2, help="example batch size traced (>= 2); the exported batch size is dynamic")
    p.add_argument("--num-items", type=int, help="export an untrained recipe with this many items")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("convert", help="a RecBole checkpoint (SASRec, GRU4Rec, BERT4Rec, Mamba4Rec, SIGMA) as a trained folder")
    p.add_argument("checkpoint", help="the .pth file RecBole saved (read without running code from it)")
    p.add_argument("--out", required=True, help="the trained folder to write (Hub layout)")
    p.add_argument("--recipe", choices=["sasrec", "gru4rec", "bert4rec", "mamba4rec", "sigma-code"],
                   help="the recipe to convert to (default: the one the checkpoint's config names)")
    p.add_argument("--items", help="the item tokens: the RecBole dataset folder or .inter file, or a token list "
                                   "(one raw item token per line, in id order)")
    p.add_argument("--config", action="append", default=[], metavar="KEY=VALUE",
                   help="a RecBole config value the checkpoint lacks (n_heads=2), repeatable")
    p.set_defaults(func=cmd_convert)
    for command in sub.choices.values():  # --debug also after the command (`zoo train ... --debug`)
        command.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    return parser


USER_ERROR, INTERNAL_ERROR, INTERRUPTED = 2, 1, 130
MAX_ERROR_LINES = 12  # an error shows at most this many lines (then how many more there were)


def _yaml_cause(exc: BaseException) -> Any:
    """The YAML parser error behind ``exc`` (its cause or context), if any."""
    import yaml

    seen = exc.__cause__ or exc.__context__
    while seen is not None:
        if isinstance(seen, yaml.MarkedYAMLError):
            return seen
        seen = seen.__cause__ or seen.__context__
    return None


def _validation_lines(exc: Any) -> list[str]:
    """A pydantic ``ValidationError`` as lines ``SOURCE: place: what is wrong (line N)``, without pydantic's
    ``[type=..., input_value=...]`` trailers (the first line alone when there is one error)."""
    problems = [(".".join(str(part) for part in error["loc"]), error["msg"]) for error in exc.errors()]
    if len(problems) == 1:
        place, message = problems[0]
        return [f"{exc.title}: {place + ': ' if place else ''}{message}"]
    return [f"{exc.title}: {len(problems)} problems"] + [f"  {place + ': ' if place else ''}{message}" for place, message in problems]


def _os_error_line(exc: OSError) -> str:
    """An ``OSError`` as ``FILE: what happened; what to do``."""
    import errno

    if exc.filename is None or exc.strerror is None:
        return str(exc)
    where = f"{exc.filename}" + (f" -> {exc.filename2}" if exc.filename2 else "")
    what = exc.strerror
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        what += ("; free some disk space (or write elsewhere) and run the same command again: nothing complete was "
                 "replaced, and a training run resumes from its last checkpoint")
    elif exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        what += "; write to a folder you may write to, or change its permissions"
    return f"{where}: {what}"


def error_lines(exc: BaseException) -> tuple[list[str], int]:
    """What the command line says about an error (a few lines, no traceback) and its exit status: the library's
    documented errors (``ValueError``, ``OSError``, ``KeyError``, ``RuntimeError``, ``MemoryError``, safetensors
    and YAML errors) are the user's (status 2); anything else is unexpected (status 1; ``--debug`` shows where)."""
    import yaml
    from pydantic import ValidationError

    if isinstance(exc, ValidationError):
        return _validation_lines(exc), USER_ERROR
    if isinstance(exc, OSError):
        return [_os_error_line(exc)], USER_ERROR
    if isinstance(exc, KeyError):
        return [str(exc.args[0]) if exc.args else "KeyError"], USER_ERROR
    message = str(exc)
    if isinstance(exc, MemoryError) or type(exc).__name__ == "OutOfMemoryError" or "can't allocate memory" in message:
        detail = f" ({message.splitlines()[0][:300]})" if message else ""
        return [f"out of memory{detail}: use a smaller model, batch or dataset"], USER_ERROR
    yaml_error = _yaml_cause(exc)
    if yaml_error is not None and ": not valid YAML: " in message:
        mark = yaml_error.problem_mark
        at = f" (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else ""
        message = f"{message.split(': not valid YAML: ')[0]}: not valid YAML: {yaml_error.problem or yaml_error.context}{at}"
    if isinstance(exc, (ValueError, RuntimeError, yaml.YAMLError)) or type(exc).__name__ == "SafetensorError":
        return message.splitlines() or [type(exc).__name__], USER_ERROR
    first = message.splitlines()[0] if message else ""
    return [f"unexpected {type(exc).__name__}: {first} (run again with --debug for the traceback, and report it if "
            "the input is right)"], INTERNAL_ERROR


def report_error(command: str, exc: BaseException) -> int:
    """Print ``exc`` as ``zoo COMMAND: error: ...`` on stderr (:func:`error_lines`); returns the exit status."""
    lines, status = error_lines(exc)
    if len(lines) > MAX_ERROR_LINES:
        lines = [*lines[:MAX_ERROR_LINES], f"  ... ({len(lines) - MAX_ERROR_LINES} more lines)"]
    print(f"zoo {command}: error: " + "\n".join(lines), file=sys.stderr)
    return status


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; an error is reported as :func:`report_error` says (its traceback with ``--debug``)."""
    args = build_parser().parse_args(argv)
    try:
        if args.command in COMPUTING_COMMANDS:
            set_threads(args.threads)
        return args.func(args)
    except BrokenPipeError:
        # the reader went away (`zoo list | head`): stop quietly, and keep Python from complaining at exit
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except KeyboardInterrupt:
        if args.debug:
            raise
        print(f"zoo {args.command}: interrupted", file=sys.stderr)
        return INTERRUPTED
    except Exception as exc:  # noqa: BLE001 -- every error becomes a message; --debug shows the traceback
        if args.debug:
            raise
        return report_error(args.command, exc)


if __name__ == "__main__":
    sys.exit(main())
