"""Publishing a trained folder to the Hugging Face Hub, after checking that it loads."""

from __future__ import annotations

import os
from typing import Any

from zoo.factory import model_from_folder
from zoo.upload import check_repo_id, upload


def push_to_hub(model_dir: str | os.PathLike, repo_id: str, **options: Any) -> str:
    """Publish a trained folder (its three files only) in one commit; returns the commit URL.

    The repository id is checked, then the folder must load strictly
    (:func:`zoo.factory.model_from_folder`: the weights fit the model its ``config.json``
    describes), then :func:`zoo.upload.upload` sends it; it takes ``options`` (``revision``,
    ``private``, ``token``, ``endpoint``, ``commit_message``, ``create_pr``, and ``dry_run=True``,
    which prints and returns what would be uploaded and contacts nothing). Hub errors are
    :class:`zoo.upload.PublishError`.
    """
    check_repo_id(repo_id)
    model_from_folder(model_dir)
    return upload(model_dir, repo_id, **options)
