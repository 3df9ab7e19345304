"""DDP training works unchanged: 2 CPU processes (gloo) end with identical adapters, equal to one process on the
same global batch, and DDP's unused-parameter check passes (no parameter without a gradient)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import gated_vpt

SCRIPT = Path(__file__).parent / "scripts" / "ddp_train.py"


def run(args: list[str], cwd: Path, timeout: float = 600) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
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


METHODS = ["gpt"] + (["cdc"] if hasattr(gated_vpt, "CDCPromptConfig") else [])


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
