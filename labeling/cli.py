"""``rlhf workbench``: the labeling workbench's command."""

from __future__ import annotations

import typer


def workbench(host: str = typer.Option(None, help="Bind address (default RLHF_WORKBENCH__HOST, "
                                             "0.0.0.0)."),
              port: int = typer.Option(None, help="Port (default RLHF_WORKBENCH__PORT, 8500)."),
              serving_url: str = typer.Option(None, help="The serving API's URL "
                                              "(RLHF_WORKBENCH__SERVING_URL).")) -> None:
    """Serve the labeling workbench: ranking, comparison, rating and demonstration tasks."""
    from core.cli_settings import load_settings
    from labeling.server import run
    from labeling.settings import LabelingSettings

    run(load_settings(LabelingSettings, {
        "host": ("--host", host), "port": ("--port", port),
        "serving_url": ("--serving-url", serving_url)}, command="rlhf workbench"))
