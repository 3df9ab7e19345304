# Copyright 2026 The gated-vpt authors. Licensed under the Apache License, Version 2.0.
"""The PEFT tuner shared by all prompt-tuning methods: finds the blocks, wraps them, keeps outputs prompt-free.

A method subclasses `PromptTuner` and provides its config class, its block wrapper class (`tuner_layer_cls`), a
`prefix` for its parameter names and `_new_block` to build a wrapper.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Iterator
from typing import Any, Optional

import torch
from peft.config import PeftConfig
from peft.tuners.tuners_utils import BaseTuner
from torch import nn
from transformers.utils import ModelOutput

from ..io.compare import check_pending_weights
from ..io.landing import landing_pre_hook
from ..vit.backbone_record import check_backbone_record, record_for
from ..vit.backbones import PromptSite, find_prompt_site
from ..vit.tokens import strip_prompt_states
from .mixed_batch import install_mixed_batch_hooks, mixed_batch_forward
from .prompt_config import BLOCKS_BY_INDEX_HINT, ConfigError, PromptConfigBase
from .prompt_layer import MERGE_MESSAGE, BlockRole, MergeNotSupportedError, PromptBlock
from .routing import BASE_ADAPTER, active_call


def check_adapter_name(name: Any) -> None:
    """An adapter name becomes a key of every block's `ParameterDict`s and, in mixed batches, a per-sample label."""
    problem = None
    if not isinstance(name, str) or not name:
        problem = "must be a non-empty string"
    elif "." in name:
        problem = "may not contain '.' (parameter names are dotted paths)"
    elif name == BASE_ADAPTER:
        problem = "is reserved: in mixed batches it means the base model without an adapter"
    elif hasattr(nn.ParameterDict, name) or hasattr(nn.Module, name):
        problem = "is the name of a torch module attribute or method"
    if problem is not None:
        raise ValueError(f"Adapter name {name!r} {problem}. Choose another name, e.g. the task's ('eurosat').")


def check_modules_to_save(config: PromptConfigBase, model: nn.Module, site: PromptSite) -> None:
    """`modules_to_save` may name modules outside the prompted block stack only. PEFT replaces each match with a
    trained copy (matching by name suffix); inside the stack that copy would sit under our block wrapper, where the
    method's hooks (GPT's temperature on the query projection, CDC's captures) act on the original module, which no
    longer runs."""
    for name in config.modules_to_save or ():
        if not name:
            raise ConfigError("`modules_to_save` holds an empty name, which would match every module. Remove it.")
        around = [
            key for key, _ in model.named_modules() if key.endswith(name) and site.stack_name.startswith(key + ".")
        ]
        if around:
            raise ConfigError(
                f"`modules_to_save` entry {name!r} matches {around[0]!r}, which contains the transformer blocks the "
                "adapter prompts: PEFT would train a full copy of the encoder (most of the model's parameters, and a "
                "save no loader can read back). Train modules outside the encoder only (e.g. the head `classifier`); "
                "to adapt the encoder's weights use full fine-tuning or LoRA."
            )
        inside = [
            key
            for key, _ in model.named_modules()
            if key.endswith(name) and (key == site.stack_name or key.startswith(site.stack_name + "."))
        ]
        if inside:
            raise ConfigError(
                f"`modules_to_save` entry {name!r} matches {inside[0]!r}"
                + (f" (and {len(inside) - 1} more)" if len(inside) > 1 else "")
                + ", inside the transformer blocks the adapter prompts. Prompt tuning owns those blocks and hooks "
                "their attention: a trained copy there would silently switch the method's temperatures or "
                "reinforcement off. Train modules outside the block stack only (e.g. the head `classifier`, a "
                "decoder); to adapt projections inside the blocks use LoRA alongside."
            )


def check_not_prompted_yet(model: nn.Module, adapter_name: str, block_cls: type) -> None:
    """Refuse to inject `adapter_name` where it would replace a trained adapter: into a `PeftModel` (a second wrapper
    around the first), or into blocks that already hold an adapter of that name (its parameters would be
    re-initialised), or of another prompt method (`block_cls` is this method's block wrapper)."""
    from peft import PeftModel

    if isinstance(model, PeftModel):
        raise ValueError(
            "This model is already a PeftModel with prompt adapters: `get_peft_model` on it would wrap it a second "
            f"time. Add another adapter with `model.add_adapter({adapter_name!r}, config)` (then "
            "`model.set_adapter(...)`), or call `get_peft_model` on the base model."
        )
    for module in model.modules():
        # exact class: methods subclass one another's blocks (GPT's and CDC's wrap VPT's)
        if isinstance(module, PromptBlock) and type(module) is not block_cls:
            held = sorted(module.prompt_roles)
            raise ValueError(
                f"This model's blocks already hold a prompt adapter of another method ({type(module).__name__}, "
                f"adapters {held}); adapters of different methods cannot share one model (PEFT has the same rule for "
                "its own types). Load this adapter onto a separate copy of the base model, or delete the other "
                "adapters first."
            )
        if isinstance(module, PromptBlock) and adapter_name in module.prompt_roles:
            raise ValueError(
                f"This model already holds a prompt adapter named {adapter_name!r}: injecting another one under that "
                "name would re-initialise it and lose its trained values. Choose another `adapter_name`, delete the "
                "old one first (`delete_adapter`), or load values into it with `load_adapter`."
            )


def is_image_classifier(model: nn.Module) -> bool:
    """Whether `model` is a transformers image classifier (its `config.num_labels` sizes its head)."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_IMAGE_CLASSIFICATION_MAPPING_NAMES

    name = type(model).__name__
    return name in MODEL_FOR_IMAGE_CLASSIFICATION_MAPPING_NAMES.values() or "ForImageClassification" in name


def _matching_blocks(name: str, block_names: tuple[str, ...]) -> list[int]:
    # a full module path, or a dotted tail of one ("layers.4" for "vit.layers.4")
    return [i for i, block in enumerate(block_names) if block == name or block.endswith("." + name)]


def resolve_prompted_blocks(config: PromptConfigBase, site: PromptSite) -> tuple[int, int]:
    """First and last prompted block, from `layers_to_transform` and / or `target_modules` (which must agree)."""
    by_index = config.prompted_range(site.depth)
    if not config.target_modules:
        return by_index
    names = site.block_names
    stack = f"{names[0]} ... {names[-1]}" if len(names) > 2 else ", ".join(names)
    indices = []
    for name in config.target_modules:
        found = _matching_blocks(name, names)
        if len(found) != 1:
            raise ConfigError(
                f"`target_modules` entry {name!r} "
                + ("matches several blocks" if found else "is not a transformer block of this model")
                + f" (its blocks are {stack}). Prompt adapters wrap whole blocks, not layers inside them: leave "
                f"`target_modules` None and {BLOCKS_BY_INDEX_HINT}, or list block names."
            )
        indices.append(found[0])
    indices = sorted(set(indices))
    if indices != list(range(indices[0], indices[-1] + 1)):
        raise ConfigError(
            f"`target_modules` names blocks {indices}, which are not contiguous: prompts travel through every block "
            f"between the first and the last prompted one. Name a contiguous run, or {BLOCKS_BY_INDEX_HINT}."
        )
    by_name = (indices[0], indices[-1])
    if config.layers_to_transform is not None and by_name != by_index:
        raise ConfigError(
            f"`target_modules` names blocks {by_name[0]}-{by_name[1]} but `layers_to_transform` "
            f"{config.layers_to_transform} selects blocks {by_index[0]}-{by_index[1]}: give only one of them."
        )
    return by_name


class PromptTuner(BaseTuner):
    """Base `BaseTuner` of the prompt methods. Subclasses set `prefix`, `tuner_layer_cls` and `_new_block`."""

    tuner_layer_cls: type[PromptBlock] = PromptBlock
    target_module_mapping: dict[str, list[str]] = {}
    prompt_site: Optional[PromptSite] = None  # the resolved block stack of the model, set at injection
    _model_hooks: Optional[list] = None  # every hook the tuner put on the model's modules; unload() removes them
    hooked_heads: set[int] = frozenset()  # `id()` of the modules_to_save wrappers given a mixed-batch hook

    # -- resolving the blocks --------------------------------------------------------------------------------------

    def _prepare_adapter_config(self, peft_config: PeftConfig, model_config: dict) -> PeftConfig:
        # Everything that can fail is checked here, before PEFT replaces the first module. A model already wrapped
        # keeps the family record it was wrapped with (a later `register_family` does not change its adapters).
        site = self.prompt_site or find_prompt_site(self.model)
        check_modules_to_save(peft_config, self.model, site)
        check_backbone_record(peft_config.backbone, site)
        first, last = resolve_prompted_blocks(peft_config, site)
        check_backbone_record(peft_config.backbone, site, [first, last])
        self._check_config_for_site(peft_config, site)
        if (first, last) != peft_config.prompted_range(site.depth):
            # chosen by name: record the indices too, so that every later reader (loaders, mixed batches, the card)
            # sees the same blocks through `prompted_range`
            peft_config.layers_to_transform = list(range(first, last + 1))
        peft_config.target_modules = list(site.block_names[first : last + 1])
        peft_config.backbone = record_for(site, [first, last])
        if peft_config.base_model_class is None:
            peft_config.base_model_class = type(self.model).__name__
            if is_image_classifier(self.model):
                peft_config.base_model_num_labels = int(self.model.config.num_labels)
        self.prompt_site = site
        return peft_config

    def _check_config_for_site(self, peft_config: PromptConfigBase, site: PromptSite) -> None:
        """Method-specific checks against the resolved backbone (raise before anything is modified)."""

    def _check_target_module_exists(self, peft_config: PeftConfig, key: str) -> bool:
        return key in (peft_config.target_modules or ())

    def _new_block(self, block: nn.Module, site: PromptSite) -> PromptBlock:
        raise NotImplementedError

    def _create_and_replace(
        self,
        peft_config: PromptConfigBase,
        adapter_name: str,
        target: nn.Module,
        target_name: str,
        parent: nn.Module,
        current_key: str,
        **kwargs: Any,
    ) -> None:
        site = self.prompt_site
        index = site.block_index(current_key)
        first, last = peft_config.prompted_range(site.depth)
        role = BlockRole(index=index, first=index == first, last=index == last, config=peft_config)
        if isinstance(target, PromptBlock):
            target.update_layer(adapter_name, role)
            return
        wrapper = self._new_block(target, site)
        wrapper.block_arguments = site.family.block_arguments
        wrapper.update_layer(adapter_name, role)
        self._replace_module(parent, target_name, wrapper, target)

    def _replace_module(self, parent: nn.Module, child_name: str, new_module: nn.Module, child: nn.Module) -> None:
        # PEFT's default assumes a Linear-like child with `.weight`; blocks have none. Adapter parameters are
        # created on the block's device by the wrapper itself (and stay on `meta` with low_cpu_mem_usage).
        setattr(parent, child_name, new_module)

    def inject_adapter(self, model: nn.Module, adapter_name: str, *args: Any, **kwargs: Any) -> None:
        check_adapter_name(adapter_name)
        check_not_prompted_yet(model, adapter_name, self.tuner_layer_cls)
        # The tuner records the resolved blocks and backbone in the config: on a copy, so the object the user passed
        # stays reusable (`get_peft_model(vit4, c); get_peft_model(vit6, c)`, as with LoRA). transformers' adapter API
        # keeps its own `model.peft_config` dict: point it at the same copy.
        original = self.peft_config[adapter_name]
        copied = copy.deepcopy(original)
        self.peft_config[adapter_name] = copied
        host_configs = getattr(model, "peft_config", None)
        if isinstance(host_configs, dict) and host_configs is not self.peft_config:
            if host_configs.get(adapter_name) is original:
                host_configs[adapter_name] = copied
        super().inject_adapter(model, adapter_name, *args, **kwargs)
        self._install_model_hooks()
        # When this injection is part of loading a saved adapter (the loaders in `gated_vpt.io.hub` announce the
        # checked file), the file must hold exactly the tensors just created: checked here, before PEFT or
        # transformers copy any value. The loader puts the model back as it was if this raises.
        check_pending_weights(model, adapter_name)

    # -- prompt-free outputs -------------------------------------------------------------------------------------

    def _install_model_hooks(self) -> None:
        """Every hook the tuner keeps on the model's own modules. transformers records hidden states with hooks on
        the *inner* blocks, so they contain the prompt slots: they are stripped at every module between the model
        root and the block stack, so Backbone classes, heads and users all see the standard `[B, T, D]`. Then the
        family's encoder hooks and the mixed-batch hooks."""
        if self._model_hooks is not None:
            return
        self._model_hooks = [
            self.model.get_submodule(name).register_forward_hook(self._strip_prompts_from_output)
            for name in self.prompt_site.ancestor_names
        ]
        # Family-specific adjustments of sequence-sized computations inside the encoder (e.g. BEiT's relative
        # position biases); removed with the hooks above.
        self._model_hooks += self.prompt_site.install_encoder_hooks(self.model)
        self._model_hooks += install_mixed_batch_hooks(self)
        # Every path that loads values into the adapter ends in `load_state_dict` on this model: one check there sees
        # the whole incoming state dict before any tensor is copied (`gated_vpt.io.landing`).
        self._model_hooks.append(self.model.register_load_state_dict_pre_hook(landing_pre_hook))
        self.hooked_heads = set()

    def keep_hook(self, handle: Any) -> None:
        """Hold a hook put on one of the model's modules after injection, for `unload()` to remove."""
        self._model_hooks.append(handle)

    def _remove_model_hooks(self) -> None:
        for handle in self._model_hooks or ():
            handle.remove()
        self._model_hooks = None
        self.hooked_heads = set()

    def _active_num_prompts(self) -> Optional[int]:
        call = active_call()
        if call is not None and call.tuner_id == id(self):
            return call.num_prompts
        for name in self.active_adapters:
            config = self.peft_config.get(name)
            if isinstance(config, PromptConfigBase):
                return config.num_prompts
        return None

    def _strip_prompts_from_output(self, module: nn.Module, args: Any, output: Any) -> Any:
        num_prompts = self._active_num_prompts()
        if num_prompts is None:
            return None
        start = self.prompt_site.num_prefix_tokens
        # Every hidden state of one forward is either prompt-free (length of last_hidden_state) or carries the
        # prompt slots; only the latter are shortened.
        if isinstance(output, ModelOutput):
            reference = output.get("last_hidden_state")
            states = output.get("hidden_states")
            if torch.is_tensor(reference) and states is not None:
                output["hidden_states"] = strip_prompt_states(states, reference.shape[1], start, num_prompts)
            return output
        if isinstance(output, tuple) and output and torch.is_tensor(output[0]) and output[0].dim() == 3:
            free_len = output[0].shape[1]
            return tuple(strip_prompt_states(item, free_len, start, num_prompts) for item in output)
        return None

    # -- mixed-adapter batches ---------------------------------------------------------------------------------

    @contextlib.contextmanager
    def _enable_peft_forward_hooks(self, *args: Any, **kwargs: Any) -> Iterator[None]:
        """`PeftModel.forward` runs the base model inside this context; with `adapter_names` it routes every sample
        to its own adapter (see `gated_vpt.prompting.mixed_batch`)."""
        adapter_names = kwargs.get("adapter_names")
        if adapter_names is None:
            yield
            return
        with mixed_batch_forward(self, adapter_names):
            yield

    # -- PEFT behaviours that differ for prompts ---------------------------------------------------------------

    def set_adapter(self, adapter_name: str | list[str], inference_mode: bool = False) -> None:
        names = [adapter_name] if isinstance(adapter_name, str) else list(adapter_name)
        if len(names) > 1:
            raise ValueError(
                f"Only one prompt adapter can be active at a time (got {names}): each one inserts its own prompts. "
                "Switch with `set_adapter(name)`."
            )
        super().set_adapter(adapter_name, inference_mode=inference_mode)

    def delete_adapter(self, adapter_name: str) -> None:
        previous = list(self.active_adapters)
        super().delete_adapter(adapter_name)
        # PEFT takes the next active adapter from the first wrapped block, which need not hold any adapter left
        # (adapters may prompt different blocks). Choose as PEFT's layers do (first remaining name) and sync all.
        remaining = [name for name in previous if name != adapter_name] or sorted(self.peft_config)[:1]
        if remaining:
            self.set_adapter(remaining[0])

    def add_weighted_adapter(self, *args: Any, **kwargs: Any) -> None:
        raise NotImplementedError(
            "`add_weighted_adapter` is a LoRA operation (a weighted sum of low-rank weight deltas) and is not "
            "supported for prompt adapters: prompts are tokens, and adapters of different layouts cannot be summed. "
            "Train a new adapter, or serve several adapters at once with `model(pixel_values=x, adapter_names=[...])`."
        )

    def subtract_mutated_init(self, *args: Any, **kwargs: Any) -> None:
        raise NotImplementedError(
            "`subtract_mutated_init` is a LoRA operation (PiSSA / OLoRA conversion) and is not supported for prompt "
            "adapters, which never change the backbone's weights."
        )

    def _check_merge_allowed(self) -> None:
        raise MergeNotSupportedError(MERGE_MESSAGE)

    def merge_adapter(self, *args: Any, **kwargs: Any) -> None:
        raise MergeNotSupportedError(MERGE_MESSAGE)

    def _unload_and_optionally_merge(self, merge: bool = True, *args: Any, **kwargs: Any) -> nn.Module:
        if merge:
            raise MergeNotSupportedError(MERGE_MESSAGE)
        self._remove_model_hooks()
        return super()._unload_and_optionally_merge(False, *args, **kwargs)
