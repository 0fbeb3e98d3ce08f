"""The engine's lifecycle as clients see it: 503 while it loads, 200 once ready, and 503
with a failing /health when the engine process dies."""

import signal

import httpx
import psutil
import pytest

from rlhf.procs import Process, free_port, rlhf_command
from tests.fixtures.server import RemoteServer
from tests.fixtures.wait import wait_for

pytestmark = pytest.mark.engine


def test_requests_while_loading_are_503_not_errors(tiny_model, tmp_path):
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    cmd = rlhf_command("serve", "--model", str(tiny_model), "--host", "127.0.0.1", "--port",
                       str(port), "--grpc-port", str(free_port()), "--served-model-name",
                       "tiny", "--max-model-len", "512")
    body = {"model": "tiny", "prompt": "hi", "max_tokens": 2}
    seen: list[int] = []
    with Process("rlhf serve", cmd, tmp_path / "server.log",
                 env={"RLHF_PUBLISH_EVENTS": "false"}) as server:
        def answered_200() -> bool:
            assert server.proc.poll() is None, (tmp_path / "server.log").read_text()[-2000:]
            try:
                seen.append(httpx.post(url + "/v1/completions", json=body, timeout=30)
                            .status_code)
            except httpx.TransportError:
                pass  # not listening yet
            return 200 in seen

        wait_for(answered_200, 240, interval=0.2, what="a 200 once the model loaded")
    assert seen and seen[-1] == 200
    assert set(seen) <= {200, 503}
    assert 503 in seen  # it did answer while loading, and said so


def test_dead_engine_is_503_and_unhealthy(tiny_model, tmp_path):
    server = RemoteServer(tiny_model, log_path=tmp_path / "server.log")
    try:
        assert httpx.get(server.url + "/health").status_code == 200
        engines = [p for p in psutil.Process(server.proc.pid).children(recursive=True)
                   if "EngineCore" in " ".join(p.cmdline()) or "EngineCore" in p.name()]
        assert engines, "no EngineCore process found under the server"
        for p in engines:
            p.send_signal(signal.SIGKILL)
        wait_for(lambda: httpx.get(server.url + "/health").status_code != 200, 30,
                 interval=0.2, what="/health to fail after the engine died")
        assert httpx.get(server.url + "/health").status_code == 503
        r = httpx.post(server.url + "/v1/completions",
                       json={"model": "tiny", "prompt": "hi", "max_tokens": 4}, timeout=30)
        assert r.status_code == 503
        assert r.json()["error"]["type"] == "ServiceUnavailableError"
    finally:
        server.stop()
