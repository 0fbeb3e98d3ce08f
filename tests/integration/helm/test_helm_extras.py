"""Per-workload extension values, stricter schema checks, and the base-model copy Job."""

from __future__ import annotations

from typing import Any

import pytest
from helm_chart import EXTRAS, render, render_error

pytestmark = pytest.mark.helm

WORKLOADS = {"serving": ("Deployment", "serving"), "ingester": ("Deployment", "ingester"),
             "training": ("CronJob", "training"),
             "deployController": ("Deployment", "deploy-controller")}


def _pod(rendered: Any, key: str) -> dict[str, Any]:
    kind, component = WORKLOADS[key]
    obj = rendered.one(kind, component)
    spec = obj["spec"]["jobTemplate"]["spec"] if kind == "CronJob" else obj["spec"]
    return spec["template"]["spec"]


@pytest.mark.parametrize("key", sorted(WORKLOADS))
def test_every_extension_value_reaches_its_workload(key: str) -> None:
    rendered, extras = render("workload-extras"), EXTRAS[key]
    pod = _pod(rendered, key)
    container = pod["containers"][0]
    for field in ("priorityClassName", "runtimeClassName", "topologySpreadConstraints",
                  "initContainers"):
        assert pod[field] == extras[field], field
    assert container["env"][-len(extras["env"]):] == extras["env"]
    assert container["envFrom"][-len(extras["envFrom"]):] == extras["envFrom"]
    assert container["volumeMounts"][-2:] == extras["extraVolumeMounts"]
    assert pod["volumes"][-2:] == extras["extraVolumes"]
    # The chart's own wiring is still there next to the extras.
    assert any("configMapRef" in s for s in container["envFrom"])
    if key == "serving":
        assert container["args"] == ["serve", *extras["extraArgs"]]
    # Nothing leaks into the other workloads.
    for other in set(WORKLOADS) - {key}:
        assert not [v for v in _pod(rendered, other).get("volumes", [])
                    if v["name"] == "extra-config"
                    and v["configMap"]["name"] != f"{WORKLOADS[other][1]}-config"]


def test_defaults_add_nothing() -> None:
    rendered = render("default")
    for key in WORKLOADS:
        pod = _pod(rendered, key)
        assert not {"priorityClassName", "runtimeClassName", "topologySpreadConstraints",
                    "initContainers"} & set(pod)
    assert _pod(rendered, "serving")["containers"][0]["args"] == ["serve"]


@pytest.mark.parametrize(("values", "message"), [
    ({"serving": {"env": [{"name": "RLHF_HTTP__PORT", "value": "9000"}]}},
     "serving.env sets RLHF_HTTP__PORT, which the chart already sets"),
    ({"deployController": {"env": [{"name": "RLHF_AUTH__KEYS", "value": "{}"}]}},
     "deployController.env sets RLHF_AUTH__KEYS"),
    ({"ingester": {"env": [{"name": "RLHF_KAFKA__BOOTSTRAP_SERVERS", "value": "x:9092"}]}},
     "ingester.env sets RLHF_KAFKA__BOOTSTRAP_SERVERS"),
    ({"training": {"env": [{"value": "x"}]}}, "/training/env/0': missing property 'name'"),
    ({"serving": {"extraVolumeMounts": [{"name": "x", "mountPath": "relative"}]}},
     "/serving/extraVolumeMounts/0/mountPath'"),
    ({"ingester": {"initContainers": [{"name": "x"}]}},
     "/ingester/initContainers/0': missing property 'image'"),
    ({"serving": {"topologySpreadConstraints": [{"maxSkew": 1, "topologyKey": "zone",
                                                 "whenUnsatisfiable": "Sometimes"}]}},
     "/serving/topologySpreadConstraints/0/whenUnsatisfiable'"),
    ({"serving": {"priorityClassName": "High Priority"}}, "/serving/priorityClassName'"),
    ({"serving": {"extraArgs": [4096]}}, "/serving/extraArgs/0': got number, want string"),
    ({"training": {"podMonitor": {"enabled": True}}},
     "training.podMonitor.enabled needs training.metricsPort > 0"),
    ({"training": {"metricsPort": 9401, "distributed": {"gpusPerNode": 8}}},
     "training.metricsPort works for single-process training only"),
])
def test_bad_extension_values_are_refused_by_name(values: dict, message: str) -> None:
    assert message in render_error(values)


# ------------------------------------------------------------------ schema strictness

@pytest.mark.parametrize("schedule", ["every 6 hours", "0 */6 * *", "61 * * * *",
                                      "0 24 * * *", "0 0 32 * *", "@sometimes",
                                      "0 */6 * * * *", ""])
def test_a_malformed_cron_schedule_is_refused(schedule: str) -> None:
    assert "/training/schedule'" in render_error({"training": {"schedule": schedule}})


@pytest.mark.parametrize("schedule", ["0 */6 * * *", "@daily", "*/15 2-4 * * MON-FRI",
                                      "30 1 1,15 * ?", "0 0 * JAN,JUL 0"])
def test_valid_cron_schedules_render(schedule: str) -> None:
    from helm_chart import chart

    with chart() as c:
        out = c.render({"training": {"schedule": schedule}}, name="rlhf", namespace="ml")
    assert any(schedule in text for text in out.values())


@pytest.mark.parametrize(("values", "path"), [
    ({"serving": {"resources": {"limits": {"memory": "lots"}}}},
     "/serving/resources/limits/memory'"),
    ({"ingester": {"resources": {"requests": {"cpu": "two"}}}},
     "/ingester/resources/requests/cpu'"),
    ({"training": {"resources": {"requests": {"memory": "64 Gi"}}}},
     "/training/resources/requests/memory'"),
    ({"deployController": {"resources": {"limits": {"memory": -1}}}},
     "/deployController/resources/limits/memory'"),
    ({"postgresql": {"resources": {"requests": {"memory": "1GB"}}}},
     "/postgresql/resources/requests/memory'"),
    ({"kafka": {"strimzi": {"resources": {"limits": {"cpu": "1 core"}}}}},
     "/kafka/strimzi/resources/limits/cpu'"),
])
def test_malformed_resource_quantities_are_refused(values: dict, path: str) -> None:
    assert path in render_error(values)


def test_well_formed_quantities_render() -> None:
    from helm_chart import chart

    values = {"serving": {"resources": {"requests": {"cpu": "500m", "memory": "1.5Gi"},
                                        "limits": {"memory": 68719476736, "cpu": 2}}}}
    with chart() as c:
        c.render(values, name="rlhf", namespace="ml")


# ------------------------------------------------------------------ base model copy

def _copy_job(rendered: Any) -> tuple[dict[str, Any], dict[str, Any], dict[str, str]]:
    [job] = rendered.by_kind["Job"]
    pod = job["spec"]["template"]["spec"]
    container = pod["containers"][0]
    env = {e["name"]: e.get("value") for e in container["env"]}
    return job, pod, env


def test_base_model_from_a_pvc_is_copied_into_the_registry() -> None:
    rendered = render("workload-extras")
    job, pod, env = _copy_job(rendered)
    registry = rendered.values["registry"]["mountPath"]
    assert env["DEST"] == f"{registry}/base-models/llama-8b"
    assert env["ORIGIN"] == "pvc://models-ro/llama/8b"
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["source"]["persistentVolumeClaim"] == {"claimName": "models-ro",
                                                          "readOnly": True}
    assert volumes["registry"]["persistentVolumeClaim"]["claimName"] == \
        rendered.one("PersistentVolumeClaim", "registry")["metadata"]["name"]
    mounts = {m["name"]: m for m in pod["containers"][0]["volumeMounts"]}
    assert mounts["source"] == {"name": "source", "mountPath": "/source/model",
                                "subPath": "llama/8b", "readOnly": True}
    assert mounts["registry"]["mountPath"] == registry
    script = pod["containers"][0]["args"][0]
    assert "cp -R /source/model/." in script and 'mv "$staging" "$DEST"' in script
    assert pod["containers"][0]["image"].startswith(rendered.values["image"]["repository"])


def test_base_model_from_an_object_store_uses_rclone_with_the_users_credentials() -> None:
    rendered = render("base-model-from-object-store")
    job, pod, env = _copy_job(rendered)
    container = pod["containers"][0]
    assert container["image"] == rendered.values["baseModel"]["copyImage"]
    assert env["REMOTE"] == ":s3:ml-models/llama/8b-instruct"
    assert env["ORIGIN"] == "s3://ml-models/llama/8b-instruct"
    assert env["RCLONE_S3_ENDPOINT"] == "https://s3.example.com"
    assert container["envFrom"] == [{"secretRef": {"name": "s3-credentials"}}]
    assert "rclone copy" in container["args"][0]
    assert "source" not in {v["name"] for v in pod["volumes"]}
    assert "hf.co" not in str(job) and "huggingface" not in str(job)


@pytest.mark.parametrize(("uri", "remote"), [("gs://bucket/m", ":gcs:bucket/m"),
                                             ("az://container/m/v1", ":azureblob:container/m/v1")])
def test_object_store_schemes_map_to_rclone_backends(uri: str, remote: str) -> None:
    import yaml
    from helm_chart import Rendered, chart

    with chart() as c:
        out = c.render({"baseModel": {"enabled": True, "source": {"uri": uri}}},
                       name="rlhf", namespace="ml")
    docs = [d for p, t in out.items() if not p.endswith("NOTES.txt")
            for d in yaml.safe_load_all(t) if d]
    _, _, env = _copy_job(Rendered(values={}, objects=docs))
    assert env["REMOTE"] == remote


def test_the_copy_job_is_renamed_when_its_source_changes() -> None:
    a = render("base-model-from-object-store").by_kind["Job"][0]["metadata"]["name"]
    b = render("workload-extras").by_kind["Job"][0]["metadata"]["name"]
    assert a != b and a.startswith("rlhf-base-model-") and len(a) <= 63
    assert "Job" not in render("default").by_kind


@pytest.mark.parametrize(("source", "message"), [
    ({}, "baseModel.enabled needs exactly one of baseModel.source.claimName"),
    ({"claimName": "models", "uri": "s3://bucket/m"}, "needs exactly one of"),
    ({"uri": "s3://bucket/m", "path": "m"}, "baseModel.source.path is a directory inside"),
    ({"uri": "https://huggingface.co/meta-llama/x"}, "/baseModel/source/uri'"),
])
def test_bad_base_model_sources_are_refused(source: dict, message: str) -> None:
    assert message in render_error({"baseModel": {"enabled": True, "source": source}})
