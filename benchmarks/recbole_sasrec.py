"""RecBole's SASRec on ml-100k, timed epoch by epoch (run by ``train_eval.py`` in RecBole's own venv).

Runs in ``benchmarks/.recbole-venv`` (made by ``recbole_env.sh``): it imports only RecBole,
never the zoo. It trains with RecBole's own ``Trainer.fit`` (early stopping included) and
records, per epoch, when training and validation ended (seconds since ``fit`` started), the
validation NDCG@10 and how long validation took; then it evaluates the best checkpoint on the
test split, and times five more validation evaluations of it alone (median users per second).
Everything goes to ``OUT/log.jsonl`` (one JSON object per line).

With ``--serve-eval`` it trains nothing: it loads the checkpoint a training run left in ``OUT/saved``
and evaluates it on the validation split once per line read from stdin, answering each with a line
``EVAL {"users_per_second": ...}`` on stdout (``train_eval.py`` alternates these with the zoo's own
evaluations, so that both systems are timed in the same minutes).

Usage: python recbole_sasrec.py OUT --threads 2 --seed 2020 [--set key=value ...] [--serve-eval]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import statistics
import sys
import time
from pathlib import Path

EVAL_REPEATS = 5
os.environ.setdefault("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")  # RecBole's checkpoint reload uses torch.load on a pickle


def settings(out: Path, seed: int, overrides: dict) -> dict:
    """RecBole configuration of the shared protocol (see train_eval.py) plus ``overrides``."""
    recbole_dir = Path(importlib.util.find_spec("recbole").submodule_search_locations[0])
    config = {
        "data_path": str(recbole_dir / "dataset_example"),
        "checkpoint_dir": str(out / "saved"),
        "USER_ID_FIELD": "user_id",
        "ITEM_ID_FIELD": "item_id",
        "TIME_FIELD": "timestamp",
        "load_col": {"inter": ["user_id", "item_id", "timestamp"]},
        "MAX_ITEM_LIST_LENGTH": 50,
        "eval_args": {"split": {"LS": "valid_and_test"}, "order": "TO", "mode": "full", "group_by": "user"},
        "train_neg_sample_args": None,
        "loss_type": "CE",
        "hidden_size": 64,
        "inner_size": 256,
        "n_layers": 2,
        "n_heads": 2,
        "hidden_dropout_prob": 0.2,
        "attn_dropout_prob": 0.2,
        "epochs": 200,
        "stopping_step": 10,
        "valid_metric": "NDCG@10",
        "metrics": ["Hit", "NDCG", "MRR"],
        "topk": [10],
        "learning_rate": 0.001,
        "train_batch_size": 2048,
        "eval_batch_size": 4096,
        "seed": seed,
        "reproducibility": True,
        "show_progress": False,
        "device": "cpu",
        "use_gpu": False,
        "log_wandb": False,
    }
    config.update(overrides)
    return config


def parse_overrides(pairs: list[str]) -> dict:
    out = {}
    for pair in pairs:
        key, _, value = pair.partition("=")
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=2020)
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=JSON")
    parser.add_argument("--serve-eval", action="store_true", help="time evaluations of OUT's checkpoint on request")
    args = parser.parse_args()
    args.out = args.out.resolve()  # before the chdir below

    import torch
    from recbole.config import Config
    from recbole.data import create_dataset, data_preparation
    from recbole.model.sequential_recommender import SASRec
    from recbole.trainer import Trainer
    from recbole.utils import init_logger, init_seed

    torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    os.chdir(args.out)  # RecBole writes log/ and log_tensorboard/ into the working folder
    if args.serve_eval:
        serve_eval(args)
        return
    log = open(args.out / "log.jsonl", "w", encoding="utf-8")

    def record(**event) -> None:
        log.write(json.dumps(event) + "\n")
        log.flush()

    begin = time.perf_counter()
    config = Config(model="SASRec", dataset="ml-100k", config_dict=settings(args.out, args.seed, parse_overrides(args.overrides)))
    init_seed(config["seed"], config["reproducibility"])
    init_logger(config)
    dataset = create_dataset(config)
    train_data, valid_data, test_data = data_preparation(config, dataset)
    model = SASRec(config, train_data.dataset)
    trainer = Trainer(config, model)
    record(event="setup", seconds=time.perf_counter() - begin, users=dataset.user_num - 1, items=dataset.item_num - 1,
           interactions=len(dataset.inter_feat), train_samples=len(train_data.dataset),
           config={k: config[k] for k in ("train_batch_size", "learning_rate", "hidden_dropout_prob", "epochs", "stopping_step")})

    start = time.perf_counter()
    epoch = {"index": -1}
    train_epoch, valid_epoch = trainer._train_epoch, trainer._valid_epoch

    def timed_train(train_data, epoch_idx, *a, **kw):
        t0 = time.perf_counter()
        loss = train_epoch(train_data, epoch_idx, *a, **kw)
        epoch["index"], epoch["train_seconds"] = epoch_idx, time.perf_counter() - t0
        return loss

    def timed_valid(valid_data, *a, **kw):
        t0 = time.perf_counter()
        score, result = valid_epoch(valid_data, *a, **kw)
        now = time.perf_counter()
        record(event="epoch", epoch=epoch["index"], train_seconds=epoch["train_seconds"], eval_seconds=now - t0,
               eval_users=len(valid_data.dataset.inter_feat) if hasattr(valid_data.dataset, "inter_feat") else None,
               wall=now - start, valid={k: float(v) for k, v in result.items()})
        return score, result

    trainer._train_epoch, trainer._valid_epoch = timed_train, timed_valid
    best_score, best_valid = trainer.fit(train_data, valid_data, saved=True, show_progress=False)
    fit_seconds = time.perf_counter() - start
    t0 = time.perf_counter()
    test = trainer.evaluate(test_data, load_best_model=True, show_progress=False)
    test_seconds = time.perf_counter() - t0
    valid_users = len(valid_data.dataset.inter_feat)
    rates = []
    for _ in range(EVAL_REPEATS):  # the best model's validation evaluation, timed alone
        t0 = time.perf_counter()
        trainer.evaluate(valid_data, load_best_model=False, show_progress=False)
        rates.append(valid_users / (time.perf_counter() - t0))
    record(event="eval_speed", users=valid_users, users_per_second={"fp32": statistics.median(rates)})
    record(event="done", fit_seconds=fit_seconds, best_valid={k: float(v) for k, v in best_valid.items()},
           test={k: float(v) for k, v in test.items()}, test_seconds=test_seconds,
           test_users=int(test_data.dataset.user_num - 1))
    log.close()


def serve_eval(args: argparse.Namespace) -> None:
    """Load the newest checkpoint in OUT/saved; one timed validation evaluation per line on stdin."""
    import torch
    from recbole.config import Config
    from recbole.data import create_dataset, data_preparation
    from recbole.model.sequential_recommender import SASRec
    from recbole.trainer import Trainer
    from recbole.utils import init_seed

    checkpoints = sorted((args.out / "saved").glob("*.pth"), key=lambda path: path.stat().st_mtime)
    if not checkpoints:
        sys.exit(f"no RecBole checkpoint in {args.out / 'saved'}: train first")
    config = Config(model="SASRec", dataset="ml-100k", config_dict=settings(args.out, args.seed, parse_overrides(args.overrides)))
    init_seed(config["seed"], config["reproducibility"])
    dataset = create_dataset(config)
    train_data, valid_data, _ = data_preparation(config, dataset)
    model = SASRec(config, train_data.dataset)
    checkpoint = torch.load(checkpoints[-1], map_location="cpu")
    model.load_state_dict(checkpoint["state_dict"])
    model.load_other_parameter(checkpoint.get("other_parameter"))
    trainer = Trainer(config, model)
    users = len(valid_data.dataset.inter_feat)
    for _ in sys.stdin:
        start = time.perf_counter()
        trainer.evaluate(valid_data, load_best_model=False, show_progress=False)
        print("EVAL " + json.dumps({"users_per_second": users / (time.perf_counter() - start)}), flush=True)


if __name__ == "__main__":
    main()
