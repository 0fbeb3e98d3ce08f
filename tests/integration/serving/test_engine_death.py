"""When the engine process dies, the API says so: 503 on generation, and /health fails."""

import signal
import time

import httpx
import psutil
import pytest

from tests.fixtures.server import RemoteServer

pytestmark = pytest.mark.engine


def test_dead_engine_is_503_and_unhealthy(tiny_model, tmp_path):
    server = RemoteServer(tiny_model, log_path=tmp_path / "server.log")
    try:
        assert httpx.get(server.url + "/health").status_code == 200
        engines = [p for p in psutil.Process(server.proc.pid).children(recursive=True)
                   if "EngineCore" in " ".join(p.cmdline()) or "EngineCore" in p.name()]
        assert engines, "no EngineCore process found under the server"
        for p in engines:
            p.send_signal(signal.SIGKILL)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and \
                httpx.get(server.url + "/health").status_code == 200:
            time.sleep(0.2)
        assert httpx.get(server.url + "/health").status_code == 503
        r = httpx.post(server.url + "/v1/completions",
                       json={"model": "tiny", "prompt": "hi", "max_tokens": 4}, timeout=30)
        assert r.status_code == 503
        assert r.json()["error"]["type"] == "ServiceUnavailableError"
    finally:
        server.stop()
