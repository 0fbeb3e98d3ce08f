"""The Grafana dashboard queries only metrics the processes export, by their own labels.

Exported names are read from the prometheus_client definitions in the code (AST, so no
engine is imported): a Counter ``foo`` exports ``foo_total``, a Histogram
``foo_bucket``/``foo_sum``/``foo_count``. Serving also exports vLLM's own ``vllm:*``
metrics (the engine's stat logger), read the same way from the installed vLLM's source;
tests/integration/serving/test_metrics_vllm.py checks on a live server that the ones the
dashboard queries are really served. A renamed metric or label fails here instead of
leaving a silently empty panel.
"""

from __future__ import annotations

import ast
import importlib.util
import json
import re
from pathlib import Path
from typing import Any

import pytest
from helm_chart import CHART, render

pytestmark = pytest.mark.helm

REPO = CHART.parents[1]
DASHBOARD = CHART / "dashboards" / "rlhf.json"
METRICS_DOC = REPO / "docs" / "metrics.md"
METRIC_SOURCES = ["serving/metrics.py", "feedback/ingest/metrics.py", "core/producer.py",
                  "training/metrics.py", *sorted(p.relative_to(REPO).as_posix()
                                                 for p in (REPO / "deploy").glob("*.py"))]
KUBE_STATE_METRICS = {"kube_job_status_succeeded", "kube_job_status_failed",
                      "kube_job_status_active"}
"""Training cycles are Jobs of a CronJob: their runs come from kube-state-metrics."""

VLLM_METRIC_SOURCES = ["v1/metrics/loggers.py"]
"""Where vLLM's Prometheus stat logger defines its metrics (``self._gauge_cls(name=…)``)."""
VLLM_FACTORIES = {"_gauge_cls": "Gauge", "_counter_cls": "Counter",
                  "_histogram_cls": "Histogram"}
TARGET_LABELS = {"namespace", "pod", "instance", "job", "le"}
"""Labels Prometheus adds to every scraped series (``le``: a histogram's buckets)."""

SUFFIXES = {"Counter": ["_total"], "Gauge": [""], "Histogram": ["_bucket", "_sum", "_count"],
            "Summary": ["_sum", "_count", ""]}
PROMQL_WORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "and", "or",
                "unless", "offset", "bool", "le", "inf", "nan"}


def _ppo_step_keys() -> set[str]:
    """Keys of a PPO step record (rollout_stats' dict and the record's own literals):
    training.metrics.prometheus_sink exports each as the gauge rlhf_ppo_<key>."""
    tree = ast.parse((REPO / "training/recipes/ppo.py").read_text())
    keys: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef) and node.name == "rollout_stats":
            for ret in ast.walk(node):
                if isinstance(ret, ast.Return) and isinstance(ret.value, ast.Dict):
                    keys |= {k.value for k in ret.value.keys if isinstance(k, ast.Constant)}
        if (isinstance(node, ast.Assign) and isinstance(node.value, ast.Dict)
                and any(isinstance(t, ast.Name) and t.id == "record" for t in node.targets)):
            keys |= {k.value for k in node.value.keys if isinstance(k, ast.Constant)}
    return keys


def exported_metrics() -> set[str]:
    """Every sample name the code's prometheus_client metrics expose."""
    names: set[str] = set()
    for source in METRIC_SOURCES:
        for node in ast.walk(ast.parse((REPO / source).read_text())):
            if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
                    and node.func.id in SUFFIXES and node.args):
                continue
            first = node.args[0]
            if isinstance(first, ast.Constant) and isinstance(first.value, str):
                bases = [first.value.removesuffix("_total")]
            elif isinstance(first, ast.JoinedStr) and source == "training/metrics.py":
                bases = [f"rlhf_ppo_{key}" for key in _ppo_step_keys()]  # rlhf_{recipe}_{name}
            else:
                raise AssertionError(f"{source}: cannot read the name of {ast.unparse(node)}")
            names |= {base + suffix for base in bases for suffix in SUFFIXES[node.func.id]}
    return names


def _samples(kind: str, name: str) -> set[str]:
    base = name.removesuffix("_total") if kind == "Counter" else name
    return {base + suffix for suffix in SUFFIXES[kind]}


def vllm_metrics() -> set[str]:
    """Every sample name vLLM's Prometheus stat logger can export (installed version)."""
    spec = importlib.util.find_spec("vllm")  # finds the package without importing it
    assert spec is not None and spec.submodule_search_locations, "vLLM is not installed"
    root = Path(list(spec.submodule_search_locations)[0])
    names: set[str] = set()
    for source in VLLM_METRIC_SOURCES:
        for node in ast.walk(ast.parse((root / source).read_text())):
            if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                    and node.func.attr in VLLM_FACTORIES):
                continue
            [name] = [k.value for k in node.keywords if k.arg == "name"]
            if isinstance(name, ast.Constant):  # not the vllm:<config>_info gauges
                names |= _samples(VLLM_FACTORIES[node.func.attr], name.value)
    return names


def exported_labels() -> dict[str, set[str]]:
    """Sample name → label names, for our metrics whose labels are a literal list."""
    labels: dict[str, set[str]] = {}
    for source in METRIC_SOURCES:
        for node in ast.walk(ast.parse((REPO / source).read_text())):
            if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
                    and node.func.id in SUFFIXES and node.args
                    and isinstance(node.args[0], ast.Constant)):
                continue
            given = node.args[2] if len(node.args) > 2 else next(
                (k.value for k in node.keywords if k.arg == "labelnames"), ast.List([]))
            if isinstance(given, ast.List):
                names = {e.value for e in given.elts if isinstance(e, ast.Constant)}
                for sample in _samples(node.func.id, node.args[0].value):
                    labels[sample] = names
    return labels


def query_labels(expr: str) -> set[str]:
    """Label names a PromQL expression selects on or groups by."""
    expr = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    found = {m for sel in re.findall(r"\{([^}]*)\}", expr)
             for m in re.findall(r"([a-zA-Z_]\w*)\s*(?:=~|!~|!=|=)", sel)}
    for group in re.findall(r"\b(?:by|without)\s*\(([^)]*)\)", expr):
        found |= {g.strip() for g in group.split(",") if g.strip()}
    return found


def query_metrics(expr: str) -> set[str]:
    """Metric names in a PromQL expression: identifiers that are not functions, keywords,
    label names (inside {} or by/without ()) or numbers."""
    expr = re.sub(r'"(?:[^"\\]|\\.)*"', "", expr)
    expr = re.sub(r"\{[^}]*\}", "", expr)
    expr = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", expr)
    expr = re.sub(r"\[[^\]]*\]", "", expr)
    found = set()
    for m in re.finditer(r"(?<![\w.])([a-zA-Z_:][\w:]*)(\s*\()?", expr):
        name, call = m.group(1), m.group(2)
        if call or name.lower() in PROMQL_WORDS:
            continue
        found.add(name)
    return found


def _panels(node: dict[str, Any]) -> list[dict[str, Any]]:
    out = []
    for panel in node.get("panels", []):
        out += [panel, *_panels(panel)]
    return out


def _dashboard() -> dict[str, Any]:
    return json.loads(DASHBOARD.read_text())


def test_query_parser_finds_names_and_skips_functions_and_labels() -> None:
    expr = ('histogram_quantile(0.95, sum by (le, endpoint) (rate('
            'rlhf:e2e_request_latency_seconds_bucket{namespace="$namespace",x=~"a b"}[5m])))'
            ' / clamp_min(sum(rate(rlhf:requests_total[5m])), 1e-9)')
    assert query_metrics(expr) == {"rlhf:e2e_request_latency_seconds_bucket",
                                   "rlhf:requests_total"}


def test_query_labels_are_the_selected_and_grouped_ones() -> None:
    expr = ('histogram_quantile(0.95, sum by (le, replica) (rate(rlhf:rollout_replica_swap_'
            'seconds_bucket{namespace="$namespace",outcome="a=b"}[1h]))) or '
            'max by (version) (rlhf:online_signal{signal=~".+_n"})')
    assert query_labels(expr) == {"le", "replica", "namespace", "outcome", "version",
                                  "signal"}


def test_exported_metrics_cover_every_kind() -> None:
    names = exported_metrics()
    assert {"rlhf:requests_total", "rlhf:time_to_first_token_seconds_bucket",
            "rlhf:num_requests_waiting", "rlhf:events_dropped_total", "rlhf:ingest_lag",
            "rlhf_ppo_reward_mean", "rlhf_ppo_kl_to_ref", "rlhf:rollout_state",
            "rlhf:ingest_accepted_total"} <= names
    assert "rlhf:requests" not in names  # a Counter is exported with _total
    vllm = vllm_metrics()
    assert {"vllm:e2e_request_latency_seconds_bucket", "vllm:request_queue_time_seconds_sum",
            "vllm:prompt_tokens_total", "vllm:num_requests_waiting",
            "vllm:iteration_tokens_total_bucket"} <= vllm  # a histogram keeps its _total
    assert exported_labels()["rlhf:ingest_accepted_total"] == {"kind", "source"}


def test_every_queried_metric_is_exported() -> None:
    known = exported_metrics() | vllm_metrics() | KUBE_STATE_METRICS
    queried: dict[str, set[str]] = {}
    for panel in _panels(_dashboard()):
        for target in panel.get("targets", []):
            for name in query_metrics(target["expr"]):
                queried.setdefault(name, set()).add(panel["title"])
    for var in _dashboard()["templating"]["list"]:
        if var["type"] == "query":
            queried.setdefault(re.search(r"label_values\(([\w:]+)", var["definition"])
                               .group(1), set()).add(var["name"])
    unknown = {name: titles for name, titles in queried.items() if name not in known}
    assert unknown == {}
    assert len(queried) >= 20


def test_every_queried_label_is_one_of_the_metrics_own() -> None:
    """Where all of a query's metrics are ours, it selects and groups only by their
    labels (or the ones Prometheus adds), so `by (kind)` on a metric without one fails."""
    labels = exported_labels()
    checked = 0
    for panel in _panels(_dashboard()):
        for target in panel.get("targets", []):
            metrics = query_metrics(target["expr"])
            if not metrics or not metrics <= labels.keys():
                continue
            own = set().union(*(labels[m] for m in metrics)) | TARGET_LABELS
            assert query_labels(target["expr"]) <= own, (panel["title"], target["expr"])
            checked += 1
    assert checked >= 30


def test_every_exported_and_every_charted_vllm_metric_is_documented() -> None:
    doc = METRICS_DOC.read_text()
    ours = {re.sub(r"_(total|bucket|sum|count)$", "", n) for n in exported_labels()}
    charted = {re.sub(r"_(total|bucket|sum|count)$", "", n)
               for p in _panels(_dashboard()) for t in p.get("targets", [])
               for n in query_metrics(t["expr"]) if n.startswith("vllm:")}
    assert len(ours) >= 30 and charted
    assert {n for n in ours | charted if f"`{n}`" not in doc} == set()


def test_the_dashboard_covers_serving_feedback_training_and_deploy() -> None:
    dashboard = _dashboard()
    rows = [p["title"] for p in dashboard["panels"] if p["type"] == "row"]
    assert rows == ["Serving", "Feedback", "Training", "Deploy"]
    exprs = " ".join(t["expr"] for p in _panels(dashboard) for t in p.get("targets", []))
    for needed in ["rlhf:requests_total", "rlhf:time_to_first_token_seconds_bucket",
                   "rlhf:inter_token_latency_seconds_bucket", "rlhf:num_requests_waiting",
                   "rlhf:events_published_total", "rlhf:events_buffered",
                   "rlhf:events_dropped_total", "rlhf:ingest_persisted_total",
                   "rlhf:ingest_dead_lettered_total", "rlhf:ingest_lag",
                   "kube_job_status_succeeded", "rlhf_ppo_reward_mean", "rlhf_ppo_kl_to_ref",
                   "rlhf:policy_swaps_total", "rlhf:policy_info",
                   "vllm:request_queue_time_seconds_bucket",
                   "vllm:request_prompt_tokens_bucket", "vllm:request_generation_tokens_bucket",
                   "vllm:e2e_request_latency_seconds_bucket",
                   "sum by (kind) (rate(rlhf:ingest_accepted_total",
                   "sum by (source) (rate(rlhf:ingest_accepted_total",
                   "rlhf:rollout_state", "rlhf:rollout_replica_swap_seconds_bucket",
                   "rlhf:rollout_decisions_total", "rlhf:rollout_outcomes_total",
                   "rlhf:online_signal"]:
        assert needed in exprs, needed
    ids = [p["id"] for p in _panels(dashboard)]
    assert len(ids) == len(set(ids))
    for panel in _panels(dashboard):
        if panel["type"] != "row":
            assert panel["datasource"]["uid"] == "${datasource}"


def test_the_dashboard_configmap_is_off_by_default_and_labelled_for_the_sidecar() -> None:
    assert not [c for c in render("default").by_kind["ConfigMap"]
                if c["metadata"]["labels"].get("app.kubernetes.io/component") == "dashboard"]
    rendered = render("ingress-and-autoscaling")
    cm = rendered.one("ConfigMap", "dashboard")
    assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert cm["metadata"]["annotations"] == {"grafana_folder": "RLHF"}
    assert json.loads(cm["data"]["rlhf.json"]) == _dashboard()


def test_training_metrics_are_scraped_by_a_pod_monitor_on_their_port() -> None:
    rendered = render("ingress-and-autoscaling")
    [monitor] = rendered.by_kind["PodMonitor"]
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    pod = rendered.one("CronJob", "training")["spec"]["jobTemplate"]["spec"]["template"]
    assert all(pod["metadata"]["labels"].get(k) == v
               for k, v in monitor["spec"]["selector"]["matchLabels"].items())
    container = pod["spec"]["containers"][0]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert [e["port"] for e in monitor["spec"]["podMetricsEndpoints"]] == ["metrics"]
    assert ports["metrics"] == int(rendered.container_env(container)["RLHF_TRAIN__METRICS_PORT"])
    policy = rendered.get("NetworkPolicy", pod["metadata"]["labels"][
        "app.kubernetes.io/instance"] + "-training")
    assert any(p["port"] == "metrics" for rule in policy["spec"]["ingress"]
               for p in rule.get("ports", []))


def test_controller_metrics_are_scraped_on_its_admin_port_past_its_network_policy() -> None:
    """The deploy row's controller panels (rlhf:rollout_*) need a ServiceMonitor on the
    controller's Service, at the port its /metrics is served on (RLHF_DEPLOY__PORT, the admin
    API's), and a restricted admin port must admit the metricsFrom peers as well."""
    assert not [m for m in render("default").by_kind.get("ServiceMonitor", [])
                if m["metadata"]["labels"]["app.kubernetes.io/component"] ==
                "deploy-controller"]
    rendered = render("ingress-and-autoscaling")
    monitor = rendered.one("ServiceMonitor", "deploy-controller")
    selector = monitor["spec"]["selector"]["matchLabels"]
    [service] = [s for s in rendered.by_kind["Service"]
                 if all(s["metadata"]["labels"].get(k) == v for k, v in selector.items())]
    assert service["metadata"]["labels"]["app.kubernetes.io/component"] == "deploy-controller"
    [endpoint] = monitor["spec"]["endpoints"]
    assert (endpoint["path"], endpoint["interval"]) == ("/metrics", "15s")
    [port] = [p for p in service["spec"]["ports"] if p["name"] == endpoint["port"]]
    pod = rendered.one("Deployment", "deploy-controller")["spec"]["template"]
    container = pod["spec"]["containers"][0]
    target = next(p for p in container["ports"] if p["name"] == port["targetPort"])
    assert target["containerPort"] == int(rendered.container_env(container)["RLHF_DEPLOY__PORT"])
    policy = rendered.get("NetworkPolicy", pod["metadata"]["labels"][
        "app.kubernetes.io/instance"] + "-deploy-controller")
    np = rendered.values["networkPolicy"]
    assert np["deployControllerFrom"] and np["metricsFrom"]  # both restricted, and differ
    assert np["deployControllerFrom"] != np["metricsFrom"]
    assert [rule.get("from") for rule in policy["spec"]["ingress"]
            if [p["port"] for p in rule["ports"]] == [target["name"]]] == [
        np["deployControllerFrom"], np["metricsFrom"]]


def test_serving_metrics_are_scraped_past_a_restricted_serving_policy() -> None:
    """Serving's /metrics is on its HTTP port: with servingFrom restricted and the
    ServiceMonitor on, the metricsFrom peers are admitted to that port as well."""
    rendered = render("ingress-and-autoscaling")
    np = rendered.values["networkPolicy"]
    assert rendered.values["serving"]["serviceMonitor"]["enabled"]
    assert np["servingFrom"] and np["metricsFrom"] and np["servingFrom"] != np["metricsFrom"]
    http_rules = [rule.get("from") for rule in _serving_policy(rendered)["spec"]["ingress"]
                  if [p["port"] for p in rule["ports"]] == ["http"]]
    assert np["metricsFrom"] in http_rules


def _serving_policy(rendered) -> dict:
    return next(p for p in rendered.by_kind["NetworkPolicy"]
                if p["metadata"]["labels"]["app.kubernetes.io/component"] == "serving")


def test_dashboard_is_in_the_chart_package() -> None:
    ignored = (CHART / ".helmignore").read_text() if (CHART / ".helmignore").exists() else ""
    assert "dashboards" not in ignored
    assert Path(DASHBOARD).is_file()
