"""Attack re-run: every hostile input of the reliability suite through every path that can land it, each outcome
classified the way the reliability issues count them.

    python tests/scripts/attack.py            # prints the Markdown summary
    python tests/scripts/attack.py --write    # and writes it into docs/reliability.md (between the ATTACK markers)

Inputs:
- every damaged adapter folder of docs/gen_reliability.py (`CASES`) through every loading entry point of
  tests/test_reliability.py (PeftModel.from_pretrained, gated_vpt.from_pretrained, transformers' load_adapter, a
  second adapter through PEFT and transformers, an existing adapter name);
- every hostile state dict of tests/test_landing.py (`DAMAGE`) for every registered method, through
  `peft.set_peft_model_state_dict` and `model.load_state_dict`.

Outcomes: *clear error* (the documented error class, the model bit for bit as before: state, modules, hooks, modes,
configs, outputs), *damaging* (an error, but the model changed), *silently accepted* (no error), *raw error* (an error
class that is not the documented one, e.g. KeyError). The goal is 0 damaging, 0 silently accepted, 0 raw.
"""

from __future__ import annotations

import collections
import copy
import sys
import tempfile
import warnings
from pathlib import Path

TESTS = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(TESTS))

BEGIN, END = "<!-- ATTACK:BEGIN -->", "<!-- ATTACK:END -->"
DOC = TESTS.parent / "docs" / "reliability.md"


def _classify(expected: type | tuple, load, before_fingerprint, model, fingerprint, assert_same) -> str:
    try:
        load()
    except BaseException as error:  # noqa: BLE001 - classified below
        if not isinstance(error, expected):
            return f"raw error ({type(error).__name__})"
        try:
            assert_same(before_fingerprint, fingerprint(model))
        except AssertionError:
            return "damaging"
        return "clear error"
    return "silently accepted"


def run() -> tuple[collections.Counter, list[str]]:
    import torch
    from methods import METHOD_CASES, method_config
    from peft import PeftModel, get_peft_model, get_peft_model_state_dict, set_peft_model_state_dict
    from test_landing import DAMAGE, _as_loaded
    from test_reliability import ENTRIES, SAME_NAME, assert_same, fingerprint, gen, set_up
    from tiny_models import TINY_BACKBONES, pixel_values

    import gated_vpt

    counts: collections.Counter = collections.Counter()
    bad: list[str] = []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        targets = sorted({case.target for case in gen.CASES})
        world = {"pristine": {t: TINY_BACKBONES[t]() for t in targets}, "references": {}, "expected": {}}
        for target in targets:
            world["references"][target] = root / f"_reference_{target}"
            gen.save_reference(world["references"][target], target)
            with torch.no_grad():
                loaded = PeftModel.from_pretrained(
                    copy.deepcopy(world["pristine"][target]), world["references"][target]
                )
                world["expected"][target] = loaded.eval()(pixel_values()).logits
        for case in gen.CASES:
            folder = gen.make_case_folder(case, root, world["references"]["vit"])
            for entry in ENTRIES:
                if entry == SAME_NAME and not case.weights_only_entry:
                    continue
                model, load, _ = set_up(entry, world, case.target)
                before = fingerprint(model)
                expected = getattr(gated_vpt, case.error)
                verdict = _classify(
                    expected, lambda load=load, folder=folder: load(folder), before, model, fingerprint, assert_same
                )
                counts[verdict] += 1
                if verdict != "clear error":
                    bad.append(f"{case.id} / {entry}: {verdict}")
        for method in sorted(METHOD_CASES):
            for damage, (pick, make, _) in sorted(DAMAGE.items()):
                for path in ("set_peft_model_state_dict", "load_state_dict"):
                    base = TINY_BACKBONES["vit"]()
                    config = method_config(method, base, visible=True, modules_to_save=["classifier"])
                    model = get_peft_model(base, config).eval()
                    saved = get_peft_model_state_dict(model)
                    key = pick(saved)
                    hostile = {**saved, key: make(saved[key])}
                    if path == "load_state_dict":
                        hostile = _as_loaded(hostile)

                        def load(model=model, hostile=hostile):
                            return model.load_state_dict(hostile, strict=False)
                    else:

                        def load(model=model, hostile=hostile):
                            return set_peft_model_state_dict(model, hostile)

                    before = fingerprint(model)
                    verdict = _classify(gated_vpt.AdapterWeightsError, load, before, model, fingerprint, assert_same)
                    counts[verdict] += 1
                    if verdict != "clear error":
                        bad.append(f"state dict {method} / {damage} / {path}: {verdict}")
    return counts, bad


def render(counts: collections.Counter, bad: list[str]) -> str:
    total = sum(counts.values())
    rows = ["| outcome | inputs |", "|---|---|"]
    for outcome in ("clear error", "damaging", "silently accepted"):
        rows.append(f"| {outcome} | {counts.get(outcome, 0)} |")
    raw = sum(v for k, v in counts.items() if k.startswith("raw error"))
    rows.append(f"| raw error | {raw} |")
    rows.append(f"| **total** | **{total}** |")
    text = (
        f"`python tests/scripts/attack.py --write` ran {total} hostile inputs (every damaged folder of the table above "
        "through every loading entry point, and every hostile state dict of `tests/test_landing.py` for every method "
        "through `set_peft_model_state_dict` and `load_state_dict`), comparing the model bit for bit after each "
        "refusal:\n\n" + "\n".join(rows)
    )
    if bad:
        text += "\n\nNot a clear error:\n\n" + "\n".join(f"- {line}" for line in bad)
    return text


def main(argv: list[str]) -> int:
    warnings.simplefilter("ignore")
    import torch

    torch.set_num_threads(1)
    counts, bad = run()
    text = render(counts, bad)
    print(text)
    if "--write" in argv:
        current = DOC.read_text(encoding="utf-8")
        head, _, rest = current.partition(BEGIN)
        _, _, tail = rest.partition(END)
        DOC.write_text(f"{head}{BEGIN}\n{text}\n{END}{tail}", encoding="utf-8")
    return 0 if not bad else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
