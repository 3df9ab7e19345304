"""DDP training works unchanged: 2 CPU processes (gloo) end with identical adapters, equal to one process on the
same global batch, and DDP's unused-parameter check passes (no parameter without a gradient). Both by hand
(`DistributedDataParallel` under torchrun) and through the HF `Trainer` under `accelerate launch` and torchrun."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

import psutil
import pytest
import torch
from methods import METHOD_CASES
from peft import PeftModel
from safetensors.torch import load_file
from tiny_models import tiny_vit

from gated_vpt.prompting.registration import registered_prompt_methods

SCRIPT = Path(__file__).parent / "scripts" / "ddp_train.py"
TRAINER_SCRIPT = Path(__file__).parent / "scripts" / "trainer_train.py"


def run(args: list[str], cwd: Path, timeout: float = 300, env: dict[str, str] | None = None, attempts: int = 2) -> str:
    """Run `python *args`; fail unless it exits 0. Returns its stdout and stderr.

    A launch that outlives `timeout` is killed with every process it started and tried again, `attempts` times in
    all: now and then (about once in a few dozen CI runs) one gloo rank never returns from its teardown after
    training and saving are done, which is torch's, not the adapter's, and must neither hang CI nor go unnoticed
    when it repeats."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", **(env or {})}
    for attempt in range(1, attempts + 1):
        # Output to files, not pipes: a worker that survives its launcher would hold a pipe open and block the
        # read forever. A session of its own keeps the launch out of pytest's process group.
        log_path = cwd / f"launch-{os.getpid()}-{attempt}.log"
        with log_path.open("w") as log:
            process = subprocess.Popen(
                [sys.executable, *args], cwd=cwd, env=env, stdout=log, stderr=subprocess.STDOUT, text=True,
                start_new_session=True,
            )
            try:
                process.wait(timeout=timeout)
                timed_out = False
            except subprocess.TimeoutExpired:
                kill_tree(process)
                timed_out = True
                warnings.warn(f"launch {attempt} of {attempts} timed out after {timeout} s; killed", stacklevel=2)
        output = log_path.read_text()
        if not timed_out:
            assert process.returncode == 0, output[-6000:]
            return output
    pytest.fail(f"timed out after {timeout} s, {attempts} times:\n{output[-4000:]}")


def kill_tree(process: subprocess.Popen) -> None:
    """Kill a launcher and all its descendants. torchrun starts each worker in a session of its own, so killing
    the launcher's process group would miss them; walking the process tree (before the launcher dies) does not."""
    launcher = psutil.Process(process.pid)
    victims = [launcher, *launcher.children(recursive=True)]
    for victim in victims:
        with contextlib.suppress(psutil.NoSuchProcess):
            victim.kill()
    psutil.wait_procs(victims, timeout=30)
    process.wait()


def test_run_kills_a_hung_launch_with_its_detached_workers_and_retries(tmp_path):
    # A stand-in for a torchrun launcher waiting on a worker (in a session of its own) that never exits.
    launcher = tmp_path / "hung_launcher.py"
    launcher.write_text(
        "import os, subprocess, sys\n"
        "worker = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(600)'], start_new_session=True)\n"
        "open(f'worker-{worker.pid}.pid', 'w').close()\n"
        "print('training done', flush=True)\n"
        "worker.wait()\n"
    )
    with pytest.warns(UserWarning, match="timed out"), pytest.raises(pytest.fail.Exception, match="2 times"):
        run([str(launcher)], tmp_path, timeout=5)
    workers = [int(path.stem.split("-")[1]) for path in tmp_path.glob("worker-*.pid")]
    assert len(workers) == 2  # tried twice
    for pid in workers:
        assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE, pid


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
    # the adapter's own tensors are there, not only the head
    prefix = registered_prompt_methods()[METHOD_CASES[method].peft_type][1]
    assert any(prefix in n for n in rank0), list(rank0)


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
