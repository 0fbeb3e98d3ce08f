"""The settings tree of the training worker (``rlhf train …``)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field

from core.settings import (
    AuthSettings,
    DatabaseSettings,
    KafkaSettings,
    ProcessSettings,
    RegistrySettings,
)


class TrainSettings(ProcessSettings):
    """Everything ``rlhf train …`` reads (its own settings: ``RLHF_TRAIN__…``); recipe
    details come from its YAML config."""

    env_section = "TRAIN"

    kafka: KafkaSettings = Field(default_factory=KafkaSettings)
    database: DatabaseSettings = Field(default_factory=DatabaseSettings)
    registry: RegistrySettings = Field(default_factory=RegistrySettings)
    config_dir: Path | None = Field(
        None, description="Directory of recipe YAML files overriding the packaged ones.")
    min_new_rankings: int = Field(
        50, ge=1, description="`train cycle` retrains the reward model after this many.")
    min_new_demonstrations: int = Field(
        100, ge=1, description="`train cycle` trains a new SFT version once this many "
                               "demonstrations that may train (labeler/admin, unless the SFT "
                               "config's train_on_user_feedback) arrived after the newest "
                               "SFT version's data mark.")
    reward_init: Literal["sft", "parent"] = Field(
        "sft", description="`train cycle` starts the reward model from the SFT version of the "
                           "live policy's lineage (InstructGPT) or from the live policy.")
    metrics_port: int = Field(0, ge=0, le=65535, description="Prometheus port; 0 disables it.")
    auth: AuthSettings = Field(
        default_factory=AuthSettings, description="API keys of `rlhf reward serve`.")
