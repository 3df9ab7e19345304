"""Importing gated-vpt changes nothing for a user of other PEFT methods: a LoRA adapter saved, carded, loaded (through
PEFT and transformers) and refused gives the same files, outputs and errors with and without `import gated_vpt`.
Each run is a fresh interpreter, so nothing imported by the test process leaks into the comparison.

(What is no adapter at all, an unparseable adapter_config.json or a Hub repo that can be neither downloaded nor found
in the cache, gets gated-vpt's clear error once it is imported, for every method: whether it is one of ours cannot be
known without reading it. docs/reliability.md says so.)"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parent

SCRIPT = textwrap.dedent(
    """
    import hashlib, json, os, sys, warnings
    from pathlib import Path

    warnings.simplefilter("ignore")
    sys.path.insert(0, {tests!r})
    if os.environ["WITH_GATED_VPT"] == "1":
        import gated_vpt  # noqa: F401
    import torch
    from peft import LoraConfig, PeftModel, get_peft_model
    from tiny_models import TINY_BACKBONES, pixel_values

    root = Path(sys.argv[1])
    report = {{}}

    def attempt(name, call):
        try:
            call()
            report[name] = "loaded"
        except Exception as error:  # the error a user sees, with the run's folder taken out
            report[name] = f"{{type(error).__name__}}: {{str(error).replace(str(root), '<root>')[:300]}}"

    def logits(model):
        with torch.no_grad():
            return model.eval()(pixel_values()).logits.tolist()

    torch.manual_seed(0)
    config = LoraConfig(target_modules=["q_proj", "v_proj"], init_lora_weights=False, modules_to_save=["classifier"])
    model = get_peft_model(TINY_BACKBONES["vit"](), config)
    model.save_pretrained(root / "lora")
    report["files"] = {{f.name: hashlib.sha256(f.read_bytes()).hexdigest() for f in sorted((root / "lora").iterdir())}}
    report["trained"] = logits(model)
    loaded = PeftModel.from_pretrained(TINY_BACKBONES["vit"](), root / "lora")
    report["loaded"] = logits(loaded)
    loaded.load_adapter(root / "lora", adapter_name="second")
    loaded.set_adapter("second")
    report["second"] = logits(loaded)
    base = TINY_BACKBONES["vit"]()
    base.load_adapter(str(root / "lora"))
    report["transformers"] = logits(base)
    # LoRA adapters that do not load: PEFT's and transformers' own errors
    import shutil

    shutil.copytree(root / "lora", root / "no-weights")
    (root / "no-weights" / "adapter_model.safetensors").unlink()
    attempt("weights-missing", lambda: PeftModel.from_pretrained(TINY_BACKBONES["vit"](), root / "no-weights"))
    attempt("weights-missing-transformers", lambda: TINY_BACKBONES["vit"]().load_adapter(str(root / "no-weights")))
    shutil.copytree(root / "lora", root / "other-rank")
    saved = json.loads((root / "other-rank" / "adapter_config.json").read_text())
    (root / "other-rank" / "adapter_config.json").write_text(json.dumps({{**saved, "r": 4}}))
    attempt("rank-mismatch", lambda: PeftModel.from_pretrained(TINY_BACKBONES["vit"](), root / "other-rank"))
    print(json.dumps(report))
    """
).format(tests=str(TESTS))


def _run(with_gated_vpt: bool, tmp_path: Path) -> dict:
    root = tmp_path / ("with" if with_gated_vpt else "without")
    root.mkdir()
    # PYTHONHASHSEED: LoRA saves `target_modules`, a set, in hash order
    env = {**os.environ, "WITH_GATED_VPT": "1" if with_gated_vpt else "0", "HF_HUB_OFFLINE": "1", "PYTHONHASHSEED": "0"}
    result = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(root)], capture_output=True, text=True, env=env, timeout=300
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("isolation")
    return _run(False, tmp_path), _run(True, tmp_path)


@pytest.mark.parametrize(
    "keys",
    [
        pytest.param(["files"], id="files"),
        pytest.param(["trained", "loaded", "second", "transformers"], id="outputs"),
        pytest.param(["weights-missing", "weights-missing-transformers", "rank-mismatch"], id="errors"),
    ],
)
def test_a_lora_user_sees_the_same_with_and_without_importing_gated_vpt(runs, keys):
    without, with_ = runs
    for key in keys:
        assert with_[key] == without[key], (key, without[key], with_[key])
    if "rank-mismatch" in keys:
        assert all(without[key] != "loaded" for key in keys)
