"""weight_mismatch: the pre-flight check that keeps a wrong checkpoint from the engine."""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import save_file

from serving.swap import weight_mismatch


def checkpoint(path: Path, **tensors: tuple[int, ...]) -> Path:
    path.mkdir(parents=True)
    save_file({name: torch.zeros(shape) for name, shape in tensors.items()},
              str(path / "model.safetensors"))
    return path


def test_same_shapes_fit(tmp_path: Path) -> None:
    a = checkpoint(tmp_path / "a", embed=(8, 4), head=(4, 8))
    b = checkpoint(tmp_path / "b", embed=(8, 4), head=(4, 8))
    assert weight_mismatch(a, b) is None


def test_a_different_shape_is_named(tmp_path: Path) -> None:
    a = checkpoint(tmp_path / "a", embed=(8, 4), head=(4, 8))
    b = checkpoint(tmp_path / "b", embed=(8, 4), head=(4, 9))
    assert weight_mismatch(a, b) == "head has shape (4, 9), the served model (4, 8)"


def test_different_tensor_names(tmp_path: Path) -> None:
    a = checkpoint(tmp_path / "a", embed=(8, 4), head=(4, 8))
    b = checkpoint(tmp_path / "b", embed=(8, 4), lm_head=(4, 8))
    assert weight_mismatch(a, b) == "different tensors (2 names differ)"


def test_truncated_or_missing_weights(tmp_path: Path) -> None:
    a = checkpoint(tmp_path / "a", embed=(8, 4))
    b = checkpoint(tmp_path / "b", embed=(8, 4))
    data = (b / "model.safetensors").read_bytes()
    (b / "model.safetensors").write_bytes(data[:20])
    assert weight_mismatch(a, b).startswith("unreadable weights")
    empty = tmp_path / "empty"
    empty.mkdir()
    assert weight_mismatch(a, empty) == "no safetensors weights"
