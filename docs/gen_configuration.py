"""Generates docs/configuration.md from the config dataclasses, so the reference cannot drift from the code.

Run: python docs/gen_configuration.py   (tests/test_docs.py checks the committed file equals the output)
"""

from __future__ import annotations

import dataclasses
import inspect
from pathlib import Path

from peft.config import PeftConfig

import gated_vpt  # noqa: F401  (registers the methods)
from gated_vpt import VipaminConfig
from gated_vpt.prompting.registration import registered_prompt_methods

OUT = Path(__file__).with_name("configuration.md")
# Every registered prompt method's config (a new method's folder is picked up without a change here).
CONFIGS = [config_cls for config_cls, _ in registered_prompt_methods().values()]
PEFT_BASE_FIELDS = {f.name for f in dataclasses.fields(PeftConfig)}


def _default(field: dataclasses.Field) -> str:
    if field.default is not dataclasses.MISSING:
        return f"`{field.default!r}`"
    if field.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
        return f"`{field.default_factory()!r}`"  # type: ignore[misc]
    return "required"


def _table(config_cls: type) -> str:
    rows = ["| field | default | meaning |", "|---|---|---|"]
    for field in dataclasses.fields(config_cls):
        if field.name in PEFT_BASE_FIELDS:
            continue
        help_text = field.metadata.get("help", "").replace("|", "\\|")
        rows.append(f"| `{field.name}` | {_default(field)} | {help_text} |")
    return "\n".join(rows)


def render() -> str:
    parts = [
        "# Configuration reference",
        "",
        "Generated from the config dataclasses by `python docs/gen_configuration.py`; a test checks this file is",
        "current. Every value is validated when the config is built or read from `adapter_config.json`: a bad",
        "value raises `gated_vpt.ConfigError` naming the field and its allowed range. Fields inherited from PEFT's",
        "`PeftConfig` (`task_type`, `inference_mode`, `base_model_name_or_path`, `revision`, …) behave as in PEFT;",
        "use `task_type=None` for image models.",
    ]
    for config_cls in CONFIGS:
        doc = inspect.cleandoc(config_cls.__doc__ or "").split("\n\n")[0].replace("\n", " ")
        parts += ["", f"## `{config_cls.__name__}`", "", doc, "", _table(config_cls)]
    doc = inspect.cleandoc(VipaminConfig.__doc__ or "").split("\n\n")[0].replace("\n", " ")
    parts += ["", "## `VipaminConfig` (the `vipamin_config` of every config above)", "", doc, "", _table(VipaminConfig)]
    return "\n".join(parts) + "\n"


if __name__ == "__main__":
    OUT.write_text(render())
    print(OUT)
