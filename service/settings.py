"""One settings class for every mode of the service (``PXP_`` environment prefix).

The mode follows from what is configured:

* **embedded** (nothing set): SQLite and a local artifact directory under ``PXP_DATA_DIR``,
  jobs run by a child process fed from the database, no broker.
* **production**: ``PXP_DATABASE_URL`` points at Postgres, ``PXP_BROKER_URL`` at Redis and
  ``PXP_STORAGE_BACKEND=s3`` at an S3-compatible bucket; jobs run in Celery workers.

Lists (``PXP_ALLOWED_URI_SCHEMES``) accept a comma-separated string or JSON.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import quote

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

MiB = 1024 * 1024

#: URI schemes the worker knows how to fetch. ``allowed_uri_schemes`` selects a subset.
SUPPORTED_URI_SCHEMES: frozenset[str] = frozenset({"http", "https", "s3"})


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="PXP_", extra="ignore", env_ignore_empty=True)

    # Where embedded-mode state lives (SQLite file, artifacts, job work directories).
    data_dir: Path = Path(".pxp")

    # Persistence and queue. Unset means embedded defaults derived from data_dir.
    database_url: str | None = None
    #: Test pooled connections before use (one extra round trip per checkout).
    db_pool_pre_ping: bool = True
    db_pool_size: Annotated[int, Field(ge=1)] = 10
    broker_url: str | None = None
    #: Optuna RDB URL. Unset: the service database with the ``optuna`` schema on Postgres,
    #: ``<data_dir>/optuna.db`` on SQLite. Either way separate from our alembic_version.
    optuna_storage: str | None = None

    storage_backend: Literal["local", "s3"] = "local"
    storage_dir: Path | None = None
    s3_bucket: str = "pxp"
    s3_endpoint_url: str | None = None
    s3_region: str = "us-east-1"
    s3_access_key_id: str | None = None
    s3_secret_access_key: str | None = None
    #: Key prefix inside the bucket (several deployments can share one bucket).
    s3_prefix: str = ""

    # Upload limits (bytes / counts). Bodies above these are refused with 413.
    max_model_bytes: Annotated[int, Field(ge=1)] = 2048 * MiB
    max_dataset_bytes: Annotated[int, Field(ge=1)] = 4096 * MiB
    max_json_bytes: Annotated[int, Field(ge=1)] = 1 * MiB
    #: One limit for the gateway's check and the worker's extraction: the defaults equal
    #: ``pxp.data.load.MAX_MEMBERS`` / ``MAX_ARCHIVE_BYTES`` (a test keeps them equal), so an
    #: archive the gateway accepts is one the worker extracts.
    max_archive_members: Annotated[int, Field(ge=1)] = 100_000
    max_archive_uncompressed_bytes: Annotated[int, Field(ge=1)] = 2048 * MiB
    #: An archive may expand to at most this many times its own size (zip/gzip bombs).
    max_archive_ratio: Annotated[float, Field(gt=1)] = 200.0

    # Remote inputs given as URIs instead of uploads.
    allowed_uri_schemes: Annotated[list[str], NoDecode] = ["https"]
    allow_private_addresses: bool = False
    #: ``s3://bucket/key`` inputs, per tenant name: ``{"acme": ["acme-data/models/", "acme-raw"]}``
    #: (a bare bucket allows all of it). Read with the service's S3 credentials; the artifact
    #: bucket ``s3_bucket`` is never allowed. JSON in ``PXP_S3_INPUT_ALLOW``.
    s3_input_allow: dict[str, list[str]] = Field(default_factory=dict)
    uri_timeout_s: Annotated[float, Field(gt=0)] = 60.0

    # Webhooks (a job's ``callback_url``). The address policy is the one of URIs above.
    callback_url_schemes: Annotated[list[str], NoDecode] = ["https"]
    #: Run the outbox delivery loop in each worker process (Celery and embedded).
    webhook_delivery: bool = True
    webhook_timeout_s: Annotated[float, Field(gt=0)] = 10.0
    #: Attempts before a delivery is given up (``failed``); retry n waits base * 2**(n-1), capped.
    webhook_max_attempts: Annotated[int, Field(ge=1)] = 12
    webhook_backoff_base_s: Annotated[float, Field(gt=0)] = 5.0
    webhook_backoff_max_s: Annotated[float, Field(gt=0)] = 3600.0
    webhook_poll_interval_s: Annotated[float, Field(gt=0)] = 2.0

    # Auth.
    #: Seconds a verified API key stays cached in the gateway process (revocation delay).
    auth_cache_ttl_s: Annotated[float, Field(ge=0)] = 5.0

    # Jobs and workers.
    job_soft_time_limit_s: Annotated[int, Field(ge=1)] = 6 * 3600
    job_time_limit_s: Annotated[int, Field(ge=1)] = 6 * 3600 + 300
    #: A worker child process is replaced after this many jobs or past this resident size.
    #: Not 1: replacing the child after every job delays the next job by seconds.
    worker_max_tasks_per_child: Annotated[int, Field(ge=1)] = 10
    worker_max_memory_per_child_mb: Annotated[int, Field(ge=64)] = 8192
    worker_concurrency: Annotated[int, Field(ge=1)] = 1
    heartbeat_interval_s: Annotated[float, Field(gt=0)] = 10.0
    #: A running job whose heartbeat is older than this is considered lost.
    heartbeat_stale_s: Annotated[float, Field(gt=0)] = 90.0
    #: A queued job is re-sent when it has no broker marker and was enqueued this long ago.
    queued_grace_s: Annotated[float, Field(ge=0)] = 30.0
    reconcile_interval_s: Annotated[float, Field(gt=0)] = 30.0
    max_attempts: Annotated[int, Field(ge=1)] = 3
    #: Where workers keep job inputs and stage outputs (a retried job resumes from here).
    work_dir: Path | None = None
    #: Prefix of Redis keys the service writes next to the broker's own.
    redis_key_prefix: str = "pxp:"
    #: Celery queue the jobs go to.
    queue_name: str = "pxp-jobs"
    embedded_poll_interval_s: Annotated[float, Field(gt=0)] = 0.25
    #: Niceness of the embedded worker process, so the gateway beside it stays responsive.
    embedded_worker_nice: Annotated[int, Field(ge=0, le=19)] = 5
    #: On shutdown, how long a running embedded job may take to finish before it is stopped
    #: (it resumes on the next start).
    embedded_stop_timeout_s: Annotated[float, Field(ge=0)] = 10.0

    # Logs: JSON lines (request_id, job_id, tenant, stage; see pxp.jsonlog) or plain text.
    log_format: Literal["json", "text"] = "json"
    log_level: str = "INFO"

    # Gateway.
    page_size_default: Annotated[int, Field(ge=1)] = 20
    page_size_max: Annotated[int, Field(ge=1)] = 100
    sse_poll_interval_s: Annotated[float, Field(gt=0)] = 0.5
    #: When set, ``GET /metrics`` requires ``Authorization: Bearer <metrics_token>``.
    metrics_token: str | None = None
    progress_min_interval_s: Annotated[float, Field(ge=0)] = 0.2

    @field_validator("allowed_uri_schemes", "callback_url_schemes", mode="before")
    @classmethod
    def _split_schemes(cls, value: Any) -> Any:
        if isinstance(value, str):
            text = value.strip()
            if text.startswith("["):
                import json

                return json.loads(text)
            return [part.strip() for part in text.split(",") if part.strip()]
        return value

    @field_validator("callback_url_schemes")
    @classmethod
    def _callback_schemes(cls, value: list[str]) -> list[str]:
        schemes = [s.lower() for s in value]
        if not set(schemes) <= {"http", "https"}:
            raise ValueError("callback URL schemes must be http and/or https")
        return schemes

    @field_validator("allowed_uri_schemes")
    @classmethod
    def _known_schemes(cls, value: list[str]) -> list[str]:
        schemes = [s.lower() for s in value]
        unknown = sorted(set(schemes) - SUPPORTED_URI_SCHEMES)
        if unknown:
            raise ValueError(
                f"unsupported URI scheme(s) {unknown}; supported: {sorted(SUPPORTED_URI_SCHEMES)}"
            )
        return schemes

    # Derived values ---------------------------------------------------------------------

    @property
    def embedded(self) -> bool:
        """True when no broker is configured: jobs run in the embedded worker."""
        return self.broker_url is None

    @property
    def db_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite:///{(self.data_dir / 'pxp.db').resolve()}"

    @property
    def is_sqlite(self) -> bool:
        return self.db_url.startswith("sqlite")

    @property
    def optuna_url(self) -> str:
        if self.optuna_storage:
            return self.optuna_storage
        if self.is_sqlite:
            return f"sqlite:///{(self.data_dir / 'optuna.db').resolve()}"
        sep = "&" if "?" in self.db_url else "?"
        return f"{self.db_url}{sep}options={quote('-csearch_path=optuna')}"

    @property
    def artifact_dir(self) -> Path:
        return self.storage_dir or (self.data_dir / "artifacts")

    @property
    def jobs_dir(self) -> Path:
        return self.work_dir or (self.data_dir / "work")

    @property
    def api_key_file(self) -> Path:
        """Where embedded mode writes the default API key for local clients."""
        return self.data_dir / "api-key"

    def env(self) -> dict[str, str]:
        """These settings as ``PXP_*`` environment variables (for child processes)."""
        import json

        out: dict[str, str] = {}
        for name, value in self.model_dump(exclude_none=True).items():
            key = f"PXP_{name.upper()}"
            if isinstance(value, list):
                out[key] = ",".join(value)
            elif isinstance(value, bool):
                out[key] = "true" if value else "false"
            elif isinstance(value, dict):
                out[key] = json.dumps(value)
            else:
                out[key] = str(value)
        return out


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings read from the environment (cached)."""
    return Settings()
