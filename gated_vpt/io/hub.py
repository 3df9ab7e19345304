# Copyright 2026 The gated-vpt authors. Licensed under the Apache License, Version 2.0.
"""Loading our adapters and sharing them on the Hub.

PEFT discovers no plugins: `PeftModel.from_pretrained` on a `GATED_PROMPT` adapter fails with a bare
`KeyError: 'GATED_PROMPT'` unless `gated_vpt` was imported first. `from_pretrained` here is the loader that always
works (importing it imports the package) and checks the adapter before touching the model.

`PeftModel.push_to_hub` comes from transformers' `PushToHubMixin`, which replaces PEFT's model card with a generic
one (`library_name: transformers`, no loading instructions). For adapters of our types only, we route
`push_to_hub` through `push_adapter_to_hub` and add a section to the card that PEFT writes, saying what the adapter
is and how to load it (import included). Other PEFT adapters are left to PEFT's own code.

The patches that make PEFT's and transformers' own loaders, `save_pretrained`, the card writer and `push_to_hub`
do the above for our adapter types are in `gated_vpt.io.patches`.
"""

from __future__ import annotations

import json
import os
import tempfile
from typing import Any, Optional

from huggingface_hub import HfApi
from peft import PeftConfig, PeftModel

from ..prompting.prompt_config import PromptConfigBase
from ..vit.backbone_record import describe_record
from .config_file import load_adapter_config
from .locate import hub_kwargs_of, looks_local

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
    hub_kwargs = hub_kwargs_of(kwargs)  # every argument that chooses the file read, as PEFT passes them on
    # Clear errors for a missing, malformed or unreadable adapter_config.json; PEFT's own reader for other methods.
    # A `config=` the caller gives is used as `PeftModel.from_pretrained` uses it.
    config = kwargs.pop("config", None)
    if config is None:
        config = load_adapter_config(model_id, hub_kwargs) or PeftConfig.from_pretrained(str(model_id), **hub_kwargs)
    return PeftModel.from_pretrained(
        model, str(model_id), adapter_name=adapter_name, is_trainable=is_trainable, config=config, **kwargs
    )


def _names_no_hub_model(tag: str) -> bool:
    # PEFT tags the card "base_model:adapter:<base model>", also when that is a local path or empty. A path on the
    # machine that saved the adapter means nothing to the card's readers (and may reveal a user name): the card shows
    # Hub ids only.
    prefix, _, name = tag.partition("base_model:adapter:")
    return not prefix and tag.startswith("base_model:adapter:") and (not name or looks_local(name))


def loading_snippet(config: PromptConfigBase, repo_id: Optional[str] = None) -> str:
    """Python code that loads the adapter: the base model built as it was for training (its class, and for a
    retrained head `num_labels` with `ignore_mismatched_sizes=True`), then `PeftModel.from_pretrained`."""
    import transformers

    base = config.base_model_name_or_path
    base_text = json.dumps(base) if base and not looks_local(base) else '"<Hub id or folder of the base model>"'
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
{describe_record(config.backbone)}. The backbone is frozen
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
    if isinstance(base_model, str) and (not base_model or looks_local(base_model)):
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
