"""Helpers the benchmark scripts share: synthetic workloads, timing, memory, the machine's description.

* :func:`build_model`, :func:`give_random_item_features`, :func:`random_histories` and
  :func:`training_batch` make a model usable on random ml-100k-shaped data, trained with its own
  objective and loss (``layer_cost.py``, ``efficiency.py``, ``streaming.py``);
* :func:`median_seconds` times a call after warm-up;
* :func:`proc_status_kib`, :func:`reset_peak_rss` read and reset the process's resident set and its
  high-water mark (``/proc/self/status``, ``/proc/self/clear_refs``);
* :func:`environment`, :func:`malloc_library` and :func:`command_line` say what ran the numbers and how;
* :func:`loglog_slope` fits ``log y = a + s log x``.

The scripts run as ``python benchmarks/NAME.py``, so this folder is on ``sys.path`` and they
``import measure``.
"""

from __future__ import annotations

import math
import os
import platform
import resource
import shlex
import statistics
import sys
import time
from typing import Any, Callable, Sequence

import numpy as np
import torch

import zoo
from zoo.blocks import compiled
from zoo.blocks.ssm import _dispatch
from zoo.objectives import add_negatives

NUM_ITEMS = 1682  # ml-100k's catalog


def build_model(recipe: str, max_len: int | None = None, device: torch.device | str = "cpu", seed: int = 0) -> Any:
    """``zoo.create(recipe, num_items=1682)`` (ml-100k's catalog), at ``max_len`` when given (else the
    recipe's), with random item side information (:func:`give_random_item_features`), on ``device``."""
    torch.manual_seed(seed)
    model = zoo.create(recipe, num_items=NUM_ITEMS, **({} if max_len is None else {"max_len": max_len}))
    give_random_item_features(model, seed)
    return model.to(device)


def give_random_item_features(model: Any, seed: int = 0) -> None:
    """Random stand-ins for the item side information the model's encoder uses (text embeddings,
    multi-hot attributes): only the cost is measured, so their values do not matter."""
    used = getattr(model.item_encoder, "item_features", ())
    generator = torch.Generator().manual_seed(seed)
    rows = model.num_items + 1
    if "text" in used:
        model.set_item_features(text=torch.randn(rows, model.item_encoder.text_dim, generator=generator))
    if "attributes" in used:
        shape = (rows, model.item_encoder.num_attributes)
        model.set_item_features(attributes=(torch.rand(shape, generator=generator) < 0.1).float())


def random_histories(num_items: int, batch: int, length: int,
                     generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """``batch`` random full-length histories of ``length`` items of ``1..num_items`` ``(B, L)``, and their
    timestamps (Unix seconds, rising by a random gap of a minute to a day per item)."""
    ids = torch.randint(1, num_items + 1, (batch, length), generator=generator)
    times = 8.8e8 + torch.randint(60, 86_400, (batch, length), generator=generator).cumsum(1).double()
    return ids, times


def training_batch(model: Any, batch: int, length: int, seed: int = 0) -> dict[str, torch.Tensor]:
    """A batch of ``batch`` random full-length histories of ``length`` items shaped for the recipe's own
    objective (``model.recipe.train``), ready for ``model.loss``.

    ``all``: inputs ``seq[:-1]`` and every next item a target; ``masked``: each item masked with
    ``mask_prob`` and the last always (the cloze task); ``last`` / ``random_cut``: the history and its next
    item. Timestamps rise by a random gap per item (time-aware encoders read them). Losses with
    negatives get ``num_negatives`` uniform negatives per target, drawn here as the trainer draws them
    before the step (the recipe's ``unseen`` draw costs the model the same).
    """
    config = model.recipe.train
    generator = torch.Generator().manual_seed(seed)
    ids, times = random_histories(model.num_items, batch, length + 1, generator)
    if config.objective == "all":
        data = {"item_ids": ids[:, :-1], "targets": ids[:, 1:]}
    elif config.objective == "masked":
        items = ids[:, 1:]
        masked = torch.rand(items.shape, generator=generator) < config.mask_prob
        masked[:, -1] = True
        data = {"item_ids": items.masked_fill(masked, model.item_encoder.mask_token_id),
                "masked_targets": items.masked_fill(~masked, 0)}
    else:
        data = {"item_ids": ids[:, :-1], "target": ids[:, -1]}
    data["timestamps"] = times[:, 1:] if config.objective == "masked" else times[:, :-1]
    if config.loss != "ce":
        rng = np.random.default_rng(seed)
        data = add_negatives(data, model.num_items, config.num_negatives, rng)
    return data


def median_seconds(call: Callable[[], Any], repeats: int, warmup: int, sync: Callable[[], None] = lambda: None,
                   limit: float = math.inf) -> tuple[float, list[float]]:
    """Median seconds of ``repeats`` calls after ``warmup`` untimed ones, and every timed call.

    ``sync`` runs after each call (``torch.cuda.synchronize`` on a GPU). Raises :class:`TimeLimit` as
    soon as one call, warm-up included, takes longer than ``limit`` seconds.
    """
    times = []
    for index in range(warmup + repeats):
        begun = time.perf_counter()
        call()
        sync()
        elapsed = time.perf_counter() - begun
        if elapsed > limit:
            raise TimeLimit(f"one call took {elapsed:.1f} s, over the limit of {limit:g} s")
        if index >= warmup:
            times.append(elapsed)
    return statistics.median(times), times


class TimeLimit(Exception):
    """A timed call ran past the benchmark's time limit."""


def proc_status_kib(field: str, path: str = "/proc/self/status") -> int:
    """A ``kB`` field of ``/proc/self/status`` (``VmRSS``, ``VmHWM``), or of another such file
    (``/proc/PID/status``, ``/proc/meminfo``)."""
    with open(path) as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not in {path}")


def reset_peak_rss() -> bool:
    """Reset the process's peak resident set (``VmHWM``) to its current one; False where the kernel does not allow it."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def peak_rss_kib(reset_done: bool) -> int:
    """The process's peak resident set in KiB: ``VmHWM`` (since :func:`reset_peak_rss` when it succeeded),
    else the lifetime peak ``ru_maxrss``."""
    if reset_done:
        return proc_status_kib("VmHWM")
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def malloc_library() -> str:
    """Which malloc this process runs on: a preloaded jemalloc or tcmalloc, else glibc's."""
    with open("/proc/self/maps") as maps:
        mapped = maps.read()
    for name in ("jemalloc", "tcmalloc"):
        if f"lib{name}" in mapped:
            return name
    return "glibc"


def cpu_model() -> str:
    """The CPU's model name from ``/proc/cpuinfo`` (else ``platform.processor()``)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def environment(device: str = "cpu") -> dict[str, Any]:
    """What produced the numbers: threads, versions, the CPU kernels' mode, the allocator, the device (on a GPU:
    whether the selective scans hand over to mamba-ssm's CUDA kernels or run the pure-PyTorch path)."""
    facts = {
        "threads": torch.get_num_threads(), "torch": torch.__version__, "python": platform.python_version(),
        "cpu": cpu_model(), "cpu_count": os.cpu_count(), "malloc": malloc_library(),
        "cpu_kernel_mode": f"{compiled.KERNEL_ENV_VAR}={os.environ.get(compiled.KERNEL_ENV_VAR, '')!r} "
                           f"({compiled.mode()}; C++ compiler {'found' if compiled.compiler() else 'missing'})",
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"), "device": device,
        "load_average": os.getloadavg(),
    }
    if device.startswith("cuda"):
        facts["gpu"] = torch.cuda.get_device_name(torch.device(device))
        facts["cuda"] = torch.version.cuda
        facts["mamba_ssm_kernels"] = _dispatch.mamba_ssm_available() and not _dispatch.force_pure()
    return facts


def command_line() -> str:
    """This process's command line, with the environment variables that change the numbers in front."""
    names = (compiled.KERNEL_ENV_VAR, "OMP_WAIT_POLICY", "OMP_NUM_THREADS", "LD_PRELOAD", "MALLOC_CONF")
    settings = [f"{name}={shlex.quote(os.environ[name])}" for name in names if name in os.environ]
    python = os.path.relpath(sys.executable) if sys.executable.startswith(os.getcwd() + os.sep) else sys.executable
    return " ".join([*settings, shlex.join([python, *sys.argv])])


def loglog_slope(xs: Sequence[float], ys: Sequence[float]) -> float | None:
    """Least-squares slope of ``log y`` against ``log x`` (None for fewer than two distinct ``x``)."""
    if len(set(xs)) < 2:
        return None
    return float(np.polyfit(np.log(xs), np.log(ys), 1)[0])
