"""The deploy controller's settings tree (``rlhf deploy …``) and its promotion gates."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, Field, model_validator

from core.settings import (
    AuthSettings,
    DatabaseSettings,
    KafkaSettings,
    ProcessSettings,
    RegistrySettings,
)
from labeling.settings import HumanEvalSettings


class GateSettings(BaseModel):
    """Promotion gates (``RLHF_GATES__…``): a candidate is compared with the live policy.

    Both policies answer, several times each, the same held-out prompts (a hash slice of
    traffic PPO never trains on, an optional eval file) with the same sampling seeds; the
    optimised reward model and a held-out judge score every answer; reward gain and win
    rate pass only when the lower bound of their bootstrap interval clears the threshold.
    Rewards are in each reward model's normalised units (demonstrations score 0 on average).
    """

    min_reward_improvement: float = Field(
        0.01, description="The lower bound of the interval of candidate minus live mean "
                          "reward must be at least this; > 0 means a copy of the live policy "
                          "does not pass.")
    max_kl: float = Field(
        10.0, gt=0, description="Budget for KL(candidate‖reference) in nats per response "
                                "(mean over candidate samples of Σ_t log π_cand − log π_ref).")
    max_length_drift: float = Field(
        0.5, ge=0, description="Bound on |mean candidate length / mean live length − 1| "
                               "(tokens); a long-answer drift is a common reward hack.")
    min_win_rate: float = Field(
        0.5, ge=0, le=1, description="Lower bound of the interval of the share of paired "
                                     "samples where the reward model prefers the candidate "
                                     "(ties count half) must be at least this.")
    num_prompts: int = Field(
        32, ge=1, description="Held-out prompts: the eval file, then the newest distinct "
                              "traffic prompts of the gate slice, then a packaged list.")
    holdout_share: float = Field(
        0.1, ge=0, le=1, description="Share of traffic prompts (by a hash of the normalised "
                                     "text) kept for the gates; PPO's gate_holdout_share "
                                     "must be the same so it never trains on them.")
    eval_prompt_file: Path | None = Field(
        None, description="Operator's eval prompts, one a line, used before traffic.")
    traffic_scan: int = Field(
        5000, ge=1, description="Newest distinct traffic prompts searched for the gate slice.")
    samples_per_prompt: int = Field(
        4, ge=1, description="Answers per prompt and policy (paired by seed).")
    confidence: float = Field(
        0.9, gt=0, lt=1, description="Two-sided coverage of a fixed-n interval: the reward "
                                     "and win-rate gates promote a candidate that is only "
                                     "as good as the threshold with probability at most "
                                     "(1 − confidence) / 2, spent across the sequential "
                                     "looks; also the SFT gate's bootstrap coverage.")
    sequential_looks: int = Field(
        4, ge=1, description="Rounds the num_prompts held-out prompts are evaluated in; the "
                             "reward and win-rate gates stop after a round once decided "
                             "(O'Brien–Fleming α spending; 1 = one fixed-size test).")
    power: float = Field(
        0.8, gt=0, lt=1, description="Power at which gates.json quotes the smallest "
                                     "detectable effect of the prompts used.")
    length_controlled: bool = Field(
        True, description="Win-rate gates test the length-controlled win rate (length "
                          "difference regressed out, AlpacaEval-LC style); the raw rate is "
                          "reported beside it.")
    unfinished_penalty: float | None = Field(
        None, ge=0, description="Reward subtracted from an answer cut at max_new_tokens "
                                "(no stop id); None = the candidate's PPO truncation_penalty "
                                "(0 when it trained with truncation no_eos/append_eos), "
                                "else 1.")
    max_diversity_drop: float = Field(
        0.25, ge=0, le=1, description="Most relative drop of distinct-2 (unique word "
                                      "bigrams / bigrams) of the candidate's answers below "
                                      "its SFT reference's.")
    max_repetition_increase: float = Field(
        0.25, ge=0, le=1, description="Most rise of the share of answers that repeat a "
                                      "word 3-gram, candidate vs its SFT reference.")
    min_judge_ratio: float = Field(
        0.25, ge=0, description="Over-optimisation check (with a judge RM): the judge's "
                                "win-rate excess over 50 % must be at least this share of "
                                "the optimised RM's; a candidate far better under the RM it "
                                "optimised than under the held-out judge is refused.")
    max_alignment_tax: float = Field(
        0.1, ge=0, description="Alignment-tax budget: most relative rise of the LM loss on "
                               "the capability texts, candidate vs its SFT reference "
                               "(0.1 = 10 % more nats/token).")
    capability_file: Path | None = Field(
        None, description="Capability texts held out from every recipe, one a line "
                          "(pretraining-style text); None = the packaged corpus's held-out "
                          "slice (training.datasets.CAPABILITY_SHARE).")
    bootstrap_resamples: int = Field(1000, ge=10, description="Bootstrap resamples (SFT "
                                                              "reward gate).")
    judge_model: str | None = Field(
        None, description="Held-out judge reward version besides the optimised one: a "
                          "version, `previous` (the reward version before the optimised "
                          "one) or `none`; None = the newest reward version trained with "
                          "role judge, if any.")
    max_new_tokens: int | None = Field(
        None, ge=1, description="Most tokens per sampled answer; None = the candidate's own "
                                "max_new_tokens (else 48), long enough to see length hacking.")
    temperature: float = Field(1.0, gt=0, description="Sampling temperature (1 = the policy).")
    seed: int = Field(0, description="Sampling seed; the same for candidate and live.")
    batch_size: int = Field(16, ge=1, description="Prompts per generate/score batch.")
    max_prompt_tokens: int = Field(
        256, ge=8, description="Prompts are cut to their last this many tokens.")
    reward_model: str | None = Field(
        None, description="The optimised reward version; None = the one the candidate "
                          "was trained against, else the newest reward version.")
    reference: str | None = Field(
        None, description="Policy the KL is measured against; None = the SFT version of "
                          "the candidate's lineage (its manifest's `reference`).")
    device: str = Field("cpu", description="torch device for the gate models, e.g. cuda.")
    human_eval: HumanEvalSettings = Field(
        default_factory=HumanEvalSettings,
        description="Human win rate from the labeling workbench's candidate queues.")


class RolloutSettings(BaseModel):
    """Staged, canary-first rollouts across the serving fleet (``RLHF_ROLLOUT__…``).

    With ``staged`` on and replicas heard from (heartbeats on ``rlhf.policy``), a
    promotion swaps replicas a few at a time and waits for each one's report; a failed
    swap stops it and puts the swapped replicas back. With ``canary_replicas`` > 0 the
    candidate first serves on that many replicas while the online policy (docs/rollout.md)
    compares it with the live version, and rolls forward, holds, or rolls back.
    """

    staged: bool = Field(
        True, description="Swap replicas explicitly, at most max_unavailable at a time; "
                          "off (or no replica heard from): one promote event for all.")
    max_unavailable: str = Field(
        "1", pattern=r"^\d+%?$", description="Most replicas swapping at once: a count "
                                             "(`1`) or a share of the fleet (`25%`, at "
                                             "least one replica).")
    canary_replicas: int = Field(
        0, ge=0, description="Replicas that serve the candidate first, during the canary "
                             "window; 0 = no canary, straight to a staged full rollout.")
    policy_file: Path | None = Field(
        None, description="YAML online-evaluation policy (window, interval, "
                          "signals and thresholds, docs/rollout.md); None = the defaults.")
    stale_after_s: float = Field(
        15.0, gt=0, description="A replica not heard from for this long leaves the fleet "
                                "table (3 heartbeats at the serving default).")
    swap_timeout_s: float = Field(
        300.0, gt=0, description="How long to wait for one replica's swap report; no "
                                 "report counts as a failed swap.")
    watch_s: float = Field(
        0.0, ge=0, description="After a full rollout, keep comparing the new live "
                               "version's user ratings with the previous version's this "
                               "long, and roll back on a regression (long-running "
                               "controller only); 0 = off.")


class DeploySettings(ProcessSettings):
    """Everything ``rlhf deploy …`` (the deploy controller) reads (its own settings:
    ``RLHF_DEPLOY__…``)."""

    env_section = "DEPLOY"

    kafka: KafkaSettings = Field(default_factory=KafkaSettings)
    database: DatabaseSettings = Field(default_factory=DatabaseSettings)
    registry: RegistrySettings = Field(default_factory=RegistrySettings)
    auto_promote: bool = Field(False, description="Promote candidates that pass every gate.")
    gates: GateSettings = Field(default_factory=GateSettings)
    rollout: RolloutSettings = Field(default_factory=RolloutSettings)
    auth: AuthSettings = Field(default_factory=AuthSettings)
    host: str = Field("0.0.0.0", description="Bind address of the controller's admin API.")
    port: int = Field(8300, ge=0, le=65535, description="Port of the admin API (/v1/deploy).")
    group_id: str = Field(
        "rlhf-deploy", description="Kafka consumer group of the controller on rlhf.policy.")
    poll_timeout_ms: int = Field(500, ge=1, description="How long one poll waits for events.")
    session_timeout_ms: int = Field(10000, ge=1000, description="Consumer group session timeout.")
    max_poll_interval_ms: int = Field(
        600000, ge=1000, description="Longest gap between polls; gate runs happen between "
                                     "polls, so this bounds one gate evaluation.")

    @model_validator(mode="after")
    def _poll_within_session(self) -> DeploySettings:
        if self.poll_timeout_ms >= self.session_timeout_ms:
            raise ValueError("RLHF_DEPLOY__POLL_TIMEOUT_MS must be below "
                             "RLHF_DEPLOY__SESSION_TIMEOUT_MS")
        return self
