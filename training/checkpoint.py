"""Resumable training state every N updates, and resuming from it after a crash.

``checkpoint_every: N`` in a recipe config saves, every N optimiser updates, accelerate's
full state (``Accelerator.save_state``: model and optimiser and scheduler states as
safetensors / torch files, and every process's RNG states) plus ``progress.json``: the
update count, the data position (epoch and batch within it), the data mark of the
store snapshot the run reads, and the metrics so far. A run started with ``resume: true``
(``rlhf train <recipe> --resume``) loads the newest state of the same recipe and config,
reads the store up to the saved data mark (rows that arrived since are for the next run),
replays the data order up to the saved position and continues; the result matches an
uninterrupted run (the resume test compares the weights).

The state lives in ``<registry>/checkpoints/<recipe>-<config hash>/`` and is written to a
temporary directory first, then renamed: a kill while saving leaves the previous state. It
is removed once the run has published its version.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import signal
from collections.abc import Iterator
from typing import Any

from accelerate import Accelerator

from core.registry import Registry
from training.config import RunConfig

log = logging.getLogger(__name__)

KILL_AT_ENV = "RLHF_FAULT_KILL_AT_UPDATE"
"""Fault injection: the process SIGKILLs itself after this update (tests of resume)."""

NOT_IN_KEY = {"resume", "checkpoint_every", "progress", "max_steps", "eval_every"}
"""Settings a resumed run may change without starting over."""


class Checkpointer:
    """Save and restore one run's state (see the module docstring)."""

    def __init__(self, registry: Registry, recipe: str, cfg: RunConfig,
                 accelerator: Accelerator):
        self.every = cfg.checkpoint_every
        self.accelerator = accelerator
        config = cfg.model_dump(mode="json", exclude=NOT_IN_KEY)
        key = hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()[:12]
        self.dir = registry.root / "checkpoints" / f"{recipe}-{key}"
        self.state = self.dir / "state"
        self.progress: dict[str, Any] | None = None
        if cfg.resume:
            marker = self.state / "progress.json"
            if marker.is_file():
                self.progress = json.loads(marker.read_text())
            else:
                log.info("resume: no saved state in %s; starting from the beginning",
                         self.dir)

    @property
    def data_mark(self) -> int | None:
        """The snapshot mark the interrupted run read; None when not resuming."""
        return None if self.progress is None else int(self.progress["data_mark"])

    def restore(self) -> dict[str, Any] | None:
        """Load the saved state into the prepared objects; returns the progress record."""
        if self.progress is None:
            return None
        self.accelerator.load_state(str(self.state))
        log.info("resumed from %s at update %d", self.state, self.progress["step"])
        return self.progress

    def due(self, step: int) -> bool:
        """Whether to save after update ``step`` (called once per update)."""
        if os.environ.get(KILL_AT_ENV) == str(step):  # fault injection for the resume test
            os.kill(os.getpid(), signal.SIGKILL)
        return self.every > 0 and step % self.every == 0

    def save(self, step: int, **progress: Any) -> None:
        """Write the state at update ``step``; ``progress`` holds the data position."""
        tmp = self.dir / f"state.tmp-{step}"
        if self.accelerator.is_main_process and tmp.exists():
            shutil.rmtree(tmp)
        self.accelerator.wait_for_everyone()
        self.accelerator.save_state(str(tmp))
        if self.accelerator.is_main_process:
            (tmp / "progress.json").write_text(json.dumps({"step": step, **progress}))
            old = self.dir / "state.old"
            if self.state.exists():
                os.replace(self.state, old)
            os.replace(tmp, self.state)
            shutil.rmtree(old, ignore_errors=True)
        self.accelerator.wait_for_everyone()

    def finish(self) -> None:
        """The run published its version: its resumable state is no longer needed."""
        if self.accelerator.is_main_process and self.dir.exists():
            shutil.rmtree(self.dir, ignore_errors=True)


def advance_epoch(loader: Any) -> None:
    """Draw one epoch's order from ``loader``'s sampler without loading data, so the next
    epoch's order is what it was in the interrupted run."""
    for _ in loader.batch_sampler:
        pass


def epoch_batches(accelerator: Accelerator, loader: Any, epoch: int, start_epoch: int,
                  skip: int) -> Iterator[tuple[int, Any]] | None:
    """``(batch number from 1, batch)`` of ``epoch`` for a run resumed before batch
    ``skip + 1`` of ``start_epoch`` (a fresh run: the first epoch, 0): None for an epoch
    finished before the interruption (its data order is drawn, so later ones match), the
    remaining batches of the interrupted epoch, every batch of a later one."""
    if epoch < start_epoch:
        advance_epoch(loader)
        return None
    first = skip if epoch == start_epoch else 0
    part = accelerator.skip_first_batches(loader, first) if first else loader
    return enumerate(part, start=first + 1)
