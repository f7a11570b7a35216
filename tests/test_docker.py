"""The docker files, checked without a Docker engine (none runs here): the compose file parses,
its services, volumes and health checks reference each other, the worker's command is one the
lsearch CLI accepts, and the build commands are the ones the README documents."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import typer
import yaml

from lsearch.cli import app

REPO = Path(__file__).resolve().parents[1]
DOCKER = REPO / "docker"


def compose() -> dict[str, Any]:
    return yaml.safe_load((DOCKER / "compose.yaml").read_text())


def default(value: str) -> str:
    """Compose's ${VAR:-default} interpolation, with every variable unset."""
    return re.sub(r"\$\{[A-Z_]+:-([^}]*)\}", r"\1", value)


def test_services_reference_each_other() -> None:
    spec = compose()
    services = spec["services"]
    assert set(services) == {"postgres", "worker", "dashboard"}
    postgres = services["postgres"]
    assert "pg_isready" in " ".join(postgres["healthcheck"]["test"])
    for name in ("worker", "dashboard"):
        assert services[name]["depends_on"]["postgres"]["condition"] == "service_healthy"
    declared = set(spec["volumes"])
    for service in services.values():
        for mount in service.get("volumes", []):
            source = mount.split(":")[0]
            if not source.startswith((".", "/")):
                assert source in declared, f"volume {source} is not declared"
    assert any(m.endswith(":/var/lib/postgresql/data") for m in postgres["volumes"])


def test_a_worker_with_a_user_error_is_not_restarted_for_ever() -> None:
    """Compose's restart policies cannot filter on exit codes: a worker exiting 2 (a bad
    study file) must not restart in a loop, so its retries are bounded."""
    policy = compose()["services"]["worker"]["restart"]
    kind, _, retries = policy.partition(":")
    assert kind == "on-failure" and retries.isdigit() and 1 <= int(retries) <= 5, policy


def test_the_worker_reaches_postgres_with_its_credentials() -> None:
    services = compose()["services"]
    env = services["postgres"]["environment"]
    url = default(services["worker"]["environment"]["LSEARCH_STORAGE"])
    user, password, db = (
        default(env[k]) for k in ("POSTGRES_USER", "POSTGRES_PASSWORD", "POSTGRES_DB")
    )
    assert url == f"postgresql+psycopg://{user}:{password}@postgres:5432/{db}"
    assert (
        services["dashboard"]["command"][-1] == services["worker"]["environment"]["LSEARCH_STORAGE"]
    )


def test_workers_reserve_gpus_and_claim_one_each() -> None:
    worker = compose()["services"]["worker"]
    (device,) = worker["deploy"]["resources"]["reservations"]["devices"]
    assert device["driver"] == "nvidia" and "gpu" in device["capabilities"]
    command = [default(str(part)) for part in worker["command"]]
    assert command[command.index("--device") + 1] == "cuda:free"
    assert "/locks" in [m.split(":")[1] for m in worker["volumes"]]
    assert worker["environment"]["LSEARCH_GPU_LOCKS"] == "/locks"
    # Replicas share the host's cores too, through slot locks in the same volume.
    assert worker["environment"]["LSEARCH_CPU_LOCKS"] == "/locks"
    assert worker["build"]["dockerfile"] == "docker/Dockerfile"
    assert (DOCKER / worker["build"]["context"] / worker["build"]["dockerfile"]).is_file()


def test_the_worker_command_is_accepted_by_the_lsearch_cli() -> None:
    command = [default(str(part)) for part in compose()["services"]["worker"]["command"]]
    group = typer.main.get_command(app)
    context = group.make_context("lsearch", list(command))
    name, sub, rest = group.resolve_command(context, list(command))
    assert name == "run"
    params = sub.make_context("run", rest, parent=context).params
    assert params["study"] == "cifar10-resnet18" and params["trials"] == 100
    assert params["device"] == "cuda:free"
    assert params["quiet"] is True


def test_an_unknown_flag_would_be_caught() -> None:
    group = typer.main.get_command(app)
    context = group.make_context("lsearch", ["run", "--no-such-flag"])
    _, sub, rest = group.resolve_command(context, ["run", "--no-such-flag"])
    # Otherwise the previous test would prove nothing.
    with pytest.raises(Exception, match="No such option"):
        sub.make_context("run", rest, parent=context)


def test_the_dashboard_is_published_on_loopback_only() -> None:
    dashboard = compose()["services"]["dashboard"]
    assert dashboard["ports"] == ["127.0.0.1:8080:8080"]
    assert dashboard["image"] == compose()["services"]["worker"]["image"]


def test_dockerfile_installs_lsearch_as_the_entrypoint() -> None:
    text = (DOCKER / "Dockerfile").read_text()
    base = re.search(r"^FROM (\S+)", text, re.M)
    assert base and "cuda" in base.group(1)
    assert 'ENTRYPOINT ["lsearch"]' in text
    for source in re.findall(r"^COPY (\S+(?: \S+)*) \S+$", text, re.M):
        for path in source.split():
            assert (REPO / path).exists(), f"COPY {path}: not in the repository"
    assert "pip install" in text and "[dashboard,grpc]" in text


def test_readme_documents_the_commands_the_files_give() -> None:
    readme = (REPO / "README.md").read_text()
    build = re.search(
        r"^# Build from the repository root:\s+(.+)$", (DOCKER / "Dockerfile").read_text(), re.M
    )
    up = re.search(
        r"^#\s+(cd docker && docker compose up .+)$", (DOCKER / "compose.yaml").read_text(), re.M
    )
    assert build and build.group(1).strip() in readme
    assert up and up.group(1).strip() in readme
    assert "--scale worker=4" in up.group(1)
