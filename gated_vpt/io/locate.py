# Copyright 2026 The gated-vpt authors. Licensed under the Apache License, Version 2.0.
"""Finding a file of a saved adapter: in a local folder, or on the Hub (downloaded into the cache as PEFT would)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any, Optional

from .errors import AdapterConfigError
from .names import CONFIG_NAME, WEIGHTS_NAME

_HUB_KEYS = ("subfolder", "revision", "token", "cache_dir", "local_files_only")


class Unresolvable(Exception):
    """The adapter lives on the Hub and could not be reached: leave the error to PEFT / transformers."""


def hub_kwargs_of(kwargs: Mapping[str, Any]) -> dict[str, Any]:
    return {k: kwargs[k] for k in _HUB_KEYS if kwargs.get(k) is not None}


def _looks_local(model_id: str) -> bool:
    return os.path.isabs(model_id) or model_id.startswith(("./", "../", "~", ".\\", "..\\")) or os.path.exists(model_id)


def locate(
    model_id: str | os.PathLike,
    filename: str,
    hub_kwargs: Optional[Mapping[str, Any]] = None,
    download: bool = True,
) -> Optional[str]:
    """Path of `filename` of the adapter at `model_id` (a folder, or a Hub repo: downloaded into the cache as PEFT
    would), or None if it has no such file. With `download=False` a Hub file is only looked up (its repo path is
    returned). Raises `Unresolvable` when the Hub cannot answer."""
    hub_kwargs = dict(hub_kwargs or {})
    model_id = os.fspath(model_id)
    subfolder = hub_kwargs.pop("subfolder", None)
    folder = os.path.join(model_id, subfolder) if subfolder else model_id
    if os.path.isdir(folder):
        path = os.path.join(folder, filename)
        return path if os.path.lexists(path) else None
    if _looks_local(model_id):
        if os.path.isdir(model_id):
            return None  # the subfolder is missing
        problem = "not a folder" if os.path.exists(model_id) else "no such folder"
        raise AdapterConfigError(
            f"{model_id}: {problem}. Pass the folder that `save_pretrained` wrote (it holds {CONFIG_NAME} and "
            f"{WEIGHTS_NAME}), or a Hub repo id."
        )
    try:
        from huggingface_hub import file_exists, hf_hub_download
        from huggingface_hub.errors import EntryNotFoundError

        if not download:
            repo_path = f"{subfolder}/{filename}" if subfolder else filename
            found = file_exists(model_id, repo_path, revision=hub_kwargs.get("revision"), token=hub_kwargs.get("token"))
            return f"{model_id}/{repo_path}" if found else None
        try:
            return hf_hub_download(model_id, filename, subfolder=subfolder, **hub_kwargs)
        except EntryNotFoundError:
            return None
    except Exception as error:  # offline, unknown repo, invalid id, ...: PEFT reports these itself
        raise Unresolvable(str(error)) from error
