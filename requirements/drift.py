"""Print the installed packages whose version differs from a lock file (``make test-latest``).

``python requirements/drift.py requirements/cpu.lock`` → one line per package that the
newest allowed install moved, so the lock refresh it would take is visible before it is made.
"""

from __future__ import annotations

import re
import sys
from importlib import metadata
from pathlib import Path

PIN = re.compile(r"^([A-Za-z0-9_.\-]+)==([^\s;]+)")


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def locked(path: Path) -> dict[str, str]:
    pins = (PIN.match(line) for line in path.read_text().splitlines())
    return {canonical(m.group(1)): m.group(2) for m in pins if m}


def main(lock: str) -> None:
    pins = locked(Path(lock))
    installed = {canonical(d.metadata["Name"]): d.version for d in metadata.distributions()}
    moved = sorted((n, pins[n], v) for n, v in installed.items() if n in pins and pins[n] != v)
    added = sorted(n for n in installed if n not in pins and n not in ("pip", "rlhf-platform"))
    print(f"{len(moved)} of {len(pins)} locked packages would move ({lock}):")
    for name, old, new in moved:
        print(f"  {name}: {old} -> {new}")
    if added:
        print("not in the lock: " + ", ".join(added))


if __name__ == "__main__":
    main(sys.argv[1])
