"""RecBole's trained SASRec, evaluated by the zoo: same model, same data, same metrics?

Takes the checkpoint a RecBole run of ``train_eval.py`` saved (``OUT/recbole-seedS/saved/*.pth``),
has ``recbole_export.py`` (in RecBole's venv) export its weights and RecBole's own per-user ranks,
loads the weights into the zoo's ``sasrec`` (the same architecture: item + position embeddings,
LayerNorm, dropout, two post-norm layers; RecBole's separate query/key/value projections
become the zoo's one ``qkv`` matrix, and its item rows are reordered by raw id into the zoo's
vocabulary), and evaluates that model with ``zoo.evaluate`` on the zoo's own ml-100k split.
Equal metrics say the zoo's model, split and evaluator reproduce RecBole's, so any difference
between the systems' trained models comes from training. Prints, for validation and test,
RecBole's NDCG@10 / HR@10, the zoo's with the same weights, and the share of users whose target
gets exactly the same rank (the two libraries may order interactions that share a timestamp
differently, and float rounding moves near-ties by a place or two). Writes ``--json`` if given.

Usage: python benchmarks/recbole_weights.py runs/bench-seeds/recbole-seed0 [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import tempfile
from pathlib import Path

import numpy as np
import torch

from train_eval import HERE, RECBOLE_PYTHON


def zoo_state_dict(weights: dict[str, np.ndarray], item_order: np.ndarray, layers: int) -> dict[str, torch.Tensor]:
    """RecBole SASRec state dict -> the zoo's ``sasrec`` names; item row ``i`` of RecBole moves to ``item_order[i]``."""
    w = {name: torch.from_numpy(value) for name, value in weights.items()}
    items = torch.zeros_like(w["item_embedding.weight"])
    items[torch.from_numpy(item_order)] = w["item_embedding.weight"]
    out = {"item_encoder.embedding.weight": items, "item_encoder.position.weight": w["position_embedding.weight"],
           "item_encoder.norm.weight": w["LayerNorm.weight"], "item_encoder.norm.bias": w["LayerNorm.bias"]}
    for i in range(layers):
        rb, zoo_layer = f"trm_encoder.layer.{i}.", f"encoder.layers.{i}."
        mha, ff = rb + "multi_head_attention.", rb + "feed_forward."
        for kind in ("weight", "bias"):
            out[zoo_layer + f"attention.qkv.{kind}"] = torch.cat([w[f"{mha}{p}.{kind}"] for p in ("query", "key", "value")])
            out[zoo_layer + f"attention.out.{kind}"] = w[f"{mha}dense.{kind}"]
            out[zoo_layer + f"attention_norm.{kind}"] = w[f"{mha}LayerNorm.{kind}"]
            out[zoo_layer + f"ffn.w1.{kind}"] = w[f"{ff}dense_1.{kind}"]
            out[zoo_layer + f"ffn.w2.{kind}"] = w[f"{ff}dense_2.{kind}"]
            out[zoo_layer + f"ffn_norm.{kind}"] = w[f"{ff}LayerNorm.{kind}"]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path, help="a RecBole run folder of train_eval.py (with saved/*.pth)")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    checkpoints = sorted((args.run / "saved").glob("*.pth"))
    if len(checkpoints) != 1:
        raise SystemExit(f"expected one checkpoint in {args.run / 'saved'}, found {[c.name for c in checkpoints]}")
    if not RECBOLE_PYTHON.is_file():
        raise SystemExit(f"RecBole's environment is missing: create it with `bash {HERE / 'recbole_env.sh'}`")

    import zoo
    from zoo.data import load_dataset
    from zoo.evaluate import evaluate, metrics_from_ranks

    with tempfile.TemporaryDirectory() as tmp:
        export = Path(tmp) / "recbole.npz"
        done = subprocess.run([str(RECBOLE_PYTHON), str(HERE / "recbole_export.py"), str(checkpoints[0]), str(export)],
                              capture_output=True, text=True)
        if done.returncode:
            raise SystemExit(f"recbole_export.py failed (exit {done.returncode}):\n{done.stderr}")
        with np.load(export) as data:
            arrays = {name: data[name] for name in data.files}
    dataset = load_dataset("ml-100k")
    split = dataset.split("loo")
    item_order = np.zeros(len(arrays["item_tokens"]), dtype=np.int64)
    item_order[1:] = dataset.encode_items(arrays["item_tokens"][1:])  # RecBole's row 0 is its padding, as the zoo's
    model = zoo.create("sasrec", num_items=dataset.num_items)
    weights = {name.removeprefix("weight/"): value for name, value in arrays.items() if name.startswith("weight/")}
    layers = 1 + max(int(name.split(".")[2]) for name in weights if name.startswith("trm_encoder.layer."))
    model.load_state_dict(zoo_state_dict(weights, item_order, layers), strict=True)
    user_rows = dataset.user_vocab.encode(arrays["user_tokens"][1:])  # RecBole user u -> the zoo's row user_rows[u - 1]

    report = {"checkpoint": str(checkpoints[0])}
    print(f"{checkpoints[0]}\n{'split':<6} {'RecBole NDCG@10':>16} {'zoo, same weights':>18} {'RecBole HR@10':>14} "
          f"{'zoo HR@10':>10} {'same rank':>10}")
    for which in ("valid", "test"):
        result = evaluate(model, split, which=which, ks=(10,))
        rank_of_row = dict(zip(split.eval_samples(which, model.max_len).rows.tolist(), result.ranks.tolist()))
        recbole_ranks = arrays[f"{which}_ranks"]
        zoo_ranks = np.array([rank_of_row[row] for row in user_rows[arrays[f"{which}_users"] - 1]])
        (rb_ndcg, rb_hr), (zoo_ndcg, zoo_hr) = (metrics_from_ranks(r, (10,), ("ndcg", "hr")).values()
                                                for r in (recbole_ranks, zoo_ranks))
        same = float(np.mean(recbole_ranks == zoo_ranks))
        print(f"{which:<6} {rb_ndcg:>16.4f} {zoo_ndcg:>18.4f} {rb_hr:>14.4f} {zoo_hr:>10.4f} {same:>10.3f}")
        report[which] = {"recbole": {"ndcg@10": rb_ndcg, "hr@10": rb_hr}, "zoo": {"ndcg@10": zoo_ndcg, "hr@10": zoo_hr},
                         "users": len(zoo_ranks), "same_rank": same}
    if args.json:
        args.json.write_text(json.dumps(report, indent=2), encoding="utf-8")


if __name__ == "__main__":
    main()
