"""docker-compose.yml cannot run here (no Docker engine); check that it stays consistent
with the settings, the migrations, the Celery app and ARCHITECTURE.md §4."""

from __future__ import annotations

import re
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import yaml

from service.settings import Settings

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def _resolve(value: str) -> str:
    """Apply compose's ``${VAR:-default}`` substitution with the defaults."""
    return re.sub(r"\$\{[A-Z_]+:-([^}]*)\}", r"\1", str(value))


def _env(service: dict) -> dict[str, str]:
    return {k: _resolve(v) for k, v in (service.get("environment") or {}).items()}


def test_all_services_are_defined(compose):
    assert {"postgres", "redis", "minio", "minio-init", "migrate", "api", "worker", "worker-cpu"} <= set(
        compose["services"]
    )


def test_every_pxp_variable_is_a_setting_and_parses(compose):
    fields = set(Settings.model_fields)
    for name in ("migrate", "api", "worker", "worker-cpu"):
        env = _env(compose["services"][name])
        pxp = {k: v for k, v in env.items() if k.startswith("PXP_")}
        assert pxp, name
        unknown = {k for k in pxp if k.removeprefix("PXP_").lower() not in fields}
        assert not unknown, f"{name}: {unknown} are not Settings fields"
        settings = Settings(**{k.removeprefix("PXP_").lower(): v for k, v in pxp.items()})
        assert not settings.embedded and settings.storage_backend == "s3"
        assert settings.job_time_limit_s > settings.job_soft_time_limit_s


def test_api_and_workers_share_one_configuration(compose):
    services = compose["services"]
    api = _env(services["api"])
    assert _env(services["worker"]) == api == _env(services["worker-cpu"]) == _env(services["migrate"])


def test_urls_point_at_the_compose_services(compose):
    services = compose["services"]
    env = _env(services["api"])
    db = urlsplit(env["PXP_DATABASE_URL"])
    assert db.scheme == "postgresql+psycopg" and db.hostname == "postgres" and db.path == "/pxp"
    pg = _env(services["postgres"])
    assert db.username == pg["POSTGRES_USER"] and db.password == pg["POSTGRES_PASSWORD"]
    assert urlsplit(env["PXP_BROKER_URL"]).hostname == "redis"
    assert urlsplit(env["PXP_S3_ENDPOINT_URL"]).hostname == "minio"
    minio = _env(services["minio"])
    assert env["PXP_S3_ACCESS_KEY_ID"] == minio["MINIO_ROOT_USER"]
    assert env["PXP_S3_SECRET_ACCESS_KEY"] == minio["MINIO_ROOT_PASSWORD"]
    init = " ".join(services["minio-init"]["command"])
    assert f"local/{env['PXP_S3_BUCKET']}" in init


def test_start_order_migrates_first(compose):
    services = compose["services"]
    assert services["migrate"]["command"] == ["python", "-m", "service.db.migrate"]
    for name in ("api", "worker", "worker-cpu"):
        deps = services[name]["depends_on"]
        assert deps["migrate"]["condition"] == "service_completed_successfully"
        assert deps["minio-init"]["condition"] == "service_completed_successfully"
        assert deps["redis"]["condition"] == "service_healthy"
    assert services["migrate"]["depends_on"]["postgres"]["condition"] == "service_healthy"


def test_gateway_and_worker_commands(compose):
    services = compose["services"]
    assert "service.main:app" in services["api"]["command"]
    assert services["api"]["build"]["dockerfile"] == "Dockerfile.api"
    for name in ("worker", "worker-cpu"):
        assert services[name]["command"][:4] == ["celery", "-A", "worker.celery_app", "worker"]
        assert services[name]["build"]["dockerfile"] == "Dockerfile.worker"


def test_gpu_reservation_with_a_cpu_fallback(compose):
    services = compose["services"]
    devices = services["worker"]["deploy"]["resources"]["reservations"]["devices"]
    assert devices == [{"driver": "nvidia", "count": 1, "capabilities": ["gpu"]}]
    assert "deploy" not in services["worker-cpu"] and services["worker-cpu"]["profiles"] == ["cpu"]
    assert "--profile cpu" in (ROOT / "docker-compose.yml").read_text()


def test_redis_keeps_nothing_on_disk(compose):
    command = compose["services"]["redis"]["command"]
    assert command[command.index("--save") + 1] == "" and command[command.index("--appendonly") + 1] == "no"


def test_api_image_has_no_torch():
    api = (ROOT / "Dockerfile.api").read_text()
    worker = (ROOT / "Dockerfile.worker").read_text()
    assert "'.[service]'" in api and "core" not in api.split("pip install", 1)[1].splitlines()[0]
    assert "'.[core,service]'" in worker
    for dockerfile in (api, worker):
        assert "USER pxp" in dockerfile
