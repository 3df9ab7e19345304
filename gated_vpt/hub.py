# Copyright 2026 The gated-vpt authors. Licensed under the Apache License, Version 2.0.
"""Loading our adapters and sharing them on the Hub.

PEFT discovers no plugins: `PeftModel.from_pretrained` on a `GATED_PROMPT` adapter fails with a bare
`KeyError: 'GATED_PROMPT'` unless `gated_vpt` was imported first. `from_pretrained` here is the loader that always
works (importing it imports the package) and checks the adapter before touching the model.

`PeftModel.push_to_hub` comes from transformers' `PushToHubMixin`, which replaces PEFT's model card with a generic
one (`library_name: transformers`, no loading instructions). For adapters of our types only, we route
`push_to_hub` through `push_adapter_to_hub` and add a section to the card that PEFT writes, saying what the adapter
is and how to load it (import included). Other PEFT adapters are left to PEFT's own code.

Loading and saving go through `gated_vpt.safety` for our adapter types only: PEFT's `from_pretrained` /
`load_adapter` and transformers' `load_adapter` inject the adapter modules *before* they read the weights file, and
PEFT falls back to unpickling `adapter_model.bin`; `save_pretrained` writes the files in place. The scoped wrappers
installed by `install_peft_model_patches` check both files first (refusing pickles unopened), let the tuner check the
file's tensors against the injected adapter before any value is copied, put the model back exactly as it was if
anything fails, and make saving atomic. For every other PEFT adapter they call PEFT's / transformers' code unchanged
(except that an `adapter_config.json` that is not a readable PEFT config at all gets a clear error instead of a
`JSONDecodeError` / `KeyError`).
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import json
import os
import tempfile
from collections.abc import Callable
from typing import Any, Optional

from huggingface_hub import HfApi
from peft import PeftConfig, PeftModel

from . import safety
from .prompt_config import PromptConfigBase
from .prompt_tuner import IncompatibleBackboneError

CARD_MARKER = "<!-- gated-vpt adapter -->"
CARD_END_MARKER = "<!-- end of the gated-vpt section -->"
CARD_TAGS = ("gated-vpt", "visual-prompt-tuning", "peft")


def _prompt_config(model: PeftModel) -> Optional[PromptConfigBase]:
    config = model.peft_config.get(model.active_adapter) if model.peft_config else None
    return config if isinstance(config, PromptConfigBase) else None


def from_pretrained(
    model: Any, model_id: str | os.PathLike, adapter_name: str = "default", is_trainable: bool = False, **kwargs: Any
) -> PeftModel:
    """Load a gated-vpt adapter (local folder or Hub repo) onto `model`; same arguments as
    `peft.PeftModel.from_pretrained`. Unlike a bare `PeftModel.from_pretrained`, this works without a prior
    `import gated_vpt`, and it refuses an adapter saved for a different backbone before touching the model."""
    hub_kwargs = {k: kwargs[k] for k in ("revision", "subfolder", "token", "cache_dir") if k in kwargs}
    # Clear errors for a missing or malformed adapter_config.json; PEFT's own reader for Hub repos it cannot reach
    # here and for other PEFT methods.
    config = safety.load_adapter_config(model_id, hub_kwargs) or PeftConfig.from_pretrained(str(model_id), **hub_kwargs)
    return PeftModel.from_pretrained(
        model, str(model_id), adapter_name=adapter_name, is_trainable=is_trainable, config=config, **kwargs
    )


def _is_local_path(name: str) -> bool:
    # A path on the machine that saved the adapter means nothing to the card's readers (and may reveal a user name).
    return os.path.isabs(name) or name.startswith((".", "~")) or os.path.exists(name) or name.count("/") > 1


def _names_no_hub_model(tag: str) -> bool:
    # PEFT tags the card "base_model:adapter:<base model>", also when that is a local path or empty
    prefix, _, name = tag.partition("base_model:adapter:")
    return not prefix and tag.startswith("base_model:adapter:") and (not name or _is_local_path(name))


def loading_snippet(config: PromptConfigBase, repo_id: Optional[str] = None) -> str:
    """Python code that loads the adapter: the base model built as it was for training (its class, and for a
    retrained head `num_labels` with `ignore_mismatched_sizes=True`), then `PeftModel.from_pretrained`."""
    import transformers

    base = config.base_model_name_or_path
    base_text = json.dumps(base) if base and not _is_local_path(base) else '"<Hub id or folder of the base model>"'
    model_class = config.base_model_class
    if model_class is None or not hasattr(transformers, model_class):
        note = f"  # build the {model_class} it was trained in" if model_class else ""
        import_name, call = "AutoModel", f"AutoModel.from_pretrained({base_text}){note}"
    else:
        import_name, call = model_class, f"{model_class}.from_pretrained({base_text})"
    if config.modules_to_save and config.base_model_num_labels is not None:
        # the adapter carries the trained head; the checkpoint's own head may have another size
        call = (
            f"{import_name}.from_pretrained(\n    {base_text}, num_labels={config.base_model_num_labels}, "
            "ignore_mismatched_sizes=True\n)  # the head's weights come from the adapter"
        )
    source = json.dumps(repo_id) if repo_id else '"<this repo id or folder>"'
    return f"""import gated_vpt  # registers the {config.peft_type.value} adapter type with PEFT
from peft import PeftModel
from transformers import {import_name}

base = {call}
model = PeftModel.from_pretrained(base, {source}).eval()
# or, without the explicit import: model = gated_vpt.from_pretrained(base, {source})"""


def card_section(config: PromptConfigBase, repo_id: Optional[str] = None) -> str:
    """The model-card text for one of our adapters: how to load it, then what it is."""
    backbone = config.backbone or {}
    first, last = backbone.get("prompted_blocks", ["?", "?"])
    return f"""{CARD_MARKER}
## How to load this adapter

```bash
pip install gated-vpt  # with torch, transformers and peft
```

```python
{loading_snippet(config, repo_id)}
```

## What it is

A **{config.peft_type.value}** visual prompt tuning adapter made with
[gated-vpt](https://pypi.org/project/gated-vpt/) on top of PEFT: {config.num_prompts} prompt tokens,
prompted blocks {first}–{last} of a `{backbone.get("model_type", "?")}` backbone
(width {backbone.get("hidden_size", "?")}, {backbone.get("num_hidden_layers", "?")} blocks). The backbone is frozen
and not included: this repo holds only the adapter and its `modules_to_save` ({config.modules_to_save or "none"}).
{CARD_END_MARKER}"""


def _without_our_section(text: str) -> str:
    if CARD_MARKER not in text:
        return text
    before, _, after = text.partition(CARD_MARKER)
    # cards written before the end marker existed had the section last
    after = after.partition(CARD_END_MARKER)[2] if CARD_END_MARKER in after else ""
    return (before.rstrip() + "\n\n" + after.lstrip()).strip()


def _add_card_section(model: PeftModel, output_dir: str, repo_id: Optional[str] = None) -> None:
    from huggingface_hub import ModelCard

    config = _prompt_config(model)
    path = os.path.join(output_dir, "README.md")
    if config is None or not os.path.exists(path):
        return
    card = ModelCard.load(path)
    card.data["library_name"] = "peft"
    card.data["tags"] = sorted(set(card.data.get("tags") or []) | set(CARD_TAGS))
    # PEFT writes the base model's name there, a local checkpoint's path included
    base_model = card.data.get("base_model")
    if isinstance(base_model, str) and (not base_model or _is_local_path(base_model)):
        card.data.pop("base_model")
    if card.data.get("tags"):
        card.data["tags"] = [t for t in card.data["tags"] if not _names_no_hub_model(t)]
    rest = _without_our_section(card.text).lstrip()
    # Loading first, right under the card's title: it is what a reader of an adapter repo needs.
    title, newline, body = rest.partition("\n") if rest.startswith("# ") else ("", "", rest)
    head = f"{title}\n\n" if title else ""
    card.text = f"{head}{card_section(config, repo_id)}\n\n{body.lstrip()}".rstrip() + "\n"
    card.save(path)


def push_adapter_to_hub(
    model: PeftModel,
    repo_id: str,
    *,
    private: Optional[bool] = None,
    token: Optional[str] = None,
    revision: Optional[str] = None,
    create_pr: bool = False,
    commit_message: Optional[str] = None,
    commit_description: Optional[str] = None,
    **save_kwargs: Any,
) -> Any:
    """Save the adapter (config, safetensors weights, a card saying how to load it) and upload it in one commit."""
    api = HfApi(token=token)
    repo_id = api.create_repo(repo_id, private=private, exist_ok=True).repo_id
    with tempfile.TemporaryDirectory() as tmp_dir:
        model.save_pretrained(tmp_dir, **save_kwargs)
        _add_card_section(model, tmp_dir, repo_id)
        return api.upload_folder(
            repo_id=repo_id,
            folder_path=tmp_dir,
            commit_message=commit_message or "Upload gated-vpt adapter",
            commit_description=commit_description,
            revision=revision,
            create_pr=create_pr,
        )


def _arguments(function: Callable, *args: Any, **kwargs: Any) -> dict[str, Any]:
    """The arguments of a call of `function` by parameter name, `**kwargs` merged in."""
    bound = inspect.signature(function).bind(*args, **kwargs)
    arguments = dict(bound.arguments)
    for name, parameter in inspect.signature(function).parameters.items():
        if parameter.kind is inspect.Parameter.VAR_KEYWORD:
            arguments.update(arguments.pop(name, {}))
    return arguments


@contextlib.contextmanager
def _naming_the_file(weights: safety.CheckedWeights):
    """Add the adapter's config file to the tuner's `IncompatibleBackboneError` (the tuner never sees paths)."""
    try:
        yield
    except IncompatibleBackboneError as error:
        folder = os.path.dirname(weights.path)
        config_path = os.path.join(folder, safety.CONFIG_NAME)
        if not folder or str(error).startswith(config_path):
            raise
        raise IncompatibleBackboneError(f"{config_path}: {error}") from None


def _is_ours(model: PeftModel) -> bool:
    return any(isinstance(c, PromptConfigBase) for c in (getattr(model, "peft_config", None) or {}).values())


def _install_safe_loading() -> None:
    """Wrap PEFT's `PeftModel.from_pretrained` / `PeftModel.load_adapter` and transformers' `load_adapter` for our
    adapter types: check the files first, check the tensors against the injected adapter before loading them, and
    leave the model exactly as it was on any failure (see `gated_vpt.safety`)."""
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
        checked = safety.check_adapter_files(model_id, config, safety.hub_kwargs_of(kwargs), key_mapping)
        if checked is None:  # another PEFT method, or a Hub repo we cannot reach: PEFT's own behaviour
            return call(config)
        config, weights = checked
        with _naming_the_file(weights), safety.preserved_on_error(model), safety.pending_weights(adapter_name, weights):
            return call(config)

    @functools.wraps(original_load_adapter)
    def load_adapter(self, *args, **kwargs):
        arguments = _arguments(original_load_adapter, self, *args, **kwargs)
        model_id, adapter_name = arguments["model_id"], arguments["adapter_name"]
        existing = self.peft_config.get(adapter_name)
        if existing is not None and not isinstance(existing, PromptConfigBase):
            return original_load_adapter(self, *args, **kwargs)
        checked = safety.check_adapter_files(
            model_id, existing, safety.hub_kwargs_of(arguments), arguments.get("key_mapping")
        )
        if checked is None:
            return original_load_adapter(self, *args, **kwargs)
        _, weights = checked
        clone = ()
        if existing is not None:  # PEFT overwrites this adapter's tensors in place: check them now, keep a copy
            safety.check_weights_match(self, adapter_name, weights)
            clone = list(safety.adapter_tensors(self, adapter_name).values())
        with (
            _naming_the_file(weights),
            safety.preserved_on_error(self, clone),
            safety.pending_weights(adapter_name, weights),
        ):
            return original_load_adapter(self, *args, **kwargs)

    @functools.wraps(original_transformers_load_adapter)
    def transformers_load_adapter(self, *args, **kwargs):
        bound = inspect.signature(original_transformers_load_adapter).bind(self, *args, **kwargs)
        arguments = _arguments(original_transformers_load_adapter, self, *args, **kwargs)
        config = arguments.get("peft_config")
        if config is not None and not isinstance(config, PromptConfigBase):
            return original_transformers_load_adapter(self, *args, **kwargs)
        model_id = arguments.get("peft_model_id")
        adapter_name = arguments.get("adapter_name") or "default"
        state_dict = arguments.get("adapter_state_dict")
        hub_kwargs = safety.hub_kwargs_of({**(arguments.get("adapter_kwargs") or {}), **arguments})
        if state_dict is not None:
            if config is None and model_id is not None:
                config = safety.load_adapter_config(model_id, hub_kwargs)
            if not isinstance(config, PromptConfigBase):
                return original_transformers_load_adapter(self, *args, **kwargs)
            weights = safety.CheckedWeights(
                "adapter_state_dict", safety.check_tensors(state_dict, "adapter_state_dict")
            )
        else:
            checked = safety.check_adapter_files(model_id, config, hub_kwargs) if model_id is not None else None
            if checked is None:
                return original_transformers_load_adapter(self, *args, **kwargs)
            config, weights = checked
            load_config = arguments.get("load_config")
            if arguments.get("use_safetensors") is False or getattr(load_config, "use_safetensors", None) is False:
                raise safety.UnsafeAdapterFileError(
                    f"{model_id}: `use_safetensors=False` asks transformers to load the pickle file adapter_model.bin "
                    "first; gated-vpt never loads pickle weight files (unpickling runs code from the file). Drop "
                    "`use_safetensors=False`: the adapter is read from adapter_model.safetensors."
                )
            bound.arguments["peft_config"] = config  # the config checked above, not a second read of the file
        with _naming_the_file(weights), safety.preserved_on_error(self), safety.pending_weights(adapter_name, weights):
            return original_transformers_load_adapter(*bound.args, **bound.kwargs)

    PeftModel.from_pretrained = classmethod(from_pretrained)
    PeftModel.load_adapter = load_adapter
    PeftAdapterMixin.load_adapter = transformers_load_adapter


def _install_atomic_saving() -> None:
    original_save = PeftModel.save_pretrained

    @functools.wraps(original_save)
    def save_pretrained(self, save_directory, *args, **kwargs):
        arguments = _arguments(original_save, self, save_directory, *args, **kwargs)
        if not _is_ours(self) or not arguments.get("is_main_process", True) or os.path.isfile(save_directory):
            return original_save(self, save_directory, *args, **kwargs)
        # PEFT writes the files in place; ours are written to a temporary folder and switched in atomically.
        # README.md is copied in first because PEFT updates an existing card rather than replacing it.
        return safety.atomic_save(
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

    from .prompt_layer import PromptBlock

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
    saving them through `gated_vpt.safety` (idempotent)."""
    if getattr(PeftModel, "_gated_vpt_patched", False):
        return
    _install_safe_loading()
    _install_atomic_saving()
    _install_transformers_enable_fix()
    original_card = PeftModel.create_or_update_model_card
    original_push = PeftModel.push_to_hub

    def create_or_update_model_card(self: PeftModel, output_dir: str) -> None:
        original_card(self, output_dir)
        _add_card_section(self, output_dir)

    def push_to_hub(self: PeftModel, repo_id: str, *args: Any, **kwargs: Any) -> Any:
        if _prompt_config(self) is None:
            return original_push(self, repo_id, *args, **kwargs)
        kwargs.pop("max_shard_size", None)  # adapters are tiny; transformers' sharding option does not apply
        kwargs.pop("tags", None)
        return push_adapter_to_hub(self, repo_id, **kwargs)

    PeftModel.create_or_update_model_card = create_or_update_model_card
    PeftModel.push_to_hub = push_to_hub
    PeftModel._gated_vpt_patched = True
