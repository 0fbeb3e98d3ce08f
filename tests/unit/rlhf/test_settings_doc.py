"""docs/settings.md must list exactly the settings the code reads."""

from pathlib import Path

from rlhf.settings_doc import render, rows
from serving.settings import ServeSettings

DOC = Path(__file__).resolve().parents[3] / "docs" / "settings.md"


def test_settings_doc_is_up_to_date():
    assert DOC.read_text() == render(), "run: python -m rlhf.settings_doc > docs/settings.md"


def test_nested_sections_flatten_to_env_names():
    names = {env for env, _, _ in rows(ServeSettings)}
    assert {"RLHF_HTTP__PORT", "RLHF_KAFKA__BOOTSTRAP_SERVERS",
            "RLHF_KAFKA__TOPICS__POLICY", "RLHF_ENGINE__TENSOR_PARALLEL_SIZE"} <= names
    assert "RLHF_HTTP" not in names
