"""The Kubernetes manifests under deploy/kubernetes: valid against the Kubernetes schemas
(offline, kubernetes-validate's bundled ones), and saying what docs/operations.md says of
them: GPU workers as an Indexed Job that survives preemption, secrets never in plain text,
the dashboard inside the cluster only, and commands that lsearch's CLI accepts."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml
from typer.testing import CliRunner

from lsearch.cli import app
from lsearch.interrupts import EXIT_CODES
from lsearch.store.resilient import STOP_WRITE_TIMEOUT_S

KUBERNETES = Path(__file__).parent.parent / "deploy" / "kubernetes"
MANIFESTS = sorted(KUBERNETES.glob("*.yaml"))
# 1.31: the first release with the Job's podFailurePolicy generally available.
VERSIONS = ("1.31.0", kubernetes_validate.latest_version())


def _resources() -> dict[str, dict[str, Any]]:
    resources = {}
    for path in MANIFESTS:
        for doc in yaml.safe_load_all(path.read_text()):
            resources[f"{doc['kind']}/{doc['metadata']['name']}"] = doc
    return resources


def _containers(resource: dict[str, Any]) -> list[dict[str, Any]]:
    return resource["spec"]["template"]["spec"]["containers"]


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("path", MANIFESTS, ids=lambda p: p.name)
def test_every_manifest_is_valid_kubernetes(path: Path, version: str) -> None:
    for doc in yaml.safe_load_all(path.read_text()):
        kubernetes_validate.validate(doc, version, strict=True)


def test_the_workers_are_an_indexed_job_of_one_gpu_each_that_survives_preemption() -> None:
    job = _resources()["Job/lsearch-workers"]
    spec, pod = job["spec"], job["spec"]["template"]["spec"]
    assert spec["completionMode"] == "Indexed" and spec["completions"] == spec["parallelism"]
    (worker,) = _containers(job)
    assert worker["resources"]["limits"] == {"nvidia.com/gpu": 1}
    # A podFailurePolicy needs pods that are not restarted in place.
    assert pod["restartPolicy"] == "Never"
    rules = spec["podFailurePolicy"]["rules"]
    by_code = {
        code: rule["action"]
        for rule in rules
        if "onExitCodes" in rule
        for code in rule["onExitCodes"]["values"]
    }
    assert by_code[EXIT_CODES["SIGTERM"]] == "Ignore", "a handed-back trial is no failure"
    assert by_code[2] == "FailJob", "a user error fails at once"
    conditions = [c for r in rules if r["action"] == "Ignore" for c in r.get("onPodConditions", [])]
    assert {"type": "DisruptionTarget", "status": "True"} in conditions
    # The hand-back's storage writes wait at most STOP_WRITE_TIMEOUT_S each when the database
    # is away; the last checkpoint and the batch in flight come first.
    assert pod["terminationGracePeriodSeconds"] >= 6 * STOP_WRITE_TIMEOUT_S
    mounts = {m["mountPath"] for m in worker["volumeMounts"]}
    assert {"/work/data", "/work/artifacts"} <= mounts  # the study's data/ and artifacts/


def test_storage_urls_and_passwords_come_from_secrets_never_plain_text() -> None:
    for name, resource in _resources().items():
        if "template" not in resource.get("spec", {}):
            continue
        for container in _containers(resource):
            for env in container.get("env", []):
                secret = env.get("valueFrom", {}).get("secretKeyRef")
                if env["name"] in ("LSEARCH_STORAGE", "POSTGRES_PASSWORD"):
                    assert secret is not None and "value" not in env, (name, env["name"])
    for path in MANIFESTS:
        text = path.read_text()
        assert "postgresql://" not in text and "postgresql+psycopg://" not in text, path.name
        assert "kind: Secret" not in text, "secrets are made with kubectl, not kept here"


def test_the_dashboard_is_reachable_only_inside_the_cluster() -> None:
    resources = _resources()
    assert resources["Service/lsearch-dashboard"]["spec"]["type"] == "ClusterIP"
    assert not [name for name in resources if name.startswith("Ingress/")]
    assert all(
        r["spec"].get("type", "ClusterIP") == "ClusterIP"
        for name, r in resources.items()
        if name.startswith("Service/")
    )


@pytest.mark.parametrize("name", ["Job/lsearch-workers", "Deployment/lsearch-dashboard"])
def test_the_manifests_commands_are_ones_lsearch_accepts(name: str) -> None:
    """Click parses every option before it acts on --help: an unknown option fails here."""
    (container,) = _containers(_resources()[name])
    result = CliRunner().invoke(app, [*container["args"], "--help"])
    assert result.exit_code == 0, result.output


def _wait_for_postgres(url: str) -> subprocess.Popen[str]:
    """The workers' init container's command, run here with Debian's pg_isready."""
    (init,) = _resources()["Job/lsearch-workers"]["spec"]["template"]["spec"]["initContainers"]
    assert init["image"].startswith("postgres:")
    secret = {"name": "LSEARCH_STORAGE",
              "valueFrom": {"secretKeyRef": {"name": "lsearch-storage", "key": "url"}}}  # fmt: skip
    assert init["env"] == [secret]
    return subprocess.Popen(
        init["command"], env={"PATH": os.environ["PATH"], "LSEARCH_STORAGE": url},
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip


def test_the_workers_wait_for_postgresql_to_accept_connections(own_postgres: Any) -> None:
    """`kubectl apply -f deploy/kubernetes/` starts PostgreSQL and the workers together; a
    worker that found no database at start would exit 2 and fail the Job, so each pod's init
    container waits for it."""
    own_postgres.stop()
    waiting = _wait_for_postgres(own_postgres.url)  # postgresql+psycopg://...
    try:
        time.sleep(3)
        assert waiting.poll() is None, waiting.communicate()[0]
        own_postgres.start()
        assert waiting.wait(timeout=60) == 0
    finally:
        waiting.kill()
    assert "waiting for PostgreSQL" in waiting.communicate()[0]
    proxy = _wait_for_postgres("grpc://lsearch-proxy:13000")  # nothing to wait for
    assert proxy.wait(timeout=10) == 0
