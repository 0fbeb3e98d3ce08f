"""``rlhf train cycle``: run what is due — SFT on new demonstrations, a reward model on
new rankings, then PPO.

Made for a Kubernetes CronJob: it decides from the store's high-water mark and the
registry alone, so running it twice with no new data does nothing the second time.

* SFT is due when at least ``min_new_demonstrations`` demonstrations that may train
  (labeler/admin; user ones too with the SFT config's ``train_on_user_feedback``) arrived
  after the data mark of the newest SFT version (or ever, without one). It fine-tunes the
  pretrained base of the lineage on every such demonstration up to the mark (InstructGPT
  step 1) and announces the result as a candidate.
* **SFT gates.** The deploy controller judges an SFT candidate with the SFT gates
  (``deploy.gates.evaluate_sft``, recorded in its gates.json): LM loss on the held-out
  demonstrations not worse than the current SFT's, and, once a reward model exists, its
  reward not worse. The first SFT (no SFT yet, no reward model) is compared with the
  pretrained base and passes only when its held-out LM loss is lower. Until an SFT
  candidate has a verdict PPO waits; one that failed is never used.
* **The lineage base** is the newest SFT version that passed its gates (or that an
  operator promoted by force). When it is newer than the SFT the live policy descends
  from, PPO starts from it, not from the live policy: a new SFT starts a new lineage,
  and its PPO candidates must then beat the live policy at the deploy gates.
* The reward model is due when at least ``min_new_rankings`` rankings or comparisons
  arrived after the data mark of the newest reward version (or ever, without one).
* PPO is due when the newest reward model has not yet been applied to the parent policy
  (the lineage base when it is newer than the live policy's SFT, else the live one;
  before any is live, the newest policy that is neither a PPO candidate nor an SFT
  without passed gates):
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
from training.lineage import accepted_reward, is_ppo, reference_of
from training.settings import TrainSettings

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


def new_preference_groups(store, registry: Registry,
                           usable: Callable[[list], list] | None = None) -> tuple[int, int]:
    """(rankings + comparisons after the newest reward version's data mark, that mark);
    with ``usable``, only the groups it keeps (those that can train the next RM)."""
    latest = registry.latest("reward")
    mark = (latest.data_mark or 0) if latest else 0
    if usable is not None:
        return len(usable(store.preference_groups(since=mark))), mark
    total, before = store.counts(), store.counts(until=mark)
    return sum(total[k] - before[k] for k in PREFERENCE_KINDS), mark


def reward_due(store, registry: Registry, min_new_rankings: int,
               usable: Callable[[list], list] | None = None) -> Due:
    """Due after ``min_new_rankings`` new rankings/comparisons; with ``usable`` (the reward
    recipe's data rules) only those that can train count: user feedback without
    train_on_user_feedback, gold and gate-slice prompts do not start a run."""
    new, mark = new_preference_groups(store, registry, usable)
    what = "trainable rankings/comparisons" if usable else "rankings/comparisons"
    if new >= min_new_rankings:
        return Due(True, f"reward: {new} new {what} since data mark {mark} "
                         f"(threshold {min_new_rankings})")
    return Due(False, f"reward: only {new} new {what} since data mark {mark}, "
                      f"{min_new_rankings} needed")


DEFAULT_MIN_NEW_DEMONSTRATIONS: int = TrainSettings.model_fields["min_new_demonstrations"].default
"""One default for ``rlhf train cycle`` and ``rlhf up`` (RLHF_TRAIN__MIN_NEW_DEMONSTRATIONS)."""


def is_sft(m: Manifest) -> bool:
    return m.config.get("recipe") == "sft"


def sft_usable(registry: Registry, m: Manifest) -> bool:
    """An SFT version may anchor a lineage: it passed its gates, or it was live (forced)."""
    if m.gates.get("status") == "passed":
        return True
    return not m.gates and m.version in {r.version for r in registry.history()}


def lineage_base(registry: Registry) -> Manifest | None:
    """The newest SFT version that passed its gates (or was promoted by force)."""
    usable = [m for m in registry.list("policy") if is_sft(m) and sft_usable(registry, m)]
    return usable[-1] if usable else None


def pending_sft(registry: Registry) -> Manifest | None:
    """The newest SFT candidate still waiting for its gates, if it is newer than the base."""
    base = lineage_base(registry)
    waiting = [m for m in registry.list("policy") if is_sft(m) and not m.gates
               and not sft_usable(registry, m)]
    if waiting and (base is None or waiting[-1].version > base.version):
        return waiting[-1]
    return None


def cycle_parent(registry: Registry) -> str:
    """The policy PPO starts from.

    The lineage base (newest SFT that passed its gates) when it is newer than the SFT the
    live policy descends from; else the live policy; before any is live, the newest policy
    that is neither a PPO candidate nor an SFT without passed gates (candidates become
    parents only once promoted).
    """
    base = lineage_base(registry)
    live = registry.live_policy()
    if live is not None:
        if base is not None and base.version > reference_of(registry, live):
            return base.version
        return live
    policies = [m for m in registry.list("policy") if not is_ppo(m.config)
                and (not is_sft(m) or sft_usable(registry, m))]
    if not policies:
        raise RegistryError(f"registry {registry.root} has no policy to start PPO from")
    return policies[-1].version


def sft_base(registry: Registry) -> str:
    """The pretrained model a new SFT starts from: the first version up the parent chain
    of the cycle parent's SFT that neither SFT nor PPO made."""
    current = reference_of(registry, cycle_parent(registry))
    seen: set[str] = set()
    while current not in seen:
        seen.add(current)
        m = registry.get(current)
        if not (is_sft(m) or is_ppo(m.config)) or m.parent is None:
            return current
        current = m.parent
    raise RegistryError(f"cycle in the parent chain at {current}")


def new_demonstrations(store, registry: Registry, train_on_user_feedback: bool,
                       gate_holdout_share: float = 0.0) -> tuple[int, int]:
    """(demonstrations that may train after the newest SFT version's data mark, that mark)."""
    from training.recipes.sft import trainable

    sfts = [m for m in registry.list("policy") if is_sft(m)]
    mark = (sfts[-1].data_mark or 0) if sfts else 0
    return len(trainable(store.demonstrations(since=mark), train_on_user_feedback,
                         gate_holdout_share)), mark


def sft_due(store, registry: Registry, min_new_demonstrations: int,
            train_on_user_feedback: bool = False, gate_holdout_share: float = 0.0) -> Due:
    new, mark = new_demonstrations(store, registry, train_on_user_feedback,
                                   gate_holdout_share)
    who = "demonstrations" if train_on_user_feedback else "labeler/admin demonstrations"
    if new >= min_new_demonstrations:
        return Due(True, f"sft: {new} new {who} since data mark {mark} "
                         f"(threshold {min_new_demonstrations})")
    return Due(False, f"sft: only {new} new {who} since data mark {mark}, "
                      f"{min_new_demonstrations} needed")


def ppo_due(registry: Registry) -> Due:
    """PPO is due when the newest reward model has not been applied to the parent policy
    and no SFT candidate newer than the lineage base still awaits its gates."""
    reward = accepted_reward(registry)
    if reward is None:
        return Due(False, "ppo: no accepted reward model in the registry yet")
    waiting = pending_sft(registry)
    if waiting is not None:
        return Due(False, f"ppo: SFT candidate {waiting.version} awaits its gates")
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
              train_sft: Callable[[], Manifest] | None = None,
              min_new_demonstrations: int = DEFAULT_MIN_NEW_DEMONSTRATIONS,
              train_on_user_feedback: bool = False, gate_holdout_share: float = 0.0,
              usable_rankings: Callable[[list], list] | None = None,
              train_judge: Callable[[], Manifest] | None = None) -> CycleResult:
    """Run the stages that are due, in order (SFT, reward, PPO); the trainers are called
    with no arguments. Without ``train_sft`` the SFT stage is skipped. Only data that can
    train counts towards a stage (``train_on_user_feedback``, ``gate_holdout_share``,
    ``usable_rankings``). With ``train_judge``, each reward run also trains a held-out
    judge RM (the gates' judge; PPO never optimises it)."""
    result = CycleResult()
    with cycle_lock(registry) as acquired:
        if not acquired:
            result.reasons.append(f"another cycle holds {registry.root / LOCK_FILE}")
            return result
        registry.clean_staging()
        if train_sft is not None:
            stage = sft_due(store, registry, min_new_demonstrations, train_on_user_feedback,
                            gate_holdout_share)
            result.reasons.append(stage.reason)
            if stage.due:
                result.versions.append(train_sft().version)
        stage = reward_due(store, registry, min_new_rankings, usable_rankings)
        result.reasons.append(stage.reason)
        if stage.due:
            rm = train_reward()
            result.versions.append(rm.version)
            verdict = registry.get(rm.version).gates
            if verdict.get("kind") == "reward_quality":
                result.reasons.append(f"reward gate: {rm.version} {verdict['reason']}")
            if train_judge is not None:
                judge = train_judge()
                result.versions.append(judge.version)
                result.reasons.append(f"judge: {judge.version} trained on the judge slice "
                                      "(the gates' held-out judge; PPO never optimises it)")
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
          reward_init: str = "sft",
          min_new_demonstrations: int = DEFAULT_MIN_NEW_DEMONSTRATIONS) -> CycleResult:
    """``run_cycle`` with the SFT, reward and PPO recipes and their YAML configs.

    ``config_dir`` holds ``sft.yaml``, ``reward.yaml`` and ``ppo.yaml`` overriding the
    packaged ones; ``overrides`` maps ``"sft"``/``"reward"``/``"ppo"`` to dotted overrides.
    """
    from training import rm_gate
    from training.config import load_config
    from training.recipes import ppo, reward, sft

    # After a restart a recipe continues from its saved state (checkpoint_every) when the
    # same config's run was interrupted; otherwise resume is a no-op.
    overrides = {k: {"resume": True, **(overrides or {}).get(k, {})}
                 for k in ("sft", "reward", "ppo")}

    def config_path(name: str) -> Path | None:
        path = Path(config_dir) / name if config_dir else None
        return path if path and path.is_file() else None

    sft_overrides = overrides.get("sft", {})
    sft_cfg = load_config(sft.SFTConfig, config_path("sft.yaml"), "sft.yaml", sft_overrides)
    reward_cfg = load_config(reward.RewardConfig, config_path("reward.yaml"), "reward.yaml",
                             overrides.get("reward", {}))

    def train_sft() -> Manifest:
        cfg = load_config(sft.SFTConfig, config_path("sft.yaml"), "sft.yaml",
                          {"base": sft_base(registry), **sft_overrides})
        return sft.train(cfg, store=store, registry=registry, kafka=kafka)

    def train_reward() -> Manifest:
        cfg = load_config(reward.RewardConfig, config_path("reward.yaml"), "reward.yaml",
                          {"base": reward_base(registry, reward_init),
                           **overrides.get("reward", {})})
        manifest = reward.train(cfg, store=store, registry=registry, kafka=kafka)
        rm_gate.gate(registry, store, manifest)
        return manifest

    def train_judge() -> Manifest:
        cfg = load_config(reward.RewardConfig, config_path("reward.yaml"), "reward.yaml",
                          {"base": reward_base(registry, reward_init),
                           **overrides.get("reward", {}), "role": "judge"})
        return reward.train(cfg, store=store, registry=registry, kafka=kafka)

    def train_ppo() -> Manifest:
        latest = accepted_reward(registry)
        assert latest is not None  # ppo_due checked it
        cfg = load_config(ppo.PPOConfig, config_path("ppo.yaml"), "ppo.yaml", {
            "base": cycle_parent(registry), "reward_model": latest.version,
            **overrides.get("ppo", {})})
        return ppo.train(cfg, store=store, registry=registry, kafka=kafka, on_step=on_step)

    with_judge = reward_cfg.judge_share > 0 and reward_cfg.role == "optimised"
    judge_cfg = reward_cfg.model_copy(update={"role": "judge"})

    def usable_rankings(rows: list) -> list:
        """Rankings that can train the optimised RM, or the judge when one is trained."""
        return reward.partition(rows, reward_cfg)[0] + (
            reward.partition(rows, judge_cfg)[0] if with_judge else [])

    return run_cycle(store=store, registry=registry, min_new_rankings=min_new_rankings,
                     train_reward=train_reward, train_ppo=train_ppo, train_sft=train_sft,
                     min_new_demonstrations=min_new_demonstrations,
                     train_on_user_feedback=sft_cfg.train_on_user_feedback,
                     gate_holdout_share=sft_cfg.gate_holdout_share,
                     usable_rankings=usable_rankings,
                     train_judge=train_judge if with_judge else None)
