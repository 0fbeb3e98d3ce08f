"""``rlhf train reward``, ``rlhf reward score`` and ``POST /v1/rewards`` end to end."""

import json

import yaml
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from training.cli import reward_app, train_app
from training.config import DEMO_CONFIG_DIR
from training.reward_server import create_app
from training.synthetic import MARKER


def test_cli_trains_scores_and_serves(store, registry, tmp_path):
    cfg = yaml.safe_load((DEMO_CONFIG_DIR / "reward.yaml").read_text())
    cfg.update(lr=1e-3, max_len=64, max_steps=4, progress=False)
    (tmp_path / "rm.yaml").write_text(yaml.safe_dump(cfg))
    runner = CliRunner()
    db = f"sqlite:///{tmp_path / 'feedback.db'}"
    result = runner.invoke(train_app, [
        "reward", "--config", str(tmp_path / "rm.yaml"), "--database-url", db,
        "--registry", str(registry.root), "--base", "policy-0000", "--no-announce"])
    assert result.exit_code == 0, result.output
    trained = json.loads(result.stdout.strip().splitlines()[-1])
    assert trained["version"] == "reward-0001" and trained["data_mark"] == 104
    assert registry.get("reward-0001").config["max_steps"] == 4

    result = runner.invoke(reward_app, [
        "score", "--version", "reward-0001", "--prompt", "Hi.", "--registry", str(registry.root),
        "--response", f"a {MARKER} day", "--response", "a day"])
    assert result.exit_code == 0, result.output
    cli_scores = json.loads(result.stdout)["scores"]
    assert len(cli_scores) == 2

    client = TestClient(create_app(registry.root))
    items = [{"prompt": "Hi.", "response": f"a {MARKER} day"}, {"prompt": "Hi.",
                                                               "response": "a day"}]
    r = client.post("/v1/rewards", json={"model": "reward-0001", "items": items})
    assert r.status_code == 200
    assert r.json()["scores"] == cli_scores  # same version, same numbers
    assert client.post("/v1/rewards", json={"model": "reward-0009", "items": items}
                       ).status_code == 404
    assert client.post("/v1/rewards", json={"model": "policy-0000", "items": items}
                       ).status_code == 404  # a policy is not a reward model
    assert client.post("/v1/rewards", json={"model": "reward-0001", "items": []}
                       ).status_code == 422
    assert client.post("/v1/rewards", json={"items": items}).status_code == 422
