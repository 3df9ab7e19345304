"""Generated docs are current: they come from the code, so they cannot drift from it."""

from __future__ import annotations

import importlib.util
from pathlib import Path

DOCS = Path(__file__).resolve().parents[1] / "docs"


def load_generator(name: str):
    spec = importlib.util.spec_from_file_location(name, DOCS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_configuration_reference_is_generated_from_the_dataclasses():
    generator = load_generator("gen_configuration")
    assert (DOCS / "configuration.md").read_text() == generator.render(), "run: python docs/gen_configuration.py"
