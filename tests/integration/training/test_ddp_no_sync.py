"""Two gloo processes: micro-batches all-reduce once per optimiser step, not once per
backward, and the synced gradient is the whole batch's (``ddp_probe.py``)."""

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).parents[3]


def test_micro_batches_all_reduce_once_per_step_under_ddp(tiny_base):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
           str(Path(__file__).with_name("ddp_probe.py")), str(tiny_base)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["processes"] == 2
    sft, ppo = result["sft"], result["ppo"]
    # 4 rows in micro-batches of 1 = 4 backwards, but the buckets go out once
    assert sft["whole_allreduces"] >= 1
    assert sft["micro_allreduces"] == sft["whole_allreduces"]
    assert sft["grad_diff"] < 1e-5
    # PPO: 3 episode backwards + 2 ptx backwards; the policy syncs on the last ptx one,
    # the value model on the last episode one
    assert min(ppo["whole_allreduces"]) >= 1
    assert ppo["micro_allreduces"] == ppo["whole_allreduces"]
    assert ppo["grad_diff"] < 1e-5
