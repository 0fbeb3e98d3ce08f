"""A registry opened for reading (``create=False``) creates nothing until it writes."""

from pathlib import Path

import pytest

from core.registry import Registry, RegistryError


def tree(root: Path) -> list[str]:
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*"))


def test_a_missing_root_reads_as_an_empty_registry_and_stays_missing(tmp_path):
    registry = Registry(tmp_path / "registry", create=False)
    assert registry.list() == []
    assert registry.latest("policy") is None
    assert registry.live_policy() is None
    assert registry.history() == []
    assert registry.clean_staging(older_than_s=0) == 0
    with pytest.raises(RegistryError, match="unknown version"):
        registry.get("policy-0001")
    assert list(tmp_path.iterdir()) == []


def test_the_first_write_creates_the_layout(tmp_path):
    src = tmp_path / "ckpt"
    src.mkdir()
    (src / "config.json").write_text("{}")
    registry = Registry(tmp_path / "registry", create=False)
    assert registry.register_base(src).version == "policy-0000"
    assert registry.create_version("reward", src, {}).version == "reward-0001"
    registry.set_live("policy-0000", "bootstrap")
    assert registry.live_policy() == "policy-0000"
    assert {".tmp", "policy", "reward", "live.json", "live-history.jsonl"} <= set(
        tree(registry.root))


def test_the_default_still_creates_the_layout_for_writers(tmp_path):
    assert tree(Registry(tmp_path / "registry").root) == [".tmp", "policy", "reward"]
