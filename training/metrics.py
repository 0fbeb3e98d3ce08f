"""Per-run metrics: a JSONL log (one object per step or eval) and a PNG of the curves."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any


class MetricsLog:
    """Append-only JSONL of ``{"step": n, "split": "train"|"eval", ...metrics}``."""

    def __init__(self, path: Path, enabled: bool = True):
        self.path, self.enabled = Path(path), enabled
        self.records: list[dict[str, Any]] = []
        self._start = time.monotonic()

    def log(self, step: int, split: str, **metrics: float) -> None:
        record = {"step": step, "split": split, "elapsed_s": time.monotonic() - self._start,
                  **{k: float(v) for k, v in metrics.items()}}
        self.records.append(record)
        if self.enabled:
            with open(self.path, "a") as f:
                f.write(json.dumps(record) + "\n")

    def last(self, split: str) -> dict[str, Any]:
        found = [r for r in self.records if r["split"] == split]
        return found[-1] if found else {}


def plot_curves(records: list[dict[str, Any]], keys: list[str], out: Path, title: str) -> Path:
    """One panel per metric key, train and eval curves against the step."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(keys), figsize=(5 * len(keys), 3.5), squeeze=False)
    for ax, key in zip(axes[0], keys, strict=True):
        for split in ("train", "eval"):
            pts = [(r["step"], r[key]) for r in records if r["split"] == split and key in r]
            if pts:
                ax.plot(*zip(*pts, strict=True), marker="o" if split == "eval" else None,
                        label=split)
        ax.set_xlabel("step")
        ax.set_title(key)
        ax.legend()
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(out, dpi=80)
    plt.close(fig)
    return out


def prometheus_sink(port: int, recipe: str) -> Callable[[dict[str, float]], None] | None:
    """Serve each step's metrics as gauges ``rlhf_<recipe>_<name>`` on ``port``; 0 = off."""
    if not port:
        return None
    from prometheus_client import Gauge, start_http_server

    start_http_server(port)
    gauges: dict[str, Gauge] = {}

    def on_step(record: dict[str, float]) -> None:
        for name, value in record.items():
            if name not in gauges:
                gauges[name] = Gauge(f"rlhf_{recipe}_{name}", f"{recipe} {name}, last step")
            gauges[name].set(value)

    return on_step
