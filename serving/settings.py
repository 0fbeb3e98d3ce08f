"""The ``rlhf serve`` settings tree (``RLHF_…`` environment variables)."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, Field, model_validator

from core.settings import AuthSettings, KafkaSettings, ProcessSettings, RegistrySettings


class HttpSettings(BaseModel):
    """The OpenAI-compatible HTTP API (``RLHF_HTTP__…``)."""

    host: str = Field("0.0.0.0", description="Interface the HTTP server binds.")
    port: int = Field(8000, ge=0, le=65535, description="HTTP port (0 picks a free one).")
    root_path: str = Field("", description="ASGI root path when served behind a proxy prefix.")
    max_body_bytes: int = Field(
        8 << 20, ge=1024, description="Largest request body accepted; bigger ones get 413 "
                                      "before they are read (Content-Length) or as soon as "
                                      "the streamed body passes it.")


class LimitSettings(BaseModel):
    """Per-request size limits, checked before any expensive work (``RLHF_LIMITS__…``).

    Each refusal names its field: 413 for sizes (prompt characters), 400 for counts and
    for prompts longer than the context in tokens.
    """

    max_prompt_chars: int = Field(
        1_000_000, ge=1, description="Most characters in a prompt, or in all chat messages "
                                     "together; checked before tokenising.")
    max_messages: int = Field(
        1024, ge=1, description="Most messages in one chat completion request.")
    max_stop_chars: int = Field(
        256, ge=1, description="Longest stop string (up to 8 may be given).")
    max_n: int = Field(64, ge=1, le=64, description="Most choices (n) one request may ask for.")
    max_feedback_batch: int = Field(
        1000, ge=1, le=1000, description="Most items in one POST /v1/feedback/batch.")


class GrpcSettings(BaseModel):
    """The gRPC API (``RLHF_GRPC__…``)."""

    enabled: bool = Field(True, description="Serve gRPC next to HTTP.")
    host: str = Field("0.0.0.0", description="Interface the gRPC server binds.")
    port: int = Field(50051, ge=0, le=65535, description="gRPC port (0 picks a free one).")
    max_workers: int = Field(32, ge=1, description="Concurrent RPCs served at once.")
    stream_flush_ms: float = Field(
        0.0, ge=0, le=1000, description="GenerateStream: wait this long after a token "
        "before sending, so more tokens share the message (0: send what is ready at once; "
        "under load the tokens of one engine step still share one message per choice).")
    max_receive_bytes: int = Field(
        8 << 20, ge=1024, description="Largest request message accepted (RESOURCE_EXHAUSTED "
                                      "beyond it).")


class EngineSettings(BaseModel):
    """How the vLLM engine is built (``RLHF_ENGINE__…``); mirrors vLLM's engine args."""

    max_model_len: int | None = Field(
        None, ge=16, description="Context length; defaults to the model's own.")
    dtype: str = Field("auto", description="Weights dtype: auto, float32, bfloat16, float16.")
    tensor_parallel_size: int = Field(1, ge=1, description="GPUs per replica (vLLM TP).")
    gpu_memory_utilization: float = Field(
        0.9, gt=0, le=1, description="Fraction of GPU memory vLLM may use.")
    max_num_seqs: int = Field(256, ge=1, description="Most sequences the engine runs at once.")
    max_waiting_requests: int = Field(
        1024, ge=1, description="Requests beyond this many queued are refused with 429.")
    enforce_eager: bool = Field(True, description="Skip CUDA graphs / torch.compile warm-up.")
    seed: int = Field(0, description="Engine seed (per-request seeds override it).")
    structured_outputs_disable_any_whitespace: bool = Field(
        False, description="Structured outputs (response_format, guided JSON) emit no "
        "whitespace between JSON tokens (vLLM's structured_outputs_config."
        "disable_any_whitespace; selects the xgrammar backend, which vLLM requires for "
        "it). Small or weak models otherwise may pad JSON with whitespace until "
        "max_tokens.")
    kv_cache_space_gib: float | None = Field(
        None, gt=0, description="KV cache size in GiB (default: 1 GiB on CPUs; on GPUs vLLM "
                                "sizes it from gpu_memory_utilization).")


class OpenAISettings(BaseModel):
    """vLLM's OpenAI serving options this platform exposes (same names as vLLM's flags)."""

    chat_template: str | None = Field(
        None, description="Chat template file or inline Jinja; the model's own when unset.")
    tool_call_parser: str | None = Field(
        None, description="vLLM tool parser (e.g. hermes, llama3_json, mistral); needed "
                          "for `tool_choice` naming a function or `auto`.")
    enable_auto_tool_choice: bool = Field(
        False, description="Allow `tool_choice: auto` (needs tool_call_parser).")
    reasoning_parser: str | None = Field(
        None, description="vLLM reasoning parser for reasoning models (e.g. deepseek_r1).")


class ReplicaSettings(BaseModel):
    """How this replica announces itself to the deploy controller (``RLHF_REPLICA__…``).

    Every ``heartbeat_interval_s`` a ``heartbeat`` event on ``rlhf.policy`` says the
    replica's id, URL, served version and readiness; the controller's fleet table drops a
    replica it has not heard from for its ``RLHF_ROLLOUT__STALE_AFTER_S``.
    """

    id: str | None = Field(
        None, description="Replica id in the fleet table and in `swap` targets; default: "
                          "the host name (the pod name in Kubernetes). Must be unique.")
    url: str | None = Field(
        None, description="HTTP base URL the controller scrapes /metrics from; default: "
                          "http://<bind address, or the host name when bound to all interfaces>:"
                          "<RLHF_HTTP__PORT>.")
    heartbeat_interval_s: float = Field(
        5.0, gt=0, description="Seconds between heartbeats (they need publish_events and "
                               "follow_policy_events).")


class ServeSettings(ProcessSettings):
    """Everything ``rlhf serve`` reads."""

    model: str | None = Field(
        None, description="Checkpoint directory or the registry's live policy when unset.")
    served_model_name: str | None = Field(
        None, description="Model id clients pass as `model`; defaults to the model path name.")
    policy_version: str | None = Field(
        None, description="Version label of --model when it is not a registry version.")
    http: HttpSettings = Field(default_factory=HttpSettings)
    grpc: GrpcSettings = Field(default_factory=GrpcSettings)
    engine: EngineSettings = Field(default_factory=EngineSettings)
    limits: LimitSettings = Field(default_factory=LimitSettings)
    kafka: KafkaSettings = Field(default_factory=KafkaSettings)
    registry: RegistrySettings = Field(default_factory=RegistrySettings)
    auth: AuthSettings = Field(default_factory=AuthSettings)
    replica: ReplicaSettings = Field(default_factory=ReplicaSettings)
    openai: OpenAISettings = Field(default_factory=OpenAISettings)
    follow_policy_events: bool = Field(
        True, description="Hot-swap on promote/rollback events from the `rlhf.policy` topic.")
    publish_events: bool = Field(
        True, description="Publish completion events to Kafka (feedback needs a broker).")
    event_buffer_size: int = Field(
        10000, ge=1, description="Completion events kept in memory while the broker is "
        "unreachable; beyond them the oldest go to the spill directory.")
    event_spill_dir: Path | None = Field(
        None, description="Where completion events the broker could not take in time are "
        "kept (JSON lines) until they are replayed; default: <RLHF_REGISTRY__ROOT>/spill, "
        "the volume replicas share, so a replica that restarts or is replaced does not "
        "lose what another left there.")
    event_replay_interval_s: float = Field(
        30.0, gt=0, description="Seconds between attempts to replay the spill directory "
        "(and to adopt what stopped replicas left in it); it is also replayed at start-up "
        "and as soon as the broker answers again.")
    default_max_tokens: int = Field(
        16, ge=1, description="max_tokens when a request omits it (OpenAI's default is 16).")

    def spill_dir(self) -> Path:
        """``event_spill_dir``, or its default under the registry root."""
        return self.event_spill_dir or self.registry.root / "spill"

    @model_validator(mode="after")
    def _ports_differ(self) -> ServeSettings:
        if self.grpc.enabled and self.http.port and self.http.port == self.grpc.port:
            raise ValueError(f"the HTTP port (--port, RLHF_HTTP__PORT) and the gRPC port "
                             f"(--grpc-port, RLHF_GRPC__PORT) must differ; both are "
                             f"{self.http.port}")
        return self
