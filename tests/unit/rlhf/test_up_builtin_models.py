"""`rlhf up --model tiny|small` names a built-in model; any other value is a checkpoint."""

from pathlib import Path

from rlhf.up import UpSettings, builtin_model, check_configs


def test_no_model_means_the_tiny_one():
    assert builtin_model(None) == "tiny"


def test_small_and_tiny_are_built_in_names(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert builtin_model(Path("small")) == "small"
    assert builtin_model(Path("tiny")) == "tiny"
    assert not any("--model" in p for p in check_configs(UpSettings(model=Path("small"))))


def test_an_existing_directory_of_that_name_is_a_checkpoint(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "small").mkdir()
    assert builtin_model(Path("small")) is None
    problems = check_configs(UpSettings(model=Path("small")))
    assert any("small is not a checkpoint directory" in p for p in problems)


def test_another_path_without_config_json_is_refused(tmp_path):
    problems = check_configs(UpSettings(model=tmp_path / "nowhere"))
    assert any("--model (RLHF_UP__MODEL)" in p and "no config.json" in p for p in problems)
