"""``rlhf serve``: one process, HTTP and gRPC, over one vLLM engine.

Start-up checks run before the engine loads, so a mistake exits at once with a message
(exit code 1) instead of a server that runs without a model or that clients cannot
reach: ``--model`` must be a checkpoint directory; the HTTP and gRPC ports must be free;
and a server without API keys binds a non-loopback address only with
``--allow-open`` (RLHF_AUTH__ALLOW_OPEN=true), since every caller would be admin.
What the checks cannot see also exits non-zero: a model that fails to load exits 1, and
a port taken after the check fails start-up (the gRPC server binds without port sharing),
for which uvicorn exits 3.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import socket
from pathlib import Path

import uvicorn

from core.auth import KeyRing
from serving.http.app import build_app
from serving.runtime import Runtime
from serving.settings import ServeSettings

log = logging.getLogger(__name__)


def resolve_model(settings: ServeSettings) -> tuple[str, str]:
    """The checkpoint to serve and its version label: ``--model``, else the registry's live
    policy."""
    if settings.model:
        path = Path(settings.model).expanduser()
        if not path.is_dir():
            raise SystemExit(f"--model {settings.model}: no such checkpoint directory.")
        if not (path / "config.json").is_file():
            raise SystemExit(f"--model {settings.model}: not a checkpoint directory "
                             f"(no config.json in it).")
        return settings.model, settings.policy_version or "base"
    from core.registry import Registry

    registry = Registry(settings.registry.root)
    live = registry.live_policy()
    if live is None:
        raise SystemExit(f"No model: pass --model PATH (or RLHF_MODEL), or make a policy live "
                         f"in the registry at {settings.registry.root}.")
    problems = registry.verify(live)
    if problems:
        raise SystemExit(f"The live policy {live} failed verification: {problems}")
    return str(registry.path(live)), live


def is_loopback(host: str) -> bool:
    """Whether ``host`` is reachable only from this machine (127.0.0.0/8, ::1, localhost)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a hostname other than localhost: assume others can reach it


def check_open_access(settings: ServeSettings) -> None:
    """Refuse to serve without API keys on a non-loopback address unless allowed."""
    if settings.auth.allow_open:
        return
    if (settings.auth.keys or settings.auth.keys_file) \
            and not KeyRing.from_settings(settings.auth).open:
        return
    hosts = [settings.http.host] + ([settings.grpc.host] if settings.grpc.enabled else [])
    exposed = [h for h in hosts if not is_loopback(h)]
    if exposed:
        raise SystemExit(
            f"No API keys are configured and the server would listen on {exposed[0]}, so "
            f"anyone who can reach it would be admin. Configure keys (--keys-file, "
            f"RLHF_AUTH__KEYS_FILE or RLHF_AUTH__KEYS), bind 127.0.0.1 (--host), or pass "
            f"--allow-open (RLHF_AUTH__ALLOW_OPEN=true) to serve without keys anyway.")


def _port_taken(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return True
    return False


def check_ports(settings: ServeSettings) -> None:
    """Exit with a message when the HTTP or gRPC port is already taken (0 = any port)."""
    wanted = [("HTTP", settings.http.host, settings.http.port, "--port, RLHF_HTTP__PORT")]
    if settings.grpc.enabled:
        wanted.append(("gRPC", settings.grpc.host, settings.grpc.port,
                       "--grpc-port, RLHF_GRPC__PORT"))
    for name, host, port, flag in wanted:
        if port and _port_taken(host, port):
            raise SystemExit(f"The {name} port {port} on {host} is already in use; stop what "
                             f"holds it or pick another ({flag}).")


def serve(settings: ServeSettings) -> None:
    logging.basicConfig(level=settings.log_level.upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    check_open_access(settings)
    check_ports(settings)
    model_path, version = resolve_model(settings)
    runtime = Runtime(settings, model_path, version)
    app = build_app(runtime)
    config = uvicorn.Config(app, host=settings.http.host, port=settings.http.port,
                            log_level=settings.log_level, timeout_graceful_shutdown=30,
                            access_log=False)
    try:  # vLLM's own server runs on uvloop too; gRPC aio supports it
        from uvloop import run as run_loop
    except ImportError:
        run_loop = asyncio.run  # type: ignore[assignment]
    failure = run_loop(_run(uvicorn.Server(config), runtime))
    if failure:
        raise SystemExit(failure)


async def _run(server: uvicorn.Server, runtime: Runtime) -> str | None:
    """Serve until stopped; why it has to exit 1 (the model failed to load), or None after
    an ordinary shutdown. A failed start-up exits from inside ``serve()`` (uvicorn's 3)."""
    watch = asyncio.create_task(_stop_if_load_fails(server, runtime))
    try:
        await server.serve()
    finally:
        watch.cancel()
    error = None if watch.cancelled() or not watch.done() else watch.result()
    if error is not None:
        return (f"Loading the model {runtime.policy.path} failed, so rlhf serve stopped: "
                f"{type(error).__name__}: {error}")
    return None


async def _stop_if_load_fails(server: uvicorn.Server, runtime: Runtime) -> BaseException | None:
    """Shut the server down when the first model load fails: a server that can never
    answer must not stay up (a later failed swap keeps the old weights instead)."""
    while not server.started:  # start-up (the app's lifespan) begins the load
        if server.should_exit:
            return None
        await asyncio.sleep(0.1)
    await runtime.wait_loaded()
    if runtime.load_error is not None:
        server.should_exit = True
    return runtime.load_error
