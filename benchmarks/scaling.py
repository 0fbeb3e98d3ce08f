"""How each cost of the loop grows with model size: serving, one PPO iteration, weight
sync, hot-swap, checkpoint write/verify, trainer and engine memory, with and without LoRA.

    python benchmarks/scaling.py [--sizes tiny,10m,50m,120m] [--out benchmarks/out]

For each size (``rlhf model tiny --size …``: random-init Llama shapes, the same tokenizer)
two fresh child processes run, so each one's peak RSS is its own:

* full: vLLM ``RolloutEngine`` in-process; serving throughput (``--prompts`` prompts,
  ``--tokens`` sampled tokens each, one batch); one PPO iteration broken into rollout,
  scoring (reward model), old-logprob pass (policy, reference, values), update (one
  clipped-PPO + value minibatch step, AdamW) and weight sync, one-message vs bucketed
  (``--bucket-mb``); hot-swap (vLLM in-place ``reload_weights`` from a checkpoint
  directory, the serving swap path); checkpoint write (``Registry.create_version``: copy +
  hashes) and verify (``Registry.verify``); peak RSS of the trainer and of the engine's
  processes (VmHWM).
* lora: the same models with LoRA r=16 on q/v, the reference = adapters disabled, the
  value head on the reward model's frozen backbone: update time and trainer peak RSS
  (no engine: that one is the same as above).

Prints a table, writes ``scaling.json`` and a log-log PNG of each cost against the
parameter count with the fitted exponent (slope) per cost. CPU-heavy and not part of the
test suite; on a shared machine run it under the heavy-jobs lock.
"""

from __future__ import annotations

import argparse
import json
import math
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

COSTS = ["serve_tokens_per_s", "rollout_s", "score_s", "old_logprob_s", "update_s",
         "sync_one_message_s", "sync_bucketed_s", "swap_s", "checkpoint_write_s",
         "checkpoint_verify_s", "trainer_peak_rss_mb", "engine_peak_rss_mb",
         "lora_update_s", "lora_trainer_peak_rss_mb"]


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def children_peak_rss_mb() -> float:
    """Sum of VmHWM over this process's descendants (the engine core and its workers)."""
    import psutil

    total = 0.0
    for child in psutil.Process().children(recursive=True):
        try:
            for line in Path(f"/proc/{child.pid}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    total += int(line.split()[1]) / 1024
        except (FileNotFoundError, ProcessLookupError):
            continue
    return total


def models(path: Path, lora_on: bool):
    """(policy, reference, value model, reward model) as PPO holds them."""
    import torch
    from transformers import AutoModelForCausalLM

    from training import lora
    from training.config import LoraSettings
    from training.recipes.ppo import ValueModel, shared_value_model
    from training.reward_model import RewardModel

    policy = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    rm = RewardModel.from_causal_lm(path).eval().requires_grad_(False)
    if lora_on:
        policy = lora.wrap(policy, LoraSettings(r=16, alpha=32, target_modules=["q_proj",
                                                                                "v_proj"]))
        return policy, lora.AdaptersDisabled(policy), shared_value_model(rm), rm
    ref = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    ref.requires_grad_(False)
    return policy, ref, ValueModel(RewardModel.from_causal_lm(path)), rm


def ppo_step(policy, ref, value_model, rm, samples, pad_id: int) -> dict[str, float]:
    """Scoring, old-logprob pass and one update on ``samples``; seconds of each."""
    import torch

    from training.losses import ppo_policy_loss, value_loss
    from training.recipes.ppo import pack_episodes, response_logprobs

    out: dict[str, float] = {}
    ep = pack_episodes(samples, pad_id)
    t = time.perf_counter()
    with torch.no_grad():
        rm(ep.input_ids, ep.attention_mask)
    out["score_s"] = time.perf_counter() - t
    t = time.perf_counter()
    with torch.no_grad():
        old = response_logprobs(policy, ep)
        response_logprobs(ref, ep)
        old_values = value_model(ep.input_ids, ep.attention_mask, ep.positions)
    out["old_logprob_s"] = time.perf_counter() - t
    params = [p for m in (policy, value_model) for p in m.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-6)
    t = time.perf_counter()
    logprobs = response_logprobs(policy, ep)
    values = value_model(ep.input_ids, ep.attention_mask, ep.positions)
    adv = torch.randn_like(old)
    loss = ppo_policy_loss(logprobs, old, adv, ep.mask, 0.2).loss + 0.1 * value_loss(
        values, old_values, old_values + adv, ep.mask, 0.2)
    loss.backward()
    optimizer.step()
    optimizer.zero_grad()
    out["update_s"] = time.perf_counter() - t
    return out


def measure(size: str, lora_on: bool, prompts: int, tokens: int, bucket_mb: int) -> dict:
    """One child process's measurements for ``size``."""
    import torch
    from transformers import AutoTokenizer

    from core.registry import Registry
    from training.formatting import render_prompt
    from training.rollout import RolloutEngine, Sample
    from training.tiny_model import build_sized_model

    torch.manual_seed(0)
    work = Path(tempfile.mkdtemp(prefix=f"rlhf-scaling-{size}-"))
    path = build_sized_model(work / "model", size)
    tok = AutoTokenizer.from_pretrained(path)
    texts = [f"Tell me about topic number {i}." for i in range(prompts)]
    ids = [tok(render_prompt(tok, t), add_special_tokens=False)["input_ids"] for t in texts]
    out: dict = {"size": size, "lora": lora_on}

    if lora_on:
        policy, ref, value_model, rm = models(path, True)
        from training import lora

        out["params"] = sum(p.numel() for p in rm.backbone.parameters()) + \
            policy.get_base_model().lm_head.weight.numel()
        out["trainable_params"] = lora.trainable_count(policy)[0] + \
            lora.trainable_count(value_model)[0]
        fake = [Sample(p, [5] * tokens, [0.0] * tokens, False) for p in ids]
        step = ppo_step(policy, ref, value_model, rm, fake, tok.pad_token_id)
        out["lora_update_s"] = step["update_s"]
        out["lora_trainer_peak_rss_mb"] = peak_rss_mb()
        return out

    policy, ref, value_model, rm = models(path, False)
    out["params"] = sum(p.numel() for p in policy.parameters())
    out["trainable_params"] = out["params"] + sum(p.numel() for p in value_model.parameters())
    with RolloutEngine(path, max_model_len=256, seed=0, max_num_seqs=prompts,
                       sync_bucket_mb=bucket_mb, weight_transfer="rpc") as engine:
        engine.generate(ids[:2], max_tokens=4)  # warm-up
        t = time.perf_counter()
        samples = engine.generate(ids, max_tokens=tokens, temperature=1.0, seed=0)
        elapsed = time.perf_counter() - t
        out["rollout_s"] = elapsed
        out["serve_tokens_per_s"] = sum(len(s.response_ids) for s in samples) / elapsed
        samples = [s if s.response_ids else Sample(s.prompt_ids, [0], [0.0], False)
                   for s in samples]
        out.update(ppo_step(policy, ref, value_model, rm, samples, tok.pad_token_id))

        state = policy.state_dict()
        bucket, engine.bucket_bytes = engine.bucket_bytes, None
        out["sync_one_message_s"] = engine.sync_weights(state.items())
        engine.bucket_bytes = bucket
        out["sync_bucketed_s"] = engine.sync_weights(state.items())
        out["sync_buckets"] = engine.last_sync["buckets"]
        out["sync_mb"] = engine.last_sync["bytes"] / 2**20

        policy.save_pretrained(work / "candidate", safe_serialization=True)
        tok.save_pretrained(work / "candidate")
        t = time.perf_counter()
        engine._run(engine._llm.collective_rpc(
            "reload_weights", kwargs={"weights_path": str(work / "candidate")}))
        engine._run(engine._llm.reset_prefix_cache())
        out["swap_s"] = time.perf_counter() - t
        out["engine_peak_rss_mb"] = children_peak_rss_mb()

    registry = Registry(work / "registry")
    t = time.perf_counter()
    manifest = registry.create_version("policy", work / "candidate", {
        "parent": None, "data_mark": 0, "row_counts": {}, "config": {}, "metrics": {},
        "timing": {}})
    out["checkpoint_write_s"] = time.perf_counter() - t
    t = time.perf_counter()
    problems = registry.verify(manifest.version)
    out["checkpoint_verify_s"] = time.perf_counter() - t
    assert problems == [], problems
    out["trainer_peak_rss_mb"] = peak_rss_mb()
    return out


def fit_exponent(xs: list[float], ys: list[float]) -> float | None:
    """Least-squares slope of log y on log x (None with fewer than 2 positive points)."""
    pts = [(math.log(x), math.log(y)) for x, y in zip(xs, ys, strict=True) if x > 0 and y > 0]
    if len(pts) < 2:
        return None
    mx = sum(p[0] for p in pts) / len(pts)
    my = sum(p[1] for p in pts) / len(pts)
    den = sum((p[0] - mx) ** 2 for p in pts)
    return sum((p[0] - mx) * (p[1] - my) for p in pts) / den if den else None


def plot(rows: list[dict], exponents: dict[str, float | None], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(17, 5.5))
    groups = [["rollout_s", "score_s", "old_logprob_s", "update_s", "lora_update_s"],
              ["sync_one_message_s", "sync_bucketed_s", "swap_s", "checkpoint_write_s",
               "checkpoint_verify_s"],
              ["trainer_peak_rss_mb", "engine_peak_rss_mb", "lora_trainer_peak_rss_mb"]]
    titles = ["PPO iteration parts (s)", "Sync, swap, checkpoint (s)", "Peak RSS (MiB)"]
    xs = [r["params"] for r in rows]
    for ax, keys, title in zip(axes, groups, titles, strict=True):
        for k in keys:
            ys = [r.get(k) for r in rows]
            pts = [(x, y) for x, y in zip(xs, ys, strict=True) if y]
            if not pts:
                continue
            e = exponents.get(k)
            label = f"{k} (slope {e:.2f})" if e is not None else k
            ax.plot([p[0] for p in pts], [p[1] for p in pts], "o-", label=label)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("parameters")
        ax.set_title(title)
        ax.legend(fontsize=7)
        ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def table(rows: list[dict], exponents: dict[str, float | None]) -> str:
    head = ["cost"] + [f"{r['size']} ({r['params'] / 1e6:.1f}M)" for r in rows] + ["exponent"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for k in COSTS + ["sync_buckets", "sync_mb", "trainable_params", "lora_trainable_params"]:
        vals = [r.get(k) for r in rows]
        cells = [f"{v:.3g}" if isinstance(v, float) else str(v) if v is not None else "–"
                 for v in vals]
        e = exponents.get(k)
        lines.append(f"| {k} | " + " | ".join(cells) + f" | {e:.2f} |" if e is not None
                     else f"| {k} | " + " | ".join(cells) + " | |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", default="tiny,10m,50m")
    ap.add_argument("--prompts", type=int, default=16)
    ap.add_argument("--tokens", type=int, default=32)
    ap.add_argument("--bucket-mb", type=int, default=32)
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks" / "out")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--lora", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print("RESULT " + json.dumps(measure(args.child, args.lora, args.prompts,
                                             args.tokens, args.bucket_mb)), flush=True)
        return

    rows = []
    for size in args.sizes.split(","):
        row: dict = {}
        for lora_on in (False, True):
            cmd = [sys.executable, __file__, "--child", size, "--prompts", str(args.prompts),
                   "--tokens", str(args.tokens), "--bucket-mb", str(args.bucket_mb)]
            proc = subprocess.run(cmd + (["--lora"] if lora_on else []), capture_output=True,
                                  text=True, cwd=REPO, check=False)
            result = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
            if proc.returncode or not result:
                sys.exit(f"{size} (lora={lora_on}) failed:\n{proc.stderr[-4000:]}")
            got = json.loads(result[-1].removeprefix("RESULT "))
            if lora_on:
                got["lora_trainable_params"] = got.pop("trainable_params")
                got.pop("params")
            row.update({k: v for k, v in got.items() if k != "lora"})
        rows.append(row)
        print(f"{size}: done", file=sys.stderr, flush=True)

    exponents = {k: fit_exponent([r["params"] for r in rows],
                                 [r.get(k) or 0.0 for r in rows]) for k in COSTS}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "scaling.json").write_text(json.dumps({"rows": rows, "exponents": exponents},
                                                      indent=1))
    plot(rows, exponents, args.out / "scaling.png")
    print(table(rows, exponents))
    print(f"\nwrote {args.out / 'scaling.json'} and {args.out / 'scaling.png'}")


if __name__ == "__main__":
    main()
