"""The deploy/ manifests parse, carry what a secure GPU cluster needs, and agree with the CLI."""

import re
import shlex
from pathlib import Path

import pytest
import yaml

from fusionsearch.cli import build_parser

DEPLOY = Path(__file__).resolve().parent.parent / "deploy"


def load(name):
    return [doc for doc in yaml.safe_load_all((DEPLOY / name).read_text()) if doc]


def cluster_specs():
    [cluster] = load("kuberay/raycluster.yaml")
    [job] = load("kuberay/rayjob.yaml")
    return [("RayCluster", cluster["spec"]), ("RayJob", job["spec"]["rayClusterSpec"])]


@pytest.mark.parametrize(("kind", "spec"), cluster_specs())
def test_kuberay_cluster_is_secure_gpu_and_shared(kind, spec):
    assert spec["authOptions"]["mode"] == "token"
    assert spec["rayVersion"] == "2.60.0"
    head = spec["headGroupSpec"]
    assert head.get("serviceType", "ClusterIP") == "ClusterIP"  # dashboard not exposed outside
    [group] = spec["workerGroupSpecs"]
    [worker] = group["template"]["spec"]["containers"]
    assert worker["resources"]["limits"]["nvidia.com/gpu"] == "1"
    for pod in (head["template"]["spec"], group["template"]["spec"]):
        claims = {v["name"]: v.get("persistentVolumeClaim", {}).get("claimName") for v in pod["volumes"]}
        [container] = pod["containers"]
        mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
        assert claims["shared"] == "fusionsearch-shared" and mounts["shared"] == "/shared"
        assert container["image"] == "fusionsearch:0.1.0"


def test_manifests_have_api_version_and_storage_claim():
    for name in ("kuberay/raycluster.yaml", "kuberay/rayjob.yaml"):
        [doc] = load(name)
        assert doc["apiVersion"] == "ray.io/v1" and doc["kind"] in ("RayCluster", "RayJob")
    [claim] = load("kuberay/shared-storage.yaml")
    assert claim["metadata"]["name"] == "fusionsearch-shared"
    assert claim["spec"]["accessModes"] == ["ReadWriteMany"]


def test_rayjob_entrypoint_is_a_valid_fusionsearch_command():
    [job] = load("kuberay/rayjob.yaml")
    argv = shlex.split(job["spec"]["entrypoint"])
    assert argv[0] == "fusionsearch"
    args = build_parser().parse_args(argv[1:])  # exits on an unknown option
    assert args.command == "run" and args.address == "auto" and args.gpus == 8
    assert args.storage.startswith("/shared/") and str(args.cache).startswith("/shared/")


def test_cluster_launcher_yaml():
    [config] = load("cluster-launcher/aws.yaml")
    assert config["provider"]["type"] == "aws"
    workers = config["available_node_types"]["gpu_worker"]
    assert workers["resources"]["GPU"] == 1
    head_start = " ".join(config["head_start_ray_commands"])
    assert "RAY_AUTH_MODE=token" in head_start and "--dashboard-host=127.0.0.1" in head_start
    assert all("RAY_AUTH_MODE=token" in c for c in config["worker_start_ray_commands"] if "ray start" in c)
    assert config["docker"]["image"] == "fusionsearch:0.1.0"


def test_dockerfile_uses_ray_cuda_image_and_installs_the_project():
    text = (DEPLOY / "Dockerfile").read_text()
    assert re.search(r"^FROM rayproject/ray:\$\{RAY_VERSION\}-\$\{PYTHON\}-\$\{CUDA\}$", text, re.M)
    assert "ray-ml" not in text.split("deprecated")[-1]
    assert "pip install --no-cache-dir ." in text and "ENV RAY_AUTH_MODE=token" in text
    for package in ("fusionsearch", "searchers", "trainables"):
        assert f"COPY --chown=ray:users {package} ./{package}" in text


def test_local_cluster_script_turns_token_auth_on_and_binds_loopback():
    text = (DEPLOY / "local-cluster.sh").read_text()
    assert "export RAY_AUTH_MODE=token" in text
    assert "--dashboard-host 127.0.0.1" in text and "--node-ip-address 127.0.0.1" in text
