"""resolve_dtype: on a CPU, `auto` keeps a checkpoint's own dtype (vLLM would pick bf16)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from serving.engine import resolve_dtype

pytestmark = pytest.mark.skipif(torch.cuda.is_available(), reason="CPU behaviour")


def model_with(tmp_path: Path, **config: object) -> str:
    (tmp_path / "config.json").write_text(json.dumps(config))
    return str(tmp_path)


def test_auto_keeps_a_float32_checkpoint_in_float32(tmp_path: Path) -> None:
    assert resolve_dtype("auto", model_with(tmp_path, dtype="float32")) == "float32"
    assert resolve_dtype("auto", model_with(tmp_path, torch_dtype="bfloat16")) == "bfloat16"


def test_an_explicit_dtype_wins_and_unknown_configs_stay_auto(tmp_path: Path) -> None:
    assert resolve_dtype("bfloat16", model_with(tmp_path, dtype="float32")) == "bfloat16"
    assert resolve_dtype("auto", model_with(tmp_path)) == "auto"
    assert resolve_dtype("auto", str(tmp_path / "missing")) == "auto"
