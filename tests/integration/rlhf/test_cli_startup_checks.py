"""Start-up checks of the real CLI: mistakes exit at once, non-zero, saying what is wrong.

A second ``rlhf up`` on taken ports must not print URLs while its children crash-loop;
``rlhf serve`` must not keep running without a model, share a taken port, or serve an
open API on a public address by accident.
"""

from __future__ import annotations

import os
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from rlhf.procs import free_port, rlhf_command

pytestmark = pytest.mark.timeout(180)
REPO = Path(__file__).resolve().parents[3]


@pytest.fixture
def listener() -> Iterator[int]:
    """Something else listening on a port (what a first `rlhf up` would hold)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        yield s.getsockname()[1]


def run_cli(*args: str, env: dict[str, str] | None = None,
            timeout: float = 120) -> tuple[subprocess.CompletedProcess, float]:
    started = time.monotonic()
    run = subprocess.run(rlhf_command(*args), capture_output=True, text=True, cwd=REPO,
                         timeout=timeout, env={**os.environ, **(env or {})})
    return run, time.monotonic() - started


def free_up_ports() -> dict[str, str]:
    return {f"RLHF_UP__{name}": str(free_port()) for name in (
        "HTTP_PORT", "GRPC_PORT", "BROKER_PORT", "DEPLOY_PORT", "INGEST_METRICS_PORT",
        "WORKBENCH_PORT")}


@pytest.mark.parametrize("flag", ["--port", "--grpc-port", "--broker-port", "--deploy-port",
                                  "--metrics-port", "--workbench-port"])
def test_rlhf_up_on_a_taken_port_exits_at_once_naming_it(tmp_path, listener, flag):
    home = tmp_path / "home"
    run, took = run_cli("up", "--home", str(home), flag, str(listener), env=free_up_ports())
    assert run.returncode == 2, run.stdout + run.stderr
    assert took < 30
    assert f"port {listener} is already in use" in run.stderr
    assert f"pid {os.getpid()}" in run.stderr  # who holds it: this test
    assert flag in run.stderr  # which flag moves it
    assert "OpenAI API" not in run.stdout  # no banner with someone else's URLs
    assert not home.exists()  # nothing was started or created


def serve_model(model: Path, timeout: float = 120) -> tuple[subprocess.CompletedProcess, float]:
    return run_cli("serve", "--model", str(model), "--host", "127.0.0.1",
                   "--port", str(free_port()), "--grpc-port", str(free_port()),
                   "--no-publish-events", timeout=timeout)


def test_rlhf_serve_with_a_missing_model_directory_exits_non_zero(tmp_path):
    missing = tmp_path / "no-such-model"
    run, _ = serve_model(missing)
    assert run.returncode == 1
    assert f"--model {missing}: no such checkpoint directory" in run.stderr
    assert "Uvicorn running" not in run.stderr  # it stopped before serving


def test_rlhf_serve_with_a_directory_without_config_json_exits_non_zero(tmp_path):
    (tmp_path / "model.safetensors").write_bytes(b"")
    run, _ = serve_model(tmp_path)
    assert run.returncode == 1
    assert f"--model {tmp_path}: not a checkpoint directory (no config.json in it)" \
        in run.stderr
    assert "Uvicorn running" not in run.stderr


def test_rlhf_serve_exits_non_zero_when_the_model_fails_to_load(tmp_path):
    """A config.json but nothing loadable: the checks pass, the load fails, and the server
    stops (subprocess.run's timeout fails the test if it kept running)."""
    (tmp_path / "config.json").write_text("{}")
    run, _ = serve_model(tmp_path, timeout=150)
    assert run.returncode == 1, run.stderr[-2000:]
    assert "Uvicorn running" in run.stderr  # it got as far as serving
    assert f"Loading the model {tmp_path} failed, so rlhf serve stopped: " in run.stderr


@pytest.mark.parametrize("which", ["--port", "--grpc-port"])
def test_rlhf_serve_on_a_taken_port_exits_non_zero_naming_it(tmp_path, listener, which):
    ports = {"--port": str(free_port()), "--grpc-port": str(free_port()), which: str(listener)}
    run, _ = run_cli("serve", "--model", str(tmp_path), "--host", "127.0.0.1",
                     *[x for kv in ports.items() for x in kv])
    assert run.returncode != 0
    assert f"port {listener} on 127.0.0.1 is already in use" in run.stderr
    assert which in run.stderr


def test_rlhf_serve_without_keys_on_a_public_address_needs_allow_open(tmp_path, listener):
    args = ["serve", "--model", str(tmp_path), "--host", "0.0.0.0",
            "--port", str(listener), "--grpc-port", str(free_port())]
    refused, _ = run_cli(*args, env={"RLHF_AUTH__ALLOW_OPEN": "false"})
    assert refused.returncode != 0
    assert "No API keys are configured" in refused.stderr and "--allow-open" in refused.stderr
    # Allowed (flag or setting): it gets past that check, to the taken port.
    for extra, env in ((["--allow-open"], {}), ([], {"RLHF_AUTH__ALLOW_OPEN": "true"})):
        allowed, _ = run_cli(*args, *extra, env=env)
        assert "No API keys are configured" not in allowed.stderr
        assert f"port {listener} on 0.0.0.0 is already in use" in allowed.stderr


def test_training_commands_migrate_quietly_unless_verbose(tmp_path):
    args = ["train", "cycle", "--database-url", f"sqlite:///{tmp_path / 'f.db'}",
            "--registry", str(tmp_path / "registry"), "--no-announce"]
    runnable = {"RLHF_TRAIN__CONFIG_DIR": str(REPO / "training/configs/demo")}
    quiet, _ = run_cli(*args, env={"RLHF_LOG_LEVEL": "info", **runnable})
    assert quiet.returncode == 0, quiet.stderr
    assert "alembic" not in quiet.stderr and "nothing due" in quiet.stderr
    (tmp_path / "f.db").unlink()
    verbose, _ = run_cli("--verbose", *args, env=runnable)
    assert "Running upgrade" in verbose.stderr  # the migrations are still there, just quiet


BAD_SETTINGS = [
    # (command line, environment, the name the one-line error must carry)
    (["serve", "--port", "70000"], {}, "--port"),
    (["serve", "--port", "50051"], {}, "--grpc-port"),       # equals the gRPC default
    (["serve", "--grpc-port", "-1"], {}, "--grpc-port"),
    (["serve"], {"RLHF_HTTP__PORT": "99999"}, "RLHF_HTTP__PORT"),
    (["serve"], {"RLHF_ENGINE__GPU_MEMORY_UTILIZATION": "2"},
     "RLHF_ENGINE__GPU_MEMORY_UTILIZATION"),
    (["up", "--port", "0"], {}, "--port"),
    (["up"], {"RLHF_UP__TRAIN_EVERY_S": "-1"}, "RLHF_UP__TRAIN_EVERY_S"),
    (["broker", "--port", "70000"], {}, "--port"),
    (["ingest"], {"RLHF_INGEST__METRICS_PORT": "many"}, "RLHF_INGEST__METRICS_PORT"),
    (["workbench", "--port", "70000"], {}, "--port"),
    (["workbench"], {"RLHF_WORKBENCH__SUBMIT_VIA": "pigeon"}, "RLHF_WORKBENCH__SUBMIT_VIA"),
    (["deploy", "controller", "--port", "70000"], {}, "--port"),
    (["deploy", "status"], {"RLHF_DEPLOY__POLL_TIMEOUT_MS": "999999"},
     "RLHF_DEPLOY__POLL_TIMEOUT_MS"),
    (["train", "cycle", "--min-new-rankings", "0"], {}, "--min-new-rankings"),
]


@pytest.mark.parametrize(("args", "env", "name"), BAD_SETTINGS,
                         ids=[" ".join(a) + "|" + ",".join(e) for a, e, _ in BAD_SETTINGS])
def test_a_bad_flag_or_variable_exits_2_naming_it_without_a_traceback(tmp_path, args, env,
                                                                      name):
    run, _ = run_cli(*args, env={"RLHF_UP__HOME": str(tmp_path / "home"), **env}, timeout=60)
    assert run.returncode == 2, run.stdout + run.stderr
    errors = [line for line in run.stderr.splitlines() if "error" in line.lower()]
    assert errors and all(name in line for line in errors[:1]), run.stderr
    assert "Traceback" not in run.stderr
    assert not (tmp_path / "home").exists()


def test_rlhf_up_with_a_recipe_that_cannot_run_stops_at_start_naming_file_and_field(tmp_path):
    configs = tmp_path / "configs"
    configs.mkdir()
    # The packaged paper ppo.yaml without a ptx_file: the first PPO run would have failed
    # only after enough feedback had been collected.
    (configs / "ppo.yaml").write_text((REPO / "training/configs/ppo.yaml").read_text())
    home = tmp_path / "home"
    run, took = run_cli("up", "--home", str(home), "--config-dir", str(configs),
                        env=free_up_ports())
    assert run.returncode == 2, run.stdout + run.stderr
    assert f"{configs / 'ppo.yaml'}: ptx_file:" in run.stderr
    assert took < 60  # recipe classes import torch; no model is loaded, nothing started
    assert "OpenAI API" not in run.stdout and not home.exists()


def test_rlhf_up_with_a_missing_base_model_stops_at_start(tmp_path):
    run, _ = run_cli("up", "--home", str(tmp_path / "home"), "--model",
                     str(tmp_path / "nowhere"), env=free_up_ports())
    assert run.returncode == 2, run.stdout + run.stderr
    assert "--model" in run.stderr and "nowhere" in run.stderr
    assert not (tmp_path / "home").exists()


def test_rlhf_up_default_recipes_are_the_runnable_demo_ones():
    from rlhf.up import UpSettings
    from training.config import DEMO_CONFIG_DIR
    from training.preflight import check_recipe_configs

    assert UpSettings().recipe_dir() == DEMO_CONFIG_DIR.resolve()
    assert check_recipe_configs(DEMO_CONFIG_DIR) == []
    # the paper's values need the user's pretraining text: refused, with the field named
    [problem] = check_recipe_configs(None)
    assert problem.startswith(f"{REPO / 'training/configs/ppo.yaml'}: ptx_file:")
