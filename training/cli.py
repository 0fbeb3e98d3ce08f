"""``rlhf train …`` and ``rlhf reward …``: Typer apps mounted by ``rlhf/cli.py``.

Recipes also run under ``accelerate launch -m training.cli sft --config …`` (or torchrun)
for several processes; every process runs the recipe and the main one publishes.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import typer
from pydantic import BaseModel, ValidationError

from training.settings import TrainSettings

train_app = typer.Typer(help="Train models from the feedback store into the registry.",
                        no_args_is_help=True)
reward_app = typer.Typer(help="Query reward-model versions.", no_args_is_help=True)

ConfigOpt = typer.Option(None, "--config", help="Recipe YAML (default: <recipe>.yaml in "
                         "RLHF_TRAIN__CONFIG_DIR when set, else the packaged one).")
DbOpt = typer.Option(None, "--database-url", help="Feedback store URL (RLHF_DATABASE__URL).")
RegOpt = typer.Option(None, "--registry", help="Registry root (RLHF_REGISTRY__ROOT).")
BaseOpt = typer.Option(None, "--base", help="Start from this version id or checkpoint dir.")
ResumeOpt = typer.Option(False, "--resume", help="Continue the interrupted run of the same "
                         "config from its last saved state (checkpoint_every), if any.")
AnnounceOpt = typer.Option(True, "--announce/--no-announce",
                           help="Publish a candidate event on rlhf.policy, so the deploy "
                                "controller gates it. Before any reward model exists the "
                                "gates cannot run: the version stays a candidate until "
                                "`rlhf deploy promote VERSION --force`.")


def _settings(database_url: str | None, registry: Path | None,
              min_new_rankings: int | None = None) -> TrainSettings:
    from core.cli_settings import load_settings

    settings = load_settings(TrainSettings, {
        "database.url": ("--database-url", database_url),
        "registry.root": ("--registry", registry),
        "min_new_rankings": ("--min-new-rankings", min_new_rankings)}, command="rlhf train")
    logging.basicConfig(level=settings.log_level.upper())
    return settings


def _run(recipe: str, config: Path | None, database_url: str | None, registry: Path | None,
         base: str | None, announce: bool, **extra: str | bool | None) -> None:
    from core.registry import Registry
    from feedback.store import FeedbackStore
    from training.config import load_config
    from training.metrics import prometheus_sink
    from training.recipes import ppo, reward, sft

    recipes: dict[str, tuple[Any, type[BaseModel]]] = {
        "sft": (sft, sft.SFTConfig), "reward": (reward, reward.RewardConfig),
        "ppo": (ppo, ppo.PPOConfig)}
    module, cls = recipes[recipe]
    settings = _settings(database_url, registry)
    overrides = {k: v for k, v in {"base": base, **extra}.items() if v}
    path = config or _packaged(settings, recipe)
    try:
        cfg: Any = load_config(cls, path, f"{recipe}.yaml", overrides)
    except (ValidationError, FileNotFoundError) as e:
        from core.cli_settings import fail
        from training.preflight import validation_problems

        shown = path or f"the packaged {recipe}.yaml"
        fail(f"rlhf train {recipe}", [str(e)] if isinstance(e, FileNotFoundError)
             else validation_problems(shown, e))
    from training.preflight import config_problems

    problems = config_problems(cfg)
    if problems:
        from core.cli_settings import fail

        fail(f"rlhf train {recipe}", [f"{path or f'the packaged {recipe}.yaml'}: {p}"
                                      for p in problems])
    store = FeedbackStore(settings.database.url)
    store.migrate()
    hooks = {"on_step": prometheus_sink(settings.metrics_port, recipe)} if recipe == "ppo" else {}
    manifest = module.train(cfg, store=store, registry=Registry(settings.registry.root),
                            kafka=settings.kafka if announce else None, **hooks)
    typer.echo(json.dumps({"version": manifest.version, "parent": manifest.parent,
                           "data_mark": manifest.data_mark, "metrics": manifest.metrics}))


@train_app.command()
def sft(config: Path | None = ConfigOpt, database_url: str | None = DbOpt,
        registry: Path | None = RegOpt, base: str | None = BaseOpt,
        announce: bool = AnnounceOpt, resume: bool = ResumeOpt) -> None:
    """Supervised fine-tuning on demonstrations → a new policy version.

    The recipe is --config, else sft.yaml in RLHF_TRAIN__CONFIG_DIR, else the packaged one.
    """
    _run("sft", config, database_url, registry, base, announce, resume=resume)


@train_app.command()
def reward(config: Path | None = ConfigOpt, database_url: str | None = DbOpt,
           registry: Path | None = RegOpt, base: str | None = BaseOpt,
           announce: bool = AnnounceOpt, resume: bool = ResumeOpt) -> None:
    """InstructGPT reward model on K-way rankings → a new reward version."""
    _run("reward", config, database_url, registry, base, announce, resume=resume)


@train_app.command()
def ppo(config: Path | None = ConfigOpt, database_url: str | None = DbOpt,
        registry: Path | None = RegOpt, base: str | None = BaseOpt,
        reward_model: str | None = typer.Option(
            None, "--reward-model", help="Reward version (default: the newest)."),
        announce: bool = AnnounceOpt, resume: bool = ResumeOpt) -> None:
    """PPO-ptx against a reward model, rollouts on vLLM → a candidate policy version."""
    _run("ppo", config, database_url, registry, base, announce, reward_model=reward_model,
         resume=resume)


def _critic_free(algorithm: str):
    def command(config: Path | None = ConfigOpt, database_url: str | None = DbOpt,
                registry: Path | None = RegOpt, base: str | None = BaseOpt,
                reward_model: str | None = typer.Option(
                    None, "--reward-model", help="Reward version (default: the newest)."),
                announce: bool = AnnounceOpt, resume: bool = ResumeOpt) -> None:
        _run("ppo", config, database_url, registry, base, announce, reward_model=reward_model,
             resume=resume, algorithm=algorithm)

    command.__doc__ = (f"Critic-free RL ({algorithm}): the PPO recipe and config (ppo.yaml) "
                       f"with algorithm: {algorithm}, samples_per_prompt answers per prompt "
                       "and no value model → a candidate policy version.")
    return command


for _name in ("rloo", "grpo", "dr_grpo"):
    train_app.command(_name.replace("_", "-"))(_critic_free(_name))


@train_app.command()
def cycle(database_url: str | None = DbOpt, registry: Path | None = RegOpt,
          min_new_rankings: int | None = typer.Option(
              None, "--min-new-rankings", help="Override RLHF_TRAIN__MIN_NEW_RANKINGS."),
          announce: bool = AnnounceOpt) -> None:
    """Run what is due: SFT on new demonstrations, a reward model on new rankings, then
    PPO. Exit 0 when nothing is.

    Recipe configs come from RLHF_TRAIN__CONFIG_DIR (sft.yaml, reward.yaml, ppo.yaml) or the
    packaged ones; RLHF_TRAIN__MIN_NEW_DEMONSTRATIONS sets when SFT is due.
    """
    from core.registry import Registry
    from feedback.store import FeedbackStore
    from training.cycle import cycle as run
    from training.metrics import prometheus_sink

    settings = _settings(database_url, registry, min_new_rankings)
    _check_configs(settings.config_dir)
    store = FeedbackStore(settings.database.url)
    store.migrate()
    result = run(store=store, registry=Registry(settings.registry.root),
                 min_new_rankings=settings.min_new_rankings,
                 config_dir=settings.config_dir, kafka=settings.kafka if announce else None,
                 on_step=prometheus_sink(settings.metrics_port, "ppo"),
                 reward_init=settings.reward_init,
                 min_new_demonstrations=settings.min_new_demonstrations)
    if result.did_nothing:
        typer.echo("nothing due: " + "; ".join(result.reasons), err=True)
    typer.echo(json.dumps({"versions": result.versions, "reasons": result.reasons}))


def _check_configs(config_dir: Path | None) -> None:
    """Exit 2 at start, naming file and field, when a recipe config of the cycle cannot
    run (before any data is read or model loaded)."""
    from core.cli_settings import fail
    from training.preflight import check_recipe_configs

    problems = check_recipe_configs(config_dir)
    if problems:
        fail("rlhf train cycle", problems)


def _packaged(settings: TrainSettings, recipe: str) -> Path | None:
    """``<config_dir>/<recipe>.yaml`` when RLHF_TRAIN__CONFIG_DIR provides one."""
    path = settings.config_dir / f"{recipe}.yaml" if settings.config_dir else None
    return path if path and path.is_file() else None


@reward_app.command("score")
def score(version: str = typer.Option(..., "--version", help="Reward version, e.g. reward-0001."),
          prompt: str = typer.Option(..., "--prompt"),
          response: list[str] = typer.Option(..., "--response", help="Repeat for several."),
          registry: Path | None = RegOpt) -> None:
    """Score responses to one prompt; prints JSON."""
    from core.registry import Registry, RegistryError
    from training.reward_model import RewardScorer

    settings = _settings(None, registry)
    try:
        scorer = RewardScorer.from_registry(Registry(settings.registry.root, create=False),
                                            version)
    except (RegistryError, ValueError) as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(2) from None
    scores = scorer.score([(prompt, r) for r in response])
    typer.echo(json.dumps({"version": version, "bias": scorer.bias, "scores": scores}))


@reward_app.command("serve")
def serve(registry: Path | None = RegOpt, host: str = "127.0.0.1", port: int = 8100) -> None:
    """Serve POST /v1/rewards for every reward version in the registry (RLHF_AUTH__… keys)."""
    import uvicorn

    from core.auth import KeyRing
    from training.reward_server import create_app

    settings = _settings(None, registry)
    app = create_app(settings.registry.root, keyring=KeyRing.from_settings(settings.auth))
    uvicorn.run(app, host=host, port=port)


if __name__ == "__main__":
    train_app()
