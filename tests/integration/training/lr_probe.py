"""Run under torchrun: the learning rate a recipe's prepared scheduler gives at 25/50/75/100 %
of its updates, printed as JSON by rank 0 (``test_lr_schedule.py``).

It builds the optimiser and schedule exactly as SFT and the reward model do
(``training.runs.cosine_optimizer`` with ``accelerator.num_processes``) and steps them as
the recipes do: one ``optimizer.step()`` and one ``scheduler.step()`` per update.
``--processes-ignored`` passes 1 instead, the behaviour before the fix.
"""

import json
import sys

import torch

from training.recipes.sft import SFTConfig
from training.runs import cosine_optimizer, make_accelerator

EXAMPLES, BATCH = 64, 4  # 16 updates per epoch


def main() -> None:
    cfg = SFTConfig(lr=1.0, min_lr_ratio=0.1, epochs=2, cpu=True, progress=False)
    accelerator = make_accelerator(cfg)
    model = torch.nn.Linear(2, 1)
    processes = 1 if "--processes-ignored" in sys.argv else accelerator.num_processes
    optimizer, scheduler, steps = cosine_optimizer(model, cfg, EXAMPLES, BATCH, processes)
    model, optimizer, scheduler = accelerator.prepare(model, optimizer, scheduler)
    lrs = []
    for _ in range(steps):
        lrs.append(scheduler.get_last_lr()[0])  # the LR this update uses
        model(torch.ones(1, 2)).sum().backward()
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad()
    marks = {f"{q}%": lrs[round(steps * q / 100) - 1] for q in (25, 50, 75, 100)}
    if accelerator.is_main_process:
        print(json.dumps({"processes": accelerator.num_processes, "steps": steps, **marks}))
    # leave the gloo group before exit: without it a rank can abort in teardown
    # ("terminate called without an active exception", exit -6; seen once in a full run)
    if torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main()
