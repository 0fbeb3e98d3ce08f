"""Reward-model training: our K-way grouped trainer against TRL's ``RewardTrainer`` on pairs.

    python benchmarks/reward.py [--prompts 160] [--epochs 1] [--lr 1e-3] [--rounds 3]
                                [--groups-per-batch 8] [--max-len 128] [--out PATH]

Both trainers get, in the same run and process:

* the same data: ``synthetic_rankings(--prompts, k_min=4, k_max=9)`` (a hidden scoring
  rule), split by prompt with the recipe's own ``split_by_prompt`` (20% of the prompts
  held out). Ours reads the training rankings from a feedback store, as ``rlhf train
  reward`` does; TRL gets the same rankings expanded into every untied (chosen, rejected)
  pair, already tokenised with the recipe's ``encode_pair`` so that both see the very same
  token ids (prompt template, EOS, ``--max-len``);
* the same backbone: the tiny model's transformer with a fresh scalar head on the last
  token (ours: ``RewardModel``; TRL: ``AutoModelForSequenceClassification``, num_labels=1);
* the same optimisation: AdamW, constant ``--lr``, no weight decay, gradient clipping at
  1.0, fp32, ``--epochs``, and the same number of optimiser steps per epoch: TRL's batch in
  pairs is the training pairs divided by our steps per epoch (``--groups-per-batch``
  prompt groups per step). TRL's own defaults that would slow it down for no accuracy
  (gradient checkpointing, bf16 on CPU, per-step logging) are switched off.

Measured: training-loop seconds per epoch (ours: the recipe's ``train_s``; TRL: the
``train_runtime`` of ``Trainer.train``; neither includes evaluation), comparisons (untied
pairs) trained per second, and held-out pairwise accuracy, overall and by K, computed by
one function for both models (every held-out response scored once, a pair counts as
correct when the better-ranked response scores strictly higher). The machine may be
shared, and other jobs only ever slow a round down, so each trainer runs ``--rounds``
times in alternating order (AB BA AB …) and the table shows each trainer's best round,
with all rounds pooled (total comparisons over total seconds) beside it. CPU milliseconds
per comparison cover the whole call (model load, training, saving; ours also computes its
bias and registers the version) and move less than wall time under contention.

Target: ours ≥ 2× TRL's comparisons/s at equal or better held-out accuracy
(equal meaning within ``--accuracy-tolerance``).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import torch  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402
from transformers import AutoTokenizer  # noqa: E402

from core.events import Ranking  # noqa: E402
from training.datasets import RankedGroup, ranked_group, split_by_prompt  # noqa: E402
from training.reward_model import pad_batch  # noqa: E402

Scorer = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (N, T) ids, mask → (N,)


@dataclass
class TrainerResult:
    name: str
    epochs: int
    steps: int
    comparisons: int  # untied pairs trained on, all epochs
    train_s: float  # the training loop alone
    total_s: float  # model load, training, saving: what the caller waits for
    cpu_s: float  # process CPU seconds (all threads) over the same span as total_s
    accuracy: dict[str, float] = field(default_factory=dict)

    @property
    def epoch_s(self) -> float:
        return self.train_s / self.epochs

    @property
    def comparisons_per_s(self) -> float:
        return self.comparisons / self.train_s

    @property
    def cpu_ms_per_comparison(self) -> float:
        return self.cpu_s * 1000 / self.comparisons


# ---------------------------------------------------------------------------------------
# Data: one set of rankings, split by prompt, as groups and as pairs
# ---------------------------------------------------------------------------------------

def make_data(args: argparse.Namespace, tokenizer
              ) -> tuple[list[Ranking], list[RankedGroup], list[RankedGroup]]:
    """(training rankings, their tokenised groups, held-out tokenised groups)."""
    from training.synthetic import synthetic_rankings

    rankings = synthetic_rankings(args.prompts, k_min=4, k_max=9, seed=args.seed)
    train, held_out = split_by_prompt(rankings, lambda r: r.prompt, args.eval_fraction,
                                      args.seed)

    def groups(rs: list[Ranking]) -> list[RankedGroup]:
        gs = [ranked_group(tokenizer, r.prompt, r.responses, r.ranks, args.max_len) for r in rs]
        return [g for g in gs if g is not None]

    return train, groups(train), groups(held_out)


def untied_pairs(group: RankedGroup) -> list[tuple[list[int], list[int]]]:
    """Every (better, worse) pair of a group, ties dropped: what a pairwise trainer sees."""
    return [(group.input_ids[i], group.input_ids[j]) for i in range(group.k)
            for j in range(group.k) if group.ranks[i] < group.ranks[j]]


# ---------------------------------------------------------------------------------------
# Held-out accuracy: one function for both models
# ---------------------------------------------------------------------------------------

@torch.no_grad()
def held_out_accuracy(score: Scorer, groups: list[RankedGroup], pad_id: int,
                      batch_size: int = 64) -> dict[str, float]:
    """Pairwise accuracy over untied pairs, overall and by K (``k4`` … ``k9``)."""
    seqs = [ids for g in groups for ids in g.input_ids]
    scores: list[float] = []
    for start in range(0, len(seqs), batch_size):
        ids, mask = pad_batch(seqs[start: start + batch_size], pad_id)
        scores += score(ids, mask).tolist()
    correct: dict[int, int] = defaultdict(int)
    total: dict[int, int] = defaultdict(int)
    offset = 0
    for g in groups:
        r = scores[offset: offset + g.k]
        offset += g.k
        for i in range(g.k):
            for j in range(g.k):
                if g.ranks[i] < g.ranks[j]:
                    total[g.k] += 1
                    correct[g.k] += r[i] > r[j]
    out = {"all": sum(correct.values()) / sum(total.values())}
    out.update({f"k{k}": correct[k] / total[k] for k in sorted(total)})
    return out


# ---------------------------------------------------------------------------------------
# Ours: the recipe itself, from a feedback store into a registry
# ---------------------------------------------------------------------------------------

def run_ours(args: argparse.Namespace, base: Path, train: list[Ranking],
             held_out: list[RankedGroup], pad_id: int, workdir: Path) -> TrainerResult:
    from core.registry import Registry
    from feedback.store import FeedbackStore
    from training.config import load_config
    from training.recipes import reward
    from training.reward_model import RewardModel

    store = FeedbackStore(f"sqlite:///{workdir / 'feedback.db'}")
    store.migrate()
    store.persist(train)
    registry = Registry(workdir / "registry")
    registry.register_base(base)
    registry.set_live("policy-0000", "benchmark")
    cfg = load_config(reward.RewardConfig, None, "reward.yaml", {
        "seed": args.seed, "max_len": args.max_len, "groups_per_batch": args.groups_per_batch,
        "lr": args.lr, "min_lr_ratio": 1.0, "epochs": args.epochs, "weight_decay": 0.0,
        "grad_clip": 1.0, "eval_fraction": 0.0, "progress": False})
    t0, cpu0 = time.perf_counter(), time.process_time()
    manifest = reward.train(cfg, store=store, registry=registry)
    total_s, cpu_s = time.perf_counter() - t0, time.process_time() - cpu0
    store.close()

    model = RewardModel.from_pretrained(registry.path(manifest.version)).eval()
    train_s = manifest.timing["train_s"]
    comparisons = round(manifest.metrics["comparisons_per_s"] * train_s)
    return TrainerResult("ours (K-way groups)", args.epochs,
                         manifest.metrics["steps"], comparisons, train_s, total_s, cpu_s,
                         held_out_accuracy(model, held_out, pad_id))


# ---------------------------------------------------------------------------------------
# The peer: TRL's RewardTrainer on the same data as independent pairs
# ---------------------------------------------------------------------------------------

def run_trl(args: argparse.Namespace, base: Path, tokenizer, train_groups: list[RankedGroup],
            held_out: list[RankedGroup], workdir: Path) -> TrainerResult:
    import trl
    from datasets import Dataset
    from transformers import AutoModelForSequenceClassification

    pairs = [p for g in train_groups for p in untied_pairs(g)]
    steps_per_epoch = math.ceil(len(train_groups) / args.groups_per_batch)  # as ours
    batch = math.ceil(len(pairs) / steps_per_epoch)
    data = Dataset.from_dict({"chosen_ids": [c for c, _ in pairs],
                              "rejected_ids": [r for _, r in pairs]})
    config = trl.RewardConfig(
        output_dir=str(workdir / "trl"), seed=args.seed, learning_rate=args.lr,
        lr_scheduler_type="constant", warmup_steps=0, weight_decay=0.0, max_grad_norm=1.0,
        optim="adamw_torch", num_train_epochs=args.epochs, per_device_train_batch_size=batch,
        max_length=args.max_len, bf16=False, fp16=False, gradient_checkpointing=False,
        use_cpu=not torch.cuda.is_available(), eval_strategy="no", save_strategy="no",
        logging_strategy="no", report_to="none", disable_tqdm=True, dataloader_num_workers=0)
    t0, cpu0 = time.perf_counter(), time.process_time()
    model = AutoModelForSequenceClassification.from_pretrained(base, num_labels=1,
                                                               dtype=torch.float32)
    model.config.pad_token_id = tokenizer.pad_token_id
    trainer = trl.RewardTrainer(model=model, args=config, train_dataset=data,
                                processing_class=tokenizer)
    if len(trainer.train_dataset) != len(pairs):
        raise RuntimeError(f"TRL dropped pairs: {len(trainer.train_dataset)} of {len(pairs)}")
    out = trainer.train()
    trainer.save_model(str(workdir / "trl" / "final"))
    total_s, cpu_s = time.perf_counter() - t0, time.process_time() - cpu0

    model = trainer.model.eval()

    def score(ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return model(input_ids=ids.to(model.device), attention_mask=mask.to(model.device)
                     ).logits.squeeze(-1).cpu()

    return TrainerResult(f"TRL {trl.__version__} RewardTrainer (pairs, batch {batch})",
                         args.epochs, out.global_step, len(pairs) * args.epochs,
                         out.metrics["train_runtime"], total_s, cpu_s,
                         held_out_accuracy(score, held_out, tokenizer.pad_token_id))


# ---------------------------------------------------------------------------------------
# Report
# ---------------------------------------------------------------------------------------

def best(rounds: list[TrainerResult]) -> TrainerResult:
    """The least disturbed round: the highest comparisons/s."""
    return max(rounds, key=lambda r: r.comparisons_per_s)


def pooled_rate(rounds: list[TrainerResult]) -> float:
    return sum(r.comparisons for r in rounds) / sum(r.train_s for r in rounds)


def verdict(ours: TrainerResult, peer: TrainerResult, tolerance: float) -> tuple[bool, str]:
    speedup = ours.comparisons_per_s / peer.comparisons_per_s
    gap = ours.accuracy["all"] - peer.accuracy["all"]
    met = speedup >= 2.0 and gap >= -tolerance
    return met, (f"target ≥2× TRL's comparisons/s at equal or better accuracy: "
                 f"{'MET' if met else 'NOT MET'} ({speedup:.2f}×, accuracy "
                 f"{gap * 100:+.1f} points; equal = within {tolerance * 100:.1f})")


def print_table(runs: list[list[TrainerResult]], held_out: list[RankedGroup], args,
                console: Console) -> None:
    """One row per trainer (its best round); the peer (TRL) is last."""
    ks = sorted({g.k for g in held_out})
    results = [best(r) for r in runs]
    table = Table(title=f"Reward model, tiny model, {args.prompts} prompts with K 4–9 "
                        f"({len(held_out)} held out), {args.epochs} epoch(s), "
                        f"best of {args.rounds} rounds")
    for col in ("trainer", "steps/epoch", "s/epoch", "comp./s", "vs TRL", "pooled comp./s",
                "pooled vs TRL", "CPU ms/comp.", "CPU vs TRL", "accuracy",
                *[f"K={k}" for k in ks]):
        table.add_column(col, justify="left" if col == "trainer" else "right")
    peer, peer_pooled = results[-1], pooled_rate(runs[-1])
    for r, rounds in zip(results, runs, strict=True):
        table.add_row(r.name, str(r.steps // r.epochs), f"{r.epoch_s:.1f}",
                      f"{r.comparisons_per_s:.0f}",
                      f"{r.comparisons_per_s / peer.comparisons_per_s:.2f}x",
                      f"{pooled_rate(rounds):.0f}", f"{pooled_rate(rounds) / peer_pooled:.2f}x",
                      f"{r.cpu_ms_per_comparison:.1f}",
                      f"{peer.cpu_ms_per_comparison / r.cpu_ms_per_comparison:.2f}x",
                      f"{r.accuracy['all']:.3f}", *[f"{r.accuracy[f'k{k}']:.3f}" for k in ks])
    console.print(table)
    met, line = verdict(results[0], peer, args.accuracy_tolerance)
    console.print(line, style="green" if met else "red")


def write_json(path: Path, runs: list[list[TrainerResult]], args: argparse.Namespace) -> None:
    import trl

    doc = {"machine": f"{os.cpu_count()}-core CPU, {platform.machine()}",
           "torch": torch.__version__, "trl": trl.__version__,
           "load_average": os.getloadavg(),
           "args": {k: str(v) for k, v in vars(args).items()},
           "rounds": [[{"trainer": r.name, "steps": r.steps, "epoch_s": r.epoch_s,
                        "comparisons": r.comparisons, "comparisons_per_s": r.comparisons_per_s,
                        "train_s": r.train_s, "total_s": r.total_s, "cpu_s": r.cpu_s,
                        "accuracy": r.accuracy} for r in rounds] for rounds in runs]}
    path.write_text(json.dumps(doc, indent=2) + "\n")
    print(f"results: {path}")


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--prompts", type=int, default=160, help="rankings (one per prompt)")
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--rounds", type=int, default=3,
                   help="times each trainer runs (alternating order)")
    p.add_argument("--lr", type=float, default=1e-3, help="the same for both (constant)")
    p.add_argument("--groups-per-batch", type=int, default=8,
                   help="our batch in prompt groups; TRL's in pairs follows from it")
    p.add_argument("--max-len", type=int, default=128, help="tokens per prompt + response")
    p.add_argument("--eval-fraction", type=float, default=0.2, help="prompts held out")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--accuracy-tolerance", type=float, default=0.01,
                   help="accuracy this far below TRL's still counts as equal")
    p.add_argument("--out", type=Path,
                   default=Path(tempfile.gettempdir()) / "rlhf-bench-reward.json")
    return p.parse_args()


def main() -> None:
    args = parse_args()
    from training.tiny_model import build_tiny_model

    with tempfile.TemporaryDirectory(prefix="rlhf-bench-reward-") as tmp:
        workdir = Path(tmp)
        base = build_tiny_model(workdir / "tiny", seed=args.seed)
        tokenizer = AutoTokenizer.from_pretrained(base)
        train, train_groups, held_out = make_data(args, tokenizer)
        print(f"{len(train_groups)} training groups "
              f"({sum(len(untied_pairs(g)) for g in train_groups)} untied pairs), "
              f"{len(held_out)} held-out groups")
        runs: dict[str, list[TrainerResult]] = defaultdict(list)
        for round_ in range(args.rounds):
            # Alternating: a drift in the machine's background load hits both alike.
            order = ("ours", "trl") if round_ % 2 == 0 else ("trl", "ours")
            for name in order:
                out = workdir / f"{name}-{round_}"
                out.mkdir()
                if name == "ours":
                    r = run_ours(args, base, train, held_out, tokenizer.pad_token_id, out)
                else:
                    r = run_trl(args, base, tokenizer, train_groups, held_out, out)
                print(f"round {round_ + 1}: {r.name}: {r.comparisons_per_s:.0f} comparisons/s, "
                      f"accuracy {r.accuracy['all']:.3f}")
                runs[name].append(r)
    console = Console()
    print_table([runs["ours"], runs["trl"]], held_out, args,
                Console(width=max(console.width, 200)))
    write_json(args.out, [runs["ours"], runs["trl"]], args)


if __name__ == "__main__":
    main()
