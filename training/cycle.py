"""``rlhf train cycle``: run what is due — a reward model on new rankings, then PPO.

Made for a Kubernetes CronJob: it decides from the store's high-water mark and the
registry alone, so running it twice with no new data does nothing the second time.

* The reward model is due when at least ``min_new_rankings`` rankings or comparisons
  arrived after the data mark of the newest reward version (or ever, without one).
* PPO is due when the newest reward model has not yet been applied to the parent policy
  (the live one; before any is live, the newest policy that is not a PPO candidate):
  neither the parent itself nor an existing candidate trained from it (awaiting the
  deploy gates) names that reward model. PPO starts from that parent; its KL reference is
  the SFT version of the parent's lineage (``training.lineage.reference_of``), so the KL
  penalty and the gates' KL budget bound the drift from SFT across every generation.
* The reward model is initialised from the SFT version of the parent's lineage
  (``reward_init="sft"``, InstructGPT), or from the parent itself (``"parent"``).

A file lock in the registry keeps two cycles from overlapping; the registry's atomic
version directories mean a crash leaves no half version.
"""

from __future__ import annotations

import fcntl
import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from core.registry import Manifest, Registry, RegistryError
from core.settings import KafkaSettings
from training.lineage import reference_of

log = logging.getLogger(__name__)
LOCK_FILE = ".train-cycle.lock"
PREFERENCE_KINDS = ("ranking", "comparison")


@dataclass(frozen=True)
class Due:
    """Whether one stage should run, and why (the reason is printed either way)."""

    due: bool
    reason: str


@dataclass
class CycleResult:
    """What a cycle did: the versions it made, and every decision with its reason."""

    versions: list[str] = field(default_factory=list)
    reasons: list[str] = field(default_factory=list)

    @property
    def did_nothing(self) -> bool:
        return not self.versions


def new_preference_groups(store, registry: Registry) -> tuple[int, int]:
    """(rankings + comparisons after the newest reward version's data mark, that mark)."""
    latest = registry.latest("reward")
    mark = (latest.data_mark or 0) if latest else 0
    total, before = store.counts(), store.counts(until=mark)
    return sum(total[k] - before[k] for k in PREFERENCE_KINDS), mark


def reward_due(store, registry: Registry, min_new_rankings: int) -> Due:
    new, mark = new_preference_groups(store, registry)
    if new >= min_new_rankings:
        return Due(True, f"reward: {new} new rankings/comparisons since data mark {mark} "
                         f"(threshold {min_new_rankings})")
    return Due(False, f"reward: only {new} new rankings/comparisons since data mark {mark}, "
                      f"{min_new_rankings} needed")


def cycle_parent(registry: Registry) -> str:
    """The policy PPO starts from: the live one; before any is live, the newest policy that
    is not itself a PPO candidate (candidates become parents only once promoted)."""
    live = registry.live_policy()
    if live is not None:
        return live
    policies = [m for m in registry.list("policy") if m.config.get("recipe") != "ppo"]
    if not policies:
        raise RegistryError(f"registry {registry.root} has no policy to start PPO from")
    return policies[-1].version


def ppo_due(registry: Registry) -> Due:
    """PPO is due when the newest reward model has not been applied to the parent policy."""
    reward = registry.latest("reward")
    if reward is None:
        return Due(False, "ppo: no reward model in the registry yet")
    parent = cycle_parent(registry)
    if registry.get(parent).config.get("reward_model") == reward.version:
        return Due(False, f"ppo: policy {parent} was trained against {reward.version}")
    for m in registry.list("policy"):
        if m.parent == parent and m.config.get("reward_model") == reward.version:
            return Due(False, f"ppo: candidate {m.version} from {parent} against "
                              f"{reward.version} exists already")
    return Due(True, f"ppo: train {parent} against {reward.version}")


@contextmanager
def cycle_lock(registry: Registry) -> Iterator[bool]:
    """An exclusive, non-blocking lock in the registry; yields False when another holds it."""
    with open(registry.root / LOCK_FILE, "a") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        try:
            yield True
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def run_cycle(*, store, registry: Registry, min_new_rankings: int,
              train_reward: Callable[[], Manifest], train_ppo: Callable[[], Manifest],
              ) -> CycleResult:
    """Run the stages that are due, in order; the trainers are called with no arguments."""
    result = CycleResult()
    with cycle_lock(registry) as acquired:
        if not acquired:
            result.reasons.append(f"another cycle holds {registry.root / LOCK_FILE}")
            return result
        registry.clean_staging()
        stage = reward_due(store, registry, min_new_rankings)
        result.reasons.append(stage.reason)
        if stage.due:
            result.versions.append(train_reward().version)
        stage = ppo_due(registry)
        result.reasons.append(stage.reason)
        if stage.due:
            result.versions.append(train_ppo().version)
    for reason in result.reasons:
        log.info("%s", reason)
    return result


def reward_base(registry: Registry, reward_init: str) -> str:
    """The version the reward model starts from: the lineage's SFT version, or the parent."""
    parent = cycle_parent(registry)
    return reference_of(registry, parent) if reward_init == "sft" else parent


def cycle(*, store, registry: Registry, min_new_rankings: int, config_dir: Path | None = None,
          kafka: KafkaSettings | None = None, on_step=None, overrides: dict | None = None,
          reward_init: str = "sft") -> CycleResult:
    """``run_cycle`` with the reward and PPO recipes and their YAML configs.

    ``config_dir`` holds ``reward.yaml`` and ``ppo.yaml`` overriding the packaged ones;
    ``overrides`` maps ``"reward"``/``"ppo"`` to dotted config overrides.
    """
    from training.config import load_config
    from training.recipes import ppo, reward

    overrides = overrides or {}

    def config_path(name: str) -> Path | None:
        path = Path(config_dir) / name if config_dir else None
        return path if path and path.is_file() else None

    def train_reward() -> Manifest:
        cfg = load_config(reward.RewardConfig, config_path("reward.yaml"), "reward.yaml",
                          {"base": reward_base(registry, reward_init),
                           **overrides.get("reward", {})})
        return reward.train(cfg, store=store, registry=registry, kafka=kafka)

    def train_ppo() -> Manifest:
        latest = registry.latest("reward")
        assert latest is not None  # ppo_due checked it
        cfg = load_config(ppo.PPOConfig, config_path("ppo.yaml"), "ppo.yaml", {
            "base": cycle_parent(registry), "reward_model": latest.version,
            **overrides.get("ppo", {})})
        return ppo.train(cfg, store=store, registry=registry, kafka=kafka, on_step=on_step)

    return run_cycle(store=store, registry=registry, min_new_rankings=min_new_rankings,
                     train_reward=train_reward, train_ppo=train_ppo)
