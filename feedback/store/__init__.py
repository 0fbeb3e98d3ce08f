"""The feedback store: SQL tables, the ingester's write path and training's query API."""

from feedback.store.store import (
    DemonstrationRow,
    FeedbackStore,
    PersistResult,
    PreferenceGroup,
)

__all__ = ["DemonstrationRow", "FeedbackStore", "PersistResult", "PreferenceGroup"]
