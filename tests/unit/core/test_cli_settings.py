"""Flags and environment variables go through one settings class per process.

A flag is an init value of the same pydantic-settings class that reads the environment,
so it gets the same bounds and cross-field checks; a bad value exits 2 naming the flag or
the variable. No variable means two things in two processes.
"""

from __future__ import annotations

from collections import defaultdict

import pytest

from core.cli_settings import load_settings
from feedback.settings import BrokerSettings, IngestSettings
from rlhf.settings_doc import processes, rows
from serving.settings import ServeSettings


def _exit_lines(capsys, settings_cls, flags=None) -> list[str]:
    with pytest.raises(SystemExit) as e:
        load_settings(settings_cls, flags, command="rlhf test")
    assert e.value.code == 2
    return capsys.readouterr().err.strip().splitlines()


def test_a_flag_out_of_range_is_named_with_its_variable(capsys):
    [line] = _exit_lines(capsys, ServeSettings, {"http.port": ("--port", 70000)})
    assert line.startswith("rlhf test: error: --port (or RLHF_HTTP__PORT): ")
    assert "65535" in line and "70000" in line


def test_flags_pass_the_cross_field_check_too(capsys):
    # --port 50051 equals the default gRPC port: the check that used to be bypassed
    [line] = _exit_lines(capsys, ServeSettings, {"http.port": ("--port", 50051)})
    assert "--port" in line and "--grpc-port" in line and "50051" in line


def test_a_bad_variable_is_named(capsys, monkeypatch):
    monkeypatch.setenv("RLHF_HTTP__PORT", "abc")
    monkeypatch.setenv("RLHF_LIMITS__MAX_N", "0")
    lines = _exit_lines(capsys, ServeSettings)
    assert any(line.startswith("rlhf test: error: RLHF_HTTP__PORT: ") for line in lines)
    assert any(line.startswith("rlhf test: error: RLHF_LIMITS__MAX_N: ") for line in lines)


def test_flags_win_over_the_environment_and_sections_merge(monkeypatch):
    monkeypatch.setenv("RLHF_HTTP__PORT", "8100")
    monkeypatch.setenv("RLHF_HTTP__HOST", "127.0.0.2")
    s = load_settings(ServeSettings, {"http.port": ("--port", 8200),
                                      "grpc.port": ("--grpc-port", None)})
    assert (s.http.host, s.http.port, s.grpc.port) == ("127.0.0.2", 8200, 50051)


def test_a_process_reads_its_own_section_not_the_flat_name(monkeypatch):
    monkeypatch.setenv("RLHF_GROUP_ID", "someone-elses")
    monkeypatch.setenv("RLHF_PORT", "1")
    monkeypatch.setenv("RLHF_INGEST__GROUP_ID", "ours")
    monkeypatch.setenv("RLHF_BROKER__PORT", "9999")
    monkeypatch.setenv("RLHF_BROKER__STORAGE_URL", "s3://bucket/")  # the same section
    monkeypatch.setenv("RLHF_KAFKA__BOOTSTRAP_SERVERS", "k:1")    # shared by both
    ingest, broker = IngestSettings(), BrokerSettings()
    assert ingest.group_id == "ours" and broker.port == 9999
    assert broker.broker.storage_url == "s3://bucket/"
    assert ingest.kafka.bootstrap_servers == broker.kafka.bootstrap_servers == "k:1"
    assert IngestSettings.env_name("group_id") == "RLHF_INGEST__GROUP_ID"
    assert IngestSettings.env_name("kafka.bootstrap_servers") == "RLHF_KAFKA__BOOTSTRAP_SERVERS"


def test_no_variable_means_two_things_in_two_processes():
    # A name read by several processes must be one shared setting: same default and
    # meaning everywhere (RLHF_KAFKA__…); RLHF_PORT meant three ports before.
    seen: dict[str, set[tuple[str, str]]] = defaultdict(set)
    readers: dict[str, list[str]] = defaultdict(list)
    for title, model in processes():
        for env, default, description in rows(model):
            seen[env].add((default, description))
            readers[env].append(title)
    clashes = {env: readers[env] for env, meanings in seen.items() if len(meanings) > 1}
    assert clashes == {}
