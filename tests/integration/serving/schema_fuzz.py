"""Run schemathesis over every operation of an OpenAPI schema, with bounded examples.

The pytest plugin's lazy fixtures do not run under this pytest, so each operation's
hypothesis strategy is driven directly; a failure names the operation and the case.
"""

from __future__ import annotations

from collections.abc import Callable

from hypothesis import HealthCheck, given, settings
from schemathesis import BaseSchema, Case


def fuzz_operations(schema: BaseSchema, check: Callable[[Case], None],
                    max_examples: int, skip: Callable[[str], bool] = lambda path: False,
                    ) -> list[str]:
    """Call ``check(case)`` for up to ``max_examples`` generated cases of each operation;
    returns the operations exercised (``METHOD path``)."""
    exercised = []
    for result in schema.get_all_operations():
        operation = result.ok()
        if skip(operation.path):
            continue

        @given(case=operation.as_strategy())
        @settings(max_examples=max_examples, deadline=None, derandomize=True,
                  suppress_health_check=list(HealthCheck), database=None)
        def run(case: Case) -> None:
            check(case)

        run()
        exercised.append(f"{operation.method.upper()} {operation.path}")
    return exercised
