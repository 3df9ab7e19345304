# Copyright 2026 The gated-vpt authors. Licensed under the Apache License, Version 2.0.
"""Finding a file of a saved adapter: in a local folder, or on the Hub (downloaded into the cache as PEFT would), or,
when the Hub cannot be asked (offline, unreachable), in huggingface_hub's local cache. A lookup that cannot be
answered at all raises `Unresolvable`, which the callers turn into a refusal: it never means "no checks"."""

from __future__ import annotations

import functools
import inspect
import os
from collections.abc import Mapping
from typing import Any, Optional

from .errors import AdapterConfigError
from .names import CONFIG_NAME, WEIGHTS_NAME

# Never taken from a loader's arguments: the checks look a file up, they never do a dry run of a download.
_NOT_PASSED = ("repo_id", "filename", "dry_run")


class Unresolvable(Exception):
    """The adapter lives on the Hub, the Hub could not be asked, and the local cache does not have the file."""


@functools.cache
def hub_keys() -> tuple[str, ...]:
    """The arguments that choose which Hub file is read: every `hf_hub_download` parameter (PEFT passes each of them
    through, `PeftModel._split_kwargs`) and the deprecated `use_auth_token`."""
    from huggingface_hub.file_download import hf_hub_download

    parameters = inspect.signature(hf_hub_download).parameters.values()
    names = [p.name for p in parameters if p.kind is not p.VAR_KEYWORD and p.name not in _NOT_PASSED]
    return (*names, "use_auth_token")


def hub_kwargs_of(kwargs: Mapping[str, Any]) -> dict[str, Any]:
    """The arguments of a loader call that choose the file it reads, as `locate` takes them."""
    found = {k: kwargs[k] for k in hub_keys() if kwargs.get(k) is not None}
    token = found.pop("use_auth_token", None)
    if token is not None and "token" not in found:
        found["token"] = token
    return found


def looks_local(name: str) -> bool:
    """Whether `name` is a path on this machine rather than a Hub repo id: absolute, relative to `.` / `..` / `~`,
    existing, or with more than one `/` (a Hub id is `name` or `owner/name`; neither starts with a dot)."""
    return os.path.isabs(name) or name.startswith((".", "~")) or os.path.exists(name) or name.count("/") > 1


def locate(
    model_id: str | os.PathLike,
    filename: str,
    hub_kwargs: Optional[Mapping[str, Any]] = None,
    download: bool = True,
) -> Optional[str]:
    """Path of `filename` of the adapter at `model_id` (a folder, or a Hub repo: downloaded into the cache as PEFT
    would), or None if it has no such file. With `download=False` a Hub file is only looked up, on the Hub or in the
    local cache, and its repo path (`repo/file`, what the user asked for, online or offline) is returned. Raises
    `Unresolvable` when neither the Hub nor the cache can answer."""
    hub_kwargs = dict(hub_kwargs or {})
    model_id = os.fspath(model_id)
    subfolder = hub_kwargs.pop("subfolder", None)
    folder = os.path.join(model_id, subfolder) if subfolder else model_id
    if os.path.isdir(folder):
        path = os.path.join(folder, filename)
        return path if os.path.lexists(path) else None
    if looks_local(model_id):
        if os.path.isdir(model_id):
            return None  # the subfolder is missing
        problem = "not a folder" if os.path.exists(model_id) else "no such folder"
        raise AdapterConfigError(
            f"{model_id}: {problem}. Pass the folder that `save_pretrained` wrote (it holds {CONFIG_NAME} and "
            f"{WEIGHTS_NAME}), or a Hub repo id."
        )
    from huggingface_hub import constants, file_exists, hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError, LocalEntryNotFoundError

    repo_path = f"{subfolder}/{filename}" if subfolder else filename
    offline = constants.HF_HUB_OFFLINE or bool(hub_kwargs.get("local_files_only"))
    try:
        if download:  # online, offline and `local_files_only`: huggingface_hub's own cache logic, as PEFT's
            return hf_hub_download(model_id, filename, subfolder=subfolder, **hub_kwargs)
        if not offline:
            try:
                found = file_exists(
                    model_id,
                    repo_path,
                    repo_type=hub_kwargs.get("repo_type"),
                    revision=hub_kwargs.get("revision"),
                    token=hub_kwargs.get("token"),
                )
            except Exception:  # the Hub could not be asked: the local cache answers instead
                pass
            else:
                return f"{model_id}/{repo_path}" if found else None
        # Only looked up in the cache; the cached file is not opened, and errors name the repo path, as online.
        cached = {k: v for k, v in hub_kwargs.items() if k not in ("local_files_only", "force_download")}
        hf_hub_download(model_id, filename, subfolder=subfolder, local_files_only=True, **cached)
        return f"{model_id}/{repo_path}"
    except LocalEntryNotFoundError:  # not cached, and the Hub could not be asked (a subclass of the next one)
        if _cached_as_missing(model_id, repo_path, hub_kwargs):
            return None
        if constants.HF_HUB_OFFLINE:
            reason = "offline mode is on, `HF_HUB_OFFLINE=1`"
        elif hub_kwargs.get("local_files_only"):
            reason = "`local_files_only=True`"
        else:
            reason = "it could not be reached"
        raise Unresolvable(
            f"{model_id}/{repo_path}: not in the local Hub cache, and the Hub cannot be asked ({reason})"
        ) from None
    except EntryNotFoundError:  # the Hub says the repo has no such file
        return None
    except Exception as error:  # unknown repo or revision, invalid id, refused token, ...
        raise Unresolvable(
            f"{model_id}/{repo_path}: could not be fetched from the Hub ({_first_line(error)})"
        ) from None


def _first_line(error: BaseException) -> str:
    lines = str(error).strip().splitlines()
    return f"{type(error).__name__}: {lines[0].rstrip('.')}" if lines else type(error).__name__


def _cached_as_missing(model_id: str, repo_path: str, hub_kwargs: Mapping[str, Any]) -> bool:
    """Whether huggingface_hub's cache records that the repo has no such file (a `.no_exist` entry)."""
    from huggingface_hub import _CACHED_NO_EXIST, try_to_load_from_cache

    try:
        cached = try_to_load_from_cache(
            model_id,
            repo_path,
            cache_dir=hub_kwargs.get("cache_dir"),
            revision=hub_kwargs.get("revision"),
            repo_type=hub_kwargs.get("repo_type"),
        )
    except Exception:  # an invalid repo id: nothing is cached for it
        return False
    return cached is _CACHED_NO_EXIST
