"""One training cycle (SFT → reward model → PPO) on a model, timed, with peak memory.

    python benchmarks/cycle.py [--model small|tiny|DIR] [--micro-batch 4] [--out benchmarks/out]

A fresh SQLite store gets synthetic feedback (``training.synthetic``: 96 ranked prompts,
K = 2…5, and 64 demonstrations), the model is registered as the base, and each recipe
runs as its own ``python -m training.cli <recipe>`` process with the demo configs
(``training/configs/demo``) plus ``micro_batch_size``: the same commands the cycle runs.
For each recipe the table gives the wall seconds, the peak RSS of its process tree (the
trainer plus, for PPO, vLLM's engine processes; sampled every 0.2 s) and the metrics the
manifest records. Random weights: this measures cost, not learning.

CPU-heavy; on a shared machine run it under the heavy-jobs lock. Not a test.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

SHOWN = {"sft": ("eval_loss_start", "eval_loss", "steps"),
         "reward": ("eval_accuracy", "steps", "comparisons_per_s"),
         "ppo": ("eval_reward_parent", "eval_reward", "kl_to_ref", "rollout_tokens_per_s",
                 "weight_sync_s_mean")}


def tree_peak(proc: subprocess.Popen, done: threading.Event) -> list[float]:
    """Peak of the summed RSS (MB) of ``proc`` and its descendants, sampled until done."""
    import psutil

    peak = [0.0]

    def sample() -> None:
        root = psutil.Process(proc.pid)
        while not done.is_set():
            try:
                procs = [root, *root.children(recursive=True)]
                total = sum(p.memory_info().rss for p in procs if p.is_running())
                peak[0] = max(peak[0], total / 2**20)
            except psutil.Error:
                pass
            time.sleep(0.2)

    threading.Thread(target=sample, daemon=True).start()
    return peak


def build(model: str, work: Path) -> Path:
    if model == "small":
        from training.small_model import build_small_model

        return build_small_model(work / "small")
    if model == "tiny":
        from training.tiny_model import build_tiny_model

        return build_tiny_model(work / "tiny")
    return Path(model)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="small")
    ap.add_argument("--micro-batch", type=int, default=4)
    ap.add_argument("--ppo-episodes", type=int, default=32)
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks" / "out")
    args = ap.parse_args()

    from core.registry import Registry
    from feedback.store import FeedbackStore
    from training.config import DEMO_CONFIG_DIR
    from training.synthetic import synthetic_demonstrations, synthetic_rankings

    work = Path(tempfile.mkdtemp(prefix="rlhf-cycle-"))
    base = build(args.model, work)
    registry = work / "registry"
    Registry(registry).register_base(base)
    db = f"sqlite:///{work / 'feedback.db'}"
    store = FeedbackStore(db)
    store.migrate()
    store.persist(synthetic_rankings(96, k_min=2, k_max=5, seed=1))
    store.persist(synthetic_demonstrations(64, seed=2))
    store.close()

    rows = []
    print(f"model {base} | micro-batch {args.micro_batch}", flush=True)
    for recipe in ("sft", "reward", "ppo"):
        cfg = yaml.safe_load((DEMO_CONFIG_DIR / f"{recipe}.yaml").read_text())
        cfg.update(micro_batch_size=args.micro_batch, progress=False)
        if recipe == "ppo":
            cfg.update(episodes=args.ppo_episodes)
        path = work / f"{recipe}.yaml"
        path.write_text(yaml.safe_dump(cfg))
        env = {**os.environ, "RLHF_LOG_LEVEL": "warning"}
        t0 = time.perf_counter()
        done = threading.Event()
        proc = subprocess.Popen(
            [sys.executable, "-m", "training.cli", recipe, "--config", str(path),
             "--database-url", db, "--registry", str(registry), "--no-announce"],
            cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        peak = tree_peak(proc, done)
        out, err = proc.communicate()
        done.set()
        seconds = time.perf_counter() - t0
        if proc.returncode:
            print(f"{recipe}: failed\n{err[-2000:]}", flush=True)
            rows.append({"recipe": recipe, "error": err[-500:]})
            break
        result = json.loads(out.strip().splitlines()[-1])
        shown = {k: result["metrics"].get(k) for k in SHOWN[recipe]}
        rows.append({"recipe": recipe, "version": result["version"], "seconds": seconds,
                     "peak_rss_mb": peak[0], **shown})
        print(f"{recipe:7} {result['version']:12} {seconds:7.1f} s  peak {peak[0]:7.0f} MB  "
              + "  ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}"
                          for k, v in shown.items()), flush=True)
    total = sum(r.get("seconds", 0) for r in rows)
    print(f"cycle   {total:.1f} s", flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"cycle-{Path(str(args.model)).name}.json").write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
