"""Command-line flags and environment variables validated by one settings class.

Every process reads one pydantic-settings tree (``RLHF_…`` variables). Its command-line
flags do not bypass that tree: :func:`load_settings` passes the flags that were given as
init values of the same class, so pydantic-settings merges them over the environment
(flags win) and every bound and cross-field check runs on the result. A bad value, from
a flag or a variable, ends the command with exit code 2 and one line per problem that
names the flag or the variable, never a traceback.

``flags`` maps a setting's dotted path (``"http.port"``) to ``(flag, value)``; a value of
``None`` means the flag was not given.
"""

from __future__ import annotations

import sys
from typing import Any, NoReturn, TypeVar

from pydantic import ValidationError
from pydantic_settings import BaseSettings

S = TypeVar("S", bound=BaseSettings)

Flags = dict[str, tuple[str, Any]]


def env_name(settings_cls: type[BaseSettings], path: str) -> str:
    """The environment variable of a setting (``"http.port"`` → ``RLHF_HTTP__PORT``)."""
    named = getattr(settings_cls, "env_name", None)
    if named is not None:
        return str(named(path))
    prefix = str(settings_cls.model_config.get("env_prefix", ""))
    return prefix + "__".join(p.upper() for p in path.split("."))


def _nested(flags: Flags) -> dict[str, Any]:
    """``{"http.port": ("--port", 1)}`` → ``{"http": {"port": 1}}`` (unset flags left out)."""
    out: dict[str, Any] = {}
    for path, (_flag, value) in flags.items():
        if value is None:
            continue
        *parents, leaf = path.split(".")
        node = out
        for name in parents:
            node = node.setdefault(name, {})
        node[leaf] = value
    return out


def describe(settings_cls: type[BaseSettings], error: ValidationError,
             flags: Flags | None = None) -> list[str]:
    """One line per problem, naming the flag when one was given, else the variable."""
    flags = flags or {}
    lines = []
    for problem in error.errors(include_url=False):
        loc = tuple(p for p in problem["loc"] if not isinstance(p, int))
        path = ".".join(str(p) for p in loc)
        env = env_name(settings_cls, path) if loc else ""
        flag, value = flags.get(path, (None, None))
        message = problem["msg"].removeprefix("Value error, ")
        if not loc:  # a cross-field check: its message names the settings itself
            lines.append(message)
        elif value is not None:
            lines.append(f"{flag} (or {env}): {message} (got {value!r})")
        else:
            got = problem.get("input")
            shown = "" if isinstance(got, dict) else f" (got {got!r})"
            lines.append(f"{env}: {message}{shown}")
    return lines


def load_settings(settings_cls: type[S], flags: Flags | None = None, *,
                  command: str = "rlhf") -> S:
    """The settings tree from the environment with ``flags`` on top, or exit 2 naming
    every bad flag or variable on stderr."""
    try:
        return settings_cls(**_nested(flags or {}))
    except ValidationError as e:
        fail(command, describe(settings_cls, e, flags))


def fail(command: str, lines: list[str]) -> NoReturn:
    """Print ``<command>: error: …`` per line on stderr and exit 2 (a usage error)."""
    for line in lines:
        print(f"{command}: error: {line}", file=sys.stderr, flush=True)
    raise SystemExit(2)
