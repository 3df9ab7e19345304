# Copyright 2026 The gated-vpt authors. Licensed under the Apache License, Version 2.0.
"""Every patch gated-vpt applies to PEFT and transformers, in one place.

PEFT and transformers give a third-party tuner no hooks for these, so a few methods are wrapped, each for our
adapter types only (every other PEFT adapter runs the original code unchanged):

- loading: `PeftModel.from_pretrained`, `PeftModel.load_adapter` and transformers' `PeftAdapterMixin.load_adapter`
  build and inject the adapter *before* reading its weights and would unpickle `adapter_model.bin`. The wrappers
  check both files first (`gated_vpt.io`, with every argument that chooses the file read), let the tuner check the
  file's tensors against the injected adapter before any value is copied, hand the loader the folder that was
  checked (so the file checked is the file loaded), and put the model back exactly as it was if anything fails;
- saving: `PeftModel.save_pretrained` writes into a staging folder switched in atomically;
- the card and `push_to_hub`: `PeftModel.create_or_update_model_card` adds our loading section
  (`gated_vpt.io.hub`), and `push_to_hub` goes through `gated_vpt.io.hub.push_adapter_to_hub` (transformers'
  `PushToHubMixin` would replace PEFT's card with a generic one);
- transformers' `enable_adapters()` also re-enables PEFT's `ModulesToSaveWrapper` heads that its
  `disable_adapters()` turned off (upstream re-enables only `BaseTunerLayer`s).

`tests/test_integrations.py` checks that the upstream signatures these wrappers rely on are still what they were
written against, so an upstream change fails loudly there rather than misbehaving here.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import inspect
import os
from collections.abc import Callable
from typing import Any

from peft import PeftModel

from ..prompting.prompt_config import PromptConfigBase
from ..prompting.prompt_layer import PromptBlock
from ..vit.backbone_record import IncompatibleBackboneError
from . import hub
from .atomic import atomic_save
from .compare import adapter_tensors, check_weights_match, pending_weights
from .config_file import load_adapter_config
from .errors import UnsafeAdapterFileError
from .locate import hub_keys, hub_kwargs_of
from .names import CONFIG_NAME
from .rollback import preserved_on_error
from .weights_file import CheckedWeights, check_adapter_files, check_saved_values, checked_weights


def _arguments(function: Callable, *args: Any, **kwargs: Any) -> dict[str, Any]:
    """The arguments of a call of `function` by parameter name, `**kwargs` merged in."""
    bound = inspect.signature(function).bind(*args, **kwargs)
    arguments = dict(bound.arguments)
    for name, parameter in inspect.signature(function).parameters.items():
        if parameter.kind is inspect.Parameter.VAR_KEYWORD:
            arguments.update(arguments.pop(name, {}))
    return arguments


@contextlib.contextmanager
def _naming_the_file(weights: CheckedWeights):
    """Add the adapter's config file to the tuner's `IncompatibleBackboneError` (the tuner never sees paths)."""
    try:
        yield
    except IncompatibleBackboneError as error:
        folder = os.path.dirname(weights.path)
        config_path = os.path.join(folder, CONFIG_NAME)
        if not folder or str(error).startswith(config_path):
            raise
        raise IncompatibleBackboneError(f"{config_path}: {error}") from None


def _is_ours(model: PeftModel) -> bool:
    return any(isinstance(c, PromptConfigBase) for c in (getattr(model, "peft_config", None) or {}).values())


def _install_safe_loading() -> None:
    """Wrap PEFT's `PeftModel.from_pretrained` / `PeftModel.load_adapter` and transformers' `load_adapter` for our
    adapter types: check the files first, check the tensors against the injected adapter before loading them, load
    exactly the files checked, and leave the model exactly as it was on any failure (see `gated_vpt.io`)."""
    from transformers.integrations.peft import PeftAdapterMixin

    original_from_pretrained = PeftModel.from_pretrained.__func__
    original_load_adapter = PeftModel.load_adapter
    original_transformers_load_adapter = PeftAdapterMixin.load_adapter

    @functools.wraps(original_from_pretrained)
    def from_pretrained(cls, model, model_id, adapter_name="default", is_trainable=False, config=None, **kwargs):
        def call(config):
            return original_from_pretrained(cls, model, model_id, adapter_name, is_trainable, config, **kwargs)

        if config is not None and not isinstance(config, PromptConfigBase):
            return call(config)
        key_mapping = kwargs.get("key_mapping") or getattr(model, "_checkpoint_conversion_mapping", None)
        checked = check_adapter_files(model_id, config, hub_kwargs_of(kwargs), key_mapping)
        if checked is None:  # another PEFT method: PEFT's own behaviour
            return call(config)
        config, weights = checked
        # PEFT reads the weights in `load_adapter` (wrapped below, which loads exactly the file it checks).
        with _naming_the_file(weights), preserved_on_error(model), pending_weights(adapter_name, weights):
            return call(config)

    @functools.wraps(original_load_adapter)
    def load_adapter(self, *args, **kwargs):
        arguments = _arguments(original_load_adapter, self, *args, **kwargs)
        model_id, adapter_name = arguments["model_id"], arguments["adapter_name"]
        existing = self.peft_config.get(adapter_name)
        if existing is not None and not isinstance(existing, PromptConfigBase):
            return original_load_adapter(self, *args, **kwargs)
        checked = check_adapter_files(model_id, existing, hub_kwargs_of(arguments), arguments.get("key_mapping"))
        if checked is None:
            return original_load_adapter(self, *args, **kwargs)
        _, weights = checked
        clone = ()
        if existing is not None:  # PEFT overwrites this adapter's tensors in place: check them now, keep a copy
            check_weights_match(self, adapter_name, weights)
            clone = list(adapter_tensors(self, adapter_name).values())
        drop = (*hub_keys(), "self")
        call = {k: v for k, v in arguments.items() if k not in drop}
        call["model_id"] = weights.folder  # the folder checked (the Hub cache's snapshot folder for a Hub repo)
        with (
            _naming_the_file(weights),
            preserved_on_error(self, clone),
            pending_weights(adapter_name, weights),
        ):
            return original_load_adapter(self, **call)

    @functools.wraps(original_transformers_load_adapter)
    def transformers_load_adapter(self, *args, **kwargs):
        bound = inspect.signature(original_transformers_load_adapter).bind(self, *args, **kwargs)
        arguments = _arguments(original_transformers_load_adapter, self, *args, **kwargs)
        config = arguments.get("peft_config")
        if config is not None and not isinstance(config, PromptConfigBase):
            return original_transformers_load_adapter(self, *args, **kwargs)
        adapter_name = arguments.get("adapter_name") or "default"
        state_dict = arguments.get("adapter_state_dict")
        model_id, download_kwargs = _transformers_source(bound.arguments, config is None)
        hub_kwargs = hub_kwargs_of(download_kwargs)
        if state_dict is not None:
            if config is None and model_id is not None:
                config = load_adapter_config(model_id, hub_kwargs)
            if not isinstance(config, PromptConfigBase):
                return original_transformers_load_adapter(self, *args, **kwargs)
            weights = checked_weights(state_dict, "adapter_state_dict")
            check_saved_values(config, weights)
        else:
            checked = check_adapter_files(model_id, config, hub_kwargs) if model_id is not None else None
            if checked is None:
                return original_transformers_load_adapter(self, *args, **kwargs)
            config, weights = checked
            load_config = arguments.get("load_config")
            if arguments.get("use_safetensors") is False or getattr(load_config, "use_safetensors", None) is False:
                raise UnsafeAdapterFileError(
                    f"{model_id}: `use_safetensors=False` asks transformers to load the pickle file adapter_model.bin "
                    "first; gated-vpt never loads pickle weight files (unpickling runs code from the file). Drop "
                    "`use_safetensors=False`: the adapter is read from adapter_model.safetensors."
                )
            _pin_transformers_call(bound.arguments, weights.folder, download_kwargs)
            # transformers would read the file again, after our check: give it the tensors that were checked.
            bound.arguments["adapter_state_dict"] = weights.tensors
        bound.arguments["peft_config"] = config  # the config checked above, not a second read of the file
        with _naming_the_file(weights), preserved_on_error(self), pending_weights(adapter_name, weights):
            return original_transformers_load_adapter(*bound.args, **bound.kwargs)

    PeftModel.from_pretrained = classmethod(from_pretrained)
    PeftModel.load_adapter = load_adapter
    PeftAdapterMixin.load_adapter = transformers_load_adapter


def _transformers_source(arguments: dict[str, Any], reads_config: bool) -> tuple[Any, dict[str, Any]]:
    """Where transformers' `load_adapter` reads the adapter from, as it works it out: `peft_model_id`, else
    `load_config.pretrained_model_name_or_path`; the download arguments are `load_config.download_kwargs`, replaced by
    a `download_kwargs=` keyword, with `adapter_kwargs` merged in when it reads the config itself."""
    load_config = arguments.get("load_config")
    fields = {**(vars(load_config) if load_config is not None else {}), **(arguments.get("kwargs") or {})}
    download_kwargs = dict(fields.get("download_kwargs") or {})
    if reads_config:
        download_kwargs.update(arguments.get("adapter_kwargs") or {})
    if arguments.get("local_files_only"):
        download_kwargs["local_files_only"] = True
    return arguments.get("peft_model_id") or fields.get("pretrained_model_name_or_path"), download_kwargs


def _pin_transformers_call(arguments: dict[str, Any], folder: str, download_kwargs: dict[str, Any]) -> None:
    """Make transformers read the adapter from `folder`, the folder checked (see `load_adapter` above)."""
    arguments["peft_model_id"] = folder
    arguments["adapter_kwargs"] = None
    if arguments.get("load_config") is not None:  # transformers updates the object it is given: give it a copy
        arguments["load_config"] = copy.copy(arguments["load_config"])
    extra = dict(arguments.get("kwargs") or {})
    extra.pop("pretrained_model_name_or_path", None)
    drop = hub_keys()
    extra["download_kwargs"] = {k: v for k, v in download_kwargs.items() if k not in drop}
    arguments["kwargs"] = extra


def _install_atomic_saving() -> None:
    original_save = PeftModel.save_pretrained

    @functools.wraps(original_save)
    def save_pretrained(self, save_directory, *args, **kwargs):
        arguments = _arguments(original_save, self, save_directory, *args, **kwargs)
        if not _is_ours(self) or not arguments.get("is_main_process", True) or os.path.isfile(save_directory):
            return original_save(self, save_directory, *args, **kwargs)
        # PEFT writes the files in place; ours are written to a temporary folder and switched in atomically.
        # README.md is copied in first because PEFT updates an existing card rather than replacing it.
        return atomic_save(
            save_directory, lambda folder: original_save(self, folder, *args, **kwargs), keep=("README.md",)
        )

    PeftModel.save_pretrained = save_pretrained


def _install_transformers_enable_fix() -> None:
    """transformers' `enable_adapters()` re-enables only `BaseTunerLayer`s, while `disable_adapters()` also disables
    PEFT's `ModulesToSaveWrapper` heads: after a disable / enable round trip the trained head stays off and the model
    silently uses the base head. For models holding our adapters, re-enable the heads too."""
    from peft.tuners.tuners_utils import BaseTunerLayer
    from peft.utils.other import ModulesToSaveWrapper
    from transformers.integrations.peft import PeftAdapterMixin

    original_enable = PeftAdapterMixin.enable_adapters

    @functools.wraps(original_enable)
    def enable_adapters(self, *args, **kwargs):
        result = original_enable(self, *args, **kwargs)
        modules = list(self.modules())
        if any(isinstance(m, PromptBlock) for m in modules):
            for module in modules:
                if isinstance(module, ModulesToSaveWrapper) and not isinstance(module, BaseTunerLayer):
                    module.enable_adapters(enabled=True)
        return result

    PeftAdapterMixin.enable_adapters = enable_adapters


def install_peft_model_patches() -> None:
    """Route `save_pretrained`'s card and `push_to_hub` of *our* adapters through this module, and loading and
    saving them through `gated_vpt.io` (idempotent)."""
    if getattr(PeftModel, "_gated_vpt_patched", False):
        return
    _install_safe_loading()
    _install_atomic_saving()
    _install_transformers_enable_fix()
    original_card = PeftModel.create_or_update_model_card
    original_push = PeftModel.push_to_hub

    def create_or_update_model_card(self: PeftModel, output_dir: str) -> None:
        original_card(self, output_dir)
        hub._add_card_section(self, output_dir)

    def push_to_hub(self: PeftModel, repo_id: str, *args: Any, **kwargs: Any) -> Any:
        if hub._prompt_config(self) is None:
            return original_push(self, repo_id, *args, **kwargs)
        kwargs.pop("max_shard_size", None)  # adapters are tiny; transformers' sharding option does not apply
        kwargs.pop("tags", None)
        return hub.push_adapter_to_hub(self, repo_id, **kwargs)

    PeftModel.create_or_update_model_card = create_or_update_model_card
    PeftModel.push_to_hub = push_to_hub
    PeftModel._gated_vpt_patched = True
