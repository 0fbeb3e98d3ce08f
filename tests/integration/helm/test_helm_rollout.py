"""Fleet rollouts (docs/rollout.md) on Kubernetes: each serving replica announces an id and
a URL the deploy controller can use, the controller gets the rollout settings and its online
policy file, the NetworkPolicy lets it scrape the replicas, and the chart's defaults are the
settings classes' own."""

from __future__ import annotations

import re
from typing import Any

import pytest
import yaml
from helm_chart import (
    CANARY_POLICY,
    CHART,
    NAMESPACE,
    Rendered,
    render,
    render_error,
    render_values,
)
from test_helm_wiring import load_settings

from deploy.online import OnlinePolicy
from deploy.rollout import max_unavailable
from deploy.settings import GateSettings, RolloutSettings
from labeling.settings import HumanEvalSettings
from serving.settings import ReplicaSettings

pytestmark = pytest.mark.helm


def _pod(rendered: Rendered, component: str) -> dict[str, Any]:
    return rendered.one("Deployment", component)["spec"]["template"]


def _container(rendered: Rendered, component: str) -> dict[str, Any]:
    return _pod(rendered, component)["spec"]["containers"][0]


# ------------------------------------------------------------------- serving replicas

def test_each_replica_announces_its_pod_name_and_pod_ip(rendered: Rendered) -> None:
    container = _container(rendered, "serving")
    entries = {e["name"]: e for e in container["env"]}
    assert entries["RLHF_REPLICA__ID"]["valueFrom"] == {
        "fieldRef": {"fieldPath": "metadata.name"}}
    assert entries["POD_IP"]["valueFrom"] == {"fieldRef": {"fieldPath": "status.podIP"}}
    http = next(p["containerPort"] for p in container["ports"] if p["name"] == "http")
    assert entries["RLHF_REPLICA__URL"]["value"] == f"http://$(POD_IP):{http}"
    # The kubelet expands $(POD_IP) only from variables defined before it.
    names = list(entries)
    assert names.index("POD_IP") < names.index("RLHF_REPLICA__URL")
    interval = rendered.container_env(container)["RLHF_REPLICA__HEARTBEAT_INTERVAL_S"]
    assert float(interval) == rendered.values["serving"]["replica"]["heartbeatIntervalS"]


# ------------------------------------------------------------------ deploy controller

def test_the_controller_gets_the_rollout_and_gate_values_given() -> None:
    rendered = render("canary-rollout")
    env = rendered.container_env(_container(rendered, "deploy-controller"))
    assert {k: v for k, v in env.items() if k.startswith("RLHF_ROLLOUT__")} == {
        "RLHF_ROLLOUT__STAGED": "true", "RLHF_ROLLOUT__MAX_UNAVAILABLE": "25%",
        "RLHF_ROLLOUT__CANARY_REPLICAS": "1", "RLHF_ROLLOUT__STALE_AFTER_S": "10",
        "RLHF_ROLLOUT__SWAP_TIMEOUT_S": "120", "RLHF_ROLLOUT__WATCH_S": "1800",
        "RLHF_ROLLOUT__POLICY_FILE": "/etc/rlhf/rollout/policy.yaml"}
    assert {k: env[k] for k in (
        "RLHF_GATES__HOLDOUT_SHARE", "RLHF_GATES__SAMPLES_PER_PROMPT",
        "RLHF_GATES__TRAFFIC_SCAN", "RLHF_GATES__CONFIDENCE", "RLHF_GATES__BOOTSTRAP_RESAMPLES",
        "RLHF_GATES__JUDGE_MODEL", "RLHF_GATES__MAX_NEW_TOKENS", "RLHF_GATES__EVAL_PROMPT_FILE",
        "RLHF_GATES__HUMAN_EVAL__REQUIRED", "RLHF_GATES__HUMAN_EVAL__MIN_ITEMS",
        "RLHF_GATES__HUMAN_EVAL__MIN_LOWER_BOUND", "RLHF_GATES__HUMAN_EVAL__CONFIDENCE")} == {
        "RLHF_GATES__HOLDOUT_SHARE": "0.2", "RLHF_GATES__SAMPLES_PER_PROMPT": "8",
        "RLHF_GATES__TRAFFIC_SCAN": "2000", "RLHF_GATES__CONFIDENCE": "0.95",
        "RLHF_GATES__BOOTSTRAP_RESAMPLES": "500", "RLHF_GATES__JUDGE_MODEL": "previous",
        "RLHF_GATES__MAX_NEW_TOKENS": "64",
        "RLHF_GATES__EVAL_PROMPT_FILE": "/etc/extra/eval-prompts.txt",
        "RLHF_GATES__HUMAN_EVAL__REQUIRED": "true", "RLHF_GATES__HUMAN_EVAL__MIN_ITEMS": "50",
        "RLHF_GATES__HUMAN_EVAL__MIN_LOWER_BOUND": "0.55",
        "RLHF_GATES__HUMAN_EVAL__CONFIDENCE": "0.9"}


def test_the_policy_file_is_the_policy_given() -> None:
    rendered = render("canary-rollout")
    container = _container(rendered, "deploy-controller")
    path = rendered.container_env(container)["RLHF_ROLLOUT__POLICY_FILE"]
    mount = next(m for m in container["volumeMounts"] if path.startswith(m["mountPath"] + "/"))
    assert mount["readOnly"]
    policy = rendered.mounted_file(container, path)
    # latency_s was set to null: Helm drops it, so the file leaves the signal out.
    assert policy == {**CANARY_POLICY, "signals": {
        k: v for k, v in CANARY_POLICY["signals"].items() if k != "latency_s"}}
    assert set(OnlinePolicy.model_validate(policy).signals) == {"error_rate", "rating", "length"}


def test_a_policy_change_restarts_the_controller_only() -> None:
    def checksums(values: dict[str, Any]) -> dict[str, str]:
        rendered = render_values(values)
        return {c: _pod(rendered, c)["metadata"]["annotations"]["checksum/config"]
                for c in ("serving", "ingester", "deploy-controller")}

    before = checksums({})
    after = checksums({"deployController": {"rollout": {"policy": {"window_s": 60}}}})
    assert [c for c in before if before[c] != after[c]] == ["deploy-controller"]


def test_the_defaults_are_the_settings_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    """values.yaml repeats deploy/settings.py, deploy/online.py and serving/settings.py."""
    rendered = render("default")
    container = _container(rendered, "deploy-controller")
    controller = load_settings(rendered, "deploy-controller", container, monkeypatch)
    assert controller.gates == GateSettings()
    assert controller.rollout == RolloutSettings(policy_file=controller.rollout.policy_file)
    policy = rendered.mounted_file(container, controller.rollout.policy_file)
    assert OnlinePolicy.model_validate(policy) == OnlinePolicy()
    serving = load_settings(rendered, "serving", _container(rendered, "serving"), monkeypatch)
    assert serving.replica.heartbeat_interval_s == ReplicaSettings().heartbeat_interval_s


def test_every_gate_and_rollout_setting_has_a_value() -> None:
    """A field added to the settings fails here until the chart has a value for it."""
    v = yaml.safe_load((CHART / "values.yaml").read_text())["deployController"]

    def fields(values: dict[str, Any]) -> set[str]:
        return {re.sub(r"([A-Z])", r"_\1", k).lower() for k in values}

    # device follows deployController.gpu.enabled; policy_file is the rendered policy.
    assert fields(v["gates"]) == set(GateSettings.model_fields) - {"device"}
    assert fields(v["gates"]["humanEval"]) == set(HumanEvalSettings.model_fields)
    assert fields(v["rollout"]) == set(RolloutSettings.model_fields) - {"policy_file"} | {
        "policy"}
    assert set(v["rollout"]["policy"]) == set(OnlinePolicy.model_fields)


@pytest.mark.parametrize("value", [0, "0", -1, 1.5, "two", "25 %", "0%", "150%", ""])
def test_a_bad_max_unavailable_is_refused(value: Any) -> None:
    message = render_error({"deployController": {"rollout": {"maxUnavailable": value}}})
    assert "at '/deployController/rollout/maxUnavailable': 'anyOf' failed" in message


@pytest.mark.parametrize(("value", "fleet", "batch"), [
    (1, 4, 1), (2, 4, 2), ("3", 4, 3),
    ("25%", 8, 2),   # 8 × 25 % = 2
    ("10%", 4, 1),   # 4 × 10 % = 0.4, rounded down to 0, then at least 1
    ("100%", 4, 4)])
def test_an_accepted_max_unavailable_is_read_by_the_controller(
        value: Any, fleet: int, batch: int, monkeypatch: pytest.MonkeyPatch) -> None:
    rendered = render_values({"deployController": {"rollout": {"maxUnavailable": value}}})
    settings = load_settings(rendered, "deploy-controller",
                             _container(rendered, "deploy-controller"), monkeypatch)
    assert max_unavailable(settings.rollout.max_unavailable, fleet) == batch


# --------------------------------------------------------------------- network policy

def _matches(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    """A label selector (matchLabels, matchExpressions with In) against labels."""
    return (all(labels.get(k) == v for k, v in selector.get("matchLabels", {}).items())
            and all(e["operator"] == "In" and labels.get(e["key"]) in e["values"]
                    for e in selector.get("matchExpressions", [])))


def _admits(policy: dict[str, Any], labels: dict[str, str], port: str) -> bool:
    """Whether a pod with ``labels`` in the release namespace may reach ``port`` of the
    pods the policy selects (peers: podSelector and namespaceSelector)."""
    namespace = {"kubernetes.io/metadata.name": NAMESPACE}
    for rule in policy["spec"].get("ingress", []):
        if "ports" in rule and port not in [p["port"] for p in rule["ports"]]:
            continue
        if "from" not in rule:
            return True
        for peer in rule["from"]:
            if "ipBlock" in peer:
                continue
            if (_matches(peer.get("podSelector", {}), labels)
                    and _matches(peer.get("namespaceSelector", {}) if "namespaceSelector" in peer
                                 else {"matchLabels": namespace}, namespace)):
                return True
    return False


def test_the_controller_may_scrape_every_replica(rendered: Rendered) -> None:
    """The online evaluation reads each replica's /metrics at its heartbeat URL."""
    if not rendered.values["networkPolicy"]["enabled"]:
        return
    [policy] = [p for p in rendered.by_kind["NetworkPolicy"]
                if _matches(p["spec"]["podSelector"], _pod(rendered, "serving")["metadata"][
                    "labels"])]
    controller = _pod(rendered, "deploy-controller")["metadata"]["labels"]
    assert _admits(policy, controller, "http")
    if rendered.values["networkPolicy"]["servingFrom"]:
        # Restricted serving admits the controller on HTTP only, and no other rlhf pod.
        assert not _admits(policy, controller, "grpc")
        assert not _admits(policy, _pod(rendered, "ingester")["metadata"]["labels"], "http")


def test_heartbeats_and_swaps_travel_over_unrestricted_egress(rendered: Rendered) -> None:
    """Replicas reach the controller only through Kafka (heartbeats, swap reports), and the
    controller the replicas' pod IPs: no policy may restrict egress."""
    for policy in rendered.by_kind.get("NetworkPolicy", []):
        assert policy["spec"]["policyTypes"] == ["Ingress"], policy["metadata"]["name"]


# ------------------------------------------------------- readiness and disruption budget

def _count(value: int | str, replicas: int) -> int:
    """A Kubernetes int-or-percent as a replica count (PDB maxUnavailable rounds up)."""
    if isinstance(value, str) and value.endswith("%"):
        return -(-replicas * int(value[:-1]) // 100)
    return int(value)


def test_one_replica_at_a_time_by_default() -> None:
    """Image and config rolls add a pod before removing one, a drain takes one replica, a
    staged promotion swaps one: no single cause leaves fewer than replicas − 1 serving."""
    rendered = render("default")
    v = rendered.values["serving"]
    strategy = rendered.one("Deployment", "serving")["spec"]["strategy"]["rollingUpdate"]
    pdb = rendered.one("PodDisruptionBudget", "serving")["spec"]
    env = rendered.container_env(_container(rendered, "deploy-controller"))
    assert strategy == {"maxUnavailable": 0, "maxSurge": 1}
    assert _count(pdb["maxUnavailable"], v["replicas"]) == 1
    assert max_unavailable(env["RLHF_ROLLOUT__MAX_UNAVAILABLE"], v["replicas"]) == 1
    assert v["replicas"] > 1, "a swap or drain of the only replica empties the Service"


def test_readiness_follows_the_threshold_given() -> None:
    for profile, threshold in (("default", 2), ("canary-rollout", 1)):
        probe = _container(render(profile), "serving")["readinessProbe"]
        assert (probe["httpGet"]["path"], probe["failureThreshold"]) == ("/ready", threshold)
