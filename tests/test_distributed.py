"""DDP training works unchanged: 2 CPU processes (gloo) end with identical adapters, equal to one process on the
same global batch, and DDP's unused-parameter check passes (no parameter without a gradient). Both by hand
(`DistributedDataParallel` under torchrun) and through the HF `Trainer` under `accelerate launch` and torchrun."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from methods import METHOD_CASES
from peft import PeftModel
from safetensors.torch import load_file
from tiny_models import tiny_vit

SCRIPT = Path(__file__).parent / "scripts" / "ddp_train.py"
TRAINER_SCRIPT = Path(__file__).parent / "scripts" / "trainer_train.py"


def run(args: list[str], cwd: Path, timeout: float = 600, env: dict[str, str] | None = None) -> str:
    """Run `python *args`; fail unless it exits 0. Returns its stdout and stderr."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", **(env or {})}
    # A session of its own, so that on timeout torchrun's workers die with it instead of waiting forever on gloo.
    process = subprocess.Popen(
        [sys.executable, *args], cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        start_new_session=True,
    )
    try:
        stdout, stderr = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        stdout, stderr = process.communicate()
        pytest.fail(f"timed out after {timeout} s:\n{stdout[-2000:]}\n{stderr[-2000:]}")
    assert process.returncode == 0, stdout[-3000:] + stderr[-3000:]
    return stdout + stderr


METHODS = sorted(METHOD_CASES)  # the method case table (tests/methods.py)


@pytest.mark.parametrize("method", METHODS)
def test_ddp_two_processes_match_single_process_training(tmp_path, method):
    ddp_dir, single_dir = tmp_path / "ddp", tmp_path / "single"
    run(
        ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", str(SCRIPT), str(ddp_dir),
         "--method", method],
        tmp_path,
    )
    run([str(SCRIPT), str(single_dir), "--single", "--method", method], tmp_path)
    rank0, rank1 = load_file(ddp_dir / "rank0.safetensors"), load_file(ddp_dir / "rank1.safetensors")
    single = load_file(single_dir / "rank0.safetensors")
    assert rank0.keys() == rank1.keys() == single.keys()
    for name in rank0:
        assert torch.equal(rank0[name], rank1[name]), name  # DDP keeps the replicas identical
        torch.testing.assert_close(rank0[name], single[name], rtol=1e-4, atol=1e-5, msg=name)
    # the run moved the adapter (a test that cannot pass on untrained weights)
    assert any("gpt_gate_logits" in n or "cdc_" in n for n in rank0)


# `accelerate launch --cpu --num_processes 2` starts ONE process: accelerate 1.15 runs several CPU processes only
# through mpirun (`--mpirun_hostfile`). `--multi_gpu` is its torchrun launcher, which also works without GPUs; the
# Trainer's `use_cpu=True` then makes the run MULTI_CPU with gloo. `--main_process_port 0`: any free port.
TRAINER_LAUNCHERS = {
    "accelerate": (
        "-m accelerate.commands.launch --multi_gpu --num_processes 2 --num_machines 1 --mixed_precision no"
        " --dynamo_backend no --main_process_port 0"
    ).split(),
    "torchrun": "-m torch.distributed.run --standalone --nproc_per_node 2".split(),
}


@pytest.mark.parametrize("launcher", sorted(TRAINER_LAUNCHERS))
def test_trainer_two_processes_match_single_process_training(tmp_path, launcher):
    # No accelerate config from the user's cache (`accelerate config` state): only the flags above count.
    env = {"HF_HOME": str(tmp_path / "hf_home"), "HF_HUB_OFFLINE": "1"}
    ddp_dir, single_dir = tmp_path / "ddp", tmp_path / "single"
    output = run([*TRAINER_LAUNCHERS[launcher], str(TRAINER_SCRIPT), str(ddp_dir)], tmp_path, env=env)
    # neither DDP's unused-parameter error nor its "find_unused_parameters=True ... did not find any" warning
    assert "find_unused_parameters" not in output, output[-3000:]
    run([str(TRAINER_SCRIPT), str(single_dir)], tmp_path, env=env)

    # the launcher really ran two DDP processes (per-device batch 4) against one process with batch 8
    for rank in (0, 1):
        facts = json.loads((ddp_dir / f"rank{rank}.json").read_text())
        assert facts == {
            "world_size": 2,
            "distributed_type": "DistributedType.MULTI_CPU",
            "backend": "gloo",
            "wrapper": "DistributedDataParallel",
            "find_unused_parameters": False,
            "global_step": 4,
            "per_device_batch": 4,
        }, facts
    single_facts = json.loads((single_dir / "rank0.json").read_text())
    assert single_facts["world_size"] == 1 and single_facts["per_device_batch"] == 8, single_facts

    rank0, rank1 = load_file(ddp_dir / "rank0.safetensors"), load_file(ddp_dir / "rank1.safetensors")
    single, init = load_file(single_dir / "rank0.safetensors"), load_file(ddp_dir / "init.safetensors")
    assert rank0.keys() == rank1.keys() == single.keys() == init.keys()
    assert any("gpt_gate_logits" in n for n in rank0) and any("gpt_prompts" in n for n in rank0)
    assert any("classifier.modules_to_save" in n for n in rank0)
    for name in rank0:
        assert torch.equal(rank0[name], rank1[name]), name  # DDP keeps the replicas identical
        torch.testing.assert_close(rank0[name], single[name], rtol=1e-4, atol=1e-5, msg=name)
        assert not torch.equal(rank0[name], init[name]), name  # every trainable tensor moved

    # the adapter rank 0 saved with `save_pretrained` loads back to the trained weights
    loaded = dict(PeftModel.from_pretrained(tiny_vit(), ddp_dir / "adapter").named_parameters())
    for name in rank0:
        torch.testing.assert_close(loaded[name], rank0[name], rtol=0, atol=0, msg=name)
