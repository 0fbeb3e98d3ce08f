"""A small HTTP endpoint that scores (prompt, response) pairs with a reward-model version.

``POST /v1/rewards`` ``{"model": "reward-0003", "items": [{"prompt": …, "response": …}]}``
→ ``{"model": …, "scores": [...], "bias": …}``. Unknown versions answer 404, malformed
bodies 422. Loaded versions are cached, so only the first request per version pays the
load.
"""

from __future__ import annotations

import threading
from functools import lru_cache
from pathlib import Path

from fastapi import Depends, FastAPI
from pydantic import BaseModel, Field

from core.auth import KeyRing
from core.errors import NotFound
from core.http import install_error_handlers, require_role
from core.registry import Registry, RegistryError
from training.reward_model import RewardScorer


class RewardItem(BaseModel):
    prompt: str = Field(description="The prompt (a user message or an already rendered prompt).")
    response: str = Field(description="The response to score.")


class RewardRequest(BaseModel):
    model: str = Field(min_length=1, description="Reward-model version, e.g. reward-0003.")
    items: list[RewardItem] = Field(min_length=1, max_length=1024,
                                    description="Pairs to score, at most 1024.")


class RewardResponse(BaseModel):
    model: str = Field(description="The version that scored the items.")
    scores: list[float] = Field(description="Normalised reward of each item, in order.")
    bias: float = Field(description="The bias already added to every score.")


def create_app(registry_root: Path, max_loaded: int = 2,
               keyring: KeyRing | None = None) -> FastAPI:
    """The app; scorers for up to ``max_loaded`` versions stay in memory.

    Callers need a ``user`` key when ``keyring`` has keys (open otherwise).
    """
    registry = Registry(registry_root)
    lock = threading.Lock()  # one forward pass at a time on these CPU/GPU models

    @lru_cache(maxsize=max_loaded)
    def scorer(version: str) -> RewardScorer:
        return RewardScorer.from_registry(registry, version)

    app = FastAPI(title="rlhf reward model", version="1")
    app.state.keyring = keyring or KeyRing({})
    install_error_handlers(app)

    @app.post("/v1/rewards", response_model=RewardResponse,
              dependencies=[Depends(require_role("user"))])
    def score(req: RewardRequest) -> RewardResponse:
        try:
            model = scorer(req.model)
        except (RegistryError, ValueError) as e:
            raise NotFound(f"no reward model {req.model!r}: {e}", param="model") from None
        with lock:
            scores = model.score([(i.prompt, i.response) for i in req.items])
        return RewardResponse(model=req.model, scores=scores, bias=model.bias)

    return app
