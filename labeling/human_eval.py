"""The deploy gate on the human win rate: the candidate's judgments, read from the store.

The maths and the verdict are pure and live in ``labeling.winrate``; the judgments come
from ``labeling.queues``. This module joins the two, so neither of them needs the other
beyond ``queues`` returning ``winrate``'s :data:`~labeling.winrate.Outcome`.
"""

from __future__ import annotations

from typing import Any

from labeling.queues import candidate_outcomes
from labeling.settings import HumanEvalSettings
from labeling.winrate import HumanEvalVerdict, check_human_win_rate, win_rate


def human_eval_gate(engine: Any, candidate: str, live: str | None,
                    settings: HumanEvalSettings) -> HumanEvalVerdict | None:
    """The deploy gate: None when not ``required``; else the verdict from the store.

    ``engine`` is the feedback store's SQLAlchemy engine (the workbench's tables live in
    the same database). Judgments come from every candidate-vs-live queue of
    ``candidate`` (against ``live`` when given) whose feedback reached the store.
    """
    if not settings.required:
        return None
    outcomes = candidate_outcomes(engine, candidate, live)
    return check_human_win_rate(win_rate(outcomes, settings.confidence), settings)
