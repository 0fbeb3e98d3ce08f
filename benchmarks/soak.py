"""Soak: `rlhf up` under mixed load; at the end nothing is lost, doubled or growing.

    python benchmarks/soak.py --minutes 10

A fresh `rlhf up` (embedded broker, ingester, server, deploy controller; periodic
training off so the load is the serving and feedback paths) takes, for ``--minutes``:

* closed-loop clients: streamed chat completions (n=2), each followed by one piece of
  feedback of a random kind (ranking, comparison, rating, demonstration) about it, and
  every fifth request an invalid piece of feedback (expected 422); feedback answered 503
  (broker down) is resubmitted with the same ``event_id`` until it is accepted;
* raw invalid events produced straight to ``rlhf.feedback`` (expected in the DLQ);
* chaos at fixed points of the run: a forced promotion of a second policy, SIGKILL of the
  ingester, a rollback, and a broker restart (SIGKILL; the supervisor restarts it).

The embedded broker keeps events in memory, so events it holds unconsumed are lost when it
restarts (the durable Tansu engine needs a build with PostgreSQL support). The soak
therefore drains the ingester before it kills the broker: it tests that every client and
process recovers from the restart, not the broker's storage.

At the end it checks that every accepted event is stored exactly once (per kind), that
every served completion is stored, that the invalid raw events reached the DLQ, that no
request failed other than the expected 4xx/503s, and that RSS and the number of metric
series stayed flat. It prints a table and exits 1 when a check fails.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import httpx  # noqa: E402
import psutil  # noqa: E402

from rlhf.procs import Process, free_port, rlhf_command  # noqa: E402


@dataclass
class Tally:
    """What the clients saw; one lock guards it all."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    served: set[str] = field(default_factory=set)
    accepted: Counter = field(default_factory=Counter)
    statuses: Counter = field(default_factory=Counter)
    unexpected: list[str] = field(default_factory=list)

    def status(self, what: str, code: int | str) -> None:
        with self.lock:
            self.statuses[f"{what} {code}"] += 1


def feedback_about(request_id: str, prompt: str, kind: str) -> dict:
    body: dict = {"type": kind, "event_id": f"soak-{uuid.uuid4().hex}"}
    if kind == "ranking":
        body |= {"request_id": request_id, "choices": [0, 1], "ranks": [1, 2]}
    elif kind == "comparison":
        body |= {"request_id": request_id, "choice_a": 0, "choice_b": 1, "preferred": "a"}
    elif kind == "rating":
        body |= {"request_id": request_id, "choice": 0, "score": random.randint(1, 7)}
    else:
        body |= {"prompt": prompt, "response": "A calm and good answer."}
    return body


INVALID = [{"type": "ranking", "choices": [0, 1], "ranks": [1]},  # no request_id, no texts
           {"type": "rating", "score": "high"},
           {"type": "comparison", "preferred": "c"},
           {"type": "demonstration", "prompt": "x", "response": ""}]


def client(url: str, key: str, stop: threading.Event, tally: Tally, seed: int) -> None:
    rng = random.Random(seed)
    auth = {"Authorization": f"Bearer {key}"}
    with httpx.Client(base_url=url, headers=auth, timeout=60) as http:
        i = 0
        while not stop.is_set():
            i += 1
            prompt = f"Describe the ocean, take {seed}-{i}."
            request_id = stream_completion(http, prompt, tally)
            if request_id is None:
                continue
            kind = rng.choice(["ranking", "comparison", "rating", "demonstration"])
            submit(http, feedback_about(request_id, prompt, kind), tally, stop)
            if i % 5 == 0:
                r = http.post("/v1/feedback", json=rng.choice(INVALID))
                tally.status("invalid feedback", r.status_code)
                if r.status_code not in (400, 422):
                    tally.unexpected.append(f"invalid feedback got {r.status_code}")


def stream_completion(http: httpx.Client, prompt: str, tally: Tally) -> str | None:
    body = {"model": "policy", "messages": [{"role": "user", "content": prompt}],
            "n": 2, "max_tokens": 16, "stream": True}
    try:
        with http.stream("POST", "/v1/chat/completions", json=body) as r:
            tally.status("completion", r.status_code)
            if r.status_code != 200:
                r.read()
                if r.status_code not in (429, 503):
                    tally.unexpected.append(f"completion {r.status_code}: {r.text[:200]}")
                return None
            lines = [ln for ln in r.iter_lines() if ln.startswith("data: ")]
    except httpx.HTTPError as e:
        tally.unexpected.append(f"completion transport error {e!r}")
        return None
    if lines[-1] != "data: [DONE]":
        tally.unexpected.append("stream did not end with [DONE]")
        return None
    request_id = json.loads(lines[0][6:])["id"]
    with tally.lock:
        tally.served.add(request_id)
    return request_id


def submit(http: httpx.Client, body: dict, tally: Tally, stop: threading.Event) -> None:
    """POST until 202; 503 (broker down) is retried with the same event_id."""
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            r = http.post("/v1/feedback", json=body)
        except httpx.HTTPError:
            time.sleep(0.5)
            continue
        tally.status("feedback", r.status_code)
        if r.status_code == 202:
            with tally.lock:
                tally.accepted[body["type"]] += 1
            return
        if r.status_code != 503:
            tally.unexpected.append(f"feedback {r.status_code}: {r.text[:200]}")
            return
        time.sleep(0.5)
    tally.unexpected.append(f"feedback {body['event_id']} never accepted")


def child_pid(up: Process, name: str) -> int | None:
    """The pid of ``rlhf up``'s child running ``rlhf <name>`` (the group leader)."""
    for p in psutil.Process(up.proc.pid).children(recursive=True):
        try:
            cmd = p.cmdline()
        except psutil.Error:
            continue
        if "rlhf" in " ".join(cmd) and name in cmd and "-m" in cmd:
            return p.pid
    return None


def tree_rss_mb(pid: int | None) -> float:
    if pid is None:
        return 0.0
    root = psutil.Process(pid)
    procs = [root, *root.children(recursive=True)]
    return sum(p.memory_info().rss for p in procs if p.is_running()) / 2**20


def series(url: str) -> int:
    text = httpx.get(url + "/metrics", timeout=10).text
    return sum(1 for ln in text.splitlines() if ln and not ln.startswith("#"))


def produce_invalid(bootstrap: str, topic: str, n: int) -> None:
    from kafka import KafkaProducer

    producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all")
    for i in range(n):
        producer.send(topic, key=f"bad-{i}".encode(), value=b'{"type": "ranking", "oops": ')
    producer.flush(30)
    producer.close()


def count_topic(bootstrap: str, topic: str) -> int:
    from kafka import KafkaConsumer, TopicPartition

    consumer = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    parts = [TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic) or []]
    total = sum(consumer.end_offsets(parts).values()) - sum(
        consumer.beginning_offsets(parts).values())
    consumer.close()
    return total


def stored(home: Path) -> dict[str, int]:
    from feedback.store import FeedbackStore

    store = FeedbackStore(f"sqlite:///{home / 'feedback.db'}")
    try:
        return store.counts()
    finally:
        store.close()


def wait_drained(home: Path, tally: Tally, timeout: float) -> bool:
    """Until the store holds every accepted event and served completion."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        counts = stored(home)
        with tally.lock:
            done = all(counts.get(k, 0) >= n for k, n in tally.accepted.items()) and \
                counts["completions"] >= len(tally.served)
        if done:
            return True
        time.sleep(1)
    return False


def add_second_policy(home: Path) -> str:
    from core.registry import Registry
    from training.tiny_model import build_tiny_model

    src = build_tiny_model(Path(tempfile.mkdtemp()) / "tiny-seed-7", seed=7)
    return Registry(home / "registry").create_version(
        "policy", src, {"parent": "policy-0000", "config": {"soak": True}}).version


def main() -> int:  # noqa: PLR0915 - one scenario, read top to bottom
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--minutes", type=float, default=10.0)
    ap.add_argument("--clients", type=int, default=4)
    ap.add_argument("--invalid-raw", type=int, default=50)
    ap.add_argument("--home", type=Path, default=None)
    args = ap.parse_args()

    home = args.home or Path(tempfile.mkdtemp(prefix="rlhf-soak-"))
    ports = {n: free_port() for n in ("HTTP_PORT", "GRPC_PORT", "BROKER_PORT", "DEPLOY_PORT",
                                      "INGEST_METRICS_PORT", "WORKBENCH_PORT")}
    env = {**{f"RLHF_UP__{k}": str(v) for k, v in ports.items()}, "RLHF_UP__HOME": str(home),
           "RLHF_UP__CONFIG_DIR": str(REPO / "training" / "configs" / "demo"),
           "RLHF_UP__TRAIN_EVERY_S": "1000000", "RLHF_UP__AUTO_PROMOTE": "false"}
    url = f"http://127.0.0.1:{ports['HTTP_PORT']}"
    deploy = f"http://127.0.0.1:{ports['DEPLOY_PORT']}"
    bootstrap = f"127.0.0.1:{ports['BROKER_PORT']}"
    up = Process("rlhf up", rlhf_command("up"), home.parent / f"{home.name}-up.log", env=env)
    tally, stop = Tally(), threading.Event()
    chaos: list[tuple[float, str, str]] = []
    try:
        # 1. Start the platform; a second policy to promote and roll back to.
        up.wait_http(url + "/ready", timeout=600)
        up.wait_http(deploy + "/health", timeout=120)
        keys = {role: k for k, role in json.loads((home / "keys.json").read_text()).items()}
        admin = {"Authorization": f"Bearer {keys['admin']}"}
        second = add_second_policy(home)
        produce_invalid(bootstrap, "rlhf.feedback", args.invalid_raw)

        # 2. Load.
        started = time.monotonic()
        threads = [threading.Thread(target=client, args=(url, keys["labeler"], stop, tally, i),
                                    daemon=True) for i in range(args.clients)]
        for t in threads:
            t.start()
        duration = args.minutes * 60

        def at(share: float) -> None:
            time.sleep(max(0.0, started + share * duration - time.monotonic()))

        def note(what: str, detail: str) -> None:
            chaos.append((time.monotonic() - started, what, detail))
            print(f"[{chaos[-1][0]:7.1f}s] {what}: {detail}", flush=True)

        # 3. Chaos at fixed points; baseline RSS and series once warm.
        at(0.1)
        base_rss = tree_rss_mb(child_pid(up, "serve"))
        base_series = series(url)
        at(0.25)
        r = httpx.post(deploy + "/v1/deploy/promote", headers=admin, timeout=120,
                       json={"version": second, "force": True, "reason": "soak"})
        note("promote", f"{second}: {r.status_code}")
        at(0.4)
        pid = child_pid(up, "ingest")
        if pid:
            os.killpg(pid, signal.SIGKILL)
        note("SIGKILL ingester", str(pid))
        at(0.55)
        r = httpx.post(deploy + "/v1/deploy/rollback", headers=admin, timeout=120,
                       json={"reason": "soak"})
        note("rollback", f"{r.status_code}")
        at(0.7)
        drained = wait_drained(home, tally, 120)
        dlq = count_topic(bootstrap, "rlhf.feedback.dlq")  # memory storage: gone at restart
        pid = child_pid(up, "broker")
        if pid:
            os.killpg(pid, signal.SIGKILL)
        note("SIGKILL broker", f"{pid} (store drained first: {drained})")
        at(1.0)
        stop.set()
        for t in threads:
            t.join(timeout=180)
        end_rss = tree_rss_mb(child_pid(up, "serve"))
        end_series = series(url)

        # 4. Everything accepted is stored exactly once; the DLQ holds the raw invalid ones.
        drained = wait_drained(home, tally, 180)
        counts = stored(home)
    finally:
        stop.set()
        up.stop(timeout=60)

    elapsed = time.monotonic() - started
    checks = {
        "every accepted event stored exactly once":
            drained and all(counts.get(k, 0) == n for k, n in tally.accepted.items()),
        "every served completion stored": counts["completions"] == len(tally.served),
        "no unexpected failure": not tally.unexpected,
        "every raw invalid event dead-lettered": dlq >= args.invalid_raw,
        "serving RSS flat (< +25 %)": end_rss < base_rss * 1.25,
        "metric series flat (< +10 %)": end_series < base_series * 1.10,
    }
    print(f"\nsoak: {elapsed / 60:.1f} min, {args.clients} clients, home {home}")
    print("| what | value |\n|---|---|")
    print(f"| completions served / stored | {len(tally.served)} / {counts['completions']} |")
    for kind in ("ranking", "comparison", "rating", "demonstration"):
        print(f"| {kind} accepted / stored | {tally.accepted[kind]} / {counts.get(kind, 0)} |")
    print(f"| responses by status | {dict(sorted(tally.statuses.items()))} |")
    print(f"| DLQ messages before the broker restart | {dlq} (raw invalid sent: "
          f"{args.invalid_raw}) |")
    print(f"| serving tree RSS MB start → end | {base_rss:.0f} → {end_rss:.0f} |")
    print(f"| /metrics series start → end | {base_series} → {end_series} |")
    for t, what, detail in chaos:
        print(f"| chaos at {t:.0f} s | {what}: {detail} |")
    for name, ok in checks.items():
        print(f"| check: {name} | {'PASS' if ok else 'FAIL'} |")
    for line in tally.unexpected[:20]:
        print("unexpected:", line)
    return 0 if all(checks.values()) else 1


if __name__ == "__main__":
    raise SystemExit(main())
