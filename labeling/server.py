"""The ``rlhf workbench`` process: migrate the store, build the sink, serve the app.

Its own process because it reads the feedback store (queues, traffic, stored judgments),
and the serving process must not import the store (docs/labeling.md).
"""

from __future__ import annotations

import logging

from core.producer import FeedbackPublisher
from core.registry import Registry
from feedback.store import FeedbackStore
from labeling.api import create_app
from labeling.settings import LabelingSettings
from labeling.submit import BrokerSink, FeedbackSink, ServingSink

log = logging.getLogger(__name__)


def make_sink(settings: LabelingSettings) -> FeedbackSink:
    if settings.submit_via == "serving":
        return ServingSink(settings.serving_url, settings.serving_timeout_s)
    return BrokerSink(FeedbackPublisher(settings.kafka), settings.kafka.topics.feedback)


def run(settings: LabelingSettings) -> None:
    import uvicorn

    logging.basicConfig(level=settings.log_level.upper())
    store = FeedbackStore(settings.database.url, echo=settings.database.echo)
    store.migrate()
    sink = make_sink(settings)
    app = create_app(settings, store.engine, sink, Registry(settings.registry.root))
    log.info("labeling workbench on http://%s:%d (lead page: /lead)", settings.host,
             settings.port)
    try:
        uvicorn.run(app, host=settings.host, port=settings.port,
                    log_level=settings.log_level)
    finally:
        sink.close()  # type: ignore[attr-defined]
        store.close()
