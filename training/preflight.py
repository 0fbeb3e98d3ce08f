"""Check the recipe configs a training cycle will use before anything runs.

``rlhf up`` and ``rlhf train cycle`` call :func:`check_recipe_configs` at start, so a
config that cannot run (a missing ``ptx_file``, a base model that is not there, a batch
that minibatches do not divide, a misspelt field) stops them within seconds with the file
and the field named, instead of after the user has collected enough feedback for the
first PPO run.
"""

from __future__ import annotations

from pathlib import Path

import yaml
from pydantic import BaseModel, ValidationError

from core.registry import RegistryError, parse_version
from training.config import CONFIG_DIR, load_config

RECIPE_FILES = ("sft.yaml", "reward.yaml", "ppo.yaml")


def recipe_classes() -> dict[str, type[BaseModel]]:
    from training.recipes import ppo, reward, sft

    return {"sft.yaml": sft.SFTConfig, "reward.yaml": reward.RewardConfig,
            "ppo.yaml": ppo.PPOConfig}


def recipe_path(config_dir: Path | None, name: str) -> Path:
    """``<config_dir>/<name>`` when it is there, else the packaged one (as the cycle does)."""
    path = Path(config_dir) / name if config_dir else None
    return path if path is not None and path.is_file() else CONFIG_DIR / name


def check_recipe_configs(config_dir: Path | None) -> list[str]:
    """One line per problem, ``<file>: <field>: <what is wrong>``; empty when all can run."""
    if config_dir is not None and not Path(config_dir).is_dir():
        return [f"config_dir {config_dir} is not a directory"]
    problems: list[str] = []
    for name, cls in recipe_classes().items():
        path = recipe_path(config_dir, name)
        try:
            cfg = load_config(cls, path, name)
        except yaml.YAMLError as e:
            problems.append(f"{path}: not valid YAML: {e}")
        except ValidationError as e:
            problems += validation_problems(path, e)
        else:
            problems += [f"{path}: {line}" for line in config_problems(cfg)]
    return problems


def validation_problems(shown: object, error: ValidationError) -> list[str]:
    """``<file>: <field>: <message>`` for each problem pydantic found in a config."""
    return [f"{shown}: {_where(err['loc'])}{err['msg'].removeprefix('Value error, ')}"
            for err in error.errors(include_url=False)]


def _where(loc: tuple) -> str:
    return ".".join(str(p) for p in loc) + ": " if loc else ""


def config_problems(cfg: BaseModel) -> list[str]:
    """``field: why`` for what a valid config still cannot run with: a base checkpoint or
    a file that is not there, PPO-ptx without its data."""
    out = []
    base = getattr(cfg, "base", None)
    if base and not _is_version(base) and not (Path(base) / "config.json").is_file():
        out.append(f"base: {base} is neither a registry version (policy-0003) nor a "
                   "checkpoint directory with a config.json")
    unrunnable = getattr(cfg, "unrunnable", None)
    return out + (unrunnable() if unrunnable else [])


def _is_version(value: str) -> bool:
    try:
        parse_version(value)
    except RegistryError:
        return False
    return True
