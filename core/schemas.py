"""The published JSON Schemas of every Kafka event, generated from the pydantic models.

``docs/schemas/*.json`` are these schemas, committed so that teams outside this code
base (other languages, stream processors, data catalogues) can validate what they read
and write. Regenerate them after changing a model in :mod:`core.events` or
:class:`core.registry.PolicyEvent`::

    python -m core.schemas            # writes docs/schemas/
    python -m core.schemas --check    # exit 1, naming the files, when they are stale

A unit test fails while the committed files and the models disagree, so they cannot
drift. The schemas describe what a consumer accepts (pydantic's *validation* mode);
cross-field rules (``ranks`` as long as ``choices``, a reference or own texts but not
both) are enforced by the decoder too, and are stated in each model's description.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel, TypeAdapter

from core.events import (
    SCHEMA_VERSION,
    Comparison,
    CompletionRecord,
    Demonstration,
    FeedbackEvent,
    Ranking,
    Rating,
)
from core.registry import PolicyEvent

DRAFT = "https://json-schema.org/draft/2020-12/schema"
DEFAULT_DIR = Path(__file__).resolve().parents[1] / "docs" / "schemas"


@dataclass(frozen=True)
class Published:
    """One published schema: its file, the topic it travels on, the ``type`` values."""

    file: str
    topic: str  # the KafkaSettings.topics field naming the topic
    model: Any  # a BaseModel subclass, or an annotated union
    types: tuple[str, ...]


def _types(model: type[BaseModel]) -> tuple[str, ...]:
    """The values the model's ``type`` field may take (its Literal's arguments)."""
    annotation = model.model_fields["type"].annotation
    return tuple(getattr(annotation, "__args__", ()))


PUBLISHED: tuple[Published, ...] = (
    Published("completion.json", "completions", CompletionRecord, _types(CompletionRecord)),
    Published("ranking.json", "feedback", Ranking, _types(Ranking)),
    Published("comparison.json", "feedback", Comparison, _types(Comparison)),
    Published("rating.json", "feedback", Rating, _types(Rating)),
    Published("demonstration.json", "feedback", Demonstration, _types(Demonstration)),
    Published("feedback.json", "feedback", FeedbackEvent,
              _types(Ranking) + _types(Comparison) + _types(Rating) + _types(Demonstration)),
    Published("policy.json", "policy", PolicyEvent, _types(PolicyEvent)),
)
"""Every schema; ``feedback.json`` is the union of the four feedback kinds."""


def schema_file_for_type(event_type: str) -> str:
    """The file of the schema a message with ``rlhf-event-type: event_type`` follows."""
    for published in PUBLISHED:
        if published.file != "feedback.json" and event_type in published.types:
            return published.file
    raise KeyError(f"no published schema for event type {event_type!r}")


def _schema(published: Published) -> dict[str, Any]:
    if isinstance(published.model, type) and issubclass(published.model, BaseModel):
        body = published.model.model_json_schema(mode="validation")
    else:
        body = TypeAdapter(published.model).json_schema(mode="validation")
        body = {"title": "FeedbackEvent", "description": (
            "Any feedback event on the feedback topic; `type` tells which one."), **body}
    if published.topic in ("completions", "feedback"):
        _require_event_id(body)
    return {"$schema": DRAFT, **body,
            "x-rlhf-topic": published.topic,
            "x-rlhf-event-types": list(published.types),
            "x-rlhf-schema-version": SCHEMA_VERSION}


def _require_event_id(node: Any) -> None:
    """On the wire ``event_id`` is required (the decoder dead-letters messages without
    it, so a producer's retry cannot be stored twice), although Python constructors
    default it; mark it required in every object schema that has it."""
    if isinstance(node, dict):
        if "event_id" in node.get("properties", {}):
            required = node.setdefault("required", [])
            if "event_id" not in required:
                required.insert(0, "event_id")
        for value in node.values():
            _require_event_id(value)
    elif isinstance(node, list):
        for value in node:
            _require_event_id(value)


def json_schemas() -> dict[str, dict[str, Any]]:
    """File name → JSON Schema of every published event, as committed in docs/schemas."""
    return {p.file: _schema(p) for p in PUBLISHED}


def render(schema: dict[str, Any]) -> str:
    """The committed text of a schema: two-space indented JSON, UTF-8, final newline."""
    return json.dumps(schema, indent=2, ensure_ascii=False) + "\n"


def stale_files(directory: Path) -> list[str]:
    """Files in ``directory`` that differ from the models, are missing, or are extra."""
    want = {name: render(schema) for name, schema in json_schemas().items()}
    have = {p.name: p.read_text() for p in directory.glob("*.json")} if directory.is_dir() \
        else {}
    return sorted(name for name in set(want) | set(have) if want.get(name) != have.get(name))


def write(directory: Path) -> list[str]:
    """Write every schema into ``directory`` and delete stale extra ones; the files written."""
    directory.mkdir(parents=True, exist_ok=True)
    schemas = json_schemas()
    for extra in set(p.name for p in directory.glob("*.json")) - set(schemas):
        (directory / extra).unlink()
    for name, schema in schemas.items():
        (directory / name).write_text(render(schema))
    return sorted(schemas)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m core.schemas", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=DEFAULT_DIR,
                        help="directory of the schema files (default: docs/schemas)")
    parser.add_argument("--check", action="store_true",
                        help="only compare; exit 1 naming the stale files")
    args = parser.parse_args(argv)
    if args.check:
        stale = stale_files(args.out)
        for name in stale:
            print(f"stale: {args.out / name}", file=sys.stderr)
        return 1 if stale else 0
    for name in write(args.out):
        print(args.out / name)
    return 0


if __name__ == "__main__":
    sys.exit(main())
