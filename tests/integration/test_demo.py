"""`rlhf demo` end to end on the real stack, with a small budget.

The real CLI starts `rlhf up` (broker, server, ingester, deploy controller, periodic
training cycles) in a fresh home; simulated labelers demonstrate and rank through the
public API; the platform's cycle trains SFT on the demonstrations, the controller runs
the SFT gates and promotes it, the cycle trains a reward model and a PPO candidate from
the SFT (KL-anchored to it), the controller gates and promotes it, the servers swap. The test stops
after that first gated promotion and checks the table, the PNG, the JSON summary and that
the exit code agrees with the verdict.
"""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from rlhf.demo import DEMO_CONFIGS

pytestmark = [pytest.mark.engine, pytest.mark.kafka, pytest.mark.timeout(900)]


@pytest.fixture
def small_configs(tmp_path) -> Path:
    """The demo's recipes with a shorter PPO run (2 steps), so one cycle fits the test."""
    out = tmp_path / "configs"
    shutil.copytree(DEMO_CONFIGS, out)
    ppo = yaml.safe_load((out / "ppo.yaml").read_text())
    (out / "ppo.yaml").write_text(yaml.safe_dump({**ppo, "episodes": 32}))
    return out


def test_demo_completes_one_cycle_and_reports(tmp_path, small_configs):
    home, out = tmp_path / "home", tmp_path / "out"
    run = subprocess.run(
        [sys.executable, "-m", "rlhf", "demo", "--home", str(home), "--out", str(out),
         "--budget-minutes", "10", "--stop-after-promotions", "1",
         "--config-dir", str(small_configs), "--min-new-rankings", "32"],
        capture_output=True, text=True, timeout=840)
    assert run.returncode in (0, 1), run.stdout[-3000:] + run.stderr[-3000:]
    summary = json.loads((out / "demo.json").read_text())
    versions = {v["version"]: v for v in summary["versions"]}

    # One full cycle: base → SFT (the cycle's, through its gates) → PPO that passed its.
    assert versions["policy-0000"]["recipe"] == "base"
    sft = next(v for v in versions.values() if v["recipe"] == "sft")
    assert sft["gates"] == "passed" and sft["live_at_s"] is not None
    assert sft["gate_detail"].startswith("loss ")  # held-out LM loss vs the base's
    ppo = [v for v in versions.values() if v["recipe"] == "ppo" and v["gates"] == "passed"]
    assert ppo and ppo[0]["live_at_s"] is not None
    assert ppo[0]["rm_accuracy"] is not None and ppo[0]["kl"] is not None
    assert ppo[0]["reference"] == sft["version"]  # KL to the SFT, not to the parent
    assert "Δr " in ppo[0]["gate_detail"] and "[" in ppo[0]["gate_detail"]
    # …and the server swapped to it.
    assert f"Now serving {ppo[0]['version']}" in (home / "logs" / "serve.log").read_text()

    # The exit code is the verdict, and the verdict is the table's numbers.
    verdict = summary["verdict"]
    live = next(v for v in versions.values() if v["state"] == "live")
    assert verdict["live"] == live["version"]
    assert verdict["beats_first"] == (
        live["version"] != "policy-0000"
        and live["hidden_score"] > versions["policy-0000"]["hidden_score"]
        and live["win_rate"] > 0.5)
    assert run.returncode == (0 if verdict["beats_first"] else 1)
    assert "Policies on held-out prompts" in run.stdout
    assert (out / "demo.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # The platform was stopped: its children are gone.
    left = subprocess.run(["pgrep", "-f", str(home)], capture_output=True, text=True)
    assert left.stdout.strip() == ""
