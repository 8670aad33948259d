"""Uploading a trained folder's three files to the Hugging Face Hub: dry runs, branches, one-line errors.

:func:`upload` checks the repository id and the files (never the model: :func:`zoo.publish.push_to_hub`
first checks that the folder loads, and ``SeqRecModel.push_to_hub`` uploads a folder it has just
written), then commits ``config.json``, ``model.safetensors`` and ``README.md`` through
``huggingface_hub`` (``HfApi.create_repo`` and ``upload_folder``, see :func:`zoo.hub.upload_folder`).
``dry_run=True`` stops before the network and prints what would be uploaded. An error the Hub
answers (401, 403, 404, ...) or a Hub that cannot be reached becomes one :class:`PublishError`
line naming the repository. This module never imports the model, so the model can import it.
"""

from __future__ import annotations

import hashlib
import importlib
import os
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from zoo import hub

DEFAULT_REVISION = "main"
UPLOADED_FILES = (hub.CONFIG_NAME, hub.WEIGHTS_NAME, hub.CARD_NAME)


class PublishError(RuntimeError):
    """The Hub refused an upload, or could not be reached."""


@dataclass(frozen=True)
class PlannedFile:
    """One file an upload sends: its name in the repository, size in bytes and SHA-256."""

    name: str
    size: int
    sha256: str


def check_repo_id(repo_id: str) -> None:
    """A Hub model repository id is ``org/name`` with the characters the Hub allows; else ``ValueError``."""
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    if repo_id.count("/") != 1 or not all(repo_id.split("/")):
        raise ValueError(f"repository id {repo_id!r}: expected 'org/name' (your user or organisation, then the model's name)")
    try:
        validate_repo_id(repo_id)
    except HFValidationError as exc:
        raise ValueError(f"repository id {repo_id!r} is not valid on the Hub: {exc}") from None


def planned_files(model_dir: str | os.PathLike) -> list[PlannedFile]:
    """The files an upload of ``model_dir`` sends (never logs, checkpoints or pickles), each hashed."""
    folder = Path(model_dir)
    files = []
    for name in UPLOADED_FILES:
        path = folder / name
        if not path.is_file():
            raise FileNotFoundError(f"{path} does not exist: publish folders written by save_pretrained or zoo train")
        digest = hashlib.sha256()
        with open(path, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
        files.append(PlannedFile(name, path.stat().st_size, digest.hexdigest()))
    return files


def describe_plan(repo_id: str, revision: str, files: list[PlannedFile], endpoint: str) -> str:
    """What a dry run prints: the repository, revision and endpoint, then each file with size and SHA-256."""
    width = max(len(f.name) for f in files)
    lines = [f"dry run: would upload {len(files)} files ({sum(f.size for f in files):,} bytes) "
             f"to hf-hub:{repo_id} at revision {revision} ({endpoint}); nothing was sent"]
    lines += [f"  {f.name:<{width}}  {f.size:>12,} bytes  sha256 {f.sha256}" for f in files]
    return "\n".join(lines)


def upload(
    model_dir: str | os.PathLike,
    repo_id: str,
    *,
    revision: str | None = None,
    private: bool | None = None,
    token: str | None = None,
    endpoint: str | None = None,
    dry_run: bool = False,
    **upload_options: Any,
) -> str:
    """Upload a trained folder's three files in one commit; returns the commit URL (with ``dry_run``, the plan).

    ``revision`` is the branch to commit to (created from ``main`` if missing; default ``main``);
    ``private`` applies when the repository is created; ``token`` defaults to ``HF_TOKEN`` or the
    ``hf auth login`` token; ``endpoint`` to ``HF_ENDPOINT`` or huggingface.co. ``upload_options``
    go to :func:`zoo.hub.upload_folder` (``commit_message``, ``create_pr``). ``dry_run=True``
    contacts nothing: it prints and returns what would be uploaded (:func:`describe_plan`).
    """
    from huggingface_hub import constants

    check_repo_id(repo_id)
    files = planned_files(model_dir)
    where = endpoint or constants.ENDPOINT
    if dry_run:
        plan = describe_plan(repo_id, revision or DEFAULT_REVISION, files, where)
        print(plan)
        return plan
    with hub_errors_explained(repo_id, where):
        if revision not in (None, DEFAULT_REVISION):
            ensure_branch(repo_id, revision, private=private, token=token, endpoint=endpoint)
        return hub.upload_folder(model_dir, repo_id, revision=revision, private=private, token=token, endpoint=endpoint,
                                 **upload_options)


def ensure_branch(repo_id: str, branch: str, *, private: bool | None, token: str | None, endpoint: str | None) -> None:
    """Create the repository (if missing) and ``branch`` in it from ``main`` (if missing), as ``hf upload`` does."""
    from huggingface_hub import HfApi

    from zoo.version import __version__

    api = HfApi(endpoint=endpoint, token=token, library_name=hub.LIBRARY_NAME, library_version=__version__)
    api.create_repo(repo_id, private=private, exist_ok=True)
    api.create_branch(repo_id, branch=branch, exist_ok=True)


def _connection_errors() -> tuple[type[BaseException], ...]:
    """The exceptions that mean "no answer from the Hub", for whichever HTTP library huggingface_hub uses."""
    found: list[type[BaseException]] = [ConnectionError, TimeoutError]
    for module, names in (("httpx2", ("TransportError",)), ("httpx", ("TransportError",)),
                          ("requests", ("ConnectionError", "Timeout"))):
        try:
            library = importlib.import_module(module)
        except ImportError:
            continue
        found += [getattr(library, name) for name in names]
    return tuple(found)


def _why_refused(status: int, repo_id: str) -> str:
    """What to do about the Hub's refusal with HTTP ``status``."""
    if status == 401:
        return "the token is missing or invalid: pass --token / token=..., set HF_TOKEN, or run `hf auth login`"
    if status == 403:
        return f"the token may not write to {repo_id}: use a token with write access to '{repo_id.split('/')[0]}'"
    if status == 404:
        return ("no such repository or revision, or the token cannot see it: check the repository id, the revision "
                "and the token")
    return "see the Hub's message"


@contextmanager
def hub_errors_explained(repo_id: str, endpoint: str) -> Iterator[None]:
    """Turn the Hub client's HTTP and connection errors into one-line :class:`PublishError` messages."""
    from huggingface_hub.utils import HfHubHTTPError

    try:
        yield
    except HfHubHTTPError as exc:
        status = exc.response.status_code if exc.response is not None else 0
        said = " ".join((exc.server_message or next(filter(str.strip, str(exc).splitlines()), "")).split())
        raise PublishError(f"hf-hub:{repo_id}: the Hub at {endpoint} refused the upload ({status}: {said}); "
                           f"{_why_refused(status, repo_id)}") from exc
    except _connection_errors() as exc:
        raise PublishError(f"hf-hub:{repo_id}: could not reach the Hub at {endpoint} ({type(exc).__name__}: {exc}); "
                           "check the network, or --endpoint / HF_ENDPOINT") from exc
