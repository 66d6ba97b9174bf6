"""The PXP_ settings class: modes, derived URLs, list parsing."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from service.settings import Settings


def test_no_configuration_is_embedded(monkeypatch, tmp_path):
    for name in ("PXP_DATABASE_URL", "PXP_BROKER_URL", "PXP_STORAGE_BACKEND"):
        monkeypatch.delenv(name, raising=False)
    s = Settings(data_dir=tmp_path)
    assert s.embedded and s.is_sqlite and s.storage_backend == "local"
    assert s.db_url == f"sqlite:///{tmp_path.resolve()}/pxp.db"
    assert s.optuna_url == f"sqlite:///{tmp_path.resolve()}/optuna.db"
    assert s.artifact_dir == tmp_path / "artifacts" and s.api_key_file == tmp_path / "api-key"
    assert s.allowed_uri_schemes == ["https"] and s.allow_private_addresses is False


def test_environment_selects_production(monkeypatch):
    monkeypatch.setenv("PXP_DATABASE_URL", "postgresql+psycopg://u:p@db:5432/pxp")
    monkeypatch.setenv("PXP_BROKER_URL", "redis://redis:6379/0")
    monkeypatch.setenv("PXP_STORAGE_BACKEND", "s3")
    monkeypatch.setenv("PXP_ALLOWED_URI_SCHEMES", "https, http")
    monkeypatch.setenv("PXP_MAX_MODEL_BYTES", "1024")
    s = Settings()
    assert not s.embedded and not s.is_sqlite and s.storage_backend == "s3"
    assert s.allowed_uri_schemes == ["https", "http"] and s.max_model_bytes == 1024
    # Optuna: same database, its own schema (created by the migration).
    assert s.optuna_url == "postgresql+psycopg://u:p@db:5432/pxp?options=-csearch_path%3Doptuna"


def test_empty_variables_mean_unset(monkeypatch):
    monkeypatch.setenv("PXP_BROKER_URL", "")
    monkeypatch.setenv("PXP_STORAGE_BACKEND", "")
    s = Settings()
    assert s.embedded and s.storage_backend == "local"


def test_json_list_and_unsupported_scheme(monkeypatch):
    monkeypatch.setenv("PXP_ALLOWED_URI_SCHEMES", '["HTTPS"]')
    assert Settings().allowed_uri_schemes == ["https"]
    monkeypatch.setenv("PXP_ALLOWED_URI_SCHEMES", "https,file")
    with pytest.raises(ValidationError, match="file"):
        Settings()


def test_env_round_trip(tmp_path):
    s = Settings(data_dir=tmp_path, broker_url="redis://x:1/2", allowed_uri_schemes=["http", "https"])
    env = s.env()
    assert env["PXP_BROKER_URL"] == "redis://x:1/2" and env["PXP_ALLOWED_URI_SCHEMES"] == "http,https"
    assert "PXP_DATABASE_URL" not in env
