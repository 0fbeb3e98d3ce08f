"""Where a queue's items come from: traffic, an uploaded prompt file, or a candidate policy.

* ``traffic`` — recent completions from the store (newest first, one prompt once,
  completions logged with purpose ``eval`` left out), their stored choices as the answers.
* ``upload`` — prompts the lead uploads; answers come from the serving API
  (``/v1/completions`` or ``/v1/chat/completions`` with ``n = K``), whose completion log
  makes them ordinary traffic the feedback can reference.
* ``candidate`` — the candidate policy against the live one, side by side: both registry
  versions answer each prompt with the same seed (transformers, on the workbench's
  device), for a blind A/B and a human win rate.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import httpx
from sqlalchemy import Engine, select
from sqlalchemy.orm import Session

from core.errors import InvalidRequest, ServiceUnavailable
from feedback.store.models import CompletionTable
from labeling.queues import NewItem


def traffic_items(engine: Engine, *, prompts: int, k: int, min_answers: int,
                  samples_per_prompt: int = 1, scan: int = 5000) -> list[NewItem]:
    """Up to ``prompts`` distinct prompts of recent traffic, each with up to
    ``samples_per_prompt`` completions of ≥ ``min_answers`` choices (first ``k`` shown)."""
    q = select(CompletionTable).order_by(CompletionTable.id.desc()).limit(scan)
    purpose = getattr(CompletionTable, "purpose", None)
    if purpose is not None:
        q = q.where(purpose.is_(None) | (purpose != "eval"))
    per_prompt: dict[str, int] = {}
    items: list[NewItem] = []
    with Session(engine) as s:
        for c in s.scalars(q):
            if len(c.choices) < min_answers or not c.prompt.strip():
                continue
            seen = per_prompt.get(c.prompt)
            if seen is None and len(per_prompt) >= prompts:
                continue
            if seen is not None and seen >= samples_per_prompt:
                continue
            per_prompt[c.prompt] = (seen or 0) + 1
            answers = [{"text": ch.text, "choice": ch.idx} for ch in c.choices[:k]]
            items.append(NewItem(prompt=c.prompt, answers=answers, request_id=c.request_id))
    return items


def serving_items(url: str, key: str | None, model: str, prompts: Sequence[str], *, k: int,
                  samples_per_prompt: int, sampling: dict[str, Any], chat: bool,
                  timeout_s: float) -> list[NewItem]:
    """Ask the serving API for K answers per prompt, ``samples_per_prompt`` times."""
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    path = "/v1/chat/completions" if chat else "/v1/completions"
    items = []
    with httpx.Client(base_url=url.rstrip("/"), timeout=timeout_s, headers=headers) as client:
        for prompt in prompts:
            for _ in range(samples_per_prompt):
                body: dict[str, Any] = {"model": model, "n": k, **sampling}
                if chat:
                    body["messages"] = [{"role": "user", "content": prompt}]
                else:
                    body["prompt"] = prompt
                try:
                    r = client.post(path, json=body)
                except httpx.HTTPError as e:
                    raise ServiceUnavailable(f"serving API at {url} unreachable: {e}") from e
                if r.status_code != 200:
                    raise ServiceUnavailable(f"serving API answered {r.status_code} for "
                                             f"{path}: {r.text[:300]}")
                data = r.json()
                answers = [{"text": (c["message"]["content"] if chat else c["text"]) or "",
                            "choice": c["index"]} for c in data["choices"]]
                items.append(NewItem(prompt=prompt, answers=answers, request_id=data["id"]))
    return items


def generate(model_dir: Any, prompts: Sequence[str], *, samples_per_prompt: int,
             sampling: dict[str, Any], device: str, seed: int) -> list[list[str]]:
    """``samples_per_prompt`` sampled answers per prompt; sample j of prompt i is drawn
    with seed ``seed + i * samples_per_prompt + j`` so two policies share their seeds."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from training.formatting import render_prompt

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    model = model.to(device)  # type: ignore[arg-type]
    model.eval()
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (
        tokenizer.eos_token_id or 0)
    out: list[list[str]] = []
    with torch.no_grad():
        for i, prompt in enumerate(prompts):
            ids = tokenizer(render_prompt(tokenizer, prompt), add_special_tokens=False,
                            return_tensors="pt")["input_ids"].to(device)
            answers = []
            for j in range(samples_per_prompt):
                torch.manual_seed(seed + i * samples_per_prompt + j)
                gen = model.generate(
                    ids, attention_mask=torch.ones_like(ids), do_sample=True,
                    temperature=float(sampling.get("temperature", 1.0)),
                    top_p=float(sampling.get("top_p", 1.0)), top_k=0,
                    max_new_tokens=int(sampling.get("max_tokens", 64)), pad_token_id=pad)
                text = tokenizer.decode(gen[0, ids.shape[1]:], skip_special_tokens=True)
                answers.append(str(text).strip())
            out.append(answers)
    del model
    return out


def candidate_items(registry: Any, candidate: str, live: str | None,
                    prompts: Sequence[str], *, samples_per_prompt: int,
                    sampling: dict[str, Any], device: str, seed: int = 0
                    ) -> tuple[str, list[NewItem]]:
    """Side-by-side items: answers ``[candidate's, live's]`` (the page shuffles them)."""
    from core.registry import RegistryError

    live = live or registry.live_policy()
    if live is None:
        raise InvalidRequest("live: no live policy; name the version to compare with",
                             param="live")
    if not prompts:
        raise InvalidRequest("prompts: a candidate queue needs prompts", param="prompts")
    try:
        paths = {v: registry.path(v) for v in (candidate, live)}
        kinds = {v: registry.get(v).kind for v in (candidate, live)}
    except RegistryError as e:
        raise InvalidRequest(f"candidate: {e}", param="candidate") from e
    for version, kind in kinds.items():
        if kind != "policy":
            raise InvalidRequest(f"candidate: {version} is a {kind} version, not a policy",
                                 param="candidate")
    cand, base = (generate(paths[v], prompts, samples_per_prompt=samples_per_prompt,
                           sampling=sampling, device=device, seed=seed)
                  for v in (candidate, live))
    items = [NewItem(prompt=p, answers=[{"text": c, "origin": "candidate"},
                                        {"text": b, "origin": "live"}])
             for p, cs, bs in zip(prompts, cand, base, strict=True)
             for c, b in zip(cs, bs, strict=True)]
    return live, items
