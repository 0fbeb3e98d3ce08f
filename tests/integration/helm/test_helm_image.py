"""The chart runs the images the repository builds: as the images' own user, and with the
tag of the build each pod's hardware needs (`images/build.sh cpu` = `make image`, or
`images/build.sh cuda`)."""

from __future__ import annotations

import re
from typing import Any

import pytest
import yaml
from helm_chart import CHART, Rendered, render, render_values

pytestmark = pytest.mark.helm

REPO = CHART.parents[1]
APP_VERSION = yaml.safe_load((CHART / "Chart.yaml").read_text())["appVersion"]


def _image_user(containerfile: str) -> tuple[int, int]:
    """(uid, gid) of the user the image runs as."""
    text = (REPO / containerfile).read_text()
    uid, gid = re.search(r"useradd --uid (\d+) --gid (\d+)", text).groups()
    assert re.search(rf"^USER {uid}$", text, re.M), f"{containerfile} does not run as {uid}"
    return int(uid), int(gid)


def _built_images() -> dict[str, str]:
    """flavour (cpu, cuda) → the image images/build.sh tags with its default settings."""
    script = (REPO / "images/build.sh").read_text()
    repository = re.search(r"IMAGE_REPOSITORY=\$\{IMAGE_REPOSITORY:-([^}]+)\}", script)[1]
    images = {}
    for flavour in ("cpu", "cuda"):
        case = script.split(f"\n  {flavour})\n", 1)[1].split(";;", 1)[0]
        tag = re.search(r'image="\$IMAGE_REPOSITORY:([^"]+)"', case)[1]
        images[flavour] = f"{repository}:{tag.replace('$IMAGE_TAG', APP_VERSION)}"
    return images


def _rlhf_containers(rendered: Rendered) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    """(pod template, container) of every container that runs the rlhf image."""
    repository = rendered.values["image"]["repository"]
    return [(t, c) for _, t in rendered.workloads() for c in t["spec"]["containers"]
            if c["image"].startswith(repository + ":")]


def _image_of(rendered: Rendered, component: str) -> str:
    return next(c["image"] for t, c in _rlhf_containers(rendered)
                if t["metadata"]["labels"]["app.kubernetes.io/component"] == component)


@pytest.mark.parametrize("containerfile", ["Containerfile", "Containerfile.cuda"])
def test_pods_run_as_the_images_user(rendered: Rendered, containerfile: str) -> None:
    uid, gid = _image_user(containerfile)
    for template, _ in _rlhf_containers(rendered):
        context = template["spec"]["securityContext"]
        assert context["runAsNonRoot"]
        # gid 0 owns the image's home and, through fsGroup, the registry volume.
        assert (context["runAsUser"], context["runAsGroup"], context["fsGroup"]) == (
            uid, gid, gid)


def test_make_image_builds_the_cpu_flavour() -> None:
    makefile = (REPO / "Makefile").read_text()
    assert re.search(r"^image:\n\timages/build\.sh cpu$", makefile, re.M)


def test_each_pod_runs_the_build_for_its_hardware(rendered: Rendered) -> None:
    built = _built_images()
    for template, container in _rlhf_containers(rendered):
        gpus = "nvidia.com/gpu" in container["resources"].get("limits", {})
        component = template["metadata"]["labels"]["app.kubernetes.io/component"]
        assert container["image"] == built["cuda" if gpus else "cpu"], component


def test_the_default_profile_serves_on_the_cuda_build() -> None:
    built, rendered = _built_images(), render("default")
    assert rendered.values["serving"]["gpu"]["enabled"]
    assert _image_of(rendered, "serving") == built["cuda"]
    assert _image_of(rendered, "training") == built["cuda"]
    assert _image_of(rendered, "ingester") == built["cpu"]
    assert _image_of(rendered, "deploy-controller") == built["cpu"]


@pytest.mark.parametrize(("image", "cpu", "cuda"), [
    ({"tag": "0.3.0"}, "0.3.0", "0.3.0-cuda"),              # what IMAGE_TAG=0.3.0 builds
    ({"cudaTag": "0.3.0-cu128"}, APP_VERSION, "0.3.0-cu128"),
    ({"tag": "0.3.0-cuda", "cudaTag": "0.3.0-cuda"}, "0.3.0-cuda", "0.3.0-cuda"),  # one image
])
def test_tags_can_be_overridden(image: dict[str, str], cpu: str, cuda: str) -> None:
    rendered = render_values({"image": {"repository": "registry.example.com/ml/rlhf",
                                        **image}})
    assert _image_of(rendered, "serving") == f"registry.example.com/ml/rlhf:{cuda}"
    assert _image_of(rendered, "ingester") == f"registry.example.com/ml/rlhf:{cpu}"
