# Copyright 2026 The gated-vpt authors. Licensed under the Apache License, Version 2.0.
"""Write docs/supported_models.md from the family registry (`gated_vpt.backbones.FAMILIES`).

    python docs/gen_supported_models.py          # rewrite the page
    python docs/gen_supported_models.py --check  # exit 1 if the committed page is out of date
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PAGE = ROOT / "docs" / "supported_models.md"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only check that the page is up to date")
    args = parser.parse_args(argv)
    sys.path.insert(0, str(ROOT))
    from gated_vpt.backbones import supported_models_markdown

    text = supported_models_markdown()
    if args.check:
        current = PAGE.read_text(encoding="utf-8") if PAGE.exists() else ""
        if current != text:
            print(f"{PAGE} is out of date: run `python docs/gen_supported_models.py`.", file=sys.stderr)
            return 1
        return 0
    PAGE.write_text(text, encoding="utf-8")
    print(f"wrote {PAGE}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
