"""The deploy controller: promotion gates, promote and roll back (``rlhf deploy …``).

* :mod:`deploy.sampling` — both policies answer the same prompts, seeded.
* :mod:`deploy.gates` — the four gates as pure functions, and one evaluation.
* :mod:`deploy.notices` — decoding ``rlhf.policy`` events, per-replica versions.
* :mod:`deploy.controller` — promote, roll back, status, the event loop.
* :mod:`deploy.api` — the admin HTTP API (``/v1/deploy/…``, admin role).
* :mod:`deploy.cli` — the ``deploy_app`` Typer commands.

The registry is the source of truth for which policy is live; ``promote`` and
``rollback`` events on ``rlhf.policy`` tell the serving replicas to swap.
"""
