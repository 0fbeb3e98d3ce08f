"""The spill files: append, replay bookkeeping, and adoption of what a gone process left.

A segment is released by ``close`` (as by a process exiting), which is what makes it
adoptable; a child process that holds a segment's lock stands in for a live replica.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from core.spill import Spill

TOPIC = "rlhf.completions"


def _files(directory: Path) -> list[Path]:
    return sorted(directory.glob("*.jsonl"))


def _lines(directory: Path) -> list[bytes]:
    return sorted(line for f in _files(directory) for line in f.read_bytes().splitlines())


def test_appended_lines_are_replayed_and_removed_only_once_settled(tmp_path):
    spill = Spill(tmp_path, TOPIC)
    spill.append([b'{"e":1}', b'{"e":2}'])
    spill.append([b'{"e":3}'])
    assert spill.pending == 3

    [segment] = spill.segments()
    assert spill.read(segment) == [b'{"e":1}', b'{"e":2}', b'{"e":3}']
    spill.append([b'{"e":4}'])  # while replaying: goes to a new segment
    # e2 was not acknowledged: it stays, the acknowledged ones go
    spill.settle(segment, [b'{"e":2}'])
    assert _lines(tmp_path) == [b'{"e":2}', b'{"e":4}']
    assert spill.pending == 2

    segments = spill.segments()
    assert [spill.read(s) for s in segments] == [[b'{"e":2}'], [b'{"e":4}']]
    for s in segments:
        spill.settle(s, [])
    assert _files(tmp_path) == [] and spill.pending == 0
    spill.close()


def test_a_closed_spill_is_adopted_by_the_next_process_and_nothing_is_lost(tmp_path):
    first = Spill(tmp_path, TOPIC)
    first.append([b'{"e":1}', b'{"e":2}'])
    first.close()  # the process stops (or crashes): its segment stays on disk

    second = Spill(tmp_path, TOPIC)
    assert second.pending == 0  # unknown until it looks
    [segment] = second.segments()
    assert second.pending == 2 and second.read(segment) == [b'{"e":1}', b'{"e":2}']
    # a third process cannot take it while the second one holds it
    third = Spill(tmp_path, TOPIC)
    assert third.segments() == []
    second.settle(segment, [])
    assert _files(tmp_path) == []
    second.close()
    third.close()


def test_a_segment_of_a_live_process_is_left_alone(tmp_path):
    holder = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import sys
        from core.spill import Spill
        spill = Spill({str(tmp_path)!r}, {TOPIC!r})
        spill.append([b'{{"e":"theirs"}}'])
        print("ready", flush=True)
        sys.stdin.read()
    """)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, cwd=Path(__file__).parents[3])
    try:
        assert holder.stdout is not None and holder.stdout.readline() == b"ready\n"
        spill = Spill(tmp_path, TOPIC)
        assert spill.segments() == []  # locked by the live process
        assert _lines(tmp_path) == [b'{"e":"theirs"}']
    finally:
        holder.communicate(b"", timeout=30)  # exits: its lock goes with it
    [segment] = spill.segments()
    assert spill.read(segment) == [b'{"e":"theirs"}']
    spill.close()


def test_other_topics_and_unfinished_rewrites_are_not_replayed(tmp_path):
    other = Spill(tmp_path, "rlhf.feedback")
    other.append([b'{"e":"feedback"}'])
    other.close()
    leftover = tmp_path / f"{TOPIC}.host.1.abc.jsonl.tmp"  # a rewrite cut short by a crash
    leftover.write_bytes(b'{"e":"partial"}\n')

    spill = Spill(tmp_path, TOPIC)
    assert spill.segments() == []
    assert not leftover.exists()
    assert _lines(tmp_path) == [b'{"e":"feedback"}']
    spill.close()


def test_a_failed_write_leaves_no_torn_line(tmp_path, monkeypatch):
    import core.spill as spill_module

    spill = Spill(tmp_path, TOPIC)
    spill.append([b'{"e":1}'])
    real_write = spill_module.os.write

    def disk_full(fd: int, data: memoryview) -> int:
        real_write(fd, bytes(data[:3]))  # part of it reached the file
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(spill_module.os, "write", disk_full)
    with pytest.raises(OSError, match="No space"):
        spill.append([b'{"e":2}'])
    monkeypatch.setattr(spill_module.os, "write", real_write)
    spill.append([b'{"e":3}'])
    [segment] = spill.segments()
    assert spill.read(segment) == [b'{"e":1}', b'{"e":3}']
    spill.close()
