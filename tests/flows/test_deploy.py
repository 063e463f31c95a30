"""deploy/*.json are valid Prefect base job templates for their worker type and request GPUs."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

TEMPLATES = {"kubernetes": "deploy/kubernetes-gpu.json", "docker": "deploy/docker-gpu.json"}


def default_template(worker_type: str) -> dict:
    """What `prefect work-pool get-default-base-job-template --type X` prints offline."""
    import prefect.server.api as api

    views = Path(api.__file__).parent / "collections_data" / "views" / "aggregate-worker-metadata.json"
    for collection in json.loads(views.read_text()).values():
        for worker in collection.values():
            if worker.get("type") == worker_type:
                return worker["default_base_job_configuration"]
    raise LookupError(worker_type)


def render(template: dict, values: dict | None = None) -> dict:
    """The job configuration a worker builds: variable defaults, overridden by `values`."""
    from prefect.utilities.templating import apply_values

    variables = {k: v["default"] for k, v in template["variables"]["properties"].items() if "default" in v}
    return apply_values(template["job_configuration"], {**variables, **(values or {})})


@pytest.mark.parametrize("worker_type", list(TEMPLATES))
def test_gpu_template_is_the_default_plus_a_gpu_request(repo_root, worker_type):
    from prefect.server.schemas.actions import validate_base_job_template

    template = json.loads((repo_root / TEMPLATES[worker_type]).read_text())
    validate_base_job_template(template)  # every {{ placeholder }} is a declared variable
    default = default_template(worker_type)
    assert set(template["variables"]["properties"]) == set(default["variables"]["properties"]) | {"gpu_count"}
    extra = {"container_create_kwargs"} if worker_type == "docker" else set()
    assert set(template["job_configuration"]) == set(default["job_configuration"]) | extra
    assert template["variables"]["properties"]["gpu_count"]["default"] == 1


def test_kubernetes_job_requests_nvidia_gpus(repo_root):
    template = json.loads((repo_root / TEMPLATES["kubernetes"]).read_text())
    for values, gpus in (({}, 1), ({"gpu_count": 4}, 4)):
        manifest = render(template, values)["job_manifest"]
        assert manifest["kind"] == "Job" and manifest["apiVersion"] == "batch/v1"
        pod = manifest["spec"]["template"]["spec"]
        container = pod["containers"][0]
        assert container["resources"]["limits"]["nvidia.com/gpu"] == gpus
        assert container["resources"]["requests"]["nvidia.com/gpu"] == gpus
        assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in pod["tolerations"]
        assert container["image"] == "lmforge:cuda"


def test_docker_container_requests_nvidia_gpus(repo_root):
    template = json.loads((repo_root / TEMPLATES["docker"]).read_text())
    kwargs = render(template, {"gpu_count": 2})["container_create_kwargs"]
    request = kwargs["device_requests"][0]
    assert request == {"driver": "nvidia", "count": 2, "capabilities": [["gpu"]]}
    docker = pytest.importorskip("docker")  # docker-py builds the request `docker run --gpus 2` sends
    host = docker.types.HostConfig(version="1.45", device_requests=kwargs["device_requests"], shm_size=kwargs["shm_size"])
    assert host["DeviceRequests"][0]["Count"] == 2 and host["DeviceRequests"][0]["Capabilities"] == [["gpu"]]


def test_gpu_deployment_uses_the_gpu_pool_and_a_template_variable(repo_root):
    import yaml

    deployments = {d["name"]: d for d in yaml.safe_load((repo_root / "prefect.yaml").read_text())["deployments"]}
    gpu = deployments["gpu-small"]
    assert gpu["work_pool"]["name"] == "lmforge-gpu"
    for path in TEMPLATES.values():
        template = json.loads((repo_root / path).read_text())
        assert set(gpu["work_pool"]["job_variables"]) <= set(template["variables"]["properties"])
