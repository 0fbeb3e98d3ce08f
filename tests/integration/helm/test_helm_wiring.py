"""Wiring: what the chart renders fits the processes it runs.

The valid variable names come from the settings classes themselves, so a renamed or
removed setting fails here instead of being silently ignored by a pod.
"""

from __future__ import annotations

import hashlib
import importlib
import os
import re
import types
import typing
from typing import Any

import pytest
from helm_chart import POD_FIELDS, PROCESSES, Rendered, render
from pydantic import BaseModel
from pydantic_settings import BaseSettings

from deploy.online import OnlinePolicy

pytestmark = pytest.mark.helm


# ---------------------------------------------------------------- settings → env names

def _nested_model(annotation: Any) -> type[BaseModel] | None:
    """The BaseModel a field holds (also inside `X | None`), or None for a leaf."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        models = [a for a in typing.get_args(annotation) if _nested_model(a)]
        return models[0] if len(models) == 1 else None
    return None


def env_names(model: type[BaseModel], prefix: str) -> set[str]:
    """Every variable a settings tree reads: nested models recurse with `__`; dicts,
    lists and scalars are one variable (dicts and lists as JSON)."""
    names: set[str] = set()
    own = getattr(model, "env_name", None)  # a process: its own settings under its section
    for name, info in model.model_fields.items():
        key = own(name) if own else f"{prefix}{(info.alias or name).upper()}"
        nested = _nested_model(info.annotation)
        names |= env_names(nested, key + "__") if nested else {key}
    return names


def settings_class(component: str) -> type[BaseSettings]:
    module, cls, _ = PROCESSES[component]
    return getattr(importlib.import_module(module), cls)


def process_containers(rendered: Rendered) -> list[tuple[str, dict[str, Any]]]:
    """(component, container) of every rlhf process the profile runs."""
    out = []
    for _, template in rendered.workloads():
        component = template["metadata"]["labels"]["app.kubernetes.io/component"]
        if component in PROCESSES:
            out += [(component, c) for c in template["spec"]["containers"]]
    return out


def test_every_process_is_rendered(rendered: Rendered) -> None:
    components = {c for c, _ in process_containers(rendered)}
    expected = set(PROCESSES) - ({"training"} if not rendered.values["training"]["enabled"]
                                 else set())
    assert components == expected


def test_containers_run_their_subcommand(rendered: Rendered) -> None:
    for component, container in process_containers(rendered):
        words = " ".join(container.get("command", []) + container.get("args", [])).split()
        subcommand = PROCESSES[component][2]
        at = [i for i, w in enumerate(words) if w == subcommand[0]]
        assert at and words[at[0]:at[0] + len(subcommand)] == subcommand, (component, words)


def test_every_env_var_is_a_setting_of_its_process(rendered: Rendered) -> None:
    prefix = settings_class("serving").model_config["env_prefix"]
    delimiter = settings_class("serving").model_config["env_nested_delimiter"]
    assert (prefix, delimiter) == ("RLHF_", "__")
    for component, container in process_containers(rendered):
        known = env_names(settings_class(component), prefix)
        env = rendered.container_env(container)
        unknown = {name for name in env if name.startswith(prefix)} - known
        assert not unknown, f"{component} gets variables its settings do not read: {unknown}"


def test_nothing_is_configured_twice(rendered: Rendered) -> None:
    """A variable comes from exactly one place: one ConfigMap or one env entry."""
    for component, container in process_containers(rendered):
        sources: list[str] = []
        for source in container.get("envFrom", []):
            if "configMapRef" not in source:
                continue  # a user's Secret: its keys are unknown offline
            cm = rendered.get("ConfigMap", source["configMapRef"]["name"])
            sources += list((cm or {}).get("data") or {})
        sources += [e["name"] for e in container.get("env", [])]
        twice = {n for n in sources if sources.count(n) > 1}
        assert not twice, f"{component}: {twice} set more than once"


def load_settings(rendered: Rendered, component: str, container: dict[str, Any],
                  monkeypatch: pytest.MonkeyPatch) -> Any:
    """The settings tree the process builds from exactly the env the chart gives it."""
    for name in [n for n in os.environ if n.startswith("RLHF_")]:
        monkeypatch.delenv(name)
    for name, value in rendered.container_env(container).items():
        if value.startswith("<"):  # an existing Secret's value: unknown offline
            value = '{"sk-placeholder": "user"}' if name == "RLHF_AUTH__KEYS" else "x"
        monkeypatch.setenv(name, value)
    return settings_class(component)()


def test_rendered_env_loads_into_each_settings_tree(
        rendered: Rendered, monkeypatch: pytest.MonkeyPatch) -> None:
    """The processes would start on this env: their own validators accept it."""
    for component, container in process_containers(rendered):
        settings = load_settings(rendered, component, container, monkeypatch)
        check_settings_match_objects(rendered, component, container, settings)


def check_settings_match_objects(rendered: Rendered, component: str,
                                 container: dict[str, Any], settings: Any) -> None:
    """Ports, mounts, topics and addresses the settings hold are the ones the objects use."""
    v = rendered.values
    ports = {p["name"]: p["containerPort"] for p in container.get("ports", [])}
    mounts = {m["mountPath"] for m in container.get("volumeMounts", [])}
    if hasattr(settings, "registry"):
        assert str(settings.registry.root) in mounts
    topics = settings.kafka.topics
    assert [topics.completions, topics.feedback, topics.dlq, topics.policy] == [
        v["kafka"]["topics"][k] for k in ("completions", "feedback", "dlq", "policy")]
    if v["kafka"]["strimzi"]["enabled"]:
        kafka = rendered.by_kind["Kafka"][0]["metadata"]["name"]
        assert settings.kafka.bootstrap_servers.startswith(f"{kafka}-kafka-bootstrap.")
        assert {t["spec"]["topicName"] for t in rendered.by_kind["KafkaTopic"]} == {
            topics.completions, topics.feedback, topics.dlq, topics.policy}
    else:
        assert settings.kafka.bootstrap_servers == v["kafka"]["external"]["bootstrapServers"]
        assert settings.kafka.security_protocol == v["kafka"]["external"]["securityProtocol"]
    if hasattr(settings, "database") and v["postgresql"]["enabled"]:
        pg = next(s["metadata"]["name"] for s in rendered.by_kind["Service"]
                  if s["metadata"]["labels"]["app.kubernetes.io/component"] == "postgresql"
                  and s["spec"].get("clusterIP") != "None")
        assert re.match(rf"postgresql\+psycopg2://rlhf:[^@]+@{pg}\.", settings.database.url)
    if component == "serving":
        assert ports["http"] == settings.http.port
        assert ("grpc" in ports) == settings.grpc.enabled
        if settings.grpc.enabled:
            assert ports["grpc"] == settings.grpc.port
        gpus = container["resources"].get("limits", {}).get("nvidia.com/gpu")
        want = settings.engine.tensor_parallel_size if v["serving"]["gpu"]["enabled"] else None
        assert gpus == want
        assert settings.follow_policy_events == v["serving"]["followPolicyEvents"]
        # The fleet sees each pod under its own name, at an address other pods can reach.
        assert settings.replica.id == POD_FIELDS["metadata.name"]
        assert settings.replica.url == f"http://{POD_FIELDS['status.podIP']}:{ports['http']}"
        assert settings.replica.heartbeat_interval_s == v["serving"]["replica"][
            "heartbeatIntervalS"]
    if component in ("serving", "deploy-controller") and v["auth"]["keys"]:
        # The pods get digests only; each given key (or digest) keeps its role.
        assert settings.auth.keys == {
            k if k.startswith("sha256:") else "sha256:" + hashlib.sha256(k.encode()).hexdigest():
            role for k, role in v["auth"]["keys"].items()}
    if component == "ingester":
        assert ports == {"metrics": settings.metrics_port}
    if component == "deploy-controller":
        check_deploy_controller_settings(rendered, container, settings)


def _snake(values: dict[str, Any]) -> dict[str, Any]:
    """A values section as the settings' field names and values: camelCase → snake_case,
    "" (unset) → None, nested sections recursed."""
    return {re.sub(r"([A-Z])", r"_\1", key).lower():
            _snake(value) if isinstance(value, dict) else (None if value == "" else value)
            for key, value in values.items()}


def check_deploy_controller_settings(rendered: Rendered, container: dict[str, Any],
                                     settings: Any) -> None:
    """Admin port, consumer group, gates, device and rollout are the values the chart was
    given; the rollout policy file is the values' policy, mounted where the setting says."""
    values = rendered.values["deployController"]
    assert {p["name"]: p["containerPort"] for p in container["ports"]} == {"http": settings.port}
    assert settings.host == "0.0.0.0"
    assert settings.auto_promote == values["autoPromote"]
    assert settings.group_id == values["groupId"]
    gates = settings.gates.model_dump(mode="json")
    assert {k: gates[k] for k in _snake(values["gates"])} == _snake(values["gates"])
    gpus = container["resources"].get("limits", {}).get(values["gpu"]["resourceName"])
    assert (gates["device"], gpus) == (("cuda", 1) if values["gpu"]["enabled"] else ("cpu", None))
    rollout = {**_snake(values["rollout"]), "max_unavailable": str(values["rollout"][
        "maxUnavailable"])}
    policy = rollout.pop("policy")
    assert settings.rollout.model_dump(exclude={"policy_file"}) == rollout
    assert OnlinePolicy.model_validate(policy) == OnlinePolicy.model_validate(
        rendered.mounted_file(container, settings.rollout.policy_file))
    registry = next(m for m in container["volumeMounts"]
                    if m["mountPath"] == str(settings.registry.root))
    assert not registry.get("readOnly"), "the controller writes the live pointer"


# ------------------------------------------------------------------- objects ↔ objects

def _selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


def _pods_selected(rendered: Rendered, selector: dict[str, str]) -> list[dict[str, Any]]:
    return [t for _, t in rendered.workloads() if _selects(selector, t["metadata"]["labels"])]


def test_every_service_selects_pods_with_its_target_ports(rendered: Rendered) -> None:
    for service in rendered.by_kind["Service"]:
        pods = _pods_selected(rendered, service["spec"]["selector"])
        assert pods, f"Service {service['metadata']['name']} selects no pods"
        for pod in pods:
            names = {p["name"] for c in pod["spec"]["containers"] for p in c.get("ports", [])}
            targets = {p["targetPort"] for p in service["spec"]["ports"]}
            assert targets <= names, (service["metadata"]["name"], targets, names)


def test_workload_selectors_match_their_own_pods(rendered: Rendered) -> None:
    for workload, template in rendered.workloads():
        if workload["kind"] in ("CronJob", "Job"):
            continue  # Jobs select their pods by controller uid
        assert _selects(workload["spec"]["selector"]["matchLabels"],
                        template["metadata"]["labels"])


def test_selector_objects_point_at_serving(rendered: Rendered) -> None:
    deployment = rendered.one("Deployment", "serving")
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    for pdb in rendered.by_kind.get("PodDisruptionBudget", []):
        assert _selects(pdb["spec"]["selector"]["matchLabels"], pod_labels)
    for hpa in rendered.by_kind.get("HorizontalPodAutoscaler", []):
        target = hpa["spec"]["scaleTargetRef"]
        assert (target["kind"], target["name"]) == ("Deployment", deployment["metadata"]["name"])
        assert "replicas" not in deployment["spec"], "the HPA owns the replica count"
        assert hpa["spec"]["metrics"]
    for ingress in rendered.by_kind.get("Ingress", []):
        for rule in ingress["spec"]["rules"]:
            for path in rule["http"]["paths"]:
                backend = path["backend"]["service"]
                service = rendered.get("Service", backend["name"])
                assert service is not None
                assert backend["port"]["name"] in {p["name"] for p in service["spec"]["ports"]}


def test_network_policies_select_pods_and_named_ports(rendered: Rendered) -> None:
    for policy in rendered.by_kind.get("NetworkPolicy", []):
        pods = _pods_selected(rendered, policy["spec"]["podSelector"]["matchLabels"])
        assert pods, policy["metadata"]["name"]
        names = {p["name"] for pod in pods for c in pod["spec"]["containers"]
                 for p in c.get("ports", [])}
        for rule in policy["spec"].get("ingress", []):
            assert {p["port"] for p in rule.get("ports", [])} <= names


def test_references_resolve(rendered: Rendered) -> None:
    """ConfigMaps, Secrets, claims and volumes a pod names exist (or are named in values)."""
    existing = rendered.user_named()
    for workload, template in rendered.workloads():
        spec = template["spec"]
        volumes = {vol["name"]: vol for vol in spec.get("volumes", [])}
        claims = {t["metadata"]["name"] for t in workload["spec"].get("volumeClaimTemplates", [])}
        for volume in volumes.values():
            if "persistentVolumeClaim" in volume:
                claim = volume["persistentVolumeClaim"]["claimName"]
                assert claim in existing or rendered.get("PersistentVolumeClaim", claim)
            if "configMap" in volume:
                name = volume["configMap"]["name"]
                assert name in existing or rendered.get("ConfigMap", name)
            if "secret" in volume:
                assert volume["secret"]["secretName"] in existing
        for container in spec["containers"] + spec.get("initContainers", []):
            for mount in container.get("volumeMounts", []):
                assert mount["name"] in volumes or mount["name"] in claims, mount
            for entry in container.get("env", []):
                ref = entry.get("valueFrom", {}).get("secretKeyRef")
                if ref and ref["name"] not in existing:
                    assert rendered.secret_value(ref["name"], ref["key"]) is not None, ref


def test_serving_and_controller_read_the_same_api_keys(rendered: Rendered) -> None:
    """One set of keys: an admin key that may swap a server's policy may also promote."""
    refs = {}
    for component in ("serving", "deploy-controller"):
        container = rendered.one("Deployment", component)["spec"]["template"]["spec"][
            "containers"][0]
        refs[component] = next((e["valueFrom"]["secretKeyRef"] for e in container.get("env", [])
                                if e["name"] == "RLHF_AUTH__KEYS"), None)
    # Keys are given, in an existing Secret, or generated: never none unless allowOpen.
    assert (refs["serving"] is None) == rendered.values["auth"]["allowOpen"]
    assert refs["deploy-controller"] == refs["serving"]


# -------------------------------------------------------------------------- serving pod

def test_serving_probes_hit_health_and_ready_on_the_http_port(rendered: Rendered) -> None:
    container = rendered.one("Deployment", "serving")["spec"]["template"]["spec"][
        "containers"][0]
    http_port = int(rendered.container_env(container)["RLHF_HTTP__PORT"])
    named = {p["name"]: p["containerPort"] for p in container["ports"]}
    paths = {}
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        get = container[probe]["httpGet"]
        assert named.get(get["port"], get["port"]) == http_port
        paths[probe] = get["path"]
    assert paths == {"startupProbe": "/health", "readinessProbe": "/ready",
                     "livenessProbe": "/health"}


def test_serving_drains_and_never_drops_below_desired(rendered: Rendered) -> None:
    deployment = rendered.one("Deployment", "serving")
    strategy = deployment["spec"]["strategy"]
    assert strategy["type"] == "RollingUpdate"
    assert strategy["rollingUpdate"]["maxUnavailable"] == 0
    pod = deployment["spec"]["template"]["spec"]
    shutdown = rendered.values["serving"]["shutdown"]
    pre_stop = pod["containers"][0]["lifecycle"]["preStop"]["sleep"]["seconds"]
    assert pre_stop == shutdown["preStopSleepSeconds"]
    assert pod["terminationGracePeriodSeconds"] > shutdown["longestRequestSeconds"] + pre_stop


def test_serving_gpu_placement(rendered: Rendered) -> None:
    v = rendered.values["serving"]
    pod = rendered.one("Deployment", "serving")["spec"]["template"]["spec"]
    resources = pod["containers"][0]["resources"]
    if v["gpu"]["enabled"]:
        tp = v["engine"]["tensorParallelSize"]
        assert resources["limits"]["nvidia.com/gpu"] == tp
        assert resources["requests"]["nvidia.com/gpu"] == tp
        assert any(t.get("key") == "nvidia.com/gpu" for t in pod["tolerations"])
    else:
        assert "nvidia.com/gpu" not in str(resources)
    assert pod.get("nodeSelector", {}) == v["nodeSelector"]
    shm = next(vol for vol in pod["volumes"] if vol["name"] == "dshm")
    assert shm["emptyDir"]["medium"] == "Memory"


# ------------------------------------------------------------------ deploy controller

def _controller(rendered: Rendered) -> tuple[dict[str, Any], dict[str, Any]]:
    """(pod template, container) of the deploy controller."""
    template = rendered.one("Deployment", "deploy-controller")["spec"]["template"]
    return template, template["spec"]["containers"][0]


def test_deploy_service_selects_the_controller_on_its_settings_port(rendered: Rendered) -> None:
    template, container = _controller(rendered)
    port = int(rendered.container_env(container)["RLHF_DEPLOY__PORT"])
    service = rendered.one("Service", "deploy-controller")
    assert _selects(service["spec"]["selector"], template["metadata"]["labels"])
    assert not [t for _, t in rendered.workloads() if t is not template
                and _selects(service["spec"]["selector"], t["metadata"]["labels"])]
    named = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert [(p["port"], named[p["targetPort"]]) for p in service["spec"]["ports"]] == [
        (port, port)]


def test_deploy_controller_probes_hit_health_on_its_port(rendered: Rendered) -> None:
    _, container = _controller(rendered)
    port = int(rendered.container_env(container)["RLHF_DEPLOY__PORT"])
    named = {p["name"]: p["containerPort"] for p in container["ports"]}
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        get = container[probe]["httpGet"]
        assert (get["path"], named.get(get["port"], get["port"])) == ("/health", port), probe


def test_deploy_controller_admits_admin_traffic_only_on_its_port(rendered: Rendered) -> None:
    if not rendered.values["networkPolicy"]["enabled"]:
        return
    template, container = _controller(rendered)
    policy = next(p for p in rendered.by_kind["NetworkPolicy"] if _selects(
        p["spec"]["podSelector"]["matchLabels"], template["metadata"]["labels"]))
    np, monitored = rendered.values["networkPolicy"], rendered.values["deployController"][
        "serviceMonitor"]["enabled"]
    rule, *scrape = policy["spec"]["ingress"]
    assert [p["port"] for p in rule["ports"]] == [container["ports"][0]["name"]]
    assert rule.get("from", []) == np["deployControllerFrom"]
    # Prometheus reaches /metrics on that port only when admin traffic is restricted and
    # the ServiceMonitor is on (test_helm_dashboard checks that rule)
    assert len(scrape) == int(bool(monitored and np["deployControllerFrom"] and
                                   np["metricsFrom"]))


def test_deploy_controller_is_one_pod_with_the_store_and_kafka(rendered: Rendered) -> None:
    deployment = rendered.one("Deployment", "deploy-controller")
    assert deployment["spec"]["replicas"] == 1
    assert deployment["spec"]["strategy"]["type"] == "Recreate"
    _, container = _controller(rendered)
    env = rendered.container_env(container)
    assert {"RLHF_DATABASE__URL", "RLHF_KAFKA__BOOTSTRAP_SERVERS",
            "RLHF_DEPLOY__GROUP_ID"} <= set(env)
    assert container["resources"]["limits"]["memory"] == rendered.values["deployController"][
        "resources"]["limits"]["memory"]


# ------------------------------------------------------------------------- training job

def test_training_cronjob_never_overlaps_and_launches_distributed() -> None:
    for profile in ("default", "cpu-only", "multi-gpu", "multi-node-accelerate"):
        rendered = render(profile)
        cron = rendered.one("CronJob", "training")
        assert cron["spec"]["concurrencyPolicy"] == "Forbid"
        job = cron["spec"]["jobTemplate"]["spec"]
        pod = job["template"]["spec"]
        container = pod["containers"][0]
        d = rendered.values["training"]["distributed"]
        gpu = rendered.values["training"]["gpu"]["enabled"]
        limit = container["resources"].get("limits", {}).get("nvidia.com/gpu")
        assert limit == (d["gpusPerNode"] if gpu else None)
        script = " ".join(container["command"] + container["args"])
        if d["nodes"] == 1 and (d["gpusPerNode"] == 1 or not gpu):
            assert container["command"] == ["rlhf"] and "completionMode" not in job
            continue
        if d["launcher"] == "torchrun":
            assert f"--nnodes={d['nodes']}" in script
            assert f"--nproc-per-node={d['gpusPerNode']}" in script
        else:
            assert f"--num_processes={d['nodes'] * d['gpusPerNode']}" in script
            assert "--machine_rank=\"${JOB_COMPLETION_INDEX}\"" in script
        if d["nodes"] > 1:
            assert job["completionMode"] == "Indexed"
            assert job["completions"] == job["parallelism"] == d["nodes"]
            headless = rendered.get("Service", pod["subdomain"])
            assert headless is not None and headless["spec"]["clusterIP"] == "None"
            assert f"-0.{pod['subdomain']}" in script
            assert str(d["rdzvPort"]) in script


def test_recipes_reach_the_config_dir() -> None:
    rendered = render("multi-gpu")
    container = rendered.one("CronJob", "training")["spec"]["jobTemplate"]["spec"][
        "template"]["spec"]["containers"][0]
    config_dir = rendered.container_env(container)["RLHF_TRAIN__CONFIG_DIR"]
    mount = next(m for m in container["volumeMounts"] if m["mountPath"] == config_dir)
    pod = rendered.one("CronJob", "training")["spec"]["jobTemplate"]["spec"]["template"]
    volume = next(v for v in pod["spec"]["volumes"] if v["name"] == mount["name"])
    recipes = rendered.get("ConfigMap", volume["configMap"]["name"])
    assert recipes["data"] == rendered.values["training"]["recipes"]


# ---------------------------------------------------------------------------- secrets

def test_credentials_live_in_secrets_only(rendered: Rendered) -> None:
    """Passwords, keys and database URLs never appear in a ConfigMap."""
    v = rendered.values
    secrets = [v["kafka"]["external"]["sasl"]["password"], v["externalDatabase"]["url"],
               *v["auth"]["keys"]]
    for cm in rendered.by_kind["ConfigMap"]:
        text = str(cm.get("data"))
        assert not [s for s in secrets if s and s in text], cm["metadata"]["name"]
        assert "DATABASE__URL" not in text and "PASSWORD" not in text


def test_database_password_is_stable_across_templates() -> None:
    rendered = render("default")
    secret = rendered.get("Secret", rendered.by_kind["Secret"][0]["metadata"]["name"])
    password = rendered.secret_value(secret["metadata"]["name"], "postgres-password")
    url = rendered.secret_value(secret["metadata"]["name"], "database-url")
    assert password and len(password) >= 16
    assert f":{password}@" in url
