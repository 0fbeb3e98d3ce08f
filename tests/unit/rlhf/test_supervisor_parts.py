"""The supervisor's and ``rlhf up``'s pure parts: back-off, exit bookkeeping, ports,
private temp folders, the children's settings. No platform is started."""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path

from deploy.settings import DeploySettings, GateSettings
from rlhf.procs import Child, PortInUse, backoff_s, port_conflicts, private_tmp_root
from rlhf.up import UpSettings, banner, children, gate_env
from training.settings import TrainSettings


def test_backoff_doubles_from_half_a_second_and_caps_at_thirty():
    assert [backoff_s(n) for n in range(1, 9)] == [0.5, 1, 2, 4, 8, 16, 30, 30]
    assert backoff_s(0) == 0.5  # never zero: a crash loop must not spin


def test_a_crashed_long_running_child_is_restarted_later_and_later(tmp_path):
    kid = Child("serve", ["true"], {}, tmp_path / "serve.log")
    assert kid.exited(-9, now=100.0) == f"serve exited with -9; restarting (see {kid.log})"
    assert (kid.restarts, kid.next_start) == (1, 100.5)
    kid.exited(1, now=200.0)
    assert (kid.restarts, kid.next_start, kid.history) == (2, 201.0, [-9, 1])


def test_a_periodic_child_runs_again_after_its_period_and_only_failures_are_told(tmp_path):
    kid = Child("train", ["true"], {}, tmp_path / "train.log", periodic_s=30)
    assert kid.exited(0, now=10.0) is None
    assert kid.next_start == 40.0 and kid.restarts == 0
    assert kid.exited(2, now=50.0) == "train finished (exit 2)"


def test_a_child_is_not_started_before_its_time(tmp_path):
    kid = Child("serve", ["true"], {}, tmp_path / "serve.log", next_start=50.0)
    assert kid.tick(now=49.0) is None and kid.proc is None


def test_private_temp_folders_are_short_stable_and_per_home(tmp_path):
    deep = tmp_path / ("x" * 60) / "home"
    root = private_tmp_root(deep)
    assert root == private_tmp_root(deep) != private_tmp_root(tmp_path / "other")
    # vLLM puts "<TMPDIR>/<uuid4>" Unix sockets there: the path must stay under 108 bytes.
    assert len(str(root / "serve" / ("u" * 36))) < 100


def test_port_conflicts_name_the_port_and_its_holder():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        taken = s.getsockname()[1]
        conflicts = port_conflicts({"HTTP": taken, "gRPC": 0})
    assert conflicts == [PortInUse("HTTP", taken, conflicts[0].holder)]
    assert conflicts[0].holder and conflicts[0].holder.startswith(f"pid {os.getpid()}:")
    assert str(conflicts[0]).startswith(f"HTTP port {taken} is already in use by pid ")


def test_one_port_configured_twice_is_a_conflict_without_probing():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # bound, not listening: free for the probe's purposes
    [conflict] = port_conflicts({"HTTP": port, "deploy": port})
    assert conflict.name == "deploy" and "HTTP" in str(conflict.holder)


def test_rlhf_up_checks_the_broker_port_only_for_the_embedded_broker():
    assert any(name.startswith("broker") for name in UpSettings().ports())
    external = UpSettings(external_kafka="kafka:9092").ports()
    assert not any(name.startswith("broker") for name in external) and len(external) == 5


def test_one_default_for_the_ranking_threshold():
    assert UpSettings().min_new_rankings == TrainSettings().min_new_rankings


def test_gate_settings_reach_the_deploy_controller_as_its_own_variables(monkeypatch):
    gates = GateSettings(num_prompts=8, max_new_tokens=12)
    env = gate_env(gates)
    assert env["RLHF_GATES__NUM_PROMPTS"] == "8" and env["RLHF_GATES__MAX_NEW_TOKENS"] == "12"
    assert "RLHF_GATES__REWARD_MODEL" not in env  # unset optional settings stay unset
    for key, value in env.items():  # read back, nested sections included: the same
        monkeypatch.setenv(key, value)
    assert DeploySettings().gates == gates


def _home(tmp_path: Path) -> UpSettings:
    s = UpSettings(home=tmp_path / "home", config_dir=tmp_path / "cfg", min_new_rankings=7,
                   gates=GateSettings(num_prompts=5))
    (s.home).mkdir()
    (s.home / "keys.json").write_text(json.dumps({"sk-u": "user", "sk-l": "labeler",
                                                  "sk-a": "admin"}))
    return s


def test_children_get_their_settings_and_a_private_tmpdir_each(tmp_path):
    s = _home(tmp_path)
    kids = {k.name: k for k in children(s, {"RLHF_LOG_LEVEL": "info"})}
    assert list(kids) == ["broker", "ingest", "serve", "deploy", "workbench", "train"]
    root = private_tmp_root(s.home)
    assert {k.tmp for k in kids.values()} == {root / name for name in kids}
    assert kids["train"].env["RLHF_TRAIN__MIN_NEW_RANKINGS"] == "7"
    assert kids["train"].env["RLHF_TRAIN__CONFIG_DIR"] == str((tmp_path / "cfg").resolve())
    assert kids["train"].periodic_s == s.train_every_s
    assert kids["deploy"].env["RLHF_GATES__NUM_PROMPTS"] == "5"
    # durable by default: s3:// on the local object store under the home directory
    assert kids["broker"].env["RLHF_BROKER__STORAGE_URL"] == "s3://tansu/"
    assert kids["broker"].env["RLHF_BROKER__DATA_DIR"] == str((s.home / "broker").resolve())
    assert "127.0.0.1" in kids["serve"].cmd  # loopback: no API-key refusal


def test_the_banner_says_when_events_do_not_survive_a_broker_restart(tmp_path):
    s = _home(tmp_path)
    assert "durable storage s3://tansu/" in banner(s)  # the default
    s.broker.storage_url = "memory://tansu/"
    assert "memory storage: events are lost when it restarts" in banner(s)
