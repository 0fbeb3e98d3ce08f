"""Where a policy's lineage is anchored: the SFT version its PPO chain started from.

InstructGPT penalises KL against the frozen SFT policy in every PPO run. When the live
policy is itself a PPO result and the next run starts from it, anchoring that run to its
parent would let the policy drift without bound over many generations; anchoring every run
of the chain to the same SFT version bounds the cumulative drift instead.
"""

from __future__ import annotations

from core.registry import Manifest, Registry, RegistryError


def is_ppo(config: dict) -> bool:
    """True for a version the PPO recipe made (its manifest config says so)."""
    return config.get("recipe") == "ppo"


def reference_of(registry: Registry, version: str) -> str:
    """The KL reference of ``version``.

    * A PPO version: the ``reference`` its manifest records; manifests written before that
      field existed are followed up their parent chain to the first non-PPO version.
    * Any other policy (SFT, a registered base, a hand-made version): itself.
    """
    seen: set[str] = set()
    current = version
    while True:
        if current in seen:
            raise RegistryError(f"{version}: cycle in the parent chain at {current}")
        seen.add(current)
        manifest = registry.get(current)
        if not is_ppo(manifest.config):
            return current
        recorded = manifest.config.get("reference")
        if recorded:
            return str(recorded)
        if manifest.parent is None:
            return current
        current = manifest.parent



def accepted_reward(registry: Registry, before: str | None = None) -> Manifest | None:
    """The reward model PPO optimises and the gates judge with by default: the newest
    reward version (older than ``before``, if given) that was not trained as a held-out
    judge (``role: judge``) and was not refused by the RM quality gate
    (``training.rm_gate``); None when there is none."""
    for m in reversed(registry.list("reward")):
        if before is not None and m.version >= before:
            continue
        if m.config.get("role", "optimised") == "judge" or m.gates.get("status") == "refused":
            continue
        return m
    return None
