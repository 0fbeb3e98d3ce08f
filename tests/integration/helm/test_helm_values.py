"""values.schema.json refuses bad values with a message naming them; values.yaml
documents every value, and every `→ RLHF_…` it names is a real setting."""

from __future__ import annotations

import json
import re

import pytest
import yaml
from helm_chart import CHART, PROCESSES, render_error
from test_helm_wiring import env_names, settings_class

pytestmark = pytest.mark.helm

BAD_VALUES = [
    # (values, text the message must contain)
    ({"serving": {"engine": {"tensorParallelSize": "2"}}},
     "/serving/engine/tensorParallelSize': got string, want integer"),
    ({"serving": {"engine": {"tensorParallelSize": 0}}},
     "/serving/engine/tensorParallelSize': minimum"),
    ({"serving": {"engine": {"gpuMemoryUtilization": 1.5}}},
     "/serving/engine/gpuMemoryUtilization': maximum"),
    ({"serving": {"http": {"port": 70000}}}, "/serving/http/port': maximum"),
    ({"serving": {"replicaCount": 3}}, "additional properties 'replicaCount' not allowed"),
    ({"serving": {"replica": 3}}, "/serving/replica': got number, want object"),
    ({"serving": {"replica": {"heartbeatIntervalS": 0}}},
     "/serving/replica/heartbeatIntervalS': exclusiveMinimum"),
    ({"serving": {"probes": {"readinessFailureThreshold": 0}}},
     "/serving/probes/readinessFailureThreshold': minimum"),
    ({"serving": {"podDisruptionBudget": {"maxUnavailable": 0}}},
     "/serving/podDisruptionBudget/maxUnavailable': minimum: got 0, want 1"),
    ({"serving": {"http": None}}, "/serving': missing property 'http'"),
    ({"auth": {"keys": {"sk-0123456789": "root"}}},
     "/auth/keys/sk-0123456789': value must be one of"),
    ({"serving": {"auth": {"keys": {}}}}, "additional properties 'auth' not allowed"),
    ({"deployController": {"port": 0}}, "/deployController/port': minimum"),
    ({"deployController": {"gates": {"minWinRate": 1.5}}},
     "/deployController/gates/minWinRate': maximum"),
    ({"deployController": {"gates": {"maxKl": 0}}}, "/deployController/gates/maxKl'"),
    ({"deployController": {"gates": {"numPrompt": 8}}},
     "additional properties 'numPrompt' not allowed"),
    ({"deployController": {"gates": {"holdoutShare": 1.5}}},
     "/deployController/gates/holdoutShare': maximum"),
    ({"deployController": {"gates": {"samplesPerPrompt": 0}}},
     "/deployController/gates/samplesPerPrompt': minimum"),
    ({"deployController": {"gates": {"evalPromptFile": "prompts.txt"}}},
     "/deployController/gates/evalPromptFile': 'prompts.txt' does not match pattern"),
    ({"deployController": {"gates": {"humanEval": {"minLowerBound": 2}}}},
     "/deployController/gates/humanEval/minLowerBound': maximum"),
    ({"deployController": {"gates": {"humanEval": {"require": True}}}},
     "/deployController/gates/humanEval': additional properties 'require' not allowed"),
    ({"deployController": {"rollout": {"staged": "yes"}}},
     "/deployController/rollout/staged': got string, want boolean"),
    ({"deployController": {"rollout": {"canaryReplicas": -1}}},
     "/deployController/rollout/canaryReplicas': minimum"),
    ({"deployController": {"rollout": {"swapTimeoutS": 0}}},
     "/deployController/rollout/swapTimeoutS': exclusiveMinimum"),
    ({"deployController": {"rollout": {"policy": {"on_timeout": "hold"}}}},
     "/deployController/rollout/policy/on_timeout': value must be one of"),
    ({"deployController": {"rollout": {"policy": {"window": 900}}}},
     "/deployController/rollout/policy': additional properties 'window' not allowed"),
    ({"deployController": {"rollout": {"policy": {"signals": {"toxicity": {"max_worse": 1}}}}}},
     "/deployController/rollout/policy/signals': additional properties 'toxicity' not allowed"),
    ({"deployController": {"rollout": {"policy": {"signals": {"rating": {"min_sample": 9}}}}}},
     "/deployController/rollout/policy/signals/rating': additional properties 'min_sample'"),
    ({"deployController": {"gpu": {"enabled": "yes"}}},
     "/deployController/gpu/enabled': got string, want boolean"),
    ({"serving": {"followPolicyEvents": "no"}},
     "/serving/followPolicyEvents': got string, want boolean"),
    ({"logLevel": "verbose"}, "/logLevel': value must be one of"),
    ({"kafka": {"strimzi": {"enabled": False}}},
     "/kafka/external/bootstrapServers': minLength"),
    ({"kafka": {"strimzi": {"enabled": False},
                "external": {"bootstrapServers": "kafka.example.com"}}},
     "/kafka/external/bootstrapServers': 'kafka.example.com' does not match pattern"),
    ({"kafka": {"topics": {"feedback": "rlhf feedback"}}}, "/kafka/topics/feedback'"),
    ({"postgresql": {"enabled": False}}, "/externalDatabase/url': minLength"),
    ({"postgresql": {"enabled": False}, "externalDatabase": {"url": "db.example.com"}},
     "/externalDatabase/url'"),
    ({"registry": {"mountPath": "relative/dir"}}, "/registry/mountPath'"),
    ({"registry": {"accessMode": "ReadWriteAll"}}, "/registry/accessMode'"),
    ({"training": {"distributed": {"launcher": "mpirun"}}},
     "/training/distributed/launcher': value must be one of"),
    ({"training": {"recipes": {"ppo.json": "{}"}}},
     "/training/recipes': additional properties 'ppo.json' not allowed"),
    ({"serving": {"resources": {"request": {"cpu": "1"}}}},
     "/serving/resources': additional properties 'request' not allowed"),
    ({"ingester": {"metricsPort": "9400"}}, "/ingester/metricsPort': got string, want integer"),
]

# Rules across values, enforced by templates/validate.yaml.
BAD_COMBINATIONS = [
    ({"serving": {"grpc": {"port": 8000}}}, "serving.http.port and serving.grpc.port"),
    ({"serving": {"autoscaling": {"enabled": True, "minReplicas": 5, "maxReplicas": 2}}},
     "serving.autoscaling.minReplicas (5)"),
    ({"serving": {"autoscaling": {"enabled": True, "targetCPUUtilizationPercentage": None}}},
     "serving.autoscaling needs"),
    ({"kafka": {"external": {"bootstrapServers": "kafka:9092"}}},
     "kafka.external.bootstrapServers is set while kafka.strimzi.enabled"),
    ({"externalDatabase": {"url": "postgresql://u:p@db:5432/x"}},
     "externalDatabase is set while postgresql.enabled"),
    ({"kafka": {"strimzi": {"replicas": 1}}},
     "kafka.topics.replicationFactor (3) must not exceed kafka.strimzi.replicas (1)"),
    ({"training": {"gpu": {"enabled": False}, "distributed": {"nodes": 2}}},
     "training.distributed.nodes > 1"),
    ({"deployController": {"pollTimeoutMs": 10000}},
     "deployController.pollTimeoutMs (10000) must be below deployController.sessionTimeoutMs"),
    ({"deployController": {"rollout": {"staleAfterS": 8}}},
     "deployController.rollout.staleAfterS (8) must be at least twice "
     "serving.replica.heartbeatIntervalS (5)"),
    ({"deployController": {"rollout": {"canaryReplicas": 2}}},
     "deployController.rollout.canaryReplicas (2) must be below the serving replicas (2)"),
    ({"serving": {"autoscaling": {"enabled": True, "minReplicas": 3}},
      "deployController": {"rollout": {"canaryReplicas": 3}}},
     "deployController.rollout.canaryReplicas (3) must be below the serving replicas (3)"),
]


@pytest.mark.parametrize(("values", "message"), BAD_VALUES + BAD_COMBINATIONS,
                         ids=[m for _, m in BAD_VALUES + BAD_COMBINATIONS])
def test_bad_values_are_refused_by_name(values: dict, message: str) -> None:
    assert message in render_error(values)


def _documented_keys(lines: list[str]) -> list[tuple[str, bool]]:
    """(dotted key, has a comment right above or inline) for every key in values.yaml."""
    keys: list[tuple[str, bool]] = []
    stack: list[tuple[int, str]] = []
    for n, line in enumerate(lines):
        m = re.match(r"^( *)([A-Za-z][\w.-]*):(.*)$", line)
        if not m:
            continue
        indent, key, rest = len(m.group(1)), m.group(2), m.group(3)
        while stack and stack[-1][0] >= indent:
            stack.pop()
        dotted = ".".join([k for _, k in stack] + [key])
        above = n > 0 and lines[n - 1].strip().startswith("#")
        keys.append((dotted, above or "#" in rest))
        if not rest.strip():
            stack.append((indent, key))
    return keys


def _schema_leaves(value: dict, node: dict, path: str = "") -> list[str]:
    """Dotted paths of the values proper. Sections are the object schemas that require
    their keys; free-form objects (resources, nodeSelector, …) are one value each."""
    leaves = []
    for key, sub in value.items():
        prop = node.get("properties", {}).get(key, {})
        if isinstance(sub, dict) and "required" in prop:
            leaves += _schema_leaves(sub, prop, f"{path}{key}.")
        else:
            leaves.append(f"{path}{key}")
    return leaves


def _load(name: str) -> object:
    text = (CHART / name).read_text()
    return json.loads(text) if name.endswith(".json") else yaml.safe_load(text)


def test_values_yaml_documents_every_value() -> None:
    documented = dict(_documented_keys((CHART / "values.yaml").read_text().splitlines()))
    leaves = _schema_leaves(_load("values.yaml"), _load("values.schema.json"))
    assert len(leaves) > 100
    assert [k for k in leaves if not documented.get(k)] == []


def test_every_value_has_a_schema_entry_with_a_description() -> None:
    schema, values = _load("values.schema.json"), _load("values.yaml")

    def walk(value: dict, node: dict, path: str) -> list[str]:
        missing = []
        for key, sub in value.items():
            prop = node.get("properties", {}).get(key)
            if prop is None:
                missing.append(f"{path}{key}")
                continue
            if "description" not in prop and prop.get("type") != "object":
                missing.append(f"{path}{key} (no description)")
            if isinstance(sub, dict) and "properties" in prop:
                missing += walk(sub, prop, f"{path}{key}.")
        return missing

    assert walk(values, schema, "") == []


def test_every_documented_setting_exists() -> None:
    """The `→ RLHF_…` names in values.yaml are variables some process reads."""
    known = set().union(*(env_names(settings_class(c), "RLHF_") for c in PROCESSES))
    text = (CHART / "values.yaml").read_text()
    named = set(re.findall(r"→ (RLHF_[A-Z_]+)", text))
    assert len(named) >= 40
    assert named - known == set()
