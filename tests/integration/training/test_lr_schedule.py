"""Two gloo CPU processes follow the one-process cosine schedule (accelerate steps a
prepared scheduler once per process per call unless the schedule is laid out for it)."""

import json
import math
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).parents[3]
PROBE = Path(__file__).with_name("lr_probe.py")


def lr_marks(processes: int, *flags: str) -> dict:
    with socket.socket() as probe:  # a free port: a fixed one can still be held by the
        probe.bind(("127.0.0.1", 0))  # previous run's store on a loaded machine
        port = probe.getsockname()[1]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(processes),
           "--master_port", str(port), str(PROBE), *flags]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "RLHF_LOG_LEVEL": "warning",
           "PYTHONPATH": str(REPO)}
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads([ln for ln in proc.stdout.splitlines() if ln.startswith("{")][-1])


def cosine(step: int, total: int) -> float:
    """lr at update ``step`` (0-based) of ``total``: 0.1 + 0.9 · ½(1 + cos(π·step/total))."""
    return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * step / total))


def test_two_processes_follow_the_one_process_schedule():
    one, two = lr_marks(1), lr_marks(2)
    assert one["steps"] == two["steps"] == 32  # 2 epochs × 64 examples / batch 4
    # hand-computed: update 8 (25 %) uses step 7 → 0.1 + 0.45 (1 + cos(7π/32)) = 0.8838;
    # 50 %: step 15 → 0.5442; 75 %: step 23 → 0.2022; 100 %: step 31 → 0.1020
    expected = {f"{q}%": cosine(round(32 * q / 100) - 1, 32) for q in (25, 50, 75, 100)}
    for key, lr in expected.items():
        assert one[key] == pytest.approx(lr) and two[key] == pytest.approx(lr), key


def test_without_the_fix_two_processes_reach_the_floor_halfway():
    # what SFT did before: a schedule of 32 steps stepped twice per update
    two = lr_marks(2, "--processes-ignored")
    assert two["50%"] == pytest.approx(cosine(31, 32), abs=0.01)  # ≈ the 10 % floor
    assert two["100%"] > 0.9  # …and the cosine swung back up to the peak
