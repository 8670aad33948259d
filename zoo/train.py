"""The trainer: ``train(model_or_recipe, dataset, out_dir)`` -> a trained folder and its metrics.

One run writes into ``out_dir``:

- ``checkpoints/step-*/`` -- the latest checkpoint (see :mod:`zoo.checkpoint`), after every
  epoch and, with ``checkpoint_every=N``, every ``N`` optimiser steps;
- ``metrics.jsonl`` -- one JSON object per epoch: mean training loss per target, learning
  rate, validation metrics, seconds spent training / evaluating, training throughput (prediction
  targets per second: one per sample for ``last``, one per position for ``all``),
  wall time since the run began (rewritten atomically from the checkpointed history, so a
  resumed run never repeats or loses a line);
- ``curve.png`` -- training loss and the validation metric per epoch;
- ``config.json``, ``model.safetensors``, ``README.md`` -- the best-validation weights as a
  Hub folder (:func:`zoo.hub.save_pretrained`), loadable with ``zoo.create("local-dir:OUT")``;
- ``result.json`` -- the :class:`TrainResult` summary.

Reproducibility and resuming: the order of an epoch's samples is a permutation drawn from
``(seed, epoch)``; every random choice inside a batch (masks, negatives) comes from a generator
seeded with ``(seed, epoch, step, rank)``; dropout uses torch's global generator, whose state
(with numpy's and Python's) is saved in every checkpoint. A resumed run therefore skips the
steps already done and continues exactly as the uninterrupted run would have (bit for bit on
CPU with the same thread count; see ``tests/test_train_resume.py``).

Moving average: with ``train.ema_decay`` a copy of the model (timm's ``ModelEmaV3``) follows the
weights after every optimiser step; it is what validation, early stopping, the test and the
trained folder see, and every checkpoint holds it.

Data parallelism: under ``torchrun`` each process takes a contiguous part of every global batch
of ``batch_size`` samples, computes the *sum* of its losses divided by the global number of
targets, and the gradients are summed across processes (:mod:`zoo.distributed`), which equals
the single-process gradient of the global batch. Rank 0 evaluates, checkpoints and writes logs.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Mapping

import numpy as np
import torch
from torch import Tensor

from zoo import checkpoint as ckpt
from zoo import distributed as dist_utils
from zoo.data.batching import trim_padding
from zoo.data.dataset import InteractionDataset
from zoo.data.split import DataSplit
from zoo.evaluate import METRICS, evaluate
from zoo.model import SeqRecModel
from zoo.objectives import TrainingSamples, add_negatives, count_targets, loss_terms, training_samples
from zoo.recipe import Recipe, TrainConfig

log = logging.getLogger("zoo.train")

Precision = Literal["auto", "fp32", "bf16", "fp16"]
CHECKPOINTS = "checkpoints"
METRICS_LOG = "metrics.jsonl"
CURVE = "curve.png"
RESULT = "result.json"


@dataclass
class TrainResult:
    """What a finished run produced: metrics of the best-validation weights and where things are."""

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

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable summary (without the model and the per-epoch history)."""
        return {
            "out_dir": str(self.out_dir), "best_epoch": self.best_epoch, "valid": self.valid, "test": self.test,
            "epochs_run": self.epochs_run, "stopped_early": self.stopped_early, "train_seconds": self.train_seconds,
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


def _set_item_features(model: SeqRecModel, split: DataSplit) -> None:
    """Give the item encoder the dataset's attributes when it uses them."""
    features = split.dataset.item_features
    if features is not None and "attributes" in getattr(model.item_encoder, "item_features", ()):
        model.set_item_features(attributes=torch.from_numpy(np.asarray(features.attributes, dtype=np.float32)))


def _autocast(device: torch.device, precision: Precision) -> tuple[Any, bool]:
    """(an autocast context factory, whether fp16 gradient scaling is needed)."""
    if precision == "auto":
        if device.type != "cuda":
            return nullcontext, False
        precision = "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    if precision == "fp32":
        return nullcontext, False
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return (lambda: torch.autocast(device_type=device.type, dtype=dtype)), precision == "fp16"


def build_optimizer(model: SeqRecModel, config: TrainConfig) -> torch.optim.Optimizer:
    """timm's optimiser for ``config``; ``model.no_weight_decay()`` parameters (and 1-D ones) get no weight decay."""
    from timm.optim import create_optimizer_v2

    try:
        return create_optimizer_v2(model, opt=config.optimizer, lr=config.lr, weight_decay=config.weight_decay)
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


def _fingerprint(model: SeqRecModel, split: DataSplit, seed: int) -> dict[str, Any]:
    """What must match for a checkpoint to be resumed (the recipe with its train config, seed and data)."""
    return {
        "recipe": model.recipe.model_dump(mode="json"),
        "seed": seed,
        "num_items": model.num_items,
        "data": {"name": split.dataset.name, "interactions": split.dataset.num_interactions, "split": split.method,
                 "train_interactions": split.train.num_interactions},
    }


# ---------------------------------------------------------------------------- the run


class _Run:
    """State and steps of one training run (the pieces :func:`train` strings together)."""

    def __init__(self, model: SeqRecModel, split: DataSplit, config: TrainConfig, out_dir: Path, seed: int,
                 device: torch.device, context: dist_utils.DistContext, precision: Precision, progress: bool,
                 checkpoint_every: int | None, eval_ks: tuple[int, ...]) -> None:
        self.model, self.split, self.config, self.out_dir, self.seed = model, split, config, out_dir, seed
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
        self.autocast, fp16 = _autocast(device, precision)
        self.scaler = torch.amp.GradScaler(device.type, enabled=fp16)
        self.needs_negatives = config.loss in ("sampled_softmax", "bce")
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
        ckpt.atomic_write_text(self.out_dir / METRICS_LOG, "".join(json.dumps(r) + "\n" for r in self.history))

    def restore(self, folder: Path) -> None:
        state = ckpt.load_checkpoint(folder, self.model, self.optimizer)
        if state["fingerprint"] != self.fingerprint:
            saved, now = state["fingerprint"], self.fingerprint
            differ = sorted(k for k in set(saved) | set(now) if saved.get(k) != now.get(k))
            raise ValueError(f"{self.out_dir} holds a checkpoint of a different run (it differs in {differ}); "
                             "resume with the same recipe, training settings, seed and data, or pass resume=False "
                             "to start over (the old checkpoint is then replaced)")
        if state["world_size"] != self.context.world_size:
            log.warning("resuming a %d-process run with %d processes: the data order is the same, dropout draws differ",
                        state["world_size"], self.context.world_size)
        self.epoch, self.step, self.global_step = state["epoch"], state["step"], state["global_step"]
        self.best_metric = -math.inf if state["best_metric"] is None else state["best_metric"]
        self.best_epoch, self.bad_epochs, self.stopped = state["best_epoch"], state["bad_epochs"], state["stopped"]
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
            batch = add_negatives(batch, self.model.num_items, self.config.num_negatives, rng)
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

    def evaluate(self, model: SeqRecModel, which: Literal["valid", "test"]) -> tuple[dict[str, float], float]:
        result = evaluate(model, self.split, which=which, ks=self.eval_ks, batch_size=self.config.eval_batch_size,
                          device=self.device, precision=self.config.eval_precision)
        return _lower(result.metrics), result.seconds

    def end_epoch(self) -> None:
        loss_sum = dist_utils.all_reduce_sum(self.loss_sum, self.context, self.device)
        loss_count = dist_utils.all_reduce_sum(self.loss_count, self.context, self.device)
        record: dict[str, Any] | None = None
        if self.context.is_main:
            valid, eval_seconds = self.evaluate(self.evaluated, "valid")
            value = valid[self.metric_key]
            if value > self.best_metric:
                self.best_metric, self.best_epoch, self.bad_epochs = value, self.epoch, 0
                self.best_state = {k: v.detach().clone().cpu() for k, v in self.evaluated.state_dict().items()}
                self.best_changed = True
            else:
                self.bad_epochs += 1
            record = {
                "epoch": self.epoch + 1, "loss": loss_sum / max(loss_count, 1),
                "lr": self.optimizer.param_groups[0]["lr"], "valid": valid,
                "train_seconds": self.epoch_seconds, "eval_seconds": eval_seconds,
                "targets_per_second": loss_count / self.epoch_seconds if self.epoch_seconds > 0 else None,
                "wall": self.wall(), "best_epoch": self.best_epoch + 1,
            }
            self.history.append(record)
            self.stopped = self.bad_epochs >= self.config.patience
            if self.progress:
                from tqdm.auto import tqdm

                tqdm.write(f"epoch {self.epoch + 1}: loss {record['loss']:.4f}  valid {self.metric_key} {value:.4f}  "
                           f"(best {self.best_metric:.4f} @ {self.best_epoch + 1})  {self.epoch_seconds:.1f}s + "
                           f"{eval_seconds:.1f}s eval")
        self.stopped = bool(dist_utils.broadcast_object(self.stopped, self.context))
        if self.scheduler is not None and self.config.scheduler == "plateau":
            metric = dist_utils.broadcast_object(self.best_metric if record is None else record["valid"][self.metric_key],
                                                 self.context)
            self.scheduler.step(self.epoch + 1, metric)
        self.epoch += 1
        self.step = 0
        self.loss_sum, self.loss_count, self.epoch_seconds = 0.0, 0, 0.0
        self.save()


def plot_curve(history: list[dict[str, Any]], metric: str, path: Path) -> Path:
    """Training loss and validation ``metric`` per epoch as a PNG (matplotlib, Agg backend)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

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
) -> TrainResult:
    """Train a model with early stopping on the validation metric; test the best weights; write ``out_dir``.

    ``model_or_recipe``: a built :class:`SeqRecModel`, a :class:`Recipe`, a bundled recipe name
    or a recipe file (built here with ``torch.manual_seed(seed)``). ``dataset``: a built-in name
    (``"ml-100k"``), a path, an ``InteractionDataset`` (split by ``split``) or a ``DataSplit``.
    ``overrides``: dotted recipe paths (``{"encoder.0.dropout": 0.1, "train.lr": 3e-4}``; for a built
    model only ``train.*``). ``config``: :class:`TrainConfig` fields replacing the recipe's training
    defaults; ``epochs`` replaces ``config.epochs``. ``resume``: continue from ``out_dir``'s latest
    checkpoint when there is one (False: start over, replacing it). ``precision``: ``"auto"`` is
    bf16 autocast on CUDA (fp16 with gradient scaling where bf16 is unsupported) and fp32 on CPU;
    ``"bf16"`` also works on CPU. ``checkpoint_every``: also checkpoint every N optimiser steps.
    Returns the metrics of the best-validation weights on validation and test (keys like
    ``"ndcg@10"``) and the paths written; the model holds those weights. ``save_model=False`` skips
    the trained folder and ``plot=False`` the curve (both import heavy libraries).
    """
    if checkpoint_every is not None and checkpoint_every < 1:
        raise ValueError(f"checkpoint_every must be >= 1 steps, got {checkpoint_every}")
    if precision not in ("auto", "fp32", "bf16", "fp16"):
        raise ValueError(f"precision must be 'auto', 'fp32', 'bf16' or 'fp16', got {precision!r}")
    context, device = dist_utils.setup(device)
    out = Path(out_dir)
    data = _resolve_split(dataset, split)
    model = _resolve_model(model_or_recipe, data.dataset.num_items, dict(overrides or {}), seed)
    train_config = _train_config(model, config, epochs)
    model.recipe = model.recipe.model_copy(update={"train": train_config})
    model.item_vocab = data.dataset.item_vocab
    _set_item_features(model, data)
    model.to(device)
    dist_utils.broadcast_parameters(model, context)
    torch.manual_seed(seed * 1000 + context.rank)  # dropout draws: reproducible, different on every process
    run = _Run(model, data, train_config, out, seed, device, context, precision, progress, checkpoint_every, eval_ks)

    latest = ckpt.latest_checkpoint(run.checkpoint_root) if run.checkpoint_root.is_dir() else None
    if latest is not None and resume:
        run.restore(latest)
        if context.is_main:
            log.info("resumed %s at epoch %d, step %d", latest, run.epoch, run.step)
    elif context.is_main:
        shutil.rmtree(run.checkpoint_root, ignore_errors=True)
        out.mkdir(parents=True, exist_ok=True)

    while not run.stopped and run.epoch < train_config.epochs:
        run.train_epoch()
        run.end_epoch()

    result = _finish(run, save_model, plot)
    dist_utils.cleanup(context)
    return result


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
        train_seconds = sum(r["train_seconds"] + r["eval_seconds"] for r in run.history)
        summary = {"valid": valid, "test": test, "train_seconds": train_seconds, "best_epoch": run.best_epoch + 1,
                   "history": run.history}
        if save_model:
            notes = (f"Trained with `zoo.train` for {len(run.history)} epochs (best validation {run.metric_key} "
                     f"{run.best_metric:.4f} at epoch {run.best_epoch + 1}; seed {run.seed}; objective "
                     f"{run.config.objective}, loss {run.config.loss}, {run.config.optimizer} lr {run.config.lr}, "
                     f"batch {run.config.batch_size}"
                     + ("" if run.config.ema_decay is None else f"; weights: moving average, decay {run.config.ema_decay}")
                     + ").")
            model.save_pretrained(out, dataset_facts=run.split, metrics={"valid": valid, "test": test},
                                  card={"notes": notes})
            paths["model"] = out
        if plot:
            paths["curve"] = plot_curve(run.history, run.metric_key, out / CURVE)
    summary = dist_utils.broadcast_object(summary, run.context)
    dist_utils.broadcast_parameters(model, run.context)
    result = TrainResult(
        out_dir=out, model=model, best_epoch=summary["best_epoch"], valid=summary["valid"], test=summary["test"],
        epochs_run=len(summary["history"]), stopped_early=run.stopped, train_seconds=summary["train_seconds"],
        history=list(summary["history"]), paths=paths,
    )
    if run.context.is_main:
        paths["result"] = out / RESULT
        ckpt.atomic_write_text(out / RESULT, json.dumps(result.to_dict(), indent=2) + "\n")
    model.eval()
    return result
