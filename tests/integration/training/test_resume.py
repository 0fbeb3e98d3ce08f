"""A run SIGKILLed mid-way and resumed ends where an uninterrupted run ends.

Each recipe runs as ``python -m training.cli`` (the command the cycle runs) with
``checkpoint_every: 2``; the interrupted run SIGKILLs itself after update 5
(``RLHF_FAULT_KILL_AT_UPDATE``), so update 5 is lost and redone from the state saved at
update 4. On CPU with the same data order, RNG and optimiser state the weights must match
the uninterrupted run's to float rounding.
"""

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from safetensors.torch import load_file

from core.registry import Registry
from training.checkpoint import KILL_AT_ENV
from training.config import DEMO_CONFIG_DIR

REPO = Path(__file__).parents[3]


def train(recipe: str, config: Path, db: str, registry: Path, *, resume: bool = False,
          kill_at: int | None = None) -> subprocess.CompletedProcess:
    """The recipe's CLI in its own process group; output through files, and whatever it
    left behind (a SIGKILLed trainer's vLLM engine processes) killed with the group."""
    cmd = [sys.executable, "-m", "training.cli", recipe, "--config", str(config),
           "--database-url", db, "--registry", str(registry), "--no-announce",
           *(["--resume"] if resume else [])]
    env = {**os.environ, "RLHF_LOG_LEVEL": "warning", "OMP_NUM_THREADS": "1"}
    env.pop(KILL_AT_ENV, None)
    if kill_at is not None:
        env[KILL_AT_ENV] = str(kill_at)
    out, err = (registry.parent / f"{registry.name}-{recipe}.{s}" for s in ("out", "err"))
    with out.open("w") as o, err.open("w") as e:
        proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=o, stderr=e,
                                start_new_session=True)
        try:
            code = proc.wait(timeout=300)
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
    return subprocess.CompletedProcess(cmd, code, out.read_text(), err.read_text())


@pytest.mark.parametrize("recipe,overrides,version", [
    ("sft", {"epochs": 3, "batch_size": 8}, "policy-0001"),
    ("reward", {"epochs": 2, "groups_per_batch": 8}, "reward-0001"),
])
def test_a_killed_run_resumes_to_the_uninterrupted_result(store, tiny_base, tmp_path, recipe,
                                                          overrides, version):
    cfg = yaml.safe_load((DEMO_CONFIG_DIR / f"{recipe}.yaml").read_text())
    cfg.update(max_len=48, progress=False, checkpoint_every=2, **overrides)
    config = tmp_path / f"{recipe}.yaml"
    config.write_text(yaml.safe_dump(cfg))
    db = f"sqlite:///{tmp_path / 'feedback.db'}"
    roots = {name: tmp_path / name for name in ("straight", "killed")}
    for root in roots.values():
        Registry(root).register_base(tiny_base)

    done = train(recipe, config, db, roots["straight"])
    assert done.returncode == 0, done.stderr[-3000:]
    steps = json.loads(done.stdout.strip().splitlines()[-1])["metrics"]["steps"]
    assert steps >= 7  # update 5 is killed, and at least two more follow the resume

    killed = train(recipe, config, db, roots["killed"], kill_at=5)
    assert killed.returncode == -signal.SIGKILL
    saved = next((roots["killed"] / "checkpoints").iterdir()) / "state"
    assert json.loads((saved / "progress.json").read_text())["step"] == 4
    assert version not in [m.version for m in Registry(roots["killed"]).list(
        version.split("-")[0])]

    resumed = train(recipe, config, db, roots["killed"], resume=True)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    out = json.loads(resumed.stdout.strip().splitlines()[-1])
    assert out["version"] == version and out["metrics"]["steps"] == steps
    assert not (roots["killed"] / "checkpoints" / saved.parent.name).exists()

    a = load_file(Registry(roots["straight"]).path(version) / "model.safetensors")
    b = load_file(Registry(roots["killed"]).path(version) / "model.safetensors")
    assert a.keys() == b.keys()
    assert max((a[k] - b[k]).abs().max().item() for k in a) < 1e-6


def test_a_killed_ppo_run_resumes_to_the_uninterrupted_result(store, tiny_base, tmp_path):
    """PPO also restores β, the prompt and ptx draws and the engine's weights (synced from
    the restored policy), and vLLM samples with per-step seeds: the same episodes follow."""
    db = f"sqlite:///{tmp_path / 'feedback.db'}"
    rm = yaml.safe_load((DEMO_CONFIG_DIR / "reward.yaml").read_text())
    rm.update(max_len=48, progress=False, epochs=1)
    (tmp_path / "reward.yaml").write_text(yaml.safe_dump(rm))
    straight = tmp_path / "straight"
    Registry(straight).register_base(tiny_base)
    done = train("reward", tmp_path / "reward.yaml", db, straight)
    assert done.returncode == 0, done.stderr[-3000:]
    killed = tmp_path / "killed"
    shutil.copytree(straight, killed)

    cfg = yaml.safe_load((DEMO_CONFIG_DIR / "ppo.yaml").read_text())
    cfg.update(progress=False, checkpoint_every=2, batch_size=8, minibatch_size=4,
               episodes=56, max_new_tokens=12, eval_max_prompts=4, kl_target=1.0,
               ema_decay=0.5)
    config = tmp_path / "ppo.yaml"
    config.write_text(yaml.safe_dump(cfg))

    done = train("ppo", config, db, straight)
    assert done.returncode == 0, done.stderr[-3000:]
    first = train("ppo", config, db, killed, kill_at=5)
    assert first.returncode == -signal.SIGKILL
    again = train("ppo", config, db, killed, resume=True)
    assert again.returncode == 0, again.stderr[-3000:]

    a, b = (json.loads(p.stdout.strip().splitlines()[-1]) for p in (done, again))
    assert a["version"] == b["version"] == "policy-0001"
    assert a["metrics"]["steps"] == b["metrics"]["steps"] == 7
    wa = load_file(Registry(straight).path("policy-0001") / "model.safetensors")
    wb = load_file(Registry(killed).path("policy-0001") / "model.safetensors")
    assert max((wa[k] - wb[k]).abs().max().item() for k in wa) < 1e-5
    assert b["metrics"]["train_reward_mean"] == pytest.approx(a["metrics"]["train_reward_mean"],
                                                              abs=1e-5)
