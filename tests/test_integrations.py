"""The upstream signatures `gated_vpt.io.patches` and the tuner rely on.

The patches wrap PEFT's and transformers' methods and read some of their arguments by name; the tuner overrides
PEFT's `BaseTuner` hooks. If an upgrade renames or drops one of these, this file fails with the name, instead of a
wrapper silently skipping its checks. When it fails: read the new upstream code, adapt the wrapper, then update the
table here."""

from __future__ import annotations

import inspect

import pytest
from peft import PeftModel
from peft.tuners.tuners_utils import BaseTuner, BaseTunerLayer
from transformers.integrations.peft import PeftAdapterMixin

import gated_vpt  # noqa: F401  (installs the patches)


def _unwrapped(function):
    return inspect.unwrap(function)  # the patches use functools.wraps: this is the upstream original


# (owner, method, parameter names that must exist, in this order among the parameters)
RELIED_ON = [
    (PeftModel, "from_pretrained", ("model", "model_id", "adapter_name", "is_trainable", "config")),
    (PeftModel, "load_adapter", ("self", "model_id", "adapter_name")),
    (PeftModel, "save_pretrained", ("self", "save_directory")),
    (PeftModel, "create_or_update_model_card", ("self", "output_dir")),
    (PeftModel, "push_to_hub", ("self", "repo_id")),
    (PeftAdapterMixin, "load_adapter", ("self", "peft_model_id", "adapter_name")),
    (PeftAdapterMixin, "enable_adapters", ("self",)),
    (BaseTuner, "_prepare_adapter_config", ("peft_config", "model_config")),
    (BaseTuner, "_check_target_module_exists", ("peft_config", "key")),
    (BaseTuner, "_create_and_replace", ("self", "peft_config", "adapter_name", "target", "target_name", "parent")),
    (BaseTuner, "inject_adapter", ("self", "model", "adapter_name")),
]
# Arguments the wrappers read by name when present (absent ones are fine: the wrapper then skips that feature, which
# is why their presence is pinned here).
READ_BY_NAME = [
    (PeftModel, "load_adapter", ("key_mapping", "is_trainable")),
    (PeftModel, "save_pretrained", ("is_main_process", "selected_adapters")),
    (
        PeftAdapterMixin,
        "load_adapter",
        ("peft_config", "adapter_state_dict", "adapter_kwargs", "load_config", "local_files_only"),
    ),
]


@pytest.mark.parametrize(("owner", "method", "names"), RELIED_ON, ids=lambda v: getattr(v, "__name__", None))
def test_the_wrapped_and_overridden_signatures_are_unchanged(owner, method, names):
    parameters = list(inspect.signature(_unwrapped(getattr(owner, method))).parameters)
    missing = [n for n in names if n not in parameters]
    assert not missing, f"{owner.__name__}.{method} lost {missing}; it now takes {parameters}"
    positions = [parameters.index(n) for n in names]
    assert positions == sorted(positions), f"{owner.__name__}.{method} reordered {names}: {parameters}"


@pytest.mark.parametrize(("owner", "method", "names"), READ_BY_NAME, ids=lambda v: getattr(v, "__name__", None))
def test_the_arguments_read_by_name_still_exist(owner, method, names):
    parameters = set(inspect.signature(_unwrapped(getattr(owner, method))).parameters)
    missing = [n for n in names if n not in parameters]
    assert not missing, f"{owner.__name__}.{method} no longer takes {missing}: the wrapper reads them by name"


def test_peft_still_exposes_what_the_block_wrapper_uses():
    assert isinstance(inspect.getattr_static(BaseTunerLayer, "active_adapters"), property)
    assert callable(BaseTunerLayer.get_base_layer)
    from peft.mapping import PEFT_TYPE_TO_CONFIG_MAPPING, PEFT_TYPE_TO_PREFIX_MAPPING, PEFT_TYPE_TO_TUNER_MAPPING

    for mapping in (PEFT_TYPE_TO_CONFIG_MAPPING, PEFT_TYPE_TO_PREFIX_MAPPING, PEFT_TYPE_TO_TUNER_MAPPING):
        assert "GATED_PROMPT" in mapping and "CDC_PROMPT" in mapping


def test_every_patch_is_installed_and_keeps_the_original_reachable():
    for owner, method in [
        (PeftModel, "load_adapter"),
        (PeftModel, "save_pretrained"),
        (PeftAdapterMixin, "load_adapter"),
        (PeftAdapterMixin, "enable_adapters"),
    ]:
        patched = getattr(owner, method)
        assert _unwrapped(patched) is not patched, f"{owner.__name__}.{method} is not patched"


def test_what_chooses_the_file_a_loader_reads_is_still_where_the_wrappers_look():
    """The wrappers pass every argument that chooses the file read to the checks, then hand the loader the folder
    checked: `hf_hub_download`'s parameters (PEFT passes each through) and the fields of transformers'
    `LoadStateDictConfig` that `load_adapter` reads its source from."""
    import dataclasses

    from transformers.modeling_utils import LoadStateDictConfig

    from gated_vpt.io.locate import hub_keys

    chooses = {"subfolder", "revision", "repo_type", "cache_dir", "local_dir", "token", "local_files_only"}
    assert chooses <= set(hub_keys()), hub_keys()
    fields = {f.name for f in dataclasses.fields(LoadStateDictConfig)}
    assert {"pretrained_model_name_or_path", "download_kwargs", "use_safetensors"} <= fields, fields
