"""The workbench in a real browser: headless Chromium drives the page of a real
``rlhf workbench`` process; judgments travel through the real broker and the real
ingester process into the store, and the lead's page shows the labelers' agreement.

Chromium is Debian's (``apt-get install chromium``); Playwright never downloads one.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import uuid
from pathlib import Path

import httpx
import pytest

from core.events import CompletionChoice, CompletionRecord, encode_event, event_key
from feedback.store import FeedbackStore
from labeling.agreement import pairwise_agreement
from tests.fixtures.kafka import REPO, produce_raw, wait_for

pytestmark = [pytest.mark.kafka]

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update"]
KEYS = {"sk-ann": "labeler", "sk-bob": "labeler", "sk-lead": "admin"}
DOCS_IMG = REPO / "docs" / "img"

try:
    from playwright.sync_api import expect, sync_playwright
except ImportError:  # pragma: no cover - depends on the environment
    sync_playwright = None  # type: ignore[assignment]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def browser():
    if sync_playwright is None:
        pytest.skip("playwright is not installed (pip install playwright)")
    if not CHROMIUM.exists():
        pytest.skip(f"no Chromium at {CHROMIUM} (apt-get install -y chromium)")
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield b
        b.close()


@pytest.fixture
def workbench(kafka_broker, ingester_process, tmp_path):
    """A migrated store, the ingester, and ``rlhf workbench`` as a child process."""
    db_url = f"sqlite:///{tmp_path / 'feedback.db'}"
    store = FeedbackStore(db_url)
    store.migrate()
    ingester_process(db_url)
    port = _free_port()
    env = {**os.environ, "PYTHONPATH": str(REPO), "RLHF_WORKBENCH__PORT": str(port),
           "RLHF_WORKBENCH__HOST": "127.0.0.1", "RLHF_DATABASE__URL": db_url,
           "RLHF_KAFKA__BOOTSTRAP_SERVERS": kafka_broker.bootstrap_servers,
           "RLHF_KAFKA__REQUEST_TIMEOUT_MS": "3000", "RLHF_AUTH__KEYS": json.dumps(KEYS),
           "RLHF_LOG_LEVEL": "warning"}
    log = open(tmp_path / "workbench.log", "ab")  # noqa: SIM115 - owned by the child
    proc = subprocess.Popen([sys.executable, "-m", "rlhf", "workbench"], env=env, cwd=REPO,
                            stdout=log, stderr=log)
    url = f"http://127.0.0.1:{port}"

    def healthy() -> bool:
        if proc.poll() is not None:
            raise AssertionError("workbench exited:\n" +
                                 (tmp_path / "workbench.log").read_text()[-3000:])
        try:
            return httpx.get(url + "/healthz", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    try:  # stopped even when it never becomes healthy
        wait_for(healthy, 60, interval=0.3, what="the workbench to start")
        yield url, store, kafka_broker
    finally:
        proc.terminate()
        proc.wait(20)
        store.close()


def _traffic(kafka, store: FeedbackStore) -> CompletionRecord:
    """A served completion with four choices, logged through the broker like serving's."""
    record = CompletionRecord(
        request_id=f"cmpl-{uuid.uuid4().hex[:8]}", policy_version="policy-000001",
        model="tiny", endpoint="completions", prompt="Suggest a name for a small bakery.",
        choices=[CompletionChoice(index=i, text=t) for i, t in enumerate(
            ["Crumb & Co.", "The Rolling Pin", "Bakery", "Flour Power"])])
    produce_raw(kafka, kafka.topics.completions, [(event_key(record), encode_event(record))])
    wait_for(lambda: store.get_completion(record.request_id), 60, what="completion stored")
    return record


def _rank_by_keyboard(page, url: str, key: str, keys: list[str], ranks: int,
                      shot: Path | None) -> dict:
    """Sign in, open the queue, press ``keys`` (leaving ``ranks`` distinct ranks), submit
    with Enter; returns slot → answer text."""
    page.goto(url + "/")
    page.fill("#key", key)
    page.click("#login-button")
    page.click("[data-queue]")
    expect(page.locator(".answer")).to_have_count(4)
    texts = {int(card.get_attribute("data-slot")): card.locator(".text").inner_text()
             for card in page.locator(".answer").all()}
    for k in keys:
        page.keyboard.press(k)
    expect(page.locator("#board .group")).to_have_count(ranks)
    expect(page.locator(".answer.placed")).to_have_count(4)
    if shot is not None:
        page.screenshot(path=str(shot), full_page=True)
    page.keyboard.press("Enter")
    expect(page.locator("#empty")).to_be_visible(timeout=20_000)
    return texts


def _stored_ranks(store, request_id: str, n: int) -> list[list[int]]:
    groups = wait_for(lambda: (lambda g: g if len(g) >= n else None)(
        [g for g in store.preference_groups() if g.request_id == request_id]), 60,
        what=f"{n} rankings in the store")
    return [g.ranks for g in groups]


def test_two_labelers_rank_by_keyboard_and_the_lead_sees_their_agreement(
        workbench, browser, tmp_path):
    url, store, broker = workbench
    record = _traffic(broker.kafka, store)
    r = httpx.post(url + "/v1/labeling/queues", headers={"Authorization": "Bearer sk-lead"},
                   json={"name": "bakery names", "source": "traffic", "task": "ranking",
                         "k": 4, "overlap": 2, "instructions": "Rank by helpfulness."})
    assert r.status_code == 201, r.text
    answers = [c.text for c in record.choices]

    # Ann: slot 2 best, slot 4 tied with it ("t"), then slot 1, then slot 3.
    ann_page = browser.new_context(viewport={"width": 1200, "height": 900}).new_page()
    ranking_shot = tmp_path / "labeling-ranking.png"
    ann_texts = _rank_by_keyboard(ann_page, url, "sk-ann", ["2", "t", "4", "1", "3"], 3,
                                  ranking_shot)
    ann_expected = [0] * 4
    for slot, rank in ((2, 1), (4, 1), (1, 2), (3, 3)):
        ann_expected[answers.index(ann_texts[slot])] = rank
    (ann_stored,) = _stored_ranks(store, record.request_id, 1)
    assert ann_stored == ann_expected  # shuffled slots mapped back; the tie kept

    # Bob ranks the same item (overlap 2), no ties; a mistake undone with Backspace.
    bob_page = browser.new_context().new_page()
    bob_texts = _rank_by_keyboard(bob_page, url, "sk-bob",
                                  ["3", "Backspace", "1", "2", "3", "4"], 4, None)
    bob_expected = [0] * 4
    for slot, rank in ((1, 1), (2, 2), (3, 3), (4, 4)):
        bob_expected[answers.index(bob_texts[slot])] = rank
    stored = _stored_ranks(store, record.request_id, 2)
    assert sorted(stored) == sorted([ann_expected, bob_expected])
    groups = [g for g in store.preference_groups() if g.request_id == record.request_id]
    assert {g.source for g in groups} == {"labeler"}

    # The lead's page shows the two labelers' agreement on that item.
    lead = browser.new_context(viewport={"width": 1200, "height": 1000}).new_page()
    lead.goto(url + "/lead")
    lead.fill("#key", "sk-lead")
    lead.click("#login-button")
    lead.click("tr[data-queue]")
    expected = f"{pairwise_agreement(ann_expected, bob_expected):.2f}"
    expect(lead.locator("#m-agree")).to_have_text(expected, timeout=20_000)
    expect(lead.locator("#labeler-table tbody tr")).to_have_count(2)
    expect(lead.locator("#labeler-table .agreement").first).to_have_text(expected)
    lead_shot = tmp_path / "labeling-lead.png"
    lead.screenshot(path=str(lead_shot), full_page=True)

    DOCS_IMG.mkdir(parents=True, exist_ok=True)
    shutil.copy(ranking_shot, DOCS_IMG / "labeling-ranking.png")
    shutil.copy(lead_shot, DOCS_IMG / "labeling-lead.png")
