# Copyright 2026 The gated-vpt authors. Licensed under the Apache License, Version 2.0.
"""Generates docs/supported_models.md from the backbone family registry (`gated_vpt.vit.backbones.FAMILIES`), so the
table cannot drift from the code.

Run: python docs/gen_supported_models.py           (rewrite the page)
     python docs/gen_supported_models.py --check   (exit 1 if the committed page is out of date)
tests/test_families.py checks that the committed file equals `render()`.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

OUT = Path(__file__).with_name("supported_models.md")


def render() -> str:
    sys.path.insert(0, str(OUT.resolve().parent.parent))
    from gated_vpt.vit.backbones import supported_models_markdown

    return supported_models_markdown()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Generate docs/supported_models.md from the family registry.")
    parser.add_argument("--check", action="store_true", help="only check that the page is up to date")
    args = parser.parse_args(argv)
    text = render()
    if args.check:
        if not OUT.exists() or OUT.read_text(encoding="utf-8") != text:
            print(f"{OUT} is out of date: run `python docs/gen_supported_models.py`.", file=sys.stderr)
            return 1
        return 0
    OUT.write_text(text, encoding="utf-8")
    print(f"wrote {OUT}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
