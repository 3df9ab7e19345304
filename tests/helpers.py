"""Reference computations written independently of the library's wrappers, for equality tests."""

from __future__ import annotations

import copy
from contextlib import contextmanager

import torch
from torch import nn

from gated_vpt import find_prompt_site
from gated_vpt.vit.tokens import pad_for_prompts


def blocks_of(model: nn.Module) -> nn.ModuleList:
    return model.get_submodule(find_prompt_site(model).stack_name)


def prefix_count(model: nn.Module) -> int:
    return find_prompt_site(model).num_prefix_tokens


def main_output(output) -> torch.Tensor:
    """The output a test compares: the logits of a classifier, else the last hidden state of a bare encoder."""
    logits = getattr(output, "logits", None)
    return logits if logits is not None else output.last_hidden_state


def perturb_adapter(model: nn.Module, scale: float = 0.5, seed: int = 1) -> None:
    """Move every trainable parameter off its initial value, so round trips and comparisons carry something."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in model.parameters():
            if param.requires_grad:
                param.add_(scale * torch.randn(param.shape, generator=generator))


@contextmanager
def vpt_reference(base: nn.Module, prompts_per_block: dict[int, torch.Tensor], last: int):
    """Run `base` (an unwrapped copy) as VPT with forward hooks: at each block in `prompts_per_block` the prompt
    slots are inserted (first block) or replaced (later blocks) by the given `[N_p, D]` tensor; after block `last`
    they are dropped. One entry = VPT-shallow, one per block = VPT-deep."""
    site = find_prompt_site(base)
    blocks = blocks_of(base)
    start = prefix_count(base)
    first = min(prompts_per_block)
    # Position biases that the encoder computes for the prompt-free sequence (BEiT, Data2Vec) must give prompt slots
    # zero bias, as in the adapted model; the family's encoder hooks do that and are not what these tests check.
    handles = list(site.install_encoder_hooks(base))

    def pre_hook(index):
        def hook(module, args, kwargs):
            hidden = args[0]
            prompts = prompts_per_block[index].to(hidden.dtype).unsqueeze(0).expand(hidden.shape[0], -1, -1)
            n = prompts.shape[1]
            free_len = hidden.shape[1] - (0 if index == first else n)
            if index == first:
                hidden = torch.cat([hidden[:, :start], prompts, hidden[:, start:]], dim=1)
            else:
                hidden = torch.cat([hidden[:, :start], prompts, hidden[:, start + n :]], dim=1)
            pad = lambda v: pad_for_prompts(v, free_len, start, n)  # noqa: E731
            return (hidden, *map(pad, args[1:])), {k: pad(v) for k, v in kwargs.items()}

        return hook

    num_prompts = next(iter(prompts_per_block.values())).shape[0]

    def post_hook(module, args, output):
        hidden = output[0] if isinstance(output, tuple) else output
        hidden = torch.cat([hidden[:, :start], hidden[:, start + num_prompts :]], dim=1)
        return (hidden, *output[1:]) if isinstance(output, tuple) else hidden

    def pad_hook(module, args, kwargs):
        free_len = args[0].shape[1] - num_prompts
        pad = lambda v: pad_for_prompts(v, free_len, start, num_prompts)  # noqa: E731
        return (args[0], *map(pad, args[1:])), {k: pad(v) for k, v in kwargs.items()}

    for index in range(first, last + 1):
        hook = pre_hook(index) if index in prompts_per_block else pad_hook
        handles.append(blocks[index].register_forward_pre_hook(hook, with_kwargs=True))
    handles.append(blocks[last].register_forward_hook(post_hook))
    try:
        yield base
    finally:
        for handle in handles:
            handle.remove()


def fresh_copy(model: nn.Module) -> nn.Module:
    return copy.deepcopy(model)


class InputRecorder:
    """Records the first positional input of a module on each call (a forward pre-hook)."""

    def __init__(self, module: nn.Module):
        self.inputs: list[torch.Tensor] = []
        self._handle = module.register_forward_pre_hook(lambda m, args: self.inputs.append(args[0].detach().clone()))

    def remove(self) -> None:
        self._handle.remove()


def transformers_adapter_api_refused() -> bool:
    """Whether this transformers refuses this peft in its own adapter API (`active_adapters`, `set_adapter`,
    `enable_adapters`, `disable_adapters`, `add_adapter`, `delete_adapter`, `get_adapter_state_dict`): transformers
    >= 5.24 requires peft >= 0.22, which is not released. Its `load_adapter` works either way."""
    import peft
    from packaging.version import Version
    from transformers.integrations import peft as integration

    minimum = getattr(integration, "MIN_PEFT_VERSION", None)
    return minimum is not None and Version(peft.__version__) < Version(minimum)


def expect_transformers_adapter_api(call):
    """Run `call` (a call of transformers' adapter API): its result where transformers accepts this peft; where it
    refuses it (`transformers_adapter_api_refused`), check that it refuses with its own message and return None."""
    import pytest

    if not transformers_adapter_api_refused():
        return call()
    with pytest.raises(ValueError, match=r"version of PEFT you are using is not compatible"):
        call()
    return None
