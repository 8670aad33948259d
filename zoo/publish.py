"""Publishing a trained folder to the Hugging Face Hub, after checking that it loads."""

from __future__ import annotations

import os
from typing import Any

from zoo import hub
from zoo.factory import model_from_folder


def push_to_hub(model_dir: str | os.PathLike, repo_id: str, **upload_options: Any) -> str:
    """Publish a trained folder (its three files only) in one commit; returns the commit URL.

    The folder must load strictly first (:func:`zoo.factory.model_from_folder`): the weights fit
    the model its ``config.json`` describes. The upload is :func:`zoo.hub.upload_folder`, which
    takes ``upload_options`` (``commit_message``, ``revision``, ``private``, ``create_pr``,
    ``token``, ``endpoint``).
    """
    model_from_folder(model_dir)
    return hub.upload_folder(model_dir, repo_id, **upload_options)
