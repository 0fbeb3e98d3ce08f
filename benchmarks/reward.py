"""Reward-model training: our K-way grouped trainer against TRL's ``RewardTrainer`` on pairs.

    python benchmarks/reward.py [--train-prompts 32] [--held-out-prompts 200] \\
        [--seeds 0,1,2,3,4] [--lr 1e-4] [--epochs 1] [--groups-per-batch 8] [--max-len 128] \\
        [--dropout 0.0] [--head-init shared|own] [--trl-batches shuffled|by-prompt] \\
        [--ours KEY=VALUE ...] [--out PATH]

TRL is the ``bench`` extra (``pip install -e '.[bench]'``, or ``pip install 'trl>=1.16'``
into the same environment); it is not a dependency of the platform.

For every seed, both trainers get, in the same process:

* the same data: ``synthetic_rankings(--train-prompts + --held-out-prompts, k_min=4,
  k_max=9, seed)`` (a hidden scoring rule), split by prompt with the recipe's own
  ``split_by_prompt``. Ours reads the training rankings from a feedback store, as ``rlhf
  train reward`` does; TRL gets the same rankings expanded into every untied (chosen,
  rejected) pair, already tokenised with the recipe's ``encode_pair``, so both see the very
  same token ids (prompt template, EOS, ``--max-len``). The held-out set is large and
  separate from the training-set size, so that a small training set (where accuracy can
  discriminate) is still measured on enough comparisons;
* the same backbone: the seed's tiny model's transformer with a scalar head on the last
  token (ours: ``RewardModel``; TRL: ``AutoModelForSequenceClassification``, num_labels=1);
  ``--dropout P`` gives the tiny Llama an attention dropout of P (it has none as built),
  which each trainer then handles its own way (ours switches it off unless ``--ours
  dropout=true``; TRL's ``disable_dropout`` zeroes ``nn.Dropout`` layers only, and Llama's
  attention dropout is a float, so TRL trains with it);
* the same initial head (``--head-init shared``, the default): TRL's ``score`` weight is
  overwritten with ``scalar_head(H, seed)``, the head the recipe starts from; with
  ``own`` each side keeps its default (TRL: N(0, 0.02²), drawn after seeding);
* the same optimisation: AdamW, constant ``--lr``, no weight decay, gradient clipping at
  1.0, fp32, no dropout (the tiny Llama has none; TRL also switches it off), ``--epochs``,
  and the same number of optimiser steps per epoch: TRL's batch in pairs is the training
  pairs divided by our steps per epoch (``--groups-per-batch`` prompt groups per step).
  TRL's own defaults that would slow it down for no accuracy (gradient checkpointing, bf16
  on CPU, per-step logging) are switched off. ``--trl-batches by-prompt`` is a diagnostic:
  TRL's pairs in prompt order (prompts shuffled by the seed) and taken in sequence, so each
  of its batches holds the pairs of a few whole prompts, as ours does.

Everything random is seeded before it is drawn (model, head, data order), so a seed gives
the same accuracies on a rerun; only the timings vary.

Measured per seed: held-out pairwise accuracy, computed by one function for both models
(every held-out response scored once, a pair counts as correct when the better-ranked
response scores strictly higher), its standard error clustered by prompt (the pairs of one
prompt share responses, so they are not independent), and the paired difference ours −
TRL on the same pairs with its clustered standard error; training-loop seconds (ours: the
recipe's ``train_s``; TRL: the ``train_runtime`` of ``Trainer.train``; neither includes
evaluation) and comparisons (untied pairs) trained per second. Across seeds: mean ± sample
standard deviation of each accuracy and of the difference, and comparisons/s pooled (total
comparisons over total seconds). The two trainers run in alternating order (AB BA AB …) so
a drift in the machine's background load hits both alike.

Target: ours ≥ 2× TRL's comparisons/s at equal or better held-out accuracy (equal meaning
the mean difference over the seeds is above −``--accuracy-tolerance``).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import random
import statistics
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import torch  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402
from transformers import AutoTokenizer  # noqa: E402

from core.events import Ranking  # noqa: E402
from training.datasets import RankedGroup, ranked_group, split_by_prompt  # noqa: E402
from training.reward_model import pad_batch, scalar_head  # noqa: E402

Scorer = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (N, T) ids, mask → (N,)


@dataclass
class HeldOut:
    """Per held-out prompt: correct and total untied pairs, and the K of the prompt."""

    correct: list[int]
    total: list[int]
    k: list[int]

    @property
    def accuracy(self) -> float:
        return sum(self.correct) / sum(self.total)

    def by_k(self) -> dict[int, float]:
        ks = sorted(set(self.k))
        return {k: sum(c for c, kk in zip(self.correct, self.k, strict=True) if kk == k)
                / sum(t for t, kk in zip(self.total, self.k, strict=True) if kk == k)
                for k in ks}


@dataclass
class TrainerResult:
    name: str
    steps: int
    comparisons: int  # untied pairs trained on, all epochs
    train_s: float  # the training loop alone
    held_out: HeldOut

    @property
    def comparisons_per_s(self) -> float:
        return self.comparisons / self.train_s


# ---------------------------------------------------------------------------------------
# Data: one set of rankings, split by prompt, as groups and as pairs
# ---------------------------------------------------------------------------------------

def make_data(args: argparse.Namespace, seed: int, tokenizer
              ) -> tuple[list[Ranking], list[RankedGroup], list[RankedGroup]]:
    """(training rankings, their tokenised groups, held-out tokenised groups)."""
    from training.synthetic import synthetic_rankings

    n = args.train_prompts + args.held_out_prompts
    rankings = synthetic_rankings(n, k_min=4, k_max=9, seed=seed)
    train, held_out = split_by_prompt(rankings, lambda r: r.prompt, args.held_out_prompts / n,
                                      seed)

    def groups(rs: list[Ranking]) -> list[RankedGroup]:
        gs = [ranked_group(tokenizer, r.prompt, r.responses, r.ranks, args.max_len) for r in rs]
        return [g for g in gs if g is not None]

    return train, groups(train), groups(held_out)


def untied_pairs(group: RankedGroup) -> list[tuple[list[int], list[int]]]:
    """Every (better, worse) pair of a group, ties dropped: what a pairwise trainer sees."""
    return [(group.input_ids[i], group.input_ids[j]) for i in range(group.k)
            for j in range(group.k) if group.ranks[i] < group.ranks[j]]


# ---------------------------------------------------------------------------------------
# Held-out accuracy: one function for both models, and its clustered standard error
# ---------------------------------------------------------------------------------------

@torch.no_grad()
def held_out_accuracy(score: Scorer, groups: list[RankedGroup], pad_id: int,
                      batch_size: int = 64) -> HeldOut:
    """Correct / total untied pairs of every held-out prompt."""
    seqs = [ids for g in groups for ids in g.input_ids]
    scores: list[float] = []
    for start in range(0, len(seqs), batch_size):
        ids, mask = pad_batch(seqs[start: start + batch_size], pad_id)
        scores += score(ids, mask).tolist()
    out = HeldOut([], [], [])
    offset = 0
    for g in groups:
        r = scores[offset: offset + g.k]
        offset += g.k
        pairs = [(i, j) for i in range(g.k) for j in range(g.k) if g.ranks[i] < g.ranks[j]]
        out.correct.append(sum(r[i] > r[j] for i, j in pairs))
        out.total.append(len(pairs))
        out.k.append(g.k)
    return out


def clustered_se(correct: list[float], total: list[int]) -> float:
    """Standard error of Σcorrect / Σtotal with prompts as clusters (a ratio estimator).

    SE = sqrt( n/(n−1) · Σ_g (c_g − p·t_g)² ) / Σ_g t_g, p = Σc/Σt. With one pair per prompt
    it is the binomial sqrt(p(1−p)/n); correlated pairs within a prompt make it larger.
    ``correct`` may be a per-prompt difference of two models' counts (a paired test).
    """
    n, pairs = len(total), sum(total)
    p = sum(correct) / pairs
    resid = sum((c - p * t) ** 2 for c, t in zip(correct, total, strict=True))
    return math.sqrt(n / (n - 1) * resid) / pairs


def paired_difference(ours: HeldOut, peer: HeldOut) -> tuple[float, float]:
    """(ours − peer accuracy on the same pairs, its clustered standard error)."""
    diff = [a - b for a, b in zip(ours.correct, peer.correct, strict=True)]
    return sum(diff) / sum(ours.total), clustered_se(diff, ours.total)


# ---------------------------------------------------------------------------------------
# Ours: the recipe itself, from a feedback store into a registry
# ---------------------------------------------------------------------------------------

def run_ours(args: argparse.Namespace, seed: int, base: Path, train: list[Ranking],
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
        "seed": seed, "max_len": args.max_len, "groups_per_batch": args.groups_per_batch,
        "lr": args.lr, "min_lr_ratio": 1.0, "epochs": args.epochs, "weight_decay": 0.0,
        "grad_clip": 1.0, "eval_fraction": 0.0, "gold_share": 0.0, "progress": False,
        **args.ours})
    manifest = reward.train(cfg, store=store, registry=registry)
    store.close()

    model = RewardModel.from_pretrained(registry.path(manifest.version)).eval()
    train_s = manifest.timing["train_s"]
    comparisons = round(manifest.metrics["comparisons_per_s"] * train_s)
    name = "ours (K-way groups)" + "".join(f", {k}={v}" for k, v in args.ours.items())
    return TrainerResult(name, manifest.metrics["steps"], comparisons, train_s,
                         held_out_accuracy(model, held_out, pad_id))


# ---------------------------------------------------------------------------------------
# The peer: TRL's RewardTrainer on the same data as independent pairs
# ---------------------------------------------------------------------------------------

def run_trl(args: argparse.Namespace, seed: int, base: Path, tokenizer,
            train_groups: list[RankedGroup], held_out: list[RankedGroup],
            workdir: Path) -> TrainerResult:
    import trl
    from datasets import Dataset
    from transformers import AutoModelForSequenceClassification, set_seed

    if args.trl_batches == "by-prompt":
        train_groups = list(train_groups)
        random.Random(seed).shuffle(train_groups)
    pairs = [p for g in train_groups for p in untied_pairs(g)]
    steps_per_epoch = math.ceil(len(train_groups) / args.groups_per_batch)  # as ours
    batch = math.ceil(len(pairs) / steps_per_epoch)
    data = Dataset.from_dict({"chosen_ids": [c for c, _ in pairs],
                              "rejected_ids": [r for _, r in pairs]})
    config = trl.RewardConfig(
        output_dir=str(workdir / "trl"), seed=seed, learning_rate=args.lr,
        lr_scheduler_type="constant", warmup_steps=0, weight_decay=0.0, max_grad_norm=1.0,
        optim="adamw_torch", num_train_epochs=args.epochs, per_device_train_batch_size=batch,
        max_length=args.max_len, bf16=False, fp16=False, gradient_checkpointing=False,
        use_cpu=not torch.cuda.is_available(), eval_strategy="no", save_strategy="no",
        logging_strategy="no", report_to="none", disable_tqdm=True, dataloader_num_workers=0,
        train_sampling_strategy="sequential" if args.trl_batches == "by-prompt" else "random")
    # Seed before the score head is drawn (Trainer seeds only in its own __init__, after).
    set_seed(seed)
    model = AutoModelForSequenceClassification.from_pretrained(base, num_labels=1,
                                                               dtype=torch.float32)
    if args.head_init == "shared":
        with torch.no_grad():
            model.score.weight.copy_(scalar_head(model.config.hidden_size, seed).weight)
    model.config.pad_token_id = tokenizer.pad_token_id
    trainer = trl.RewardTrainer(model=model, args=config, train_dataset=data,
                                processing_class=tokenizer)
    if len(trainer.train_dataset) != len(pairs):
        raise RuntimeError(f"TRL dropped pairs: {len(trainer.train_dataset)} of {len(pairs)}")
    out = trainer.train()
    model = trainer.model.eval()

    def score(ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return model(input_ids=ids.to(model.device), attention_mask=mask.to(model.device)
                     ).logits.squeeze(-1).cpu()

    order = ", by prompt" if args.trl_batches == "by-prompt" else ""
    return TrainerResult(f"TRL {trl.__version__} RewardTrainer (pairs, batch {batch}{order})",
                         out.global_step, len(pairs) * args.epochs,
                         out.metrics["train_runtime"],
                         held_out_accuracy(score, held_out, tokenizer.pad_token_id))


# ---------------------------------------------------------------------------------------
# One seed: data, base model, both trainers
# ---------------------------------------------------------------------------------------

@dataclass
class SeedResult:
    seed: int
    train_groups: int
    train_pairs: int
    held_out_groups: int
    ours: TrainerResult
    trl: TrainerResult

    @property
    def difference(self) -> tuple[float, float]:
        return paired_difference(self.ours.held_out, self.trl.held_out)


def run_seed(args: argparse.Namespace, seed: int, index: int, workdir: Path) -> SeedResult:
    from training.tiny_model import build_tiny_model

    base = build_tiny_model(workdir / "tiny", seed=seed)
    if args.dropout:
        config = json.loads((base / "config.json").read_text())
        (base / "config.json").write_text(json.dumps({**config,
                                                      "attention_dropout": args.dropout}))
    tokenizer = AutoTokenizer.from_pretrained(base)
    train, train_groups, held_out = make_data(args, seed, tokenizer)
    results: dict[str, TrainerResult] = {}
    # Alternating: a drift in the machine's background load hits both alike.
    for name in ("ours", "trl") if index % 2 == 0 else ("trl", "ours"):
        out = workdir / name
        out.mkdir()
        results[name] = (run_ours(args, seed, base, train, held_out, tokenizer.pad_token_id,
                                  out) if name == "ours" else
                         run_trl(args, seed, base, tokenizer, train_groups, held_out, out))
    r = SeedResult(seed, len(train_groups), sum(len(untied_pairs(g)) for g in train_groups),
                   len(held_out), results["ours"], results["trl"])
    diff, se = r.difference
    print(f"seed {seed}: {r.train_groups} training groups ({r.train_pairs} pairs), "
          f"{r.held_out_groups} held out ({sum(r.ours.held_out.total)} pairs); accuracy "
          f"ours {r.ours.held_out.accuracy:.4f}, TRL {r.trl.held_out.accuracy:.4f}, "
          f"difference {diff * 100:+.2f} ± {se * 100:.2f} points; comparisons/s "
          f"{r.ours.comparisons_per_s:.0f} vs {r.trl.comparisons_per_s:.0f}", flush=True)
    return r


# ---------------------------------------------------------------------------------------
# Report
# ---------------------------------------------------------------------------------------

def mean_sd(xs: list[float]) -> tuple[float, float]:
    return statistics.fmean(xs), statistics.stdev(xs) if len(xs) > 1 else 0.0


def pooled_rate(rs: list[TrainerResult]) -> float:
    return sum(r.comparisons for r in rs) / sum(r.train_s for r in rs)


def summary(seeds: list[SeedResult]) -> dict[str, float]:
    ours, peer = (mean_sd([s.ours.held_out.accuracy for s in seeds]),
                  mean_sd([s.trl.held_out.accuracy for s in seeds]))
    diff = mean_sd([s.difference[0] for s in seeds])
    ratios = [s.ours.comparisons_per_s / s.trl.comparisons_per_s for s in seeds]
    return {"ours_mean": ours[0], "ours_sd": ours[1], "trl_mean": peer[0], "trl_sd": peer[1],
            "diff_mean": diff[0], "diff_sd": diff[1],
            "speedup_pooled": pooled_rate([s.ours for s in seeds])
            / pooled_rate([s.trl for s in seeds]),
            "speedup_min": min(ratios), "speedup_max": max(ratios)}


def print_tables(seeds: list[SeedResult], args: argparse.Namespace, console: Console) -> None:
    per_seed = Table(title=f"Reward model, tiny model, {args.train_prompts} training prompts "
                           f"with K 4–9, {args.groups_per_batch} per batch, lr {args.lr:g}, "
                           f"{args.epochs} epoch(s), dropout {args.dropout:g}, head init "
                           f"{args.head_init}")
    for col in ("seed", "held-out prompts / pairs", "steps ours / TRL", "ours acc.", "TRL acc.",
                "ours − TRL (± SE)", "ours comp./s", "TRL comp./s", "vs TRL"):
        per_seed.add_column(col, justify="right")
    for s in seeds:
        diff, se = s.difference
        per_seed.add_row(str(s.seed), f"{s.held_out_groups} / {sum(s.ours.held_out.total)}",
                         f"{s.ours.steps} / {s.trl.steps}",
                         f"{s.ours.held_out.accuracy:.4f} ± "
                         f"{clustered_se(s.ours.held_out.correct, s.ours.held_out.total):.4f}",
                         f"{s.trl.held_out.accuracy:.4f} ± "
                         f"{clustered_se(s.trl.held_out.correct, s.trl.held_out.total):.4f}",
                         f"{diff * 100:+.2f} ± {se * 100:.2f}",
                         f"{s.ours.comparisons_per_s:.0f}", f"{s.trl.comparisons_per_s:.0f}",
                         f"{s.ours.comparisons_per_s / s.trl.comparisons_per_s:.2f}x")
    console.print(per_seed)
    m = summary(seeds)
    console.print(f"over {len(seeds)} seeds: accuracy ours {m['ours_mean']:.4f} ± "
                  f"{m['ours_sd']:.4f}, TRL {m['trl_mean']:.4f} ± {m['trl_sd']:.4f} (mean ± "
                  f"SD); ours − TRL {m['diff_mean'] * 100:+.2f} ± {m['diff_sd'] * 100:.2f} "
                  f"points; comparisons/s {m['speedup_pooled']:.2f}x pooled "
                  f"({m['speedup_min']:.2f}–{m['speedup_max']:.2f}x per seed)")
    met = m["speedup_pooled"] >= 2.0 and m["diff_mean"] >= -args.accuracy_tolerance
    console.print(f"target ≥2× TRL's comparisons/s at equal or better accuracy: "
                  f"{'MET' if met else 'NOT MET'} (equal = mean difference above "
                  f"−{args.accuracy_tolerance * 100:.1f} points)",
                  style="green" if met else "red")


def write_json(path: Path, seeds: list[SeedResult], args: argparse.Namespace) -> None:
    import trl

    def trainer(r: TrainerResult) -> dict:
        return {"trainer": r.name, "steps": r.steps, "comparisons": r.comparisons,
                "train_s": r.train_s, "comparisons_per_s": r.comparisons_per_s,
                "accuracy": r.held_out.accuracy,
                "accuracy_se": clustered_se(r.held_out.correct, r.held_out.total),
                "accuracy_by_k": r.held_out.by_k()}

    doc = {"machine": f"{os.cpu_count()}-core CPU, {platform.machine()}",
           "torch": torch.__version__, "trl": trl.__version__,
           "load_average": os.getloadavg(),
           "args": {k: str(v) for k, v in vars(args).items()}, "summary": summary(seeds),
           "seeds": [{"seed": s.seed, "train_groups": s.train_groups,
                      "train_pairs": s.train_pairs, "held_out_groups": s.held_out_groups,
                      "held_out_pairs": sum(s.ours.held_out.total),
                      "difference": s.difference[0], "difference_se": s.difference[1],
                      "ours": trainer(s.ours), "trl": trainer(s.trl)} for s in seeds]}
    path.write_text(json.dumps(doc, indent=2) + "\n")
    print(f"results: {path}")


def key_value(text: str) -> tuple[str, object]:
    import yaml

    key, sep, value = text.partition("=")
    if not sep:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    return key, yaml.safe_load(value)


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--train-prompts", type=int, default=32, help="training rankings")
    p.add_argument("--held-out-prompts", type=int, default=200,
                   help="held-out rankings (about 13 untied pairs each)")
    p.add_argument("--seeds", default="0,1,2,3,4",
                   help="comma-separated; each seeds its own data, tiny model and init")
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--lr", type=float, default=1e-4, help="the same for both (constant)")
    p.add_argument("--groups-per-batch", type=int, default=8,
                   help="our batch in prompt groups; TRL's in pairs follows from it")
    p.add_argument("--max-len", type=int, default=128, help="tokens per prompt + response")
    p.add_argument("--dropout", type=float, default=0.0,
                   help="attention dropout of the tiny model (built without)")
    p.add_argument("--trl-batches", choices=("shuffled", "by-prompt"), default="shuffled",
                   help="by-prompt: TRL's batches hold whole prompts' pairs (diagnostic)")
    p.add_argument("--head-init", choices=("shared", "own"), default="shared",
                   help="shared: TRL starts from our initial head; own: each its default")
    p.add_argument("--ours", type=key_value, action="append", default=[],
                   metavar="KEY=VALUE", help="override a RewardConfig field for ours")
    p.add_argument("--accuracy-tolerance", type=float, default=0.01,
                   help="a mean accuracy this far below TRL's still counts as equal")
    p.add_argument("--out", type=Path,
                   default=Path(tempfile.gettempdir()) / "rlhf-bench-reward.json")
    args = p.parse_args()
    args.seeds = [int(s) for s in args.seeds.split(",")]
    args.ours = dict(args.ours)
    return args


def main() -> None:
    args = parse_args()
    seeds = []
    for index, seed in enumerate(args.seeds):
        with tempfile.TemporaryDirectory(prefix="rlhf-bench-reward-") as tmp:
            seeds.append(run_seed(args, seed, index, Path(tmp)))
    console = Console()
    print_tables(seeds, args, Console(width=max(console.width, 160)))
    write_json(args.out, seeds, args)


if __name__ == "__main__":
    main()
