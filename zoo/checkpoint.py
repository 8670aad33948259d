"""Training checkpoints: safetensors weights + optimiser tensors, JSON trainer state, written atomically.

A checkpoint is a folder ``checkpoints/step-<global step>/`` holding

- ``model.safetensors`` -- the model's weights (tied tensors stored once);
- ``optimizer.safetensors`` -- every tensor of the optimiser state (``"<param index>.<name>"``);
- ``ema.safetensors`` -- the moving average of the weights, when training keeps one;
- ``best.safetensors`` -- the best weights so far (a hard link to the previous checkpoint's
  file when they did not change, so an unchanged best costs no disk writes);
- ``trainer_state.json`` -- everything else: the optimiser's param groups and non-tensor state,
  the LR scheduler's and gradient scaler's state, the RNG states of torch (CPU and CUDA),
  numpy and Python, the trainer's counters (epoch, step within the epoch, best metric,
  patience counter, the metrics history) and the SHA-256 of every other file (``files``),
  checked when the checkpoint is loaded.

Every file is written to a temporary name in the folder, flushed and fsynced; the folder is
built under a temporary name and renamed into place in one ``os.replace``, and only then does
the pointer file ``checkpoints/latest`` (itself replaced atomically) name it. A process killed
at any moment (or a full disk) leaves either the previous checkpoint or the new one, never a
torn one; the temporary files a killed process leaves are removed by the next save. One
process writes a checkpoint folder at a time (training holds its run folder's lock). Nothing
is ever pickled.
"""

from __future__ import annotations

import base64
import errno
import hashlib
import json
import os
import random
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file
from torch import nn

try:
    import fcntl
except ImportError:  # Windows: no advisory locks
    fcntl = None

LATEST = "latest"
MODEL_FILE = "model.safetensors"
OPTIMIZER_FILE = "optimizer.safetensors"
BEST_FILE = "best.safetensors"
EMA_FILE = "ema.safetensors"
STATE_FILE = "trainer_state.json"
FORMAT_VERSION = 1
TEMP_SUFFIX = ".tmp"


# ---------------------------------------------------------------------------- atomic files


def fsync_dir(path: Path) -> None:
    """Make a rename inside ``path`` durable (no-op where directories cannot be opened)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def umask_mode(mode: int = 0o666) -> int:
    """``mode`` with the process's umask applied: what ``open()`` would give a new file (``0o777`` for a folder).
    Temporary files and folders start at 0600 / 0700; what is kept gets the usual permissions."""
    umask = os.umask(0)
    os.umask(umask)
    return mode & ~umask


def atomic_write(path: str | os.PathLike, write: Callable[[Path], None]) -> Path:
    """Write ``path`` through ``write(temp_path)``: a temp file in the same folder, fsync, ``os.replace``.
    The file gets the permissions of a newly created one (the umask's), not the temp file's 0600."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, temp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=TEMP_SUFFIX, dir=path.parent)
    os.fchmod(fd, umask_mode())
    os.close(fd)
    temp_path = Path(temp)
    try:
        write(temp_path)
        with open(temp_path, "rb") as handle:
            os.fsync(handle.fileno())
        os.replace(temp_path, path)
    finally:
        temp_path.unlink(missing_ok=True)
    fsync_dir(path.parent)
    return path


def sha256_file(path: str | os.PathLike) -> str:
    """The SHA-256 of a file's bytes, as 64 hex digits."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def lock_file(fd: int, *, wait: bool) -> bool:
    """Take an exclusive advisory lock (``flock``) on the open file or folder ``fd``.

    Returns False when another open file holds it and ``wait`` is False. The lock goes with the
    last close of ``fd``, so a killed process never leaves it held. Where there is no ``fcntl``
    (Windows) nothing is locked and this returns True.
    """
    if fcntl is None:
        return True
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
    except BlockingIOError:
        return False
    return True


def remove_temporaries(folder: Path) -> None:
    """Remove the hidden temporary files and folders (``.*.tmp``) a killed writer left in ``folder``.

    Only call it while no other process writes ``folder`` (training holds its run folder's lock).
    """
    for path in folder.glob(f".*{TEMP_SUFFIX}"):
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Atomically write a UTF-8 text file."""
    return atomic_write(path, lambda p: p.write_text(text, encoding="utf-8"))


_OS_ERROR = re.compile(r"os error (\d+)")


def write_safetensors(path: str | os.PathLike, write: Callable[[str], None]) -> None:
    """Run ``write(str(path))`` (a safetensors ``save_file`` / ``save_model``); a failed write (a full disk, no
    permission) is an :class:`OSError` naming ``path``, as Python's own writes give, never safetensors' own
    error type (which is not an ``OSError`` and names no file)."""
    try:
        write(str(path))
    except SafetensorError as exc:
        found = _OS_ERROR.search(str(exc))
        if found is None:
            raise OSError(errno.EIO, f"safetensors could not write the file ({exc})", str(path)) from None
        code = int(found.group(1))
        raise OSError(code, os.strerror(code), str(path)) from None


def read_safetensors(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """The tensors of a ``.safetensors`` file; a truncated or garbled one is a ``ValueError`` naming it."""
    try:
        return load_file(str(path))
    except SafetensorError as exc:
        raise ValueError(f"{path}: not a readable safetensors file ({exc}); it is truncated or corrupted") from None


def read_json(path: str | os.PathLike) -> Any:
    """A JSON file's content; bytes that are not UTF-8 or not JSON are a ``ValueError`` naming the file."""
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"{path}: not valid UTF-8 JSON ({exc}); the file is corrupted") from None


def tied_names(state: dict[str, torch.Tensor]) -> dict[str, set[str]]:
    """For each name of a state dict, the other names of the very same tensor (tied weights: same storage,
    offset and shape). Parameters that merely share one buffer, such as cuDNN's flattened RNN weights on a
    GPU, are different tensors and are not tied."""
    by_tensor: dict[tuple, set[str]] = {}
    for name, tensor in state.items():
        if tensor.numel():
            key = (tensor.device, tensor.untyped_storage().data_ptr(), tensor.storage_offset(), tuple(tensor.shape))
            by_tensor.setdefault(key, set()).add(name)
    return {name: group - {name} for group in by_tensor.values() for name in group}


def weights_to_save(module: nn.Module) -> dict[str, torch.Tensor]:
    """``module``'s state dict as its safetensors file holds it: a tied tensor once, under the first of its names in
    sorted order (the name ``safetensors.torch.save_model`` keeps), every tensor a contiguous CPU copy of its own.
    Unlike ``save_model``, parameters that are views into one shared buffer (an RNN's weights after cuDNN
    flattened them on a GPU) are written too."""
    state = module.state_dict()
    tied = tied_names(state)
    return {name: tensor.detach().to("cpu", copy=True).contiguous() for name, tensor in state.items()
            if not any(other < name for other in tied.get(name, ()))}


def write_module(module: nn.Module, path: str | os.PathLike, metadata: dict[str, str] | None = None) -> None:
    """Write ``module``'s weights (:func:`weights_to_save`) to the safetensors file ``path``; a failed write is an
    ``OSError`` naming it (:func:`write_safetensors`)."""
    write_safetensors(path, lambda name: save_file(weights_to_save(module), name, metadata=metadata))


def fill_tied(module: nn.Module, stored: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``stored`` (tensors read from a file) with every tied name of ``module`` that the file leaves out filled
    from the name it keeps (see :func:`weights_to_save`)."""
    filled = dict(stored)
    for name, others in tied_names(module.state_dict()).items():
        if name not in filled:
            kept = next((other for other in sorted(others) if other in stored), None)
            if kept is not None:
                filled[name] = stored[kept]
    return filled


def save_weights(model: nn.Module, path: str | os.PathLike) -> Path:
    """Atomically write ``model``'s weights as safetensors."""
    return atomic_write(path, lambda p: write_module(model, p))


def stored_shapes(path: str | os.PathLike) -> dict[str, tuple[int, ...]]:
    """The name and shape of every tensor of a ``.safetensors`` file, read from its header alone."""
    try:
        with safe_open(str(path), framework="pt") as handle:
            return {key: tuple(handle.get_slice(key).get_shape()) for key in handle.keys()}
    except SafetensorError as exc:
        raise ValueError(f"{path}: not a readable safetensors file ({exc}); it is truncated or corrupted") from None


DIFFERENT_RUN_HINT = ("it is a checkpoint of a different run (another recipe or overrides); resume with the same recipe, "
                      "training settings, seed and data, or start over with resume=False (`zoo train --restart`), which "
                      "replaces the checkpoint")


def shape_differences(model: nn.Module, path: str | os.PathLike) -> list[str]:
    """``"name: stored (a, b), model (c, d)"`` for each tensor of a ``.safetensors`` file whose shape is not the
    model's (read from the file's header: nothing is loaded)."""
    expected = model.state_dict()
    return [f"{key}: stored {shape}, model {tuple(expected[key].shape)}"
            for key, shape in stored_shapes(path).items() if key in expected and shape != tuple(expected[key].shape)]


def load_weights(model: nn.Module, path: str | os.PathLike) -> None:
    """Load safetensors weights strictly: missing or unexpected keys, or a tensor of another shape, are a
    ``ValueError`` naming the file and the first differences (checked from the file's header, before any
    weight is copied, so torch's own size-mismatch listing never shows)."""
    wrong = shape_differences(model, path)
    if wrong:
        raise ValueError(f"{path} does not fit the model ({len(wrong)} tensors differ in shape, e.g. "
                         f"{'; '.join(wrong[:3])}): {DIFFERENT_RUN_HINT}")
    missing, unexpected = model.load_state_dict(fill_tied(model, read_safetensors(path)), strict=False)
    if missing or unexpected:
        raise ValueError(f"{path} does not fit the model (missing {sorted(missing)[:20]}, unexpected "
                         f"{sorted(unexpected)[:20]}): {DIFFERENT_RUN_HINT}")


# ---------------------------------------------------------------------------- optimiser state


def _listify(value: Any) -> Any:
    if isinstance(value, (list, tuple)):
        return [_listify(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _listify(v) for k, v in value.items()}
    if isinstance(value, torch.Tensor):
        return value.item() if value.numel() == 1 else value.tolist()
    if isinstance(value, (np.generic,)):
        return value.item()
    return value


def split_optimizer_state(state: dict[str, Any]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """An optimiser ``state_dict`` as (tensors for safetensors, the JSON-able rest).

    The tensors are the live state's own storage on CPU (no copy): write them out before the
    optimiser steps again.
    """
    tensors: dict[str, torch.Tensor] = {}
    plain: dict[str, dict[str, Any]] = {}
    for index, values in state["state"].items():
        for name, value in values.items():
            if isinstance(value, torch.Tensor):
                tensors[f"{index}.{name}"] = value.detach().contiguous().cpu()
            else:
                plain.setdefault(str(index), {})[name] = _listify(value)
    return tensors, {"param_groups": _listify(state["param_groups"]), "plain_state": plain}


def join_optimizer_state(tensors: dict[str, torch.Tensor], rest: dict[str, Any], template: dict[str, Any]) -> dict[str, Any]:
    """Rebuild an optimiser ``state_dict``; tuples (``betas``) come back as tuples, as ``template`` has them."""
    state: dict[int, dict[str, Any]] = {}
    for key, value in tensors.items():
        index, name = key.split(".", 1)
        state.setdefault(int(index), {})[name] = value
    for index, values in rest["plain_state"].items():
        state.setdefault(int(index), {}).update(values)
    groups = []
    if len(rest["param_groups"]) != len(template["param_groups"]):
        raise ValueError(f"the checkpoint has {len(rest['param_groups'])} optimiser parameter groups, "
                         f"the optimiser {len(template['param_groups'])}")
    for saved, live in zip(rest["param_groups"], template["param_groups"]):
        groups.append({k: tuple(v) if isinstance(live.get(k), tuple) else v for k, v in saved.items()})
    return {"state": state, "param_groups": groups}


# ---------------------------------------------------------------------------- RNG state


def _bytes(tensor: torch.Tensor) -> str:
    return base64.b64encode(tensor.cpu().numpy().tobytes()).decode("ascii")


def _tensor(text: str) -> torch.Tensor:
    return torch.frombuffer(bytearray(base64.b64decode(text)), dtype=torch.uint8).clone()


def rng_state() -> dict[str, Any]:
    """The RNG states of torch (CPU and every CUDA device), numpy's global generator and Python's ``random``."""
    kind, keys, position, has_gauss, cached = np.random.get_state()
    version, internal, gauss_next = random.getstate()
    return {
        "torch": _bytes(torch.get_rng_state()),
        "cuda": [_bytes(s) for s in torch.cuda.get_rng_state_all()] if torch.cuda.is_available() else [],
        "numpy": [kind, keys.tolist(), int(position), int(has_gauss), float(cached)],
        "python": [version, list(internal), gauss_next],
    }


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what :func:`rng_state` captured."""
    torch.set_rng_state(_tensor(state["torch"]))
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([_tensor(s) for s in state["cuda"]])
    kind, keys, position, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), position, has_gauss, cached))
    version, internal, gauss_next = state["python"]
    random.setstate((version, tuple(internal), gauss_next))


# ---------------------------------------------------------------------------- checkpoints


def latest_checkpoint(root: str | os.PathLike) -> Path | None:
    """The folder ``root/latest`` names, or None when there is no complete checkpoint."""
    pointer = Path(root) / LATEST
    if not pointer.is_file():
        return None
    try:
        folder = Path(root) / pointer.read_bytes().decode("utf-8").strip()
    except UnicodeDecodeError:
        raise ValueError(f"{pointer}: not a checkpoint name (the file is corrupted); start over with resume=False "
                         "(`zoo train --restart`)") from None
    if not (folder / STATE_FILE).is_file():
        raise FileNotFoundError(f"{pointer} names {folder.name}, which is not a complete checkpoint")
    return folder


def save_checkpoint(
    root: str | os.PathLike,
    name: str,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    state: dict[str, Any],
    best: dict[str, torch.Tensor] | None = None,
    keep: int = 1,
    ema: nn.Module | None = None,
) -> Path:
    """Write checkpoint ``root/name`` (see the module docstring) and point ``root/latest`` at it.

    ``state`` is the JSON-able trainer state; ``best`` the best weights (a state dict) when they
    changed since the previous checkpoint, else None to link the previous file. Names must sort
    in the order they were written (``step-000000123``); the ``keep`` newest are kept. ``ema``: the
    module holding the moving average of the weights, when training keeps one.
    """
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    previous = latest_checkpoint(root)
    staging = Path(tempfile.mkdtemp(prefix=f".{name}.", suffix=TEMP_SUFFIX, dir=root))
    try:
        optimizer_tensors, optimizer_rest = split_optimizer_state(optimizer.state_dict())
        _write_tensors(staging, model, optimizer_tensors, best, previous, ema)
        files = {file.name: _fsynced_digest(file) for file in sorted(staging.iterdir())}
        document = {"format_version": FORMAT_VERSION, "optimizer": optimizer_rest, **state, "files": files}
        (staging / STATE_FILE).write_text(json.dumps(document, indent=1, allow_nan=True), encoding="utf-8")
        _fsynced_digest(staging / STATE_FILE)
        for file in staging.iterdir():
            os.chmod(file, umask_mode())  # safetensors creates its files 0600
        os.chmod(staging, umask_mode(0o777))
        target = root / name
        if target.exists():
            shutil.rmtree(target)
        os.replace(staging, target)
        fsync_dir(root)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    atomic_write_text(root / LATEST, name + "\n")
    kept = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    for old in kept[:-keep] if keep > 0 else []:
        if old.name != name:
            shutil.rmtree(old, ignore_errors=True)
    remove_temporaries(root)
    return root / name


def _write_tensors(staging: Path, model: nn.Module, optimizer_tensors: dict[str, torch.Tensor],
                   best: dict[str, torch.Tensor] | None, previous: Path | None, ema: nn.Module | None) -> None:
    """Write a checkpoint's safetensors files into ``staging`` (an unchanged best is linked from ``previous``)."""
    write_module(model, staging / MODEL_FILE)
    write_safetensors(staging / OPTIMIZER_FILE, lambda name: save_file(optimizer_tensors, name))
    if ema is not None:
        write_module(ema, staging / EMA_FILE)
    if best is not None:
        best_cpu = {k: v.detach().contiguous().cpu() for k, v in best.items()}
        write_safetensors(staging / BEST_FILE, lambda name: save_file(best_cpu, name))
    elif previous is not None and (previous / BEST_FILE).is_file():
        try:
            os.link(previous / BEST_FILE, staging / BEST_FILE)
        except OSError:
            shutil.copy2(previous / BEST_FILE, staging / BEST_FILE)


def _fsynced_digest(path: Path) -> str:
    """Flush ``path`` to disk; returns its SHA-256."""
    with open(path, "rb") as handle:
        os.fsync(handle.fileno())
    return sha256_file(path)


def _checked(folder: Path, name: str, document: dict[str, Any] | None = None) -> Path:
    """``folder / name`` after checking it against the SHA-256 its ``trainer_state.json`` records
    (checkpoints written before digests were recorded are not checked)."""
    if document is None:
        document = read_json(folder / STATE_FILE)
    path = folder / name
    expected = document.get("files", {}).get(name)
    if expected is not None and sha256_file(path) != expected:
        raise ValueError(
            f"{path}: its content does not match the SHA-256 that {folder / STATE_FILE} records (the file was corrupted "
            "on disk), so the run cannot resume from it: start over with resume=False (`zoo train --restart`)"
        )
    return path


def load_checkpoint(folder: str | os.PathLike, model: nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """Restore ``model`` and ``optimizer`` from a checkpoint folder; returns the trainer state."""
    folder = Path(folder)
    document = read_json(folder / STATE_FILE)
    if not isinstance(document, dict) or document.get("format_version") != FORMAT_VERSION:
        found = document.get("format_version") if isinstance(document, dict) else type(document).__name__
        raise ValueError(f"{folder}: checkpoint format {found!r}, this version reads {FORMAT_VERSION}")
    weights = _checked(folder, MODEL_FILE, document)
    wrong = shape_differences(model, weights)
    if wrong:
        differ = recorded_differences(document.get("fingerprint"), model)
        raise ValueError(
            f"{folder} holds a checkpoint of a different run ({f'it differs in {differ}; ' if differ else ''}"
            f"{len(wrong)} weight tensors differ in shape, e.g. {'; '.join(wrong[:2])}); resume with the same recipe, "
            "training settings, seed and data, or start over with resume=False (`zoo train --restart`), which replaces "
            "the checkpoint")
    load_weights(model, weights)
    device = next(model.parameters()).device
    stored = read_safetensors(_checked(folder, OPTIMIZER_FILE, document))
    tensors = {k: v.to(device) if v.dim() > 0 else v for k, v in stored.items()}
    optimizer.load_state_dict(join_optimizer_state(tensors, document.pop("optimizer"), optimizer.state_dict()))
    document.pop("files", None)
    return document


def recorded_differences(fingerprint: Any, model: nn.Module) -> list[str]:
    """The dotted paths (``recipe.d_model``, ``num_items``) where a checkpoint's recorded run fingerprint differs from
    ``model``, comparing only what the fingerprint records; ``[]`` when it records nothing comparable."""
    recipe = getattr(model, "recipe", None)
    if not isinstance(fingerprint, dict) or recipe is None:
        return []
    now = {"recipe": recipe.model_dump(mode="json"), "num_items": getattr(model, "num_items", None)}

    def differing(saved: Any, current: Any, where: str) -> list[str]:
        if isinstance(saved, dict) and isinstance(current, dict):
            return [path for key in saved for path in differing(saved[key], current.get(key), f"{where}.{key}")]
        return [] if saved == current else [where]

    found = [path for key in now if key in fingerprint for path in differing(fingerprint[key], now[key], key)]
    return found[:8] + ([f"... {len(found) - 8} more"] if len(found) > 8 else [])


def load_moving_average(folder: str | os.PathLike, ema: nn.Module) -> None:
    """Restore the moving average of the weights (``ema``, a copy of the model) from a checkpoint folder."""
    path = Path(folder) / EMA_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{folder} has no {EMA_FILE}: it was written by a run without a moving average")
    load_weights(ema, _checked(Path(folder), EMA_FILE))


def load_best_weights(folder: str | os.PathLike) -> dict[str, torch.Tensor] | None:
    """The checkpoint's best weights (a CPU state dict), or None when it has none."""
    path = Path(folder) / BEST_FILE
    return read_safetensors(_checked(Path(folder), BEST_FILE)) if path.is_file() else None
