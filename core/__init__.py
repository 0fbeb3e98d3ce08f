"""What every process shares: the contracts between them.

* :mod:`core.events` — every event's one definition and its one encoder/decoder.
* :mod:`core.registry` — immutable model versions, the live pointer, ``PolicyEvent``.
* :mod:`core.settings` — settings sections and the base of every settings tree.
* :mod:`core.auth` — API keys and roles (:meth:`~core.auth.KeyRing.authorize`).
* :mod:`core.errors` — the one error type and OpenAI's error JSON.
* :mod:`core.http` — FastAPI glue every HTTP app installs (imports FastAPI lazily).
* :mod:`core.producer` — idempotent Kafka producers (acknowledged and fire-and-forget).

Nothing here imports FastAPI, vLLM or torch at module level.
"""
