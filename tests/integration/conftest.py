"""A tiny base model, a real SQLite feedback store with synthetic feedback, a registry."""

from collections.abc import Iterator
from pathlib import Path

import pytest

from core.registry import Registry
from feedback.store import FeedbackStore
from training.synthetic import synthetic_demonstrations, synthetic_rankings
from training.tiny_model import build_tiny_model


@pytest.fixture(scope="session")
def tiny_base(tmp_path_factory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("tiny") / "base")


@pytest.fixture
def registry(tmp_path, tiny_base) -> Registry:
    reg = Registry(tmp_path / "registry")
    reg.register_base(tiny_base)
    return reg


@pytest.fixture
def empty_store(tmp_path) -> Iterator[FeedbackStore]:
    store = FeedbackStore(f"sqlite:///{tmp_path / 'feedback.db'}")
    try:
        store.migrate()
        yield store
    finally:
        store.close()


@pytest.fixture
def store(empty_store) -> FeedbackStore:
    """80 prompts ranked by the hidden rule (K = 2…5), and 24 demonstrations."""
    empty_store.persist(synthetic_rankings(80, k_min=2, k_max=5, seed=1))
    empty_store.persist(synthetic_demonstrations(24, seed=2))
    return empty_store
