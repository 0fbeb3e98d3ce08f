"""Render helm/rlhf with the real Helm engine (helm-python-sdk wraps Helm v4's Go SDK).

Profiles are the value sets the chart must support; each test module walks the rendered
objects of every profile. Rendering is offline: no cluster, no chart repositories.
"""

from __future__ import annotations

import base64
import functools
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import helm_python as helm
import pytest
import yaml

CHART = Path(__file__).resolve().parents[3] / "helm" / "rlhf"
RELEASE = "rlhf"
NAMESPACE = "ml"

def _extras(component: str) -> dict[str, Any]:
    """Every per-workload extension value, with names that say which workload they are for."""
    return {
        "env": [{"name": "NCCL_DEBUG", "value": "WARN"},
                {"name": "HF_TOKEN", "valueFrom": {"secretKeyRef": {"name": "hf-token",
                                                                    "key": "token"}}}],
        "envFrom": [{"secretRef": {"name": f"{component}-extra-env"}}],
        "extraVolumes": [{"name": "extra-cache", "emptyDir": {}},
                         {"name": "extra-config", "configMap": {"name": f"{component}-config"}}],
        "extraVolumeMounts": [{"name": "extra-cache", "mountPath": "/var/cache/extra"},
                              {"name": "extra-config", "mountPath": "/etc/extra",
                               "readOnly": True}],
        "topologySpreadConstraints": [{
            "maxSkew": 1, "topologyKey": "topology.kubernetes.io/zone",
            "whenUnsatisfiable": "ScheduleAnyway",
            "labelSelector": {"matchLabels": {"app.kubernetes.io/component": component}}}],
        "priorityClassName": f"{component}-priority",
        "runtimeClassName": "nvidia",
        "initContainers": [{"name": f"{component}-warmup", "image": "busybox:1.36",
                            "command": ["sh", "-c", "true"]}],
    }


EXTRAS: dict[str, dict[str, Any]] = {
    "serving": {**_extras("serving"), "extraArgs": ["--max-model-len", "4096"]},
    "ingester": _extras("ingester"),
    "training": _extras("training"),
    "deployController": _extras("deploy-controller"),
}
"""The workload-extras profile's values of each workload (values key → values)."""

CANARY_POLICY: dict[str, Any] = {
    "window_s": 900, "interval_s": 15, "confidence": 0.8, "on_timeout": "forward",
    "signals": {"error_rate": {"max_worse": 0.01, "min_samples": 200, "required": True},
                "latency_s": None,  # null: the signal is left out of the file, so ignored
                "rating": {"max_worse": 0.3, "min_samples": 50, "required": True},
                "length": {"max_worse": 0.3, "min_samples": 100, "required": False}},
    "regression_margin": 0.3, "regression_min_ratings": 50,
}
"""The canary-rollout profile's online policy (docs/rollout.md's example, latency left out)."""

PROFILES: dict[str, dict[str, Any]] = {
    "default": {},
    "cpu-only": {
        "kafka": {"strimzi": {"replicas": 1},
                  "topics": {"partitions": 1, "replicationFactor": 1}},
        "registry": {"accessMode": "ReadWriteOnce", "size": "5Gi"},
        "serving": {
            "replicas": 1,
            "gpu": {"enabled": False},
            "tolerations": [],
            "engine": {"dtype": "float32", "enforceEager": True, "kvCacheSpaceGib": 4},
            "resources": {"requests": {"cpu": "2", "memory": "8Gi"}},
            "shmSize": "1Gi",
            "podDisruptionBudget": {"enabled": False},
        },
        "ingester": {"replicas": 1},
        "training": {"gpu": {"enabled": False}, "tolerations": [],
                     "resources": {"requests": {"cpu": "2", "memory": "8Gi"}}},
    },
    "multi-gpu": {
        "serving": {
            "replicas": 3,
            "engine": {"tensorParallelSize": 4, "dtype": "bfloat16", "maxModelLen": 8192},
            "nodeSelector": {"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"},
            "shutdown": {"longestRequestSeconds": 900},
        },
        "training": {
            "distributed": {"launcher": "torchrun", "nodes": 2, "gpusPerNode": 8},
            "nodeSelector": {"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"},
            "recipes": {"ppo.yaml": "# rlhf train ppo --config ppo.yaml\nkl_coef: 0.02\n"},
        },
        "deployController": {
            "port": 8400,
            "gpu": {"enabled": True},
            "resources": {"requests": {"cpu": "2", "memory": "16Gi"},
                          "limits": {"memory": "32Gi"}},
            "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists",
                             "effect": "NoSchedule"}],
            "gates": {"numPrompts": 64, "reference": "policy-0001"},
        },
    },
    "multi-node-accelerate": {
        "training": {"distributed": {"launcher": "accelerate", "nodes": 4, "gpusPerNode": 4}},
    },
    "external-kafka-and-db": {
        "kafka": {
            "strimzi": {"enabled": False},
            "external": {
                "bootstrapServers": "b-1.kafka.example.com:9096,b-2.kafka.example.com:9096",
                "securityProtocol": "SASL_SSL",
                "sasl": {"mechanism": "SCRAM-SHA-512", "username": "rlhf", "password": "s3cret"},
                "caSecret": "kafka-ca",
            },
        },
        "postgresql": {"enabled": False},
        "externalDatabase": {"url": "postgresql+psycopg2://rlhf:pw@db.example.com:5432/rlhf"},
        "auth": {"keys": {"sk-user-0001": "user", "sk-labeler-01": "labeler",
                          "sk-admin-0001": "admin"}},
        "deployController": {"autoPromote": True, "groupId": "rlhf-deploy-prod",
                             "gates": {"minWinRate": 0.55, "rewardModel": "reward-0007"}},
    },
    "existing-secrets": {
        "kafka": {
            "strimzi": {"enabled": False},
            "external": {
                "bootstrapServers": "kafka.data.svc:9092",
                "securityProtocol": "SASL_PLAINTEXT",
                "sasl": {"mechanism": "PLAIN", "username": "rlhf",
                         "existingSecret": "kafka-user", "existingSecretKey": "password"},
            },
        },
        "postgresql": {"enabled": False},
        "externalDatabase": {"existingSecret": "feedback-db", "existingSecretKey": "url"},
        "registry": {"existingClaim": "models-rwx"},
        "auth": {"existingSecret": "api-keys", "existingSecretKey": "keys.json"},
        "serving": {"followPolicyEvents": False},
        "training": {"enabled": False},
        "networkPolicy": {"enabled": False},
    },
    "ingress-and-autoscaling": {
        "serving": {
            "http": {"port": 8080},
            "grpc": {"port": 9090},
            "ingress": {
                "enabled": True, "className": "nginx",
                "annotations": {"nginx.ingress.kubernetes.io/proxy-read-timeout": "900"},
                "hosts": ["api.rlhf.example.com"],
                "tls": [{"secretName": "rlhf-tls", "hosts": ["api.rlhf.example.com"]}],
            },
            "autoscaling": {
                "enabled": True, "minReplicas": 2, "maxReplicas": 10,
                "targetCPUUtilizationPercentage": None,
                "metrics": [{"type": "Pods", "pods": {
                    "metric": {"name": "rlhf_requests_waiting"},
                    "target": {"type": "AverageValue", "averageValue": "8"}}}],
            },
            "serviceMonitor": {"enabled": True, "labels": {"release": "prometheus"}},
        },
        "ingester": {"metricsPort": 9500, "serviceMonitor": {"enabled": True}},
        "training": {"metricsPort": 9401, "podMonitor": {"enabled": True}},
        "deployController": {"serviceMonitor": {"enabled": True, "interval": "15s"}},
        "dashboards": {"enabled": True, "annotations": {"grafana_folder": "RLHF"}},
        "networkPolicy": {
            "servingFrom": [{"namespaceSelector": {"matchLabels": {
                "kubernetes.io/metadata.name": "ingress-nginx"}}}],
            "metricsFrom": [{"namespaceSelector": {"matchLabels": {
                "kubernetes.io/metadata.name": "monitoring"}}}],
            "deployControllerFrom": [{"namespaceSelector": {"matchLabels": {
                "kubernetes.io/metadata.name": "ops"}}}],
        },
    },
    "open-access": {"auth": {"allowOpen": True}},
    "canary-rollout": {
        "serving": {"replicas": 4, "replica": {"heartbeatIntervalS": 2.5},
                    "probes": {"readinessFailureThreshold": 1},
                    "podDisruptionBudget": {"maxUnavailable": "25%"}},
        "deployController": {
            "gates": {"holdoutShare": 0.2, "samplesPerPrompt": 8, "trafficScan": 2000,
                      "confidence": 0.95, "bootstrapResamples": 500, "judgeModel": "previous",
                      "maxNewTokens": 64, "evalPromptFile": "/etc/extra/eval-prompts.txt",
                      "humanEval": {"required": True, "minItems": 50, "minLowerBound": 0.55,
                                    "confidence": 0.9}},
            "rollout": {"maxUnavailable": "25%", "canaryReplicas": 1, "staleAfterS": 10,
                        "swapTimeoutS": 120, "watchS": 1800, "policy": CANARY_POLICY},
        },
        "networkPolicy": {"servingFrom": [{"namespaceSelector": {"matchLabels": {
            "kubernetes.io/metadata.name": "ingress-nginx"}}}]},
    },
    "workload-extras": {
        "auth": {"keys": {"sha256:" + "ab" * 32: "admin", "sk-user-0001": "user"}},
        **{component: EXTRAS[component] for component in EXTRAS},
        "baseModel": {"enabled": True, "name": "llama-8b",
                      "source": {"claimName": "models-ro", "path": "/llama/8b"}},
    },
    "base-model-from-object-store": {
        "baseModel": {"enabled": True,
                      "source": {"uri": "s3://ml-models/llama/8b-instruct"},
                      "envFrom": [{"secretRef": {"name": "s3-credentials"}}],
                      "env": [{"name": "RCLONE_S3_ENDPOINT", "value": "https://s3.example.com"}]},
    },
}

POD_FIELDS = {"metadata.name": "rlhf-serving-5d8f7c9b4-x2k8q", "status.podIP": "10.42.0.17"}
"""What the downward API gives an example pod, for env entries with a fieldRef."""

# Kinds served by operators' CRDs; kubernetes-validate has no schema for them.
CRD_KINDS = {"ServiceMonitor", "PodMonitor", "Kafka", "KafkaNodePool", "KafkaTopic"}

# Which settings tree each component's container reads, and the sub-command it runs.
PROCESSES = {
    "serving": ("serving.settings", "ServeSettings", ["serve"]),
    "ingester": ("feedback.settings", "IngestSettings", ["ingest"]),
    "training": ("training.settings", "TrainSettings", ["train", "cycle"]),
    "deploy-controller": ("deploy.settings", "DeploySettings", ["deploy", "controller"]),
}


@dataclass
class Rendered:
    """The objects one profile renders, with lookups the wiring tests need."""

    values: dict[str, Any]
    objects: list[dict[str, Any]]
    by_kind: dict[str, list[dict[str, Any]]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for obj in self.objects:
            self.by_kind.setdefault(obj["kind"], []).append(obj)

    def get(self, kind: str, name: str) -> dict[str, Any] | None:
        return next((o for o in self.by_kind.get(kind, []) if o["metadata"]["name"] == name),
                    None)

    def one(self, kind: str, component: str) -> dict[str, Any]:
        found = [o for o in self.by_kind.get(kind, [])
                 if o["metadata"]["labels"].get("app.kubernetes.io/component") == component]
        assert len(found) == 1, f"expected one {kind} of {component}, got {len(found)}"
        return found[0]

    def workloads(self) -> list[tuple[dict[str, Any], dict[str, Any]]]:
        """(workload, pod template) of every Deployment, StatefulSet, Job and CronJob."""
        out = []
        for kind in ("Deployment", "StatefulSet", "Job"):
            out += [(o, o["spec"]["template"]) for o in self.by_kind.get(kind, [])]
        out += [(o, o["spec"]["jobTemplate"]["spec"]["template"])
                for o in self.by_kind.get("CronJob", [])]
        return out

    def user_named(self) -> set[str]:
        """Names of objects the values name but the chart does not render (existing
        Secrets, claims and ConfigMaps, and those in the workloads' extension values)."""
        v = self.values
        names = {v["registry"]["existingClaim"], v["externalDatabase"]["existingSecret"],
                 v["kafka"]["external"]["sasl"]["existingSecret"],
                 v["kafka"]["external"]["caSecret"], v["auth"]["existingSecret"],
                 v["baseModel"]["source"]["claimName"]}
        for key in ("serving", "ingester", "training", "deployController", "baseModel"):
            section = v[key]
            for volume in section.get("extraVolumes", []):
                for kind, field_ in (("persistentVolumeClaim", "claimName"),
                                     ("configMap", "name"), ("secret", "secretName")):
                    names.add((volume.get(kind) or {}).get(field_, ""))
            for source in section.get("envFrom", []):
                names |= {ref.get("name", "") for ref in source.values()
                          if isinstance(ref, dict)}
            for entry in section.get("env", []):
                names.add(entry.get("valueFrom", {}).get("secretKeyRef", {}).get("name", ""))
        return names - {""}

    def mounted_file(self, container: dict[str, Any], path: Any) -> Any:
        """The parsed YAML at ``path`` in the container, from the ConfigMap mounted there."""
        path = Path(path)
        mount = next(m for m in container["volumeMounts"] if Path(m["mountPath"]) == path.parent)
        pod = next(t["spec"] for _, t in self.workloads() if container in t["spec"]["containers"])
        volume = next(v for v in pod["volumes"] if v["name"] == mount["name"])
        configmap = self.get("ConfigMap", volume["configMap"]["name"])
        assert configmap is not None, volume
        return yaml.safe_load(configmap["data"][path.name])

    def secret_value(self, name: str, key: str) -> str | None:
        secret = self.get("Secret", name)
        if secret is None or key not in (secret.get("data") or {}):
            return None
        return base64.b64decode(secret["data"][key]).decode()

    def container_env(self, container: dict[str, Any]) -> dict[str, str]:
        """Every variable the container gets: ConfigMaps via envFrom, then env entries.

        A secretKeyRef to a Secret the chart does not render (an existing Secret) resolves
        to a placeholder that names it; a fieldRef to the POD_FIELDS example; `$(NAME)` in a
        value expands to a variable defined before it, as the kubelet does.
        """
        env: dict[str, str] = {}
        for source in container.get("envFrom", []):
            if "configMapRef" not in source:
                continue  # a user's own Secret (values.<workload>.envFrom)
            ref = source["configMapRef"]["name"]
            cm = self.get("ConfigMap", ref)
            if cm is None and ref in self.user_named():
                continue
            assert cm is not None, f"envFrom names ConfigMap {ref}, which is not rendered"
            env.update(cm.get("data") or {})
        for entry in container.get("env", []):
            if "value" in entry:
                env[entry["name"]] = re.sub(r"\$\((\w+)\)",
                                            lambda m: env.get(m[1], m[0]), entry["value"])
                continue
            if "fieldRef" in entry["valueFrom"]:
                env[entry["name"]] = POD_FIELDS[entry["valueFrom"]["fieldRef"]["fieldPath"]]
                continue
            ref = entry["valueFrom"]["secretKeyRef"]
            value = self.secret_value(ref["name"], ref["key"])
            env[entry["name"]] = value if value is not None else f"<{ref['name']}/{ref['key']}>"
        return env


def chart() -> Any:
    return helm.Chart.load(CHART)


@functools.cache
def render(profile: str) -> Rendered:
    return render_values(PROFILES[profile])


def render_values(values: dict[str, Any]) -> Rendered:
    """The objects the chart renders for these values (an install, like ``render``)."""
    with chart() as c:
        manifests = c.render(values, name=RELEASE, namespace=NAMESPACE, is_install=True)
        merged = c.merge_values(values)
    objects = []
    for path, text in sorted(manifests.items()):
        if path.endswith("NOTES.txt"):
            continue
        objects += [doc for doc in yaml.safe_load_all(text) if doc]
    return Rendered(values=merged, objects=objects)


def render_error(values: dict[str, Any]) -> str:
    """The message Helm gives for values it refuses; fails the test if it accepts them."""
    with chart() as c:
        try:
            c.render(values, name=RELEASE, namespace=NAMESPACE)
        except helm.HelmError as exc:
            return str(exc)
    pytest.fail(f"the chart accepted bad values {values}")
