"""``rlhf workbench``: the labeling workbench's command."""

from __future__ import annotations

import typer


def workbench(host: str = typer.Option(None, help="Bind address (default RLHF_HOST)."),
              port: int = typer.Option(None, help="Port (default RLHF_PORT, 8500)."),
              serving_url: str = typer.Option(None, help="The serving API's URL.")) -> None:
    """Serve the labeling workbench: ranking, comparison, rating and demonstration tasks."""
    from labeling.server import run
    from labeling.settings import LabelingSettings

    settings = LabelingSettings()
    for name, value in (("host", host), ("port", port), ("serving_url", serving_url)):
        if value is not None:
            setattr(settings, name, value)
    run(settings)
