"""The Kubernetes manifests: valid against the Kubernetes API schemas, restricted, and in step with the code.

Each overlay is assembled the way `kubectl apply -k` would (resources, then patches merged by
kind and name) and every core resource is validated with `kubernetes-validate`, which ships the
API schemas. KEDA's custom resources have no schema there; they are checked against the
deployment they scale and the configuration the service reads.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from fashionstream.pipeline.config import ServiceConfig
from fashionstream.pipeline.options import env_name, fields_of

K8S = Path(__file__).resolve().parents[1] / "deploy" / "k8s"
SCALING_RESULTS = Path(__file__).resolve().parents[1] / "bench" / "results" / "scaling.json"
KUBERNETES_VERSION = "1.30.0"
OVERLAYS = ("kafka", "pubsub")


def _merge(base: Any, patch: Any) -> Any:
    """Strategic-merge for the maps the overlays patch (a patch's maps merge, its other values replace)."""
    if isinstance(base, dict) and isinstance(patch, dict):
        return {**base, **{k: _merge(base.get(k), v) for k, v in patch.items()}}
    return patch


def build(directory: Path) -> list[dict[str, Any]]:
    """The resources of a kustomization directory, with its patches applied."""
    kustomization = yaml.safe_load((directory / "kustomization.yaml").read_text())
    resources: list[dict[str, Any]] = []
    for entry in kustomization.get("resources", []):
        path = (directory / entry).resolve()
        if path.is_dir():
            resources += build(path)
        else:
            resources += [doc for doc in yaml.safe_load_all(path.read_text()) if doc]
    for patch_entry in kustomization.get("patches", []):
        patch = yaml.safe_load((directory / patch_entry["path"]).read_text())
        targets = [
            r for r in resources if (r["kind"], r["metadata"]["name"]) == (patch["kind"], patch["metadata"]["name"])
        ]
        assert len(targets) == 1, f"patch {patch_entry['path']} matches {len(targets)} resources"
        resources[resources.index(targets[0])] = _merge(targets[0], patch)
    return resources


def one(resources: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    found = [r for r in resources if r["kind"] == kind]
    assert len(found) == 1, f"{len(found)} {kind} resources"
    return found[0]


@pytest.fixture(params=OVERLAYS)
def overlay(request: pytest.FixtureRequest) -> list[dict[str, Any]]:
    return build(K8S / "overlays" / request.param)


def test_every_core_resource_is_valid_against_the_kubernetes_schemas(overlay: list[dict[str, Any]]) -> None:
    core = [r for r in overlay if not r["apiVersion"].startswith("keda.sh/")]
    assert {r["kind"] for r in core} >= {"Deployment", "Service", "PodDisruptionBudget", "ServiceAccount", "ConfigMap"}
    for resource in core:
        # strict: unknown fields (a typo in a field name) are errors too
        kubernetes_validate.validate(resource, KUBERNETES_VERSION, strict=True)


def test_pods_meet_the_restricted_pod_security_standard(overlay: list[dict[str, Any]]) -> None:
    pod = one(overlay, "Deployment")["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault"
    for container in pod["containers"]:
        context = container["securityContext"]
        assert context["allowPrivilegeEscalation"] is False
        assert context["capabilities"]["drop"] == ["ALL"]
        assert context.get("capabilities", {}).get("add") is None
        assert context["readOnlyRootFilesystem"] is True
        # Liveness restarts a stuck replica; readiness only takes it out of the rotation.
        for probe, path in (("startupProbe", "/livez"), ("livenessProbe", "/livez"), ("readinessProbe", "/readyz")):
            assert container[probe]["httpGet"]["path"] == path
    assert not any(volume.get("hostPath") for volume in pod.get("volumes", []))


def test_every_setting_is_an_option_of_serve(overlay: list[dict[str, Any]]) -> None:
    """A misspelt FASHIONSTREAM_ variable would be silently ignored by the service; catch it here."""
    known = {env_name(f.name) for f in fields_of(ServiceConfig)}
    for resource in overlay:
        if resource["kind"] in ("ConfigMap", "Secret"):
            for key in {**resource.get("data", {}), **resource.get("stringData", {})}:
                if key.startswith("FASHIONSTREAM_"):
                    assert key in known, f"{resource['metadata']['name']}: {key} is not a serve option"


def test_secret_files_named_by_the_service_are_mounted_and_passwords_stay_out_of_variables(
    overlay: list[dict[str, Any]],
) -> None:
    """Each --client-option-file path lies in a mounted Secret that has that key; no variable holds a password."""
    pod = one(overlay, "Deployment")["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    secrets = {r["metadata"]["name"]: r for r in overlay if r["kind"] == "Secret"}
    volumes = {v["name"]: v for v in pod.get("volumes", [])}
    mounted = {}  # mount path -> the Secret mounted there
    for mount in container.get("volumeMounts", []):
        secret = volumes[mount["name"]].get("secret")
        if secret is not None:
            assert mount.get("readOnly") is True
            # 0440 with the pod's fsGroup: readable by the service's user (10001), by no one else
            assert secret["defaultMode"] == 0o440 and pod["securityContext"]["fsGroup"] == 10001
            mounted[mount["mountPath"]] = secrets.get(secret["secretName"])
    settings: dict[str, str] = {}
    for resource in overlay:
        if resource["kind"] in ("ConfigMap", "Secret"):
            settings.update({k: v for k, v in resource.get("stringData", {}).items() if k.startswith("FASHIONSTREAM_")})
            settings.update({k: v for k, v in resource.get("data", {}).items() if k.startswith("FASHIONSTREAM_")})
    for pair in settings.get(env_name("client_option_file"), "").split():
        path = Path(pair.partition("=")[2])
        secret = mounted.get(str(path.parent))
        assert secret is not None, f"{path} is not in a mounted Secret"
        assert path.name in {**secret.get("data", {}), **secret.get("stringData", {})}
    for name, value in settings.items():
        if name != env_name("client_option_file"):  # whose values are file names
            keys = [pair.partition("=")[0] for pair in value.split()]
            assert not [key for key in keys if "password" in key.lower()], f"{name} holds a password"


def test_autoscaling_targets_the_service_and_its_own_stream(overlay: list[dict[str, Any]]) -> None:
    deployment, config = one(overlay, "Deployment"), one(overlay, "ConfigMap")["data"]
    scaled = one(overlay, "ScaledObject")
    assert scaled["spec"]["scaleTargetRef"]["name"] == deployment["metadata"]["name"]
    authentications = {r["metadata"]["name"] for r in overlay if r["kind"] == "TriggerAuthentication"}
    (trigger,) = scaled["spec"]["triggers"]
    assert trigger["authenticationRef"]["name"] in authentications
    metadata = trigger["metadata"]
    if trigger["type"] == "kafka":
        assert metadata["consumerGroup"] == config["FASHIONSTREAM_SUBSCRIPTION"]
        assert metadata["topic"] == config["FASHIONSTREAM_IMAGES_TOPIC"]
        assert metadata["bootstrapServers"] == config["FASHIONSTREAM_BROKER"].removeprefix("kafka://")
        # More replicas than partitions would sit idle.
        assert scaled["spec"]["maxReplicaCount"] == int(config["FASHIONSTREAM_PARTITIONS"])
        assert int(metadata["lagThreshold"]) > 0
    else:
        assert trigger["type"] == "gcp-pubsub"
        project = config["FASHIONSTREAM_BROKER"].removeprefix("gcppubsub://")
        assert metadata["subscriptionName"] == f"{project}/subscriptions/{config['FASHIONSTREAM_SUBSCRIPTION']}"
        assert int(metadata["value"]) > 0
    secrets = {r["metadata"]["name"] for r in overlay if r["kind"] == "Secret"}
    for auth in (r for r in overlay if r["kind"] == "TriggerAuthentication"):
        for ref in auth["spec"].get("secretTargetRef", []):
            assert ref["name"] in secrets


def test_resource_requests_come_from_the_measurement() -> None:
    """The memory request covers a replica's measured peak (bench/scaling.py) with room to spare."""
    container = one(build(K8S / "base"), "Deployment")["spec"]["template"]["spec"]["containers"][0]
    measured_peak = max(max(run["peak_rss_mb"]) for run in json.loads(SCALING_RESULTS.read_text())["runs"])
    request = container["resources"]["requests"]["memory"]
    limit = container["resources"]["limits"]["memory"]
    assert request.endswith("Mi") and limit.endswith("Mi")
    assert int(request[:-2]) >= 1.5 * measured_peak
    assert int(limit[:-2]) >= int(request[:-2])
