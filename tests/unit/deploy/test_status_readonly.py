"""``rlhf deploy status`` is read-only and quick, whatever is missing (issue 25, item 4).

Before: in an empty folder it took 40 s (kafka-python retrying an absent broker) and
created ``rlhf-home/registry``. A socket bound but not listening holds the port, so
connecting to it is refused at once and no other process can take it meanwhile.
"""

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from core.registry import Registry
from core.settings import KafkaSettings
from deploy.notices import KafkaUnreachable, check_reachable

RLHF = Path(sys.executable).with_name("rlhf")


@pytest.fixture
def closed_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        yield s.getsockname()[1]


def run_status(cwd: Path, port: int, *args: str) -> tuple[subprocess.CompletedProcess, float]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RLHF_")}
    env["RLHF_KAFKA__BOOTSTRAP_SERVERS"] = f"127.0.0.1:{port}"
    start = time.monotonic()
    proc = subprocess.run([str(RLHF), "deploy", "status", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=60)
    return proc, time.monotonic() - start


def test_status_in_an_empty_folder_answers_at_once_and_creates_nothing(tmp_path, closed_port):
    proc, elapsed = run_status(tmp_path, closed_port)
    assert proc.returncode == 0, proc.stderr
    assert elapsed < 5, f"took {elapsed:.1f}s"  # was 40 s; < 1 s locally, slack for CI
    assert list(tmp_path.iterdir()) == []
    assert proc.stderr.splitlines() == [
        f"warning: Kafka at 127.0.0.1:{closed_port} unreachable; replicas not shown"]
    status = json.loads(proc.stdout)
    assert (status["live"], status["versions"], status["replicas"]) == (None, [], None)


def test_status_reports_a_registry_without_touching_it(tmp_path, closed_port):
    src = tmp_path / "ckpt"
    src.mkdir()
    (src / "config.json").write_text("{}")
    registry = Registry(tmp_path / "registry")
    registry.register_base(src)
    registry.set_live("policy-0000", "bootstrap")
    before = {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*")}

    proc, _ = run_status(tmp_path, closed_port, "--registry", "registry", "--no-replicas")
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""  # --no-replicas: Kafka is not asked
    status = json.loads(proc.stdout)
    assert status["live"] == "policy-0000"
    assert [v["state"] for v in status["versions"]] == ["live"]
    assert {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*")} == before


def test_reachability_needs_one_listening_server_and_names_them_all(closed_port):
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        up = listener.getsockname()[1]
        check_reachable(KafkaSettings(bootstrap_servers=f"127.0.0.1:{closed_port},"
                                                        f"127.0.0.1:{up}"))
    down = KafkaSettings(bootstrap_servers=f"127.0.0.1:{closed_port}, 127.0.0.1:{closed_port}")
    with pytest.raises(KafkaUnreachable, match=f"^Kafka at 127.0.0.1:{closed_port}, "
                                               f"127.0.0.1:{closed_port} unreachable$"):
        check_reachable(down)
