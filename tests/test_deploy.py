"""The deploy/ manifests parse, carry what a secure GPU cluster needs, and agree with the CLI."""

import copy
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import jsonschema
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
        assert has_registry(container["image"]) and container["image"].endswith("/fusionsearch:0.1.0")


def has_registry(image: str) -> bool:
    """Whether an image reference names a registry host (``host.tld/...``), not Docker Hub's default."""
    first, _, rest = image.partition("/")
    return bool(rest) and ("." in first or ":" in first)


@pytest.mark.parametrize(("kind", "spec"), cluster_specs())
def test_kuberay_autoscales_gpus_and_leaves_kuberays_own_settings_alone(kind, spec):
    assert spec["enableInTreeAutoscaling"] is True  # idle GPUs are released between searches
    [group] = spec["workerGroupSpecs"]
    assert group["minReplicas"] == 0 and group["replicas"] == 0 and group["maxReplicas"] == 8
    for params in (spec["headGroupSpec"]["rayStartParams"], group["rayStartParams"]):
        assert not {"dashboard-host", "num-gpus"} & set(params)  # KubeRay sets these itself
    volumes = [v["name"] for v in group["template"]["spec"]["volumes"]]
    assert "dshm" not in volumes  # KubeRay mounts /dev/shm itself


#: The fields of KubeRay v1.7.0's RayCluster and RayJob CRDs (ray.io/v1) that a manifest here may
#: use, at the levels these manifests fill in (a subset of the CRD's schema, read from it; each
#: also exists in v1.5.1, the first release with authOptions). Unknown fields fail the test.
WORKER_GROUP = {
    "groupName",
    "replicas",
    "minReplicas",
    "maxReplicas",
    "idleTimeoutSeconds",
    "rayStartParams",
    "template",
    "scaleStrategy",
    "suspend",
    "numOfHosts",
}
HEAD_GROUP = {"serviceType", "headService", "enableIngress", "rayStartParams", "template"}
CLUSTER_SPEC = {
    "type": "object",
    "additionalProperties": False,
    "required": ["headGroupSpec"],
    "properties": {
        "rayVersion": {"type": "string"},
        "authOptions": {
            "type": "object",
            "additionalProperties": False,
            "properties": {"mode": {"enum": ["disabled", "token"]}},
        },
        "enableInTreeAutoscaling": {"type": "boolean"},
        "autoscalerOptions": {
            "type": "object",
            "additionalProperties": False,
            "properties": {
                k: {}
                for k in (
                    "idleTimeoutSeconds",
                    "upscalingMode",
                    "resources",
                    "image",
                    "imagePullPolicy",
                    "env",
                    "envFrom",
                    "volumeMounts",
                    "securityContext",
                    "version",
                )
            },
        },
        "headGroupSpec": {
            "type": "object",
            "additionalProperties": False,
            "properties": {k: {} for k in HEAD_GROUP},
        },
        "workerGroupSpecs": {
            "type": "array",
            "items": {
                "type": "object",
                "additionalProperties": False,
                "required": ["groupName"],
                "properties": {k: {} for k in WORKER_GROUP},
            },
        },
        "suspend": {"type": "boolean"},
        "headServiceAnnotations": {"type": "object"},
        "gcsFaultToleranceOptions": {"type": "object"},
        "managedBy": {"type": "string"},
    },
}
JOB_SPEC = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        **{
            k: {}
            for k in (
                "entrypoint",
                "runtimeEnvYAML",
                "jobId",
                "shutdownAfterJobFinishes",
                "ttlSecondsAfterFinished",
                "activeDeadlineSeconds",
                "clusterSelector",
                "submitterPodTemplate",
                "submitterConfig",
                "entrypointNumCpus",
                "entrypointNumGpus",
                "entrypointResources",
                "suspend",
                "managedBy",
                "submissionMode",
                "backoffLimit",
                "metadata",
            )
        },
        "rayClusterSpec": CLUSTER_SPEC,
    },
}


def test_kuberay_manifests_use_only_fields_of_the_crd():
    [cluster] = load("kuberay/raycluster.yaml")
    [job] = load("kuberay/rayjob.yaml")
    jsonschema.validate(cluster["spec"], CLUSTER_SPEC)
    jsonschema.validate(job["spec"], JOB_SPEC)
    with pytest.raises(jsonschema.ValidationError):  # the check does catch a misspelt field
        jsonschema.validate({**cluster["spec"], "enableInTreeAutoScaling": True}, CLUSTER_SPEC)


def test_shared_storage_claim_names_a_readwritemany_class():
    [claim] = load("kuberay/shared-storage.yaml")
    storage_class = claim["spec"].get("storageClassName")
    # The usual default classes are ReadWriteOnce: a claim for ReadWriteMany on them stays Pending.
    assert storage_class and storage_class not in {
        "gp2",
        "gp3",
        "standard",
        "standard-rwo",
        "premium-rwo",
        "default",
        "managed",
        "managed-csi",
        "managed-premium",
    }


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
    assert workers["resources"]["GPU"] == 1 and workers["min_workers"] == 0  # no idle GPUs between searches
    head_start = " ".join(config["head_start_ray_commands"])
    assert "RAY_AUTH_MODE=token" in head_start and "--dashboard-host=127.0.0.1" in head_start
    assert all("RAY_AUTH_MODE=token" in c for c in config["worker_start_ray_commands"] if "ray start" in c)


def test_cluster_launcher_yaml_passes_rays_own_checks():
    from ray.autoscaler._private.util import prepare_config, validate_config

    [config] = load("cluster-launcher/aws.yaml")
    prepared = prepare_config(copy.deepcopy(config))
    validate_config(prepared)
    assert prepared["available_node_types"]["gpu_worker"]["max_workers"] == 8


def test_cluster_launcher_image_names_a_registry_and_every_node_an_ami():
    [config] = load("cluster-launcher/aws.yaml")
    assert has_registry(config["docker"]["image"])  # a bare name is pulled from Docker Hub, and fails
    for node_type in config["available_node_types"].values():
        assert node_type["node_config"].get("ImageId")  # else the launcher's old default AMI


def test_cluster_launcher_puts_the_token_on_every_node_and_checks_it(tmp_path):
    [config] = load("cluster-launcher/aws.yaml")
    assert config["file_mounts"].get("~/.ray/auth_token") == "~/.ray/auth_token"
    setup = config["setup_commands"]
    missing = run_commands(setup, home=tmp_path)
    assert missing.returncode != 0 and "ray get-auth-token --generate" in missing.stderr
    (tmp_path / ".ray").mkdir()
    (tmp_path / ".ray" / "auth_token").write_text("0123abcd\n")
    assert run_commands(setup, home=tmp_path).returncode == 0


def run_commands(commands, home: Path, stubs: dict[str, str] | None = None, replace=("", "")):
    """Run a node's setup commands in bash, as the launcher does, with stub programs first on PATH."""
    bin_dir = home / "bin"
    bin_dir.mkdir(exist_ok=True)
    for name, body in (stubs or {}).items():
        (bin_dir / name).write_text(f"#!/bin/bash\n{body}\n")
        (bin_dir / name).chmod(0o755)
    script = "set -e\n" + "\n".join(c.replace(*replace) for c in commands)
    env = {"HOME": str(home), "PATH": f"{bin_dir}:/usr/bin:/bin"}  # EFS_DNS_NAME and the rest unset
    return subprocess.run(["bash", "-c", script], env=env, capture_output=True, text=True, timeout=60)


MOUNT_STUBS = {
    "sudo": 'exec "$@"',
    "mkdir": "exit 0",
    "mountpoint": 'test -e "$HOME/mounted"',
}


def test_cluster_launcher_stops_a_node_whose_shared_mount_fails(tmp_path):
    [config] = load("cluster-launcher/aws.yaml")
    commands = config["initialization_commands"]
    unfilled = run_commands(commands, tmp_path, {**MOUNT_STUBS, "mount": "touch $HOME/mounted"})
    assert unfilled.returncode != 0 and "EFS file system's DNS name" in unfilled.stderr
    filled = ("FILL-IN.efs.", "fs-0123.efs.")
    failing = run_commands(
        commands,
        tmp_path,
        {**MOUNT_STUBS, "mount": "echo 'mount.nfs4: timed out' >&2; exit 32"},
        replace=filled,
    )
    assert failing.returncode != 0 and "could not mount fs-0123.efs.us-west-2.amazonaws.com" in failing.stderr
    working = run_commands(
        commands, tmp_path, {**MOUNT_STUBS, "mount": "touch $HOME/mounted"}, replace=filled
    )
    assert working.returncode == 0, working.stderr


def test_dockerfile_uses_ray_cuda_image_and_installs_the_project():
    text = (DEPLOY / "Dockerfile").read_text()
    assert re.search(r"^FROM rayproject/ray:\$\{RAY_VERSION\}-\$\{PYTHON\}-\$\{CUDA\}$", text, re.M)
    assert "ray-ml" not in text.split("deprecated")[-1]
    assert "pip install --no-cache-dir ." in text and "ENV RAY_AUTH_MODE=token" in text
    for package in ("fusionsearch", "searchers", "trainables"):
        assert f"COPY --chown=ray:users {package} ./{package}" in text
    # Any builder: the folder pip builds in belongs to the image's user (WORKDIR alone makes it root's).
    assert text.index("chown ray:users /home/ray/fusionsearch") < text.index("WORKDIR /home/ray/fusionsearch")


def dockerfile_torch_check() -> tuple[str, str]:
    """The base image's CUDA (``ARG CUDA``) and the build-time check of torch's CUDA, from the Dockerfile."""
    text = (DEPLOY / "Dockerfile").read_text()
    cuda = re.search(r"^ARG CUDA=(cu\d+)$", text, re.M).group(1)
    assert re.search(r"^ARG TORCH=\d+\.\d+\.\d+$", text, re.M), "torch must be pinned"
    install = re.search(r'pip install --no-cache-dir "torch==\$\{TORCH\}" --index-url "(\S+)"', text)
    assert install, "torch must be installed from the index of the base image's CUDA"
    assert install.group(1) == "https://download.pytorch.org/whl/${CUDA}"  # the same CUDA as FROM
    check = re.search(r'python -c "(import sys, torch; want = .*?)"$', text, re.M).group(1)
    return cuda, check.replace("${CUDA}", cuda)


def test_dockerfile_torch_matches_the_base_images_cuda_and_the_build_checks_it(tmp_path):
    cuda, check = dockerfile_torch_check()
    assert cuda == "cu128"  # rayproject/ray:2.60.0-py311-cu128
    # The check, run against torch builds: this machine's CPU build fails it, naming the mismatch ...
    cpu = subprocess.run([sys.executable, "-c", check], capture_output=True, text=True, timeout=120)
    assert cpu.returncode != 0 and "but the base image has CUDA 128" in cpu.stderr
    # ... and builds for CUDA 12.8 and 13.0 (stand-ins with torch's version attributes) pass and fail.
    for version, ok in (("12.8", True), ("13.0", False)):
        fake = tmp_path / version / "torch"
        fake.mkdir(parents=True)
        (fake / "__init__.py").write_text(f"__version__ = 'x'\nclass version:\n    cuda = {version!r}\n")
        env = os.environ | {"PYTHONPATH": str(fake.parent)}
        done = subprocess.run(
            [sys.executable, "-c", check], env=env, capture_output=True, text=True, timeout=60
        )
        assert (done.returncode == 0) == ok, done.stderr


def test_local_cluster_script_turns_token_auth_on_and_binds_loopback():
    text = (DEPLOY / "local-cluster.sh").read_text()
    assert "export RAY_AUTH_MODE=token" in text
    assert "--dashboard-host 127.0.0.1" in text and "--node-ip-address 127.0.0.1" in text
