# Copyright 2026 The gated-vpt authors. Licensed under the Apache License, Version 2.0.
"""The errors a saved adapter's files can give, and the message helpers every reader uses. Every message names the
file, the problem and the fix."""

from __future__ import annotations

from ..prompting.prompt_config import ConfigError
from .names import WEIGHTS_NAME

RESAVE = "Save the adapter again with `model.save_pretrained(folder)`, or copy the complete folder of a good save."


class AdapterFileError(ValueError):
    """A file of a saved adapter is missing, unreadable, unsafe or does not match the adapter it describes."""


class AdapterConfigError(AdapterFileError, ConfigError):
    """`adapter_config.json` is missing, not JSON, or holds fields or values a gated-vpt adapter cannot have."""


class AdapterWeightsError(AdapterFileError):
    """`adapter_model.safetensors` is missing, corrupted, or does not hold the tensors of the adapter."""


class HeadSizeError(AdapterWeightsError):
    """The adapter's trained head (`modules_to_save`) has another size than the base model's head: the base model
    was built with another `num_labels` than the one the adapter was trained with."""


class UnsafeAdapterFileError(AdapterWeightsError):
    """The adapter's weights are only available as a pickle file, which gated-vpt never opens."""


def config_error(path: str, problem: str, fix: str = RESAVE) -> AdapterConfigError:
    return AdapterConfigError(f"{path}: {problem}. {fix}")


def weights_error(path: str, problem: str, fix: str = RESAVE) -> AdapterWeightsError:
    return AdapterWeightsError(f"{path}: {problem}. {fix}")


def pickle_refusal(path: str) -> UnsafeAdapterFileError:
    return UnsafeAdapterFileError(
        f"{path}: refused, gated-vpt never loads pickle weight files (unpickling runs code from the file) and this "
        f"adapter has no {WEIGHTS_NAME}. If you trust the file's origin, convert it once: "
        "`safetensors.torch.save_file(torch.load(path, weights_only=True), 'adapter_model.safetensors')`, or load "
        "the adapter where it was trained and save it again with `save_pretrained` (which writes safetensors)."
    )
