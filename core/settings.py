"""Settings sections shared by every process, and the base every settings tree uses.

Each process has one pydantic-settings tree read from ``RLHF_…`` environment variables,
with ``__`` separating nested sections (``RLHF_KAFKA__BOOTSTRAP_SERVERS``). The Helm
chart maps its values onto exactly these variables.
"""

from __future__ import annotations

import typing
from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, Field, field_validator
from pydantic.fields import FieldInfo
from pydantic_settings import (
    BaseSettings,
    EnvSettingsSource,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

ENV_PREFIX = "RLHF_"


def is_section(field: FieldInfo) -> bool:
    """A nested settings section (``RLHF_<SECTION>__<NAME>``), not a plain value."""
    return any(isinstance(t, type) and issubclass(t, BaseModel)
               for t in (field.annotation, *typing.get_args(field.annotation)))


class ProcessEnvSource(EnvSettingsSource):
    """Environment variables of one process: its own settings under its section.

    Shared sections (``RLHF_KAFKA__…``, ``RLHF_DATABASE__…``) and the fields every process
    has (``RLHF_LOG_LEVEL``) keep one name everywhere: they mean the same thing in every
    process, so one ConfigMap configures them all. A process's own plain settings read
    ``RLHF_<SECTION>__<NAME>`` (``RLHF_INGEST__GROUP_ID``, ``RLHF_DEPLOY__PORT``), so no
    two processes read one variable with different meanings.
    """

    def __init__(self, settings_cls: type[BaseSettings], section: str | None):
        super().__init__(settings_cls)
        self.section = section

    def own_env_name(self, field_name: str) -> str:
        return f"{ENV_PREFIX}{self.section}__{field_name}".upper()

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        if self.section is None or is_section(field) or field_name in SHARED_FIELDS:
            return super().get_field_value(field, field_name)
        name = self.own_env_name(field_name)
        value = self.env_vars.get(name if self.case_sensitive else name.lower())
        return value, field_name, self._field_is_complex(field)[0]


class ProcessSettings(BaseSettings):
    """Base of every process's settings tree.

    ``env_section`` names the process's own variables (``RLHF_<env_section>__<NAME>``);
    ``None`` keeps flat ``RLHF_<NAME>`` names (``rlhf serve``, whose plain settings are the
    model and its events).
    """

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX, env_nested_delimiter="__", extra="ignore",
        validate_default=True,
    )
    env_section: ClassVar[str | None] = None

    log_level: Literal["debug", "info", "warning", "error"] = Field(
        "info", description="Log level of the process.")

    @classmethod
    def settings_customise_sources(
            cls, settings_cls: type[BaseSettings],
            init_settings: PydanticBaseSettingsSource,
            env_settings: PydanticBaseSettingsSource,
            dotenv_settings: PydanticBaseSettingsSource,
            file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        """Init values (command-line flags) over the environment, as pydantic-settings
        does, with each process's own variables under its section."""
        return (init_settings, ProcessEnvSource(settings_cls, cls.env_section),
                dotenv_settings, file_secret_settings)

    @classmethod
    def env_name(cls, path: str) -> str:
        """The variable of a setting: ``"http.port"`` → ``RLHF_HTTP__PORT``;
        ``"group_id"`` of ``rlhf ingest`` → ``RLHF_INGEST__GROUP_ID``."""
        head, *rest = path.split(".")
        field = cls.model_fields.get(head)
        own = (cls.env_section and field is not None and not is_section(field)
               and head not in SHARED_FIELDS)
        parts = [cls.env_section, head] if own else [head]
        return ENV_PREFIX + "__".join(p.upper() for p in [*parts, *rest] if p)


SHARED_FIELDS = frozenset(ProcessSettings.model_fields)
"""Plain settings every process has, under one name (``RLHF_LOG_LEVEL``)."""


class TopicSettings(BaseModel):
    """Kafka topic names and partition counts (partitions only matter when we create them)."""

    completions: str = Field("rlhf.completions", description="Every served generation.")
    feedback: str = Field("rlhf.feedback", description="Rankings, comparisons, ratings, demos.")
    dlq: str = Field("rlhf.feedback.dlq", description="Events that failed to parse or validate.")
    policy: str = Field("rlhf.policy", description="Candidate, promote and rollback events.")
    partitions: int = Field(3, ge=1, description="Partitions for topics we create.")
    replication_factor: int = Field(1, ge=1, description="Replication for topics we create.")


class KafkaSettings(BaseModel):
    """How every process reaches Kafka (``RLHF_KAFKA__…``)."""

    bootstrap_servers: str = Field(
        "127.0.0.1:9092", description="Comma-separated host:port list of Kafka brokers.")
    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = Field(
        "PLAINTEXT", description="Kafka security protocol.")
    sasl_mechanism: str | None = Field(None, description="SASL mechanism, e.g. SCRAM-SHA-512.")
    sasl_username: str | None = Field(None, description="SASL user name.")
    sasl_password: str | None = Field(None, description="SASL password.")
    ssl_cafile: str | None = Field(None, description="CA bundle for SSL connections.")
    request_timeout_ms: int = Field(
        5000, ge=100, description="How long a produce may wait for the broker's ack.")
    topics: TopicSettings = Field(default_factory=TopicSettings)

    @field_validator("bootstrap_servers")
    @classmethod
    def _non_empty(cls, v: str) -> str:
        if not [s for s in v.split(",") if s.strip()]:
            raise ValueError("RLHF_KAFKA__BOOTSTRAP_SERVERS must list at least one host:port")
        return v

    def client_kwargs(self) -> dict:
        """Keyword arguments common to kafka-python's producer, consumer and admin."""
        kw: dict = {
            "bootstrap_servers": [s.strip() for s in self.bootstrap_servers.split(",")],
            "security_protocol": self.security_protocol,
        }
        if self.sasl_mechanism:
            kw.update(sasl_mechanism=self.sasl_mechanism,
                      sasl_plain_username=self.sasl_username,
                      sasl_plain_password=self.sasl_password)
        if self.ssl_cafile:
            kw["ssl_cafile"] = self.ssl_cafile
        return kw


class DatabaseSettings(BaseModel):
    """The feedback store (``RLHF_DATABASE__…``). SQLite locally, PostgreSQL in production."""

    url: str = Field("sqlite:///rlhf-home/feedback.db",
                     description="SQLAlchemy URL of the feedback store.")
    echo: bool = Field(False, description="Log every SQL statement.")


class RegistrySettings(BaseModel):
    """Where model versions live (``RLHF_REGISTRY__…``)."""

    root: Path = Field(Path("rlhf-home/registry"),
                       description="Directory of immutable model versions (a RWX volume in k8s).")




class AuthSettings(BaseModel):
    """API keys and their roles (``RLHF_AUTH__…``). No keys configured means open access."""

    keys: dict[str, Literal["user", "labeler", "admin"]] = Field(
        default_factory=dict,
        description='API key → role, as JSON: {"sk-abc": "labeler"}.')
    keys_file: Path | None = Field(
        None, description="A JSON or YAML file mapping API keys to roles.")
    allow_open: bool = Field(
        False, description="Let `rlhf serve` start without API keys on a non-loopback "
                           "address (anyone who reaches it is admin).")
