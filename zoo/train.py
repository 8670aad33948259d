"""The trainer: ``train(model_or_recipe, dataset, out_dir)`` -> a trained folder and its metrics.

One run writes into ``out_dir``, which must be new, empty or a run folder of this trainer (it
holds ``run.lock``, or a checkpoint), and which it holds locked while it runs:

- ``run.lock`` -- marks a run folder; a running trainer holds an exclusive ``flock`` on it (a
  second run into the folder fails at once, naming the holder's pid and host, written in it);
- ``checkpoints/step-*/`` -- the latest checkpoint (see :mod:`zoo.checkpoint`), after every
  epoch and, with ``checkpoint_every=N``, every ``N`` optimiser steps;
- ``metrics.jsonl`` -- one JSON object per epoch: mean training loss per target, learning
  rate, validation metrics, seconds spent training / evaluating, training throughput (prediction
  targets per second: one per sample for ``last``, one per position for ``all``),
  wall time since the run began (rewritten atomically from the checkpointed history after
  every checkpoint and when a run starts or resumes, so a resumed run never repeats or loses a line);
- ``curve.png`` -- training loss and the validation metric per epoch;
- ``tensorboard/`` -- with ``loggers=("tensorboard",)``, the same numbers as TensorBoard scalars
  (:mod:`zoo.tensorboard_log`; rewritten from the checkpointed history when a run starts or resumes);
- ``config.json``, ``model.safetensors``, ``README.md`` -- the best-validation weights as a
  Hub folder (:func:`zoo.hub.save_pretrained`), loadable with ``zoo.create("local-dir:OUT")``;
- ``result.json`` -- the :class:`TrainResult` summary.

Evaluation protocol: validation (early stopping, the best weights) and the reported test rank
with the recipe's ``train.eval_protocol``: full ranking, or each target among itself and
``eval_negatives`` items drawn once from seed :data:`EVAL_SEED` outside its history (papers that
report 1 + 100 candidates, e.g. ConvRec Table 2). With a sampled protocol the best weights are also
ranked against all items, so every run has full-ranking numbers comparable across models
(``TrainResult.full_ranking``, ``result.json``, the ``*_full`` parts of ``config.json``'s metrics);
the model card labels every number with its protocol.

Reproducibility and resuming: the order of an epoch's samples is a permutation drawn from
``(seed, epoch)``; every random choice inside a batch (masks, negatives) comes from a generator
seeded with ``(seed, epoch, step, rank)``; dropout uses torch's global generator, whose state
(with numpy's and Python's) is saved in every checkpoint. A resumed run therefore skips the
steps already done and continues exactly as the uninterrupted run would have (bit for bit on
CPU with the same thread count; see ``tests/test_train_resume.py``). A checkpoint resumes only
the run that wrote it: the recipe, the seed and the data (its content, by a SHA-256 of the
interaction arrays) must be the same. Every file derived from the checkpointed state
(``metrics.jsonl`` at once; the trained folder, ``curve.png`` and ``result.json`` at the end) is
rewritten by a resumed run, so a crash between writing them never leaves them behind.

Moving average: with ``train.ema_decay`` a copy of the model (timm's ``ModelEmaV3``) follows the
weights after every optimiser step; it is what validation, early stopping, the test and the
trained folder see, and every checkpoint holds it.

Data parallelism: under ``torchrun`` each process takes a contiguous part of every global batch
of ``batch_size`` samples, computes the *sum* of its losses divided by the global number of
targets, and the gradients are summed across processes (:mod:`zoo.distributed`), which equals
the single-process gradient of the global batch. Rank 0 evaluates, checkpoints and writes logs.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import shutil
import socket
import time
from contextlib import closing, contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Literal, Mapping, Sequence

import numpy as np
import torch
from torch import Tensor

from zoo import checkpoint as ckpt
from zoo import distributed as dist_utils
from zoo.data.batching import trim_padding
from zoo.data.dataset import InteractionDataset
from zoo.data.split import DataSplit
from zoo.evaluate import METRICS, evaluate
from zoo.memory import keep_freed_memory
from zoo.model import SeqRecModel
from zoo.objectives import ItemSets, TrainingSamples, add_negatives, count_targets, loss_terms, training_samples
from zoo.recipe import Recipe, TrainConfig
from zoo.tensorboard_log import TENSORBOARD_DIR, TensorBoardLog, check_loggers

log = logging.getLogger("zoo.train")

Precision = Literal["auto", "fp32", "bf16", "fp16"]
CHECKPOINTS = "checkpoints"
METRICS_LOG = "metrics.jsonl"
CURVE = "curve.png"
RESULT = "result.json"
RUN_LOCK = "run.lock"
EVAL_SEED = 0  # sampled evaluation draws its negatives once from this seed: every epoch and run ranks the same candidates


class NotARunFolderError(ValueError):
    """``out_dir`` holds files that no training run wrote: training would overwrite or delete them."""


class RunFolderBusyError(RuntimeError):
    """Another training run holds ``out_dir``: two runs in one folder would overwrite each other."""


@dataclass
class TrainResult:
    """What a finished run produced: metrics of the best-validation weights and where things are.

    ``valid`` and ``test`` use the recipe's ranking protocol (``protocol``: ``zoo.evaluate``'s
    ``mode`` and, when sampled, ``num_negatives`` and ``seed``); ``full_ranking`` holds the same
    weights' validation and test metrics with full ranking, comparable across models.
    """

    out_dir: Path
    model: SeqRecModel = field(repr=False)
    best_epoch: int
    valid: dict[str, float]
    test: dict[str, float]
    epochs_run: int
    stopped_early: bool
    train_seconds: float
    history: list[dict[str, Any]] = field(repr=False)
    paths: dict[str, Path] = field(default_factory=dict)
    protocol: dict[str, Any] = field(default_factory=lambda: {"mode": "full"})
    full_ranking: dict[str, dict[str, float]] = field(default_factory=dict)
    precision: str = "fp32"

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable summary (without the model and the per-epoch history)."""
        return {
            "out_dir": str(self.out_dir), "best_epoch": self.best_epoch, "protocol": self.protocol,
            "valid": self.valid, "test": self.test, "full_ranking": self.full_ranking,
            "epochs_run": self.epochs_run, "stopped_early": self.stopped_early, "train_seconds": self.train_seconds,
            "precision": self.precision,
            "paths": {k: str(v) for k, v in self.paths.items()},
        }


# ---------------------------------------------------------------------------- setting up


def parse_metric(name: str) -> tuple[str, int]:
    """``"ndcg@10"`` -> ``("ndcg", 10)``, with a clear error for anything else."""
    metric, _, k = name.lower().partition("@")
    if metric not in METRICS or not k.isdigit() or int(k) < 1:
        raise ValueError(f"valid_metric {name!r} is not of the form <metric>@<K> with metric one of {list(METRICS)} "
                         "and K >= 1, e.g. 'ndcg@10'")
    return metric, int(k)


def _lower(metrics: Mapping[str, float]) -> dict[str, float]:
    return {k.lower(): float(v) for k, v in metrics.items()}


def _resolve_split(dataset: Any, split: Literal["loo", "ratio"]) -> DataSplit:
    if isinstance(dataset, DataSplit):
        return dataset
    if isinstance(dataset, (str, os.PathLike)):
        from zoo.data.loading import load_dataset

        dataset = load_dataset(dataset)
    if isinstance(dataset, InteractionDataset):
        return dataset.split(split)
    raise TypeError(f"dataset must be a name ('ml-100k'), a path, an InteractionDataset or a DataSplit, got {type(dataset).__name__}")


def _resolve_model(model_or_recipe: Any, num_items: int, overrides: Mapping[str, Any], seed: int) -> SeqRecModel:
    if isinstance(model_or_recipe, SeqRecModel):
        not_train = [k for k in overrides if not k.startswith("train.")]
        if not_train:
            raise ValueError(f"overrides {not_train} change the architecture of an already built model; build it with "
                             "zoo.create(..., **overrides) or pass a recipe name instead (only train.* overrides apply here)")
        model = model_or_recipe
        if overrides:
            data = model.recipe.model_dump(mode="json")
            from zoo.recipe import apply_overrides, validate_recipe

            model.recipe = validate_recipe(apply_overrides(data, dict(overrides)), source="train overrides")
    else:
        from zoo.factory import create

        torch.manual_seed(seed)
        model = create(model_or_recipe, num_items=num_items, **dict(overrides))
    if model.num_items != num_items:
        raise ValueError(f"the model scores {model.num_items} items but the dataset has {num_items}")
    return model


def _train_config(model: SeqRecModel, config: TrainConfig | Mapping[str, Any] | None, epochs: int | None) -> TrainConfig:
    base = model.recipe.train.model_dump()
    if isinstance(config, TrainConfig):
        base = config.model_dump()
    elif config:
        base.update(dict(config))
    if epochs is not None:
        base["epochs"] = epochs
    return TrainConfig.model_validate(base)


def init_weights_from(model: SeqRecModel, source: str | os.PathLike, item_vocab: Any) -> None:
    """Copy pretrained weights into ``model`` (fine-tuning): all of them when the dataset's items are those
    the weights were trained on (same raw ids, same order), else all but the item-dependent tensors, which
    keep ``model``'s fresh initialisation (as ``zoo.create(..., reset_items=True)``). The architecture must
    be the same: any other tensor that is missing or shaped differently is an error naming it.
    """
    from zoo.factory import create_pretrained, item_dependent_keys

    pretrained = create_pretrained(source)
    vocab = getattr(pretrained, "item_vocab", None)
    same_items = vocab is not None and list(vocab.raw_ids) == list(item_vocab.raw_ids)
    theirs, ours = pretrained.state_dict(), model.state_dict()
    keys = set(ours) - (set() if same_items else item_dependent_keys(pretrained, model.num_items))
    problems = sorted(
        f"{k}: {'missing' if k not in theirs else f'stored {tuple(theirs[k].shape)}, model {tuple(ours[k].shape)}'}"
        for k in keys if k not in theirs or theirs[k].shape != ours[k].shape
    )
    if problems:
        raise ValueError(
            f"--init-from {source}: its weights do not fit recipe {model.recipe.name!r} (train the recipe the weights "
            "come from, with training overrides only): " + "; ".join(problems[:10])
        )
    model.load_state_dict({k: theirs[k] for k in keys}, strict=False)


def give_item_features(model: SeqRecModel, split: DataSplit) -> None:
    """Load what the model's item encoder uses from the data, as training does: the dataset's attributes
    and item text embeddings, and the training split's item counts (use it for loops of your own)."""
    _set_item_features(model, split)
    _set_item_counts(model, split)


def _set_item_features(model: SeqRecModel, split: DataSplit) -> None:
    """Give the item encoder the side information it declares: the dataset's attributes, its item text embeddings.

    Text embeddings (:func:`zoo.data.item_text.item_text_table`, all-MiniLM-L6-v2, cached) become a
    buffer of the encoder, so the trained folder carries them and predicts without the text encoder.
    A dataset without item texts, or a text width other than the encoder's, fails here, before training.
    """
    used = getattr(model.item_encoder, "item_features", ())
    dataset = split.dataset
    features = dataset.item_features
    if features is not None and "attributes" in used:
        model.set_item_features(attributes=torch.from_numpy(np.asarray(features.attributes, dtype=np.float32)))
    if "text" not in used:
        return
    from zoo.data.item_text import MiniLMEncoder, item_text_table

    block = model.recipe.item_encoder.block
    if features is None or features.num_with_text == 0:
        raise ValueError(
            f"recipe {model.recipe.name!r}: its item encoder {block!r} embeds item texts, but dataset {dataset.name!r} "
            "has none; give it an item file (a RecBole .item beside the .inter file, or load_dataset(..., item_file=...)) "
            "with a title column ('title', 'name', '*_title' or '*_name', e.g. movie_title), or use an item encoder "
            "without text"
        )
    encoder = MiniLMEncoder()
    text_dim = getattr(model.item_encoder, "text_dim", encoder.dim)
    if text_dim != encoder.dim:
        raise ValueError(
            f"recipe {model.recipe.name!r}: item encoder {block!r} has text_dim {text_dim}, but item texts are embedded "
            f"by {encoder.name} ({encoder.dim}-d); set item_encoder.text_dim: {encoder.dim}"
        )
    model.set_item_features(text=torch.from_numpy(item_text_table(features.text, encoder)))


def _set_item_counts(model: SeqRecModel, split: DataSplit) -> None:
    """Give an item encoder that ranks items by frequency (ConvRec §4.1's frequent-item ID trick,
    ``attribute_context`` with ``num_known_items``) the interaction count of every item in the
    training split only, so validation and test interactions never shape the model."""
    encoder = model.item_encoder
    if "item_counts" in getattr(encoder, "item_features", ()) and getattr(encoder, "num_known_items", None) is not None:
        counts = np.bincount(split.train.items, minlength=model.num_items + 1)
        model.set_item_features(item_counts=torch.from_numpy(counts))


def eval_protocol(config: TrainConfig) -> dict[str, Any]:
    """The recipe's ranking protocol (``train.eval_protocol``) as :func:`zoo.evaluate.evaluate` arguments."""
    if config.eval_protocol == "full":
        return {"mode": "full"}
    return {"mode": "sampled", "num_negatives": config.eval_negatives, "seed": EVAL_SEED}


def _check_eval_room(config: TrainConfig, num_items: int) -> None:
    """Sampled evaluation needs ``eval_negatives`` items besides each target."""
    if config.eval_protocol == "sampled" and config.eval_negatives > num_items - 1:
        raise ValueError(f"eval_protocol 'sampled' ranks each target among itself and eval_negatives="
                         f"{config.eval_negatives} other items, but the dataset has only {num_items} items: set "
                         f"train.eval_negatives to at most {num_items - 1} or use train.eval_protocol: full")


def native_cpu_bf16() -> bool:
    """Whether this CPU computes bf16 matrix products natively (AMX tiles or AVX512-BF16): where bf16 autocast pays."""
    return bool(torch.cpu._is_amx_tile_supported() or torch.cpu._is_avx512_bf16_supported())


def resolve_precision(device: torch.device, precision: Precision, config: TrainConfig) -> Literal["fp32", "bf16", "fp16"]:
    """The precision a run trains in: an explicit one as given; ``"auto"`` is bf16 on CUDA (fp16 where bf16 is
    unsupported) and the recipe's ``cpu_precision`` on a CPU, bf16 only where the CPU computes it natively."""
    if precision != "auto":
        return precision
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return "bf16" if config.cpu_precision == "bf16" and native_cpu_bf16() else "fp32"


def _autocast(device: torch.device, precision: Literal["fp32", "bf16", "fp16"]) -> tuple[Any, bool]:
    """(an autocast context factory, whether fp16 gradient scaling is needed)."""
    if precision == "fp32":
        return nullcontext, False
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return (lambda: torch.autocast(device_type=device.type, dtype=dtype)), precision == "fp16"


# timm optimiser names that are torch.optim.Adam / AdamW, whose fused implementation build_optimizer asks for.
FUSED_OPTIMIZERS = ("adam", "adamw")


def build_optimizer(model: SeqRecModel, config: TrainConfig) -> torch.optim.Optimizer:
    """timm's optimiser for ``config``; ``model.no_weight_decay()`` parameters (and 1-D ones) get no weight decay.

    Adam and AdamW take torch's fused implementation (:data:`FUSED_OPTIMIZERS`): the same update in one pass
    over each parameter instead of a dozen tensor operations, about seven times faster on the CPU."""
    from timm.optim import create_optimizer_v2

    fused = {"fused": True} if config.optimizer.lower() in FUSED_OPTIMIZERS else {}
    try:
        return create_optimizer_v2(model, opt=config.optimizer, lr=config.lr, weight_decay=config.weight_decay, **fused)
    except (AssertionError, ValueError) as exc:
        from timm.optim import list_optimizers

        raise ValueError(f"optimizer {config.optimizer!r}: {exc}; timm offers e.g. {sorted(list_optimizers())[:30]}") from exc


def build_scheduler(optimizer: torch.optim.Optimizer, config: TrainConfig, steps_per_epoch: int) -> Any:
    """timm's LR schedule for ``config`` stepped per update (``plateau``: per epoch on the validation metric), or None."""
    if config.scheduler in (None, "none"):
        return None
    from timm.scheduler import create_scheduler_v2

    per_epoch = config.scheduler == "plateau"
    try:
        scheduler, _ = create_scheduler_v2(
            optimizer, sched=config.scheduler, num_epochs=config.epochs, warmup_epochs=config.warmup_epochs,
            step_on_epochs=per_epoch, updates_per_epoch=steps_per_epoch, plateau_mode="max",
        )
    except (AssertionError, ValueError) as exc:
        raise ValueError(f"scheduler {config.scheduler!r}: {exc}") from exc
    if scheduler is None:
        raise ValueError(f"unknown scheduler {config.scheduler!r}; use e.g. cosine, step, multistep, poly, tanh, plateau")
    return scheduler


def build_moving_average(model: SeqRecModel, decay: float | None) -> Any:
    """timm's ``ModelEmaV3`` copy of ``model`` averaged with ``decay`` per update, or None without a decay."""
    if decay is None:
        return None
    from timm.utils import ModelEmaV3

    return ModelEmaV3(model, decay=decay)


def _json_safe(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if isinstance(value, (Tensor, np.ndarray, np.generic)):
        return value.tolist()
    return value


def _with_current_defaults(fingerprint: dict[str, Any]) -> dict[str, Any]:
    """A saved fingerprint with its recipe validated again: recipe fields added since the checkpoint was
    written take their defaults, so a checkpoint of the same run still resumes."""
    from pydantic import ValidationError

    try:
        recipe = _trained_part(Recipe.model_validate(fingerprint["recipe"]))
    except (ValidationError, KeyError, TypeError):
        return fingerprint
    return {**fingerprint, "recipe": recipe}


def _trained_part(recipe: Recipe) -> dict[str, Any]:
    """The recipe as a run fingerprint compares it. Left out: its prose (``paper``, ``description``,
    ``deviations``) and its ``pretrained:`` tags, which say where trained weights are published; none of
    them changes anything that is trained (editing them for a run in progress must not stop it from resuming),
    the early-stopping patience and the epoch budget, so that
    a run continues when they are raised (``zoo train ... --epochs 30`` on a finished 20-epoch run) -
    unless a learning-rate schedule spans the epochs (every scheduler but ``plateau``): a new budget
    would change its past steps."""
    dumped = recipe.model_dump(mode="json")
    for untrained in ("pretrained", "paper", "description", "deviations"):
        dumped.pop(untrained, None)
    dumped["train"].pop("patience", None)  # a stopped run continues when it is raised
    if not _schedule_spans_epochs(recipe.train.scheduler):
        dumped["train"].pop("epochs", None)
    return dumped


def _schedule_spans_epochs(scheduler: str | None) -> bool:
    """True for a learning-rate schedule laid out over ``train.epochs`` (cosine, step, ...)."""
    return scheduler not in (None, "none", "plateau")


def _differing_paths(saved: Any, now: Any, prefix: str) -> list[str]:
    """Dotted paths where two JSON values differ (``recipe.train.lr``), lists compared whole."""
    if isinstance(saved, dict) and isinstance(now, dict):
        return [path for key in sorted(set(saved) | set(now), key=str)
                for path in _differing_paths(saved.get(key), now.get(key), f"{prefix}.{key}")]
    return [] if saved == now else [prefix]


def _hash_array(digest: Any, array: Any) -> None:
    """Feed an array's dtype, shape and bytes to ``digest``."""
    array = np.ascontiguousarray(array)
    digest.update(f"{array.dtype.str}{array.shape}".encode())
    digest.update(array.tobytes())


def data_digest(split: DataSplit) -> str:
    """SHA-256 of the data a run learns from and is validated on: every user's items and timestamps,
    the raw ids of items and users, the split's training sequences and evaluation targets, and the
    item side information (attributes, texts)."""
    digest = hashlib.sha256()
    dataset = split.dataset
    sequences = dataset.sequences
    for array in (sequences.offsets, sequences.items, sequences.timestamps, dataset.item_vocab.raw_ids,
                  dataset.user_vocab.raw_ids, split.train.offsets, split.train.items, split.valid.rows, split.valid.ends,
                  split.test.rows, split.test.ends):
        _hash_array(digest, array)
    if dataset.item_features is not None:
        _hash_array(digest, dataset.item_features.attributes)
        _hash_array(digest, np.asarray(dataset.item_features.text, dtype=str))
    return digest.hexdigest()


def _fingerprint(model: SeqRecModel, split: DataSplit, seed: int) -> dict[str, Any]:
    """What must match for a checkpoint to be resumed (the recipe with its train config, seed and data)."""
    return {
        "recipe": _trained_part(model.recipe),
        "seed": seed,
        "num_items": model.num_items,
        "data": {"name": split.dataset.name, "interactions": split.dataset.num_interactions, "split": split.method,
                 "train_interactions": split.train.num_interactions, "sha256": data_digest(split)},
    }


def _fingerprint_differences(saved: dict[str, Any], now: dict[str, Any]) -> list[str]:
    """Where a checkpoint's fingerprint differs from this run's (``data.*`` named by part); a checkpoint
    written before the data's content was fingerprinted is compared on the rest."""
    saved = _with_current_defaults(saved)
    differ = [path for key in sorted(set(saved) | set(now)) if key != "data"
              for path in _differing_paths(saved.get(key), now.get(key), key)]
    saved_data, now_data = saved.get("data", {}), dict(now["data"])
    if "sha256" not in saved_data:
        log.warning("the checkpoint records no digest of the data's content: only its name and sizes are compared")
        now_data.pop("sha256")
    differ += [f"data.{k}" for k in sorted(set(saved_data) | set(now_data)) if saved_data.get(k) != now_data.get(k)]
    return differ


def _different_run_message(out_dir: Path, differ: list[str]) -> str:
    """Why a checkpoint in ``out_dir`` is not resumed, and what to do."""
    content = " (same sizes, other interactions: the data file changed)" if differ == ["data.sha256"] else ""
    if differ == ["recipe.train.epochs"]:
        content = (" - its learning-rate schedule spans the epochs, so the run cannot be lengthened; continuing "
                   "needs the same epochs")
    shown = differ if len(differ) <= 8 else [*differ[:8], f"... {len(differ) - 8} more"]
    return (f"{out_dir} holds a checkpoint of a different run (it differs in {shown}{content}); resume with the same "
            "recipe, training settings, seed and data, or start over with resume=False (`zoo train --restart`), "
            "which replaces the checkpoint")


# ---------------------------------------------------------------------------- the run folder


def is_run_folder(out_dir: Path) -> bool:
    """True when ``out_dir`` was written by a training run (it holds ``run.lock`` or a checkpoint)."""
    return (out_dir / RUN_LOCK).is_file() or (out_dir / CHECKPOINTS / ckpt.LATEST).is_file()


def check_run_folder(out_dir: Path) -> None:
    """Refuse an ``out_dir`` that training would damage: a file, or a non-empty folder that is not a run folder."""
    if not out_dir.exists():
        return
    if not out_dir.is_dir():
        raise NotARunFolderError(f"{out_dir} is a file: train into a new or empty folder, or a run folder to resume")
    if is_run_folder(out_dir) or next(out_dir.iterdir(), None) is None:
        return
    raise NotARunFolderError(
        f"{out_dir} is not empty and is not a training run folder (it has no {RUN_LOCK} and no {CHECKPOINTS}/"
        f"{ckpt.LATEST}): training would delete and overwrite files in it; train into a new or empty folder"
    )


def _holder(fd: int) -> str:
    """Who holds a run lock, from what the holder wrote into the lock file."""
    try:
        info = json.loads(os.pread(fd, 4096, 0))
        return f"pid {info['pid']} on {info['host']}, since {info['started']}"
    except (ValueError, KeyError, TypeError, OSError):
        return "holder unknown"


@contextmanager
def run_folder_lock(out_dir: Path) -> Iterator[None]:
    """Hold ``out_dir/run.lock`` exclusively (``flock``) while a run writes ``out_dir``; writes its pid and host there.

    A second run into the folder fails at once with :class:`RunFolderBusyError` naming the holder;
    a crashed or killed run releases the lock with its last open file.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    fd = os.open(out_dir / RUN_LOCK, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        if not ckpt.lock_file(fd, wait=False):
            raise RunFolderBusyError(
                f"{out_dir} is being written by another training run ({_holder(fd)}): wait for it to end, or train "
                "into another folder; two runs in one folder would overwrite each other's checkpoints and model"
            )
        info = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(info) + "\n").encode(), 0)
        yield
    finally:
        os.close(fd)


# ---------------------------------------------------------------------------- the run


class _Run:
    """State and steps of one training run (the pieces :func:`train` strings together)."""

    def __init__(self, model: SeqRecModel, split: DataSplit, config: TrainConfig, out_dir: Path, seed: int,
                 device: torch.device, context: dist_utils.DistContext, precision: Precision, progress: bool,
                 checkpoint_every: int | None, eval_ks: tuple[int, ...], loggers: tuple[str, ...]) -> None:
        self.model, self.split, self.config, self.out_dir, self.seed = model, split, config, out_dir, seed
        self.loggers = loggers
        self.board: TensorBoardLog | None = None  # opened by _start on the main process with the tensorboard logger
        self.device, self.context, self.progress = device, context, progress
        self.checkpoint_every = checkpoint_every
        metric_name, metric_k = parse_metric(config.valid_metric)
        self.metric_key = f"{metric_name}@{metric_k}"
        self.eval_ks = tuple(sorted({*eval_ks, metric_k}))
        self.samples: TrainingSamples = training_samples(model, split.train, config, seed)
        if self.samples.epoch_size(0) == 0:
            raise ValueError(f"objective {config.objective!r} finds no training samples in {split.dataset.name!r} "
                             "(every training sequence is too short)")
        self.optimizer = build_optimizer(model, config)
        self.scheduler = build_scheduler(self.optimizer, config, self.steps_in(0))
        self.moving_average = build_moving_average(model, config.ema_decay)
        self.precision = resolve_precision(device, precision, config)
        self.autocast, fp16 = _autocast(device, self.precision)
        self.scaler = torch.amp.GradScaler(device.type, enabled=fp16)
        self.needs_negatives = config.loss in ("sampled_softmax", "bce")
        self.negatives_outside = (ItemSets.of_sequences(split.train, model.num_items)
                                  if self.needs_negatives and config.negatives == "unseen" else None)
        if self.negatives_outside is not None:
            self.negatives_outside.check_room(config.num_negatives)
        _check_eval_room(config, model.num_items)
        self.protocol = eval_protocol(config)
        self.fingerprint = _fingerprint(model, split, seed)
        # Trainer counters (all JSON-able; saved in every checkpoint).
        self.epoch = 0
        self.step = 0
        self.global_step = 0
        self.best_metric = -math.inf
        self.best_epoch = -1
        self.bad_epochs = 0
        self.stopped = False
        self.history: list[dict[str, Any]] = []
        self.best_state: dict[str, Tensor] | None = None
        self.best_changed = False
        self.loss_sum = 0.0
        self.loss_count = 0
        self.epoch_seconds = 0.0
        self.wall_offset = 0.0
        self.started = time.perf_counter()

    # ------------------------------------------------------------ checkpoints

    @property
    def evaluated(self) -> SeqRecModel:
        """What validation, early stopping and the published weights see: the average when there is one."""
        return self.model if self.moving_average is None else self.moving_average.module

    @property
    def checkpoint_root(self) -> Path:
        return self.out_dir / CHECKPOINTS

    def wall(self) -> float:
        return self.wall_offset + time.perf_counter() - self.started

    def save(self) -> None:
        rngs = dist_utils.gather_objects(ckpt.rng_state(), self.context)
        if not self.context.is_main:
            return
        state = {
            "fingerprint": self.fingerprint,
            "world_size": self.context.world_size,
            "epoch": self.epoch, "step": self.step, "global_step": self.global_step,
            "best_metric": self.best_metric if math.isfinite(self.best_metric) else None,
            "best_epoch": self.best_epoch, "bad_epochs": self.bad_epochs, "stopped": self.stopped,
            "loss_sum": self.loss_sum, "loss_count": self.loss_count, "epoch_seconds": self.epoch_seconds,
            "wall": self.wall(), "history": self.history,
            "scheduler": _json_safe(self.scheduler.state_dict()) if self.scheduler is not None else None,
            "scaler": _json_safe(self.scaler.state_dict()),
            "rng": rngs,
        }
        name = f"step-{self.global_step:09d}-{self.epoch:05d}-{self.step:06d}"
        ckpt.save_checkpoint(self.checkpoint_root, name, self.model, self.optimizer, state,
                             best=self.best_state if self.best_changed else None,
                             ema=None if self.moving_average is None else self.moving_average.module)
        self.best_changed = False
        self.write_metrics_log()

    def close(self) -> None:
        """Close the optional logs (also when the run fails, so what they hold is on disk)."""
        if self.board is not None:
            self.board.close()

    def write_metrics_log(self) -> None:
        """Rewrite ``metrics.jsonl`` from the history (atomically)."""
        ckpt.atomic_write_text(self.out_dir / METRICS_LOG, "".join(json.dumps(r) + "\n" for r in self.history))

    def restore(self, folder: Path) -> None:
        state = ckpt.load_checkpoint(folder, self.model, self.optimizer)
        differ = _fingerprint_differences(state["fingerprint"], self.fingerprint)
        if differ:
            raise ValueError(_different_run_message(self.out_dir, differ))
        if state["world_size"] != self.context.world_size:
            log.warning("resuming a %d-process run with %d processes: the data order is the same, dropout draws differ",
                        state["world_size"], self.context.world_size)
        self.epoch, self.step, self.global_step = state["epoch"], state["step"], state["global_step"]
        self.best_metric = -math.inf if state["best_metric"] is None else state["best_metric"]
        self.best_epoch, self.bad_epochs = state["best_epoch"], state["bad_epochs"]
        self.stopped = self.bad_epochs >= self.config.patience  # this run's patience: raising it continues
        self.loss_sum, self.loss_count, self.epoch_seconds = state["loss_sum"], state["loss_count"], state["epoch_seconds"]
        self.wall_offset, self.history = state["wall"], state["history"]
        if self.scheduler is not None and state["scheduler"] is not None:
            self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        rngs = state["rng"]
        ckpt.set_rng_state(rngs[self.context.rank % len(rngs)])
        self.best_state = ckpt.load_best_weights(folder)
        if self.moving_average is not None:
            ckpt.load_moving_average(folder, self.moving_average.module)
        if self.scheduler is not None and self.config.scheduler != "plateau":
            self.scheduler.step_update(self.global_step)

    # ------------------------------------------------------------ one epoch

    def _batch(self, order: np.ndarray, step: int) -> dict[str, Tensor]:
        size = self.config.batch_size
        indices = dist_utils.shard(order[step * size:(step + 1) * size], self.context)
        rng = np.random.default_rng([self.seed, self.epoch, step, self.context.rank])
        if not len(indices):
            return {}
        batch = trim_padding(self.samples.batch(indices, self.epoch, rng))
        if self.needs_negatives:
            users = None if self.negatives_outside is None else self.samples.users(indices, self.epoch)
            batch = add_negatives(batch, self.model.num_items, self.config.num_negatives, rng, self.negatives_outside, users)
        return batch

    def _step(self, batch: dict[str, Tensor]) -> tuple[Tensor | None, int]:
        """One optimiser step on this process's part of a global batch; (its loss sum, its target count)."""
        count = count_targets(batch) if batch else 0
        global_count = dist_utils.all_reduce_sum(count, self.context, self.device)
        total = None
        if count:
            batch = {k: v.to(self.device, non_blocking=True) for k, v in batch.items()}
            with self.autocast():
                total = loss_terms(self.model, batch, self.config.loss, self.config.num_negatives).total
            self.scaler.scale(total / global_count).backward()
        dist_utils.all_reduce_gradients(self.model.parameters(), self.context)
        if self.config.grad_clip is not None:
            self.scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.config.grad_clip)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        self.global_step += 1
        if self.moving_average is not None:
            self.moving_average.update(self.model, step=self.global_step)  # step 1 copies the weights
        if self.scheduler is not None and self.config.scheduler != "plateau":
            self.scheduler.step_update(self.global_step)
        return (None if total is None else total.detach()), count

    def steps_in(self, epoch: int) -> int:
        """Optimiser steps of ``epoch`` (its sample count may vary between epochs, e.g. with ``window_shift``)."""
        return math.ceil(self.samples.epoch_size(epoch) / self.config.batch_size)

    def train_epoch(self) -> None:
        from tqdm.auto import tqdm

        self.model.train()
        order = np.random.default_rng([self.seed, self.epoch]).permutation(self.samples.epoch_size(self.epoch))
        steps = self.steps_in(self.epoch)
        bar = tqdm(total=steps, initial=self.step, desc=f"epoch {self.epoch + 1}/{self.config.epochs}",
                   disable=not (self.progress and self.context.is_main), leave=False, dynamic_ncols=True)
        running = torch.zeros((), dtype=torch.float64, device=self.device)
        seen, begun = 0, time.perf_counter()
        while self.step < steps:
            batch = self._batch(order, self.step)
            total, count = self._step(batch)
            if total is not None:
                running += total.double()
            self.loss_count += count
            seen += count
            self.step += 1
            bar.update(1)
            if bar.n % 10 == 0 or self.step == steps:
                elapsed = time.perf_counter() - begun
                rate = seen * self.context.world_size / elapsed if elapsed > 0 else 0.0
                bar.set_postfix(loss=f"{(self.loss_sum + float(running)) / max(self.loss_count, 1):.4f}",
                                targets_per_s=f"{rate:,.0f}", refresh=False)
            if self.checkpoint_every and self.step % self.checkpoint_every == 0 and self.step < steps:
                self.loss_sum += float(running)
                running.zero_()
                self.epoch_seconds += time.perf_counter() - begun
                begun, seen = time.perf_counter(), 0
                self.save()
        bar.close()
        self.loss_sum += float(running)
        self.epoch_seconds += time.perf_counter() - begun

    # ------------------------------------------------------------ validation and early stopping

    def evaluate(self, model: SeqRecModel, which: Literal["valid", "test"],
                 full_ranking: bool = False) -> tuple[dict[str, float], float]:
        """Metrics (``"ndcg@10"``, ...) and seconds of ``which`` with the recipe's protocol, or with full ranking."""
        protocol = {"mode": "full"} if full_ranking else self.protocol
        result = evaluate(model, self.split, which=which, ks=self.eval_ks, batch_size=self.config.eval_batch_size,
                          device=self.device, precision=self.config.eval_precision, **protocol)
        return _lower(result.metrics), result.seconds

    def end_epoch(self) -> None:
        """Close an epoch; after every ``valid_every``-th and the last: validate, record, early-stop and checkpoint
        (the record's loss and seconds cover the epochs since the previous validation)."""
        self.epoch += 1
        self.step = 0
        if self.epoch % self.config.valid_every and self.epoch < self.config.epochs:
            return
        loss_sum = dist_utils.all_reduce_sum(self.loss_sum, self.context, self.device)
        loss_count = dist_utils.all_reduce_sum(self.loss_count, self.context, self.device)
        record: dict[str, Any] | None = None
        if self.context.is_main:
            valid, eval_seconds = self.evaluate(self.evaluated, "valid")
            value = valid[self.metric_key]
            if value > self.best_metric:
                self.best_metric, self.best_epoch, self.bad_epochs = value, self.epoch - 1, 0
                self.best_state = {k: v.detach().clone().cpu() for k, v in self.evaluated.state_dict().items()}
                self.best_changed = True
            else:
                self.bad_epochs += self.epoch - (self.history[-1]["epoch"] if self.history else 0)
            record = {
                "epoch": self.epoch, "loss": loss_sum / max(loss_count, 1),
                "lr": self.optimizer.param_groups[0]["lr"], "valid": valid,
                "train_seconds": self.epoch_seconds, "eval_seconds": eval_seconds,
                "targets_per_second": loss_count / self.epoch_seconds if self.epoch_seconds > 0 else None,
                "wall": self.wall(), "best_epoch": self.best_epoch + 1,
            }
            self.history.append(record)
            if self.board is not None:
                self.board.add_epoch(record)
            self.stopped = self.bad_epochs >= self.config.patience
            if self.progress:
                from tqdm.auto import tqdm

                tqdm.write(f"epoch {self.epoch}: loss {record['loss']:.4f}  valid {self.metric_key} {value:.4f}  "
                           f"(best {self.best_metric:.4f} @ {self.best_epoch + 1})  {self.epoch_seconds:.1f}s + "
                           f"{eval_seconds:.1f}s eval")
        self.stopped = bool(dist_utils.broadcast_object(self.stopped, self.context))
        if self.scheduler is not None and self.config.scheduler == "plateau":
            metric = dist_utils.broadcast_object(self.best_metric if record is None else record["valid"][self.metric_key],
                                                 self.context)
            self.scheduler.step(self.epoch, metric)
        self.loss_sum, self.loss_count, self.epoch_seconds = 0.0, 0, 0.0
        self.save()


def plot_curve(history: list[dict[str, Any]], metric: str, path: Path) -> Path:
    """Training loss and validation ``metric`` per epoch as a PNG (matplotlib, Agg backend)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    epochs = [r["epoch"] for r in history]
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.6))
    left.plot(epochs, [r["loss"] for r in history], marker=".")
    left.set(xlabel="epoch", ylabel="training loss (mean per target)", title="training loss")
    right.plot(epochs, [r["valid"][metric] for r in history], marker=".", color="tab:orange")
    if history:
        best = max(history, key=lambda r: r["valid"][metric])
        right.axvline(best["epoch"], color="grey", linestyle=":", label=f"best: epoch {best['epoch']}")
        right.legend()
    right.set(xlabel="epoch", ylabel=f"validation {metric}", title=f"validation {metric}")
    for axis in (left, right):
        axis.grid(alpha=0.3)
        axis.xaxis.set_major_locator(MaxNLocator(integer=True))  # epochs are whole numbers
    fig.tight_layout()
    ckpt.atomic_write(path, lambda p: fig.savefig(p, format="png", dpi=100))
    plt.close(fig)
    return path


def train(
    model_or_recipe: SeqRecModel | Recipe | str | os.PathLike,
    dataset: str | os.PathLike | InteractionDataset | DataSplit,
    out_dir: str | os.PathLike,
    *,
    epochs: int | None = None,
    seed: int = 0,
    overrides: Mapping[str, Any] | None = None,
    config: TrainConfig | Mapping[str, Any] | None = None,
    resume: bool = True,
    device: str | torch.device = "cpu",
    progress: bool = True,
    precision: Precision = "auto",
    checkpoint_every: int | None = None,
    split: Literal["loo", "ratio"] = "loo",
    eval_ks: tuple[int, ...] = (5, 10, 20),
    save_model: bool = True,
    plot: bool = True,
    init_from: str | os.PathLike | None = None,
    loggers: str | Sequence[str] = (),
) -> TrainResult:
    """Train a model with early stopping on the validation metric; test the best weights; write ``out_dir``.

    ``model_or_recipe``: a built :class:`SeqRecModel`, a :class:`Recipe`, a bundled recipe name
    or a recipe file (built here with ``torch.manual_seed(seed)``). ``dataset``: a built-in name
    (``"ml-100k"``), a path, an ``InteractionDataset`` (split by ``split``) or a ``DataSplit``.
    ``overrides``: dotted recipe paths (``{"encoder.0.dropout": 0.1, "train.lr": 3e-4}``; for a built
    model only ``train.*``). ``config``: :class:`TrainConfig` fields replacing the recipe's training
    defaults; ``epochs`` replaces ``config.epochs``. ``out_dir`` must be new, empty or a run folder
    (:class:`NotARunFolderError` otherwise), and no other run may be writing it
    (:class:`RunFolderBusyError`). ``resume``: continue from ``out_dir``'s latest checkpoint when
    there is one (False: start over, replacing it; a checkpoint of another recipe, seed or data is
    refused). ``precision``: ``"auto"`` is bf16 autocast on CUDA (fp16 with gradient scaling where
    bf16 is unsupported) and fp32 on CPU; ``"bf16"`` also works on CPU. ``checkpoint_every``: also
    checkpoint every N optimiser steps. Returns the metrics of the best-validation weights on
    validation and test (keys like ``"ndcg@10"``) with the recipe's ranking protocol
    (``train.eval_protocol``), the same weights' full-ranking metrics (``full_ranking``) and the
    paths written; the model holds those weights.
    ``save_model=False`` skips the trained folder and ``plot=False`` the curve (both import heavy
    libraries). ``init_from``: start from pretrained weights (a tag such as ``"sigma.ml-100k"``,
    ``"local-dir:DIR"`` or ``"hf-hub:org/name"``) of the same architecture (:func:`init_weights_from`);
    a resumed run continues from its checkpoint instead.
    ``loggers``: extra logs beside ``metrics.jsonl``; ``("tensorboard",)`` writes TensorBoard scalars to
    ``out_dir/tensorboard/`` (:mod:`zoo.tensorboard_log`, needs ``pip install 'seqrec-zoo[log]'``). An
    unknown name or a missing package fails here, before anything is read or trained.
    Sets glibc's malloc to keep freed memory for the next step (:func:`zoo.memory.keep_freed_memory`).
    """
    loggers = check_loggers(loggers)
    keep_freed_memory()
    if checkpoint_every is not None and checkpoint_every < 1:
        raise ValueError(f"checkpoint_every must be >= 1 steps, got {checkpoint_every}")
    if precision not in ("auto", "fp32", "bf16", "fp16"):
        raise ValueError(f"precision must be 'auto', 'fp32', 'bf16' or 'fp16', got {precision!r}")
    context, device = dist_utils.setup(device)
    out = Path(out_dir)
    if context.is_main:
        check_run_folder(out)
    data = _resolve_split(dataset, split)
    model, train_config = prepare_model(model_or_recipe, data, overrides, seed, config, epochs, init_from)
    model.to(device)
    dist_utils.broadcast_parameters(model, context)
    torch.manual_seed(seed * 1000 + context.rank)  # dropout draws: reproducible, different on every process
    run = _Run(model, data, train_config, out, seed, device, context, precision, progress, checkpoint_every, eval_ks,
               loggers)
    with run_folder_lock(out) if context.is_main else nullcontext(), closing(run):
        _start(run, resume)
        while not run.stopped and run.epoch < train_config.epochs:
            run.train_epoch()
            run.end_epoch()
        result = _finish(run, save_model, plot)
    dist_utils.cleanup(context)
    return result


def prepare_model(model_or_recipe: SeqRecModel | Recipe | str | os.PathLike, data: DataSplit,
                  overrides: Mapping[str, Any] | None = None, seed: int = 0,
                  config: TrainConfig | Mapping[str, Any] | None = None, epochs: int | None = None,
                  init_from: str | os.PathLike | None = None) -> tuple[SeqRecModel, TrainConfig]:
    """The model :func:`train` trains on ``data`` and its training configuration (see :func:`train` for the
    arguments): built (or taken), the recipe's training part replaced, optionally initialised from pretrained
    weights, given the data's item vocabulary and item features. Still on the CPU."""
    model = _resolve_model(model_or_recipe, data.dataset.num_items, dict(overrides or {}), seed)
    train_config = _train_config(model, config, epochs)
    model.recipe = model.recipe.model_copy(update={"train": train_config})
    if init_from is not None:
        init_weights_from(model, init_from, data.dataset.item_vocab)
    model.item_vocab = data.dataset.item_vocab
    give_item_features(model, data)
    return model, train_config


def _start(run: _Run, resume: bool) -> None:
    """Resume from the latest checkpoint (``resume``, when there is one) or start afresh; then rewrite the
    files derived from the run's state that a crash may have left stale (``metrics.jsonl``, the TensorBoard log)."""
    latest = ckpt.latest_checkpoint(run.checkpoint_root) if run.checkpoint_root.is_dir() else None
    if latest is not None and resume:
        run.restore(latest)
        if run.context.is_main:
            log.info("resumed %s at epoch %d, step %d", latest, run.epoch, run.step)
    elif run.context.is_main:
        shutil.rmtree(run.checkpoint_root, ignore_errors=True)
        (run.out_dir / CURVE).unlink(missing_ok=True)
    if run.context.is_main:
        ckpt.remove_temporaries(run.out_dir)
        run.write_metrics_log()
        if "tensorboard" in run.loggers:
            run.board = TensorBoardLog.open(run.out_dir, run.history, run.wall())


def _published_metrics(protocol: dict[str, Any], valid: dict[str, float], test: dict[str, float],
                       full: dict[str, dict[str, float]]) -> tuple[dict[str, dict[str, float]], dict[str, dict[str, Any]]]:
    """The trained folder's metrics by part and each part's protocol: ``valid`` / ``test`` with the recipe's
    protocol and, when that is sampled, ``valid_full`` / ``test_full`` with full ranking."""
    metrics = {"valid": valid, "test": test}
    protocols = {part: {"split": part, **protocol} for part in metrics}
    if protocol["mode"] != "full":
        for which in ("valid", "test"):
            metrics[f"{which}_full"] = full[which]
            protocols[f"{which}_full"] = {"split": which, "mode": "full"}
    return metrics, protocols


def _precision_label(precision: str) -> str:
    """``"fp32"`` -> ``"fp32"``, ``"bf16"`` -> ``"bf16 autocast"``: how the model card names a run's precision."""
    return precision if precision == "fp32" else f"{precision} autocast"


def _card_notes(run: _Run) -> str:
    """The model card's paragraph on how the folder's weights were trained and chosen, and how to redo it."""
    from zoo.model_card import protocol_label

    config = run.config
    epochs = run.epoch
    minutes = sum(r["train_seconds"] + r["eval_seconds"] for r in run.history) / 60
    dataset = run.split.dataset.name
    return (f"Trained with `zoo.train` for {epochs} epoch{'s' if epochs != 1 else ''} in {minutes:.1f} minutes of "
            f"training and validation (best validation {run.metric_key} {run.best_metric:.4f}, "
            f"{protocol_label(run.protocol)}, at epoch {run.best_epoch + 1}; seed {run.seed}; "
            f"objective {config.objective}, loss {config.loss}, {config.optimizer} lr {config.lr}, batch {config.batch_size}, "
            f"{_precision_label(run.precision)} on {run.device.type.upper()}"
            + ("" if config.ema_decay is None else f"; weights: moving average, decay {config.ema_decay}")
            + f"). To train it again: `zoo train {run.model.recipe.name} --data {dataset} --out DIR --seed {run.seed}` "
            "(the recipe as trained, overrides included, is the one in `config.json`).")


def _finish(run: _Run, save_model: bool, plot: bool) -> TrainResult:
    """Load the best weights, test them, write the trained folder, the curve and the summary."""
    model, out = run.model, run.out_dir
    paths = {"checkpoints": run.checkpoint_root, "metrics_log": out / METRICS_LOG}
    summary: dict[str, Any] = {}
    if run.context.is_main:
        if run.best_state is None:
            raise RuntimeError("no epoch was trained (epochs must be >= 1)")
        model.load_state_dict({k: v.to(run.device) for k, v in run.best_state.items()})
        valid, _ = run.evaluate(model, "valid")
        test, _ = run.evaluate(model, "test")
        if run.board is not None:
            run.board.add_test(test, run.best_epoch + 1)
            paths["tensorboard"] = out / TENSORBOARD_DIR
        full = ({"valid": valid, "test": test} if run.protocol["mode"] == "full" else
                {which: run.evaluate(model, which, full_ranking=True)[0] for which in ("valid", "test")})
        train_seconds = sum(r["train_seconds"] + r["eval_seconds"] for r in run.history)
        summary = {"valid": valid, "test": test, "full_ranking": full, "train_seconds": train_seconds,
                   "best_epoch": run.best_epoch + 1, "history": run.history}
        if save_model:
            metrics, protocols = _published_metrics(run.protocol, valid, test, full)
            model.save_pretrained(out, dataset_facts=run.split, metrics=metrics, protocols=protocols,
                                  card={"notes": _card_notes(run)})
            paths["model"] = out
        if plot:
            paths["curve"] = plot_curve(run.history, run.metric_key, out / CURVE)
    summary = dist_utils.broadcast_object(summary, run.context)
    dist_utils.broadcast_parameters(model, run.context)
    result = TrainResult(
        out_dir=out, model=model, best_epoch=summary["best_epoch"], valid=summary["valid"], test=summary["test"],
        epochs_run=run.epoch, precision=run.precision, stopped_early=run.stopped, train_seconds=summary["train_seconds"],
        history=list(summary["history"]), paths=paths, protocol=dict(run.protocol), full_ranking=summary["full_ranking"],
    )
    if run.context.is_main:
        paths["result"] = out / RESULT
        ckpt.atomic_write_text(out / RESULT, json.dumps(result.to_dict(), indent=2) + "\n")
    model.eval()
    return result
