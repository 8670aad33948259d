"""Trained models as Hugging Face Hub folders: write, read, load weights strictly, download, upload.

This module handles folders and files only; it never builds a model (that is :mod:`zoo.factory`'s
job, which reads folders through this module).

A trained folder holds exactly three files:

- ``config.json`` -- the fully resolved recipe, ``num_items``, the library name and version, the
  dataset facts (name, preprocessing, split, max length, the item vocabulary as raw ids in index
  order), the validation / test metrics, when recorded the ranking protocol of each metrics
  part (``protocols``), and the SHA-256 of ``model.safetensors`` (``weights_sha256``), checked on
  every load;
- ``model.safetensors`` -- the weights (tied tensors stored once; equal weights give equal bytes).
  Pickle-based weights (``.bin``, ``.pt``, ...) are never read: unpickling can run arbitrary code,
  and weights holding NaN or infinity are refused;
- ``README.md`` -- the model card (see :mod:`zoo.model_card`).

Rewriting a folder is atomic as loaders see it: they read the old three files or the new three,
whenever the writer is stopped (see :func:`_write_folder`).

``zoo.create("local-dir:DIR")`` builds the model of such a folder; ``zoo.create("hf-hub:org/name@rev")`` and
``zoo.create("sasrec.ml-100k", pretrained=True)`` (a tag of :mod:`zoo.pretrained`) download it
through ``huggingface_hub`` (its cache, ``HF_HUB_OFFLINE`` and ``HF_ENDPOINT`` apply; the Hub
client reads those variables when it is first imported). ``config.json`` is fetched first, so
the Hub counts downloads, and the weights come from the same commit.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Literal, Mapping

import torch
from safetensors.torch import load_file
from torch import nn

from zoo.checkpoint import TEMP_SUFFIX, fill_tied, fsync_dir, lock_file, sha256_file, umask_mode, write_module
from zoo.pretrained import find_pretrained, list_pretrained, split_name_tag
from zoo.version import __version__

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
CARD_NAME = "README.md"
WEIGHTS_SHA256 = "weights_sha256"
UPDATE_DIR = ".update"
LIBRARY_NAME = "seqrec-zoo"
FORMAT_VERSION = 1
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle")
_COMMIT_SHA = re.compile(r"^[0-9a-f]{40}$")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")


class PretrainedLoadError(ValueError):
    """A trained folder that cannot be loaded as it is (weights or config do not fit the model)."""


# ---------------------------------------------------------------- naming a trained folder


@dataclass(frozen=True)
class Source:
    """Where a pretrained model comes from: ``kind`` is ``"local-dir"``, ``"hf-hub"`` or ``"tag"``."""

    kind: Literal["local-dir", "hf-hub", "tag"]
    target: str
    revision: str | None = None


def parse_source(name: str | os.PathLike) -> Source:
    """Read ``"local-dir:DIR"``, ``"hf-hub:org/name[@revision]"`` or a pretrained tag (``"sasrec.ml-100k"``)."""
    text = os.fspath(name)
    if text.startswith("local-dir:"):
        folder = text[len("local-dir:"):]
        if not folder:
            raise ValueError("'local-dir:' needs a folder: 'local-dir:path/to/trained_model'")
        return Source("local-dir", folder)
    if text.startswith("hf-hub:"):
        repo, _, revision = text[len("hf-hub:"):].partition("@")
        if repo.count("/") != 1 or not all(repo.split("/")):
            raise ValueError(f"{text!r}: expected 'hf-hub:org/name' or 'hf-hub:org/name@revision'")
        if "@" in text and not revision:
            raise ValueError(f"{text!r}: an '@' must be followed by a revision (branch, tag or commit SHA)")
        return Source("hf-hub", repo, revision or None)
    if any(c in text for c in "/\\:") or Path(text).suffix in (".yaml", ".yml"):
        if (Path(text) / CONFIG_NAME).is_file():
            raise ValueError(f"{text!r} is a trained folder: load it with 'local-dir:{text}' (did you mean "
                             f"zoo.create('local-dir:{text}')?)")
        raise ValueError(
            f"{text!r} is not a pretrained name: a trained folder is loaded with 'local-dir:{text}', a Hub "
            "repository with 'hf-hub:org/name', published weights by name ('sasrec.ml-100k'); recipe files "
            "carry no weights (use pretrained=False)"
        )
    return Source("tag", text)


# ---------------------------------------------------------------- config.json


LOCAL_PATH_FACTS = ("source", "item_file")  # dataset facts that hold local paths: stored as file names


def describe_data(data: Any) -> dict[str, Any]:
    """Dataset facts for ``config.json`` from an ``InteractionDataset`` or a ``DataSplit`` (or a dict, as is)."""
    if isinstance(data, Mapping):
        return dict(data)
    split = data if hasattr(data, "dataset") and hasattr(data, "train") else None
    dataset = split.dataset if split is not None else data
    if not hasattr(dataset, "to_dict") or not hasattr(dataset, "item_vocab"):
        raise TypeError(f"dataset facts must be a dict, an InteractionDataset or a DataSplit, got {type(data).__name__}")
    facts = dataset.to_dict(with_vocabulary=True)
    for key in LOCAL_PATH_FACTS:  # a published folder never carries the trainer's file system layout
        if isinstance(facts.get(key), str) and facts[key] != "generated":
            facts[key] = Path(facts[key]).name
    if split is not None:
        facts["split"] = split.to_dict()
    return facts


def _json_ready(value: Any) -> Any:
    """numpy / torch scalars and arrays as plain Python; anything else not JSON-able is an error."""
    if hasattr(value, "tolist"):
        return value.tolist()
    raise TypeError(f"config.json cannot hold a {type(value).__name__}: {value!r:.80}")


def _check_metrics(metrics: Mapping[str, Any]) -> dict[str, dict[str, float]]:
    out: dict[str, dict[str, float]] = {}
    for part, table in metrics.items():
        if not isinstance(table, Mapping):
            raise ValueError(
                f"metrics must map a split to its metrics, e.g. {{'test': {{'ndcg@10': 0.12}}}}; "
                f"metrics[{part!r}] is a {type(table).__name__}"
            )
        out[str(part)] = {}
        for metric, value in table.items():
            number = float(value)
            if not math.isfinite(number):
                raise ValueError(f"metric {part}/{metric} is {number}: a published model needs finite metrics")
            out[str(part)][str(metric)] = number
    return out


def _check_protocols(protocols: Mapping[str, Any], metrics: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """Each metrics part's ranking protocol, checked: ``{"split": "valid" | "test", "mode": "full" | "sampled"}``,
    plus ``num_negatives`` (and ``seed``) when sampled."""
    out: dict[str, dict[str, Any]] = {}
    for part, protocol in protocols.items():
        if part not in metrics:
            raise ValueError(f"protocols[{part!r}] describes no metrics part (parts: {sorted(metrics)})")
        protocol = dict(protocol)
        if protocol.get("split") not in ("valid", "test") or protocol.get("mode") not in ("full", "sampled"):
            raise ValueError(f"protocols[{part!r}] must say split ('valid' or 'test') and mode ('full' or 'sampled'), "
                             f"got {protocol}")
        negatives = protocol.get("num_negatives")
        if protocol["mode"] == "sampled" and not (isinstance(negatives, int) and negatives >= 1):
            raise ValueError(f"protocols[{part!r}]: sampled ranking needs num_negatives >= 1, got {negatives!r}")
        out[str(part)] = protocol
    return out


def build_config(model: nn.Module, dataset_facts: Any = None, metrics: Mapping[str, Any] | None = None,
                 protocols: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The ``config.json`` content of ``model`` (see the module docstring)."""
    facts = describe_data(dataset_facts) if dataset_facts is not None else {}
    vocab = facts.get("item_vocabulary")
    if vocab is None and getattr(model, "item_vocab", None) is not None:
        vocab = model.item_vocab.to_dict()
    if vocab is not None:
        size = len(vocab["raw_ids"])
        if size != model.num_items:
            raise ValueError(f"the item vocabulary has {size} raw ids but the model scores {model.num_items} items")
        facts["item_vocabulary"] = vocab
    facts.setdefault("max_len", model.recipe.max_len)
    config = {
        "library_name": LIBRARY_NAME,
        "library_version": __version__,
        "format_version": FORMAT_VERSION,
        "architecture": model.recipe.name,
        "num_items": model.num_items,
        "recipe": model.recipe.model_dump(mode="json"),
        "dataset": facts,
        "metrics": _check_metrics(metrics or {}),
    }
    if protocols:
        config["protocols"] = _check_protocols(protocols, config["metrics"])
    return config


def read_config(folder: str | os.PathLike) -> dict[str, Any]:
    """The checked ``config.json`` of a trained folder (as loaders see it: :func:`current_file`)."""
    path = current_file(folder, CONFIG_NAME)
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist: a trained folder holds {CONFIG_NAME}, {WEIGHTS_NAME} and {CARD_NAME}")
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise PretrainedLoadError(f"{path}: not valid JSON ({exc})") from exc
    if not isinstance(config, dict) or config.get("library_name") != LIBRARY_NAME:
        found = config.get("library_name") if isinstance(config, dict) else type(config).__name__
        raise PretrainedLoadError(f"{path}: not a {LIBRARY_NAME} model (library_name is {found!r})")
    version = config.get("format_version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise PretrainedLoadError(
            f"{path}: format_version {version!r} is newer than this {LIBRARY_NAME} reads ({FORMAT_VERSION}); upgrade the package"
        )
    for key, kind in (("recipe", dict), ("num_items", int)):
        if not isinstance(config.get(key), kind):
            raise PretrainedLoadError(f"{path}: '{key}' is missing or not a {kind.__name__}")
    digest = config.get(WEIGHTS_SHA256)
    if digest is not None and not (isinstance(digest, str) and _SHA256.match(digest)):
        raise PretrainedLoadError(f"{path}: '{WEIGHTS_SHA256}' must be 64 lowercase hex digits, got {digest!r}")
    _check_dataset_facts(config, path)
    return config


def _check_dataset_facts(config: Mapping[str, Any], path: Path) -> None:
    """Refuse a ``config.json`` whose dataset facts have another shape than :func:`build_config` writes: a
    ``dataset`` mapping whose ``preprocessing`` and ``split`` are mappings, and whose ``item_vocabulary`` holds
    ``raw_ids`` (strings, or integers) and a boolean ``padding``; ``metrics`` a mapping."""
    for key in ("dataset", "metrics"):
        if config.get(key) is not None and not isinstance(config[key], dict):
            raise PretrainedLoadError(f"{path}: '{key}' must be a mapping, got {type(config[key]).__name__}")
    facts = config.get("dataset") or {}
    for key in ("preprocessing", "split"):
        if facts.get(key) is not None and not isinstance(facts[key], dict):
            raise PretrainedLoadError(f"{path}: 'dataset.{key}' must be a mapping, got {type(facts[key]).__name__}")
    vocab = facts.get("item_vocabulary")
    if vocab is None:
        return
    if not (isinstance(vocab, dict) and isinstance(vocab.get("raw_ids"), list) and isinstance(vocab.get("padding"), bool)
            and all(isinstance(raw, (str, int)) and not isinstance(raw, bool) for raw in vocab["raw_ids"])):
        raise PretrainedLoadError(f"{path}: 'dataset.item_vocabulary' must be a mapping of 'raw_ids' (a list of raw item "
                                  "ids, strings, one per item in index order) and 'padding' (true or false)")


# ---------------------------------------------------------------- writing a folder atomically


def current_file(folder: str | os.PathLike, name: str) -> Path:
    """The file ``name`` of a trained folder as loaders see it: the new one while an update is being applied.

    An update of an existing folder is committed when its complete set of files becomes
    ``.update/`` inside the folder (one rename); the files then move into place one by one and
    ``.update/`` goes. While it is there its files are the folder's, so a writer stopped at any
    step leaves the old set or the new one, never a mix. The next write of the folder (or an
    upload) finishes the update.
    """
    pending = Path(folder) / UPDATE_DIR / name
    return pending if pending.is_file() else Path(folder) / name


@contextmanager
def _folder_locked(folder: Path) -> Iterator[None]:
    """Hold an exclusive lock on ``folder`` itself (no file is added to it), waiting for another writer."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # where folders cannot be opened (Windows) they are not locked
        fd = None
    if fd is None:
        yield
        return
    try:
        lock_file(fd, wait=True)
        yield
    finally:
        os.close(fd)


def _apply_update(folder: Path) -> None:
    """Move the files of a committed update (``.update/``) into place, then remove it; nothing without one."""
    pending = folder / UPDATE_DIR
    if not pending.is_dir():
        return
    for path in sorted(pending.iterdir()):
        os.replace(path, folder / path.name)
    fsync_dir(folder)
    os.rmdir(pending)
    fsync_dir(folder)


def finish_update(folder: str | os.PathLike) -> None:
    """Finish an update of a trained folder that a crash interrupted (see :func:`current_file`)."""
    with _folder_locked(Path(folder)):
        _apply_update(Path(folder))


def _staged(parent: Path, prefix: str, writers: Mapping[str, Callable[[Path], None]]) -> Path:
    """A new temporary folder in ``parent`` holding every file of ``writers``, written in order and fsynced."""
    staging = Path(tempfile.mkdtemp(prefix=prefix, suffix=TEMP_SUFFIX, dir=parent))
    try:
        os.chmod(staging, umask_mode(0o777))
        for name, write in writers.items():
            write(staging / name)
            os.chmod(staging / name, umask_mode())  # safetensors creates its files 0600
            with open(staging / name, "rb") as handle:
                os.fsync(handle.fileno())
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return staging


def _write_folder(out_dir: Path, writers: Mapping[str, Callable[[Path], None]]) -> None:
    """Write a trained folder's files so that loaders see the old set or the new one, whenever this stops.

    A new folder is built beside its place and appears whole with one rename. An existing folder
    (a training run's, with logs and checkpoints) is updated under a lock on it: the files are
    staged in a temporary folder inside it, which one rename makes ``.update/`` (the commit), and
    then moved into place (:func:`current_file`). A crash leaves temporary files at most, which
    the next write of the folder removes (two processes must not create one new folder at once).
    """
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    if out_dir.exists() and not out_dir.is_dir():
        raise NotADirectoryError(f"{out_dir} exists and is not a folder")
    if not out_dir.exists():
        for leftover in out_dir.parent.glob(f".{out_dir.name}.*{TEMP_SUFFIX}"):
            shutil.rmtree(leftover, ignore_errors=True)
        staging = _staged(out_dir.parent, f".{out_dir.name}.", writers)
        try:
            os.rename(staging, out_dir)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        fsync_dir(out_dir.parent)
        return
    with _folder_locked(out_dir):
        _apply_update(out_dir)
        for leftover in out_dir.glob(f"{UPDATE_DIR}-*{TEMP_SUFFIX}"):
            shutil.rmtree(leftover, ignore_errors=True)
        staging = _staged(out_dir, f"{UPDATE_DIR}-", writers)
        try:
            os.rename(staging, out_dir / UPDATE_DIR)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        fsync_dir(out_dir)
        _apply_update(out_dir)


def _non_finite(tensors: Mapping[str, torch.Tensor]) -> list[str]:
    """The names of the floating-point tensors that hold NaN or infinity, sorted."""
    return sorted(name for name, tensor in tensors.items()
                  if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()))


def save_pretrained(
    model: nn.Module,
    out_dir: str | os.PathLike,
    *,
    dataset_facts: Any = None,
    metrics: Mapping[str, Mapping[str, float]] | None = None,
    protocols: Mapping[str, Mapping[str, Any]] | None = None,
    card: Mapping[str, Any] | None = None,
) -> Path:
    """Write ``model`` as a Hub folder (``config.json``, ``model.safetensors``, ``README.md``); returns it.

    ``dataset_facts`` is a dict, or an ``InteractionDataset`` / ``DataSplit`` described by
    :func:`describe_data`; the item vocabulary comes from it (``item_vocabulary``) or from
    ``model.item_vocab``. ``metrics`` maps a split to its metrics (``{"valid": {"ndcg@10": ..},
    "test": {..}}``); ``protocols`` says how each part was ranked (``{"test": {"split": "test", "mode":
    "sampled", "num_negatives": 100, "seed": 0}}``; see :func:`_check_protocols`), which the model card
    shows. ``card`` adds to the model card (``license``, ``tags``, ``citation``,
    ``notes``; see :func:`zoo.model_card.render_model_card`). Weights holding NaN or infinity are
    refused (such a model scores NaN). Equal arguments give byte-identical files.
    """
    from zoo.model_card import render_model_card

    out = Path(out_dir)
    broken = _non_finite(model.state_dict())
    if broken:
        raise ValueError(f"{out}: not saved: {len(broken)} weight tensors hold NaN or infinity ({_listing(broken)}), so "
                         "the model would score NaN; training diverged: lower the learning rate or set train.grad_clip")
    config = build_config(model, dataset_facts, metrics, protocols)
    readme = render_model_card(config, dict(card or {}))

    def write_config(path: Path) -> None:
        recorded = {**config, WEIGHTS_SHA256: sha256_file(path.parent / WEIGHTS_NAME)}
        path.write_text(json.dumps(recorded, indent=2, default=_json_ready, allow_nan=False) + "\n", encoding="utf-8")

    _write_folder(out, {
        # One metadata key: safetensors writes its metadata in hash-map order, which varies between processes.
        WEIGHTS_NAME: lambda path: write_module(model, path, metadata={"format": "pt"}),
        CONFIG_NAME: write_config,
        CARD_NAME: lambda path: path.write_text(readme, encoding="utf-8"),
    })
    return out


# ---------------------------------------------------------------- loading


def _listing(names: list[str], limit: int = 40) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f" ... (+{len(names) - limit} more)" if len(names) > limit else "")


def _read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    """The tensors of a ``.safetensors`` file; a truncated or garbled one is a :class:`PretrainedLoadError` naming it."""
    from safetensors import SafetensorError

    try:
        return load_file(str(path))
    except SafetensorError as exc:
        raise PretrainedLoadError(
            f"{path}: not a readable safetensors file ({exc}); it is truncated or corrupted: delete it from the cache / "
            "re-download it (force_download=True), or save the trained folder again"
        ) from exc


def load_weights(model: nn.Module, path: str | os.PathLike) -> None:
    """Load a ``.safetensors`` file into ``model`` strictly: every key present, none extra, shapes equal, all finite."""
    path = Path(path)
    if path.suffix != ".safetensors":
        raise PretrainedLoadError(f"{path}: only .safetensors weights are loaded (pickle-based files can run code)")
    stored = fill_tied(model, _read_safetensors(path))
    expected = model.state_dict()
    missing = sorted(k for k in expected if k not in stored)
    unexpected = sorted(k for k in stored if k not in expected)
    if missing or unexpected:
        parts = [f"{path} does not fit model {getattr(getattr(model, 'recipe', None), 'name', type(model).__name__)!r}:"]
        if missing:
            parts.append(f"missing keys ({len(missing)}): {_listing(missing)}")
        if unexpected:
            parts.append(f"unexpected keys ({len(unexpected)}): {_listing(unexpected)}")
        parts.append("(the recipe in config.json must build exactly the model the weights came from)")
        raise PretrainedLoadError("\n  ".join(parts))
    wrong = [f"{k}: stored {tuple(v.shape)}, model {tuple(expected[k].shape)}" for k, v in stored.items() if v.shape != expected[k].shape]
    if wrong:
        raise PretrainedLoadError(f"{path}: tensor shapes do not fit the model:\n  " + "\n  ".join(wrong[:40]))
    broken = _non_finite(stored)
    if broken:
        raise PretrainedLoadError(
            f"{path}: {len(broken)} tensors hold NaN or infinity ({_listing(broken)}), so the model would score NaN; the "
            "training that wrote them diverged, or the file is corrupted: retrain, or re-download it (force_download=True)"
        )
    model.load_state_dict(stored)


def weights_file(folder: str | os.PathLike) -> Path:
    """The safetensors weights of a trained folder, checked against the SHA-256 its ``config.json`` records.

    A folder with only pickle-based weights is refused; so are weights whose content is not what
    the config recorded (a folder saved before digests were recorded is not checked).
    """
    folder = Path(folder)
    path = current_file(folder, WEIGHTS_NAME)
    if not path.is_file():
        pickles = sorted(p.name for p in folder.iterdir() if p.suffix in PICKLE_SUFFIXES) if folder.is_dir() else []
        found = f" (found {', '.join(pickles)})" if pickles else ""
        raise FileNotFoundError(
            f"{folder / WEIGHTS_NAME} does not exist{found}: {LIBRARY_NAME} loads weights from safetensors only and "
            "never unpickles .bin/.pt files, which can run arbitrary code. Convert them once in an environment you "
            "trust: safetensors.torch.save_file(torch.load(path, weights_only=True), 'model.safetensors')"
        )
    _check_digest(path, read_config(folder).get(WEIGHTS_SHA256), current_file(folder, CONFIG_NAME))
    return path


def _check_digest(path: Path, expected: str | None, config_path: Path) -> None:
    """Refuse weights whose SHA-256 is not ``expected`` (what ``config_path`` records; None: nothing recorded)."""
    if expected is None:
        return
    actual = sha256_file(path)
    if actual == expected:
        return
    _read_safetensors(path)  # a truncated or garbled file says so
    raise PretrainedLoadError(
        f"{path}: its content (SHA-256 {actual}) is not what {config_path} records ({expected}): the file was changed "
        "or corrupted after it was saved, or it belongs to another config.json; re-download it (force_download=True) "
        "or save the trained folder again"
    )


# ---------------------------------------------------------------- the Hub


def _hub_errors() -> tuple[type, ...]:
    from huggingface_hub.utils import EntryNotFoundError, LocalEntryNotFoundError, RepositoryNotFoundError, RevisionNotFoundError

    return LocalEntryNotFoundError, RepositoryNotFoundError, RevisionNotFoundError, EntryNotFoundError


def _unreachable(exc: BaseException) -> bool:
    """A connection or timeout failure (not an HTTP answer), whichever HTTP library the Hub client uses."""
    names = {cls.__name__ for cls in type(exc).__mro__}
    return isinstance(exc, (ConnectionError, TimeoutError)) or bool(names & {"TransportError", "ConnectionError", "Timeout"})


def check_endpoint(endpoint: str | None) -> None:
    """Refuse a Hub address (``endpoint``, else ``HF_ENDPOINT``) that is not an ``http(s)://host[:port]`` URL, before
    the Hub client is imported (which fails on some) or asked: a malformed address would otherwise read as an
    unreachable Hub, and the cause would be hidden."""
    from urllib.parse import urlsplit

    where = "endpoint" if endpoint is not None else "HF_ENDPOINT"
    url = endpoint if endpoint is not None else os.environ.get("HF_ENDPOINT")
    if url is None or (endpoint is None and not url):
        return  # the client's default, https://huggingface.co
    try:
        parts = urlsplit(str(url))
        valid = parts.scheme in ("http", "https") and bool(parts.hostname) and (parts.port is None or parts.port > 0)
    except ValueError:  # a port that is not a number
        valid = False
    if not valid:
        raise ValueError(f"{where} is {url!r}, not a Hub URL: expected http(s)://host[:port] (such as "
                         "https://huggingface.co), or leave HF_ENDPOINT unset")


def _offline() -> bool:
    """``HF_HUB_OFFLINE`` as the Hub client reads it."""
    return os.environ.get("HF_HUB_OFFLINE", "").upper() in {"1", "ON", "YES", "TRUE"}


def hub_reachable(repo_id: str, revision: str | None, endpoint: str | None, token: str | bool | None) -> bool:
    """One request for ``config.json``'s metadata, without retries, within ``HF_HUB_ETAG_TIMEOUT`` seconds.

    The Hub client retries a failed download for about 20 s (and a server that never answers for
    minutes); one probe first lets an unreachable Hub fall back to the cache at once. Any HTTP answer,
    an error one included, counts as reachable: the download then reports it precisely.
    """
    from huggingface_hub import constants, get_hf_file_metadata, hf_hub_url

    url = hf_hub_url(repo_id, CONFIG_NAME, revision=revision, endpoint=endpoint)
    try:
        get_hf_file_metadata(url, token=token, timeout=constants.HF_HUB_ETAG_TIMEOUT, endpoint=endpoint)
    except Exception as exc:  # noqa: BLE001 -- only the kind of failure matters here
        return not _unreachable(exc)
    return True


def download_folder(
    repo_id: str,
    revision: str | None = None,
    *,
    cache_dir: str | os.PathLike | None = None,
    endpoint: str | None = None,
    token: str | bool | None = None,
    local_files_only: bool = False,
    force_download: bool = False,
) -> Path:
    """Fetch ``config.json`` then ``model.safetensors`` of a Hub repository; returns the local snapshot folder.

    The weights are taken from the commit the config came from, so a branch that moves between
    the two requests cannot mix files of two commits.
    """
    if not (local_files_only or _offline()):
        check_endpoint(endpoint)
    from huggingface_hub import constants, hf_hub_download

    local_missing, no_repo, no_revision, no_entry = _hub_errors()
    options = dict(
        repo_id=repo_id, cache_dir=cache_dir, endpoint=endpoint, token=token, local_files_only=local_files_only,
        force_download=force_download, library_name=LIBRARY_NAME, library_version=__version__,
    )
    where = f"hf-hub:{repo_id}" + (f"@{revision}" if revision else "")
    if not (local_files_only or constants.HF_HUB_OFFLINE) and not hub_reachable(repo_id, revision, endpoint, token):
        options["local_files_only"] = True  # read the cache, without the client's retries against a dead Hub

    def fetch(filename: str, rev: str | None) -> Path:
        try:
            return Path(hf_hub_download(filename=filename, revision=rev, **options))
        except local_missing as exc:
            why = "HF_HUB_OFFLINE is set" if constants.HF_HUB_OFFLINE else (
                "local_files_only=True" if local_files_only else
                f"the Hub at {endpoint or constants.ENDPOINT} could not be reached (check the network or HF_ENDPOINT)")
            raise FileNotFoundError(
                f"{where}: {filename} is not in the Hugging Face cache ({cache_dir or constants.HF_HUB_CACHE}) and {why}; "
                "download it once with network access, or load a trained folder with 'local-dir:DIR'"
            ) from exc
        except no_repo as exc:
            raise FileNotFoundError(f"{where}: no such repository on the Hub (or it is private: pass token=...)") from exc
        except no_revision as exc:
            raise FileNotFoundError(f"{where}: the repository has no revision {rev!r}") from exc
        except no_entry as exc:
            if filename == WEIGHTS_NAME:
                raise FileNotFoundError(
                    f"{where} has no {WEIGHTS_NAME}: {LIBRARY_NAME} loads safetensors weights only and never "
                    "unpickles .bin/.pt files"
                ) from exc
            raise FileNotFoundError(f"{where} has no {filename}: it is not a {LIBRARY_NAME} model") from exc

    config_path = fetch(CONFIG_NAME, revision)
    commit = config_path.parent.name
    fetch(WEIGHTS_NAME, commit if _COMMIT_SHA.match(commit) else revision)
    return config_path.parent


def resolve_folder(
    name_or_path: str | os.PathLike,
    *,
    revision: str | None = None,
    cache_dir: str | os.PathLike | None = None,
    endpoint: str | None = None,
    token: str | bool | None = None,
    local_files_only: bool = False,
    force_download: bool = False,
) -> Path:
    """The local trained folder a pretrained name means (downloading it from the Hub if needed)."""
    source = parse_source(name_or_path)
    if source.kind == "local-dir":
        return Path(source.target).expanduser()
    hub = dict(cache_dir=cache_dir, endpoint=endpoint, token=token, local_files_only=local_files_only, force_download=force_download)
    if source.kind == "hf-hub":
        return download_folder(source.target, revision or source.revision, **hub)
    found = find_pretrained(source.target)
    if found is None and (Path(source.target) / CONFIG_NAME).is_file():
        raise ValueError(f"no pretrained weights are named {source.target!r}, but a trained folder is: load it with "
                         f"'local-dir:{source.target}'")
    if found is None:
        raise ValueError(_no_weights_message(source.target))
    _, tag = found
    if tag.local_dir is not None:
        return Path(tag.local_dir).expanduser()
    return download_folder(tag.hf_hub_id, revision or tag.revision, **hub)


def _no_weights_message(name: str) -> str:
    model, _ = split_name_tag(name)
    published = list_pretrained(f"{model}.*")
    if published:
        return f"no pretrained weights named {name!r}; published tags of {model!r}: {', '.join(published)}"
    return (
        f"no pretrained weights are published for {name!r} (published: {', '.join(list_pretrained()) or 'none yet'}). "
        f"Train your own with `zoo train {model} --data ml-100k --out DIR` and load it with "
        f"zoo.create('local-dir:DIR'), or build untrained weights with zoo.create({model!r}, num_items=N)"
    )


def load_config(name_or_path: str | os.PathLike, **hub_options: Any) -> dict[str, Any]:
    """The ``config.json`` of a pretrained name or trained folder (dataset facts, metrics, recipe)."""
    return read_config(resolve_folder(name_or_path, **hub_options))


def upload_folder(
    model_dir: str | os.PathLike,
    repo_id: str,
    *,
    commit_message: str = "Upload seqrec-zoo model",
    revision: str | None = None,
    private: bool | None = None,
    create_pr: bool = False,
    token: str | None = None,
    endpoint: str | None = None,
) -> str:
    """Upload a trained folder's three files (never logs, checkpoints or pickles) in one commit; returns the commit URL.

    An update of the folder that a crash interrupted is finished first (:func:`finish_update`), so
    the files sent are one consistent set. Only the files are checked here (the config reads, the
    weights are the ones it records, the card exists); :func:`zoo.publish.push_to_hub` also checks
    that the weights load into the model the config describes.
    """
    check_endpoint(endpoint)
    from huggingface_hub import HfApi

    folder = Path(model_dir)
    finish_update(folder)
    read_config(folder)
    weights_file(folder)
    if not (folder / CARD_NAME).is_file():
        raise FileNotFoundError(f"{folder / CARD_NAME} does not exist: publish folders written by save_pretrained")
    if repo_id.count("/") != 1:
        raise ValueError(f"repo_id must look like 'org/name', got {repo_id!r}")
    api = HfApi(endpoint=endpoint, token=token, library_name=LIBRARY_NAME, library_version=__version__)
    api.create_repo(repo_id, private=private, exist_ok=True)
    commit = api.upload_folder(
        repo_id=repo_id,
        folder_path=str(folder),
        allow_patterns=[CONFIG_NAME, WEIGHTS_NAME, CARD_NAME],
        commit_message=commit_message,
        revision=revision,
        create_pr=create_pr,
    )
    return str(getattr(commit, "commit_url", commit))
