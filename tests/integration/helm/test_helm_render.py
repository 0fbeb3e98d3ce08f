"""Lint and render every profile with the real Helm engine; validate every manifest."""

from __future__ import annotations

import kubernetes_validate
import pytest
from helm_chart import CHART, CRD_KINDS, NAMESPACE, PROFILES, Rendered, helm

pytestmark = pytest.mark.helm

# The chart's kubeVersion floor and the newest schemas kubernetes-validate ships.
KUBE_VERSIONS = ["1.30.0", kubernetes_validate.latest_version()]


@pytest.mark.parametrize("profile", sorted(PROFILES))
def test_lint_is_clean(profile: str) -> None:
    report = helm.lint(CHART, PROFILES[profile], strict=True, namespace=NAMESPACE)
    problems = [m for m in report["messages"] if m["severity"] >= 2
                and m["error"] != "icon is recommended"]
    assert report["errors"] == [] and problems == [], report


def test_chart_is_v2_application() -> None:
    with helm.Chart.load(CHART) as chart:
        assert chart.metadata["apiVersion"] == "v2"
        assert chart.metadata["type"] == "application"
        assert chart.schema is not None, "values.schema.json is missing"
        # No subcharts: installs work without chart repositories.
        assert chart.dependencies == []


@pytest.mark.parametrize("kube_version", KUBE_VERSIONS)
def test_every_manifest_validates(rendered: Rendered, kube_version: str) -> None:
    checked = 0
    for obj in rendered.objects:
        if obj["kind"] in CRD_KINDS:
            continue  # operator CRDs (Prometheus Operator, Strimzi): no schema offline
        kubernetes_validate.validate(obj, kube_version, strict=True)
        checked += 1
    assert checked >= 8


def test_default_renders_every_part(rendered: Rendered) -> None:
    kinds = {(o["kind"], o["metadata"]["labels"].get("app.kubernetes.io/component"))
             for o in rendered.objects}
    for part in [("Deployment", "serving"), ("Service", "serving"),
                 ("Deployment", "ingester"), ("Deployment", "deploy-controller"),
                 ("Service", "deploy-controller")]:
        assert part in kinds
    if rendered.values["training"]["enabled"]:
        assert ("CronJob", "training") in kinds
    if rendered.values["serving"]["podDisruptionBudget"]["enabled"]:
        assert ("PodDisruptionBudget", "serving") in kinds
    if rendered.values["kafka"]["strimzi"]["enabled"]:
        assert {"Kafka", "KafkaNodePool", "KafkaTopic"} <= set(rendered.by_kind)
    else:
        assert not {"Kafka", "KafkaNodePool", "KafkaTopic"} & set(rendered.by_kind)
    assert ("StatefulSet", "postgresql") in kinds if rendered.values["postgresql"]["enabled"] \
        else "StatefulSet" not in rendered.by_kind
    pvc = ("PersistentVolumeClaim", "registry") in kinds
    assert pvc == (not rendered.values["registry"]["existingClaim"])


def test_crd_resources_have_the_expected_shape() -> None:
    """What kubernetes-validate cannot check for Strimzi and ServiceMonitor objects."""
    from helm_chart import render

    default = render("default")
    kafka = default.by_kind["Kafka"][0]
    assert kafka["apiVersion"] == "kafka.strimzi.io/v1beta2"
    assert kafka["metadata"]["annotations"]["strimzi.io/kraft"] == "enabled"
    pool = default.by_kind["KafkaNodePool"][0]
    assert pool["metadata"]["labels"]["strimzi.io/cluster"] == kafka["metadata"]["name"]
    assert set(pool["spec"]["roles"]) == {"controller", "broker"}
    for topic in default.by_kind["KafkaTopic"]:
        assert topic["metadata"]["labels"]["strimzi.io/cluster"] == kafka["metadata"]["name"]
        assert topic["spec"]["replicas"] <= pool["spec"]["replicas"]

    monitored = render("ingress-and-autoscaling")
    monitors = monitored.by_kind["ServiceMonitor"]
    assert {m["metadata"]["labels"]["app.kubernetes.io/component"] for m in monitors} == {
        "serving", "ingester", "deploy-controller"}
    for monitor in monitors:
        assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
        if monitor["metadata"]["labels"]["app.kubernetes.io/component"] == "serving":
            assert monitor["metadata"]["labels"]["release"] == "prometheus"
        service = next(s for s in monitored.by_kind["Service"]
                       if all(s["metadata"]["labels"].get(k) == v for k, v in
                              monitor["spec"]["selector"]["matchLabels"].items()))
        ports = {p["name"] for p in service["spec"]["ports"]}
        assert {e["port"] for e in monitor["spec"]["endpoints"]} <= ports
        assert all(e["path"] == "/metrics" for e in monitor["spec"]["endpoints"])
