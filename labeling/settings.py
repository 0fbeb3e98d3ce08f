"""The workbench's settings tree (``rlhf workbench``) and the human-evaluation gate's section.

Read from ``RLHF_…`` variables like every process: ``RLHF_WORKBENCH__PORT``,
``RLHF_WORKBENCH__SERVING_URL``, ``RLHF_DATABASE__URL`` (the feedback store, where the
workbench's tables live too).
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

from core.settings import (
    AuthSettings,
    DatabaseSettings,
    KafkaSettings,
    ProcessSettings,
    RegistrySettings,
)


class HumanEvalSettings(BaseModel):
    """Human evaluation gate (``RLHF_GATES__HUMAN_EVAL__…``): labelers' blind A/B verdicts.

    A candidate-vs-live queue (``source = candidate``) yields a human win rate with a
    Wilson interval; when ``required`` the candidate is promoted only if at least
    ``min_items`` judgments exist and the interval's lower bound is ≥ ``min_lower_bound``.
    """

    required: bool = Field(False, description="Gate promotion on a human win rate from a "
                                              "candidate-vs-live labeling queue.")
    min_items: int = Field(20, ge=1, description="Fewest human judgments of the candidate "
                                                 "against the live policy.")
    min_lower_bound: float = Field(
        0.5, ge=0, le=1, description="Lowest acceptable lower bound of the Wilson interval "
                                     "of the human win rate (ties and 'both bad' count half).")
    confidence: float = Field(0.95, gt=0, lt=1, description="Confidence of the interval.")


class LabelingSettings(ProcessSettings):
    """Everything ``rlhf workbench`` reads (its own settings: ``RLHF_WORKBENCH__…``)."""

    env_section = "WORKBENCH"

    host: str = Field("0.0.0.0", description="Bind address of the workbench page and API.")
    port: int = Field(8500, ge=0, le=65535, description="Port of the workbench.")
    database: DatabaseSettings = Field(default_factory=DatabaseSettings)
    kafka: KafkaSettings = Field(default_factory=KafkaSettings)
    auth: AuthSettings = Field(default_factory=AuthSettings)
    registry: RegistrySettings = Field(default_factory=RegistrySettings)
    submit_via: Literal["broker", "serving"] = Field(
        "broker", description="broker: publish judgments to Kafka with the workbench's "
                              "FeedbackPublisher (source and submitted_by from the "
                              "labeler's key); serving: POST them to the serving API's "
                              "/v1/feedback with the labeler's key forwarded.")
    serving_url: str = Field(
        "http://127.0.0.1:8000", description="The serving API: /v1/feedback (submit_via "
                                             "serving) and /v1/completions for queues "
                                             "built from uploaded prompts.")
    serving_key: str | None = Field(
        None, description="API key for generating answers of uploaded prompts (else the "
                          "lead's own key is forwarded).")
    serving_model: str = Field("policy", description="Model name sent to /v1/completions.")
    serving_timeout_s: float = Field(60.0, gt=0, description="Timeout of one serving call.")
    lease_minutes: float = Field(
        30.0, gt=0, description="An item handed out but not submitted returns to the pool "
                                "after this long (it no longer counts towards overlap).")
    flag_margin: float = Field(
        0.15, ge=0, le=1, description="A labeler whose pairwise agreement is more than this "
                                      "below the median labeler's is flagged.")
    flag_min_items: int = Field(
        3, ge=1, description="Overlapping items a labeler needs before they can be flagged.")
    device: str = Field("cpu", description="torch device for candidate-vs-live generation.")
