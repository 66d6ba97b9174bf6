"""Bring a job's model and dataset to local files and point the spec at them.

The gateway stored references (``model:<id>``, ``dataset:<id>`` or an allowed URI); here
they become local paths, as ``pxp.pipeline.run`` expects. Objects are re-checked
against the job's tenant, and URIs (``http(s)``, and ``s3://`` against the tenant's
allow-list) against the URI policy at fetch time. Files already
present with the right sha256 (a resumed job) are not downloaded again.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy.orm import Session

from pxp.errors import InvalidDataError, InvalidModelError, InvalidSpecError, UserError
from pxp.hashing import sha256_file
from pxp.spec import JobSpec
from service.db import repo
from service.db.models import DatasetObject, Job, ModelObject
from service.db.refs import DATASET_REF, MODEL_REF, is_uri, parse_ref
from service.settings import Settings
from service.storage import Storage
from service.storage.inputs import fetch_input_uri

_SUFFIX = {
    "safetensors": ".safetensors",
    "torch-zip": ".pt",
    "tar": ".tar",
    "zip": ".zip",
}


def _fetch_stored(storage: Storage, key: str, sha: str | None, dest: Path) -> Path:
    if dest.is_file() and sha is not None and sha256_file(dest) == sha:
        return dest
    tmp = dest.with_name(dest.name + ".part")
    storage.download(key, tmp)
    if sha is not None and sha256_file(tmp) != sha:
        tmp.unlink(missing_ok=True)
        raise RuntimeError(f"stored object {key} does not match its sha256")
    tmp.replace(dest)
    return dest


def _fetch_remote(
    uri: str, dest: Path, settings: Settings, tenant: str, max_bytes: int, error_cls: type[UserError]
) -> Path:
    if dest.is_file():
        return dest
    tmp = dest.with_name(dest.name + ".part")
    try:
        fetch_input_uri(uri, tmp, settings, tenant, max_bytes=max_bytes, error_cls=error_cls)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    tmp.replace(dest)
    return dest


@dataclass(frozen=True)
class _InputKind:
    """What differs between a job's model and its dataset input."""

    noun: str
    prefix: str
    stem: str
    error_cls: type[UserError]
    lookup: Callable[[Session, str, str], ModelObject | DatasetObject | None]
    max_bytes: Callable[[Settings], int]


_MODEL = _InputKind(
    "model", MODEL_REF, "model", InvalidModelError, repo.get_model, lambda st: st.max_model_bytes
)
_DATASET = _InputKind(
    "dataset", DATASET_REF, "data", InvalidDataError, repo.get_dataset, lambda st: st.max_dataset_bytes
)


def _input_file(
    s: Session, job: Job, ref: str, kind: _InputKind, storage: Storage, settings: Settings, inputs: Path
) -> Path:
    """A local copy of ``ref``: a stored object of the job's tenant (``model:<id>`` /
    ``dataset:<id>``) or a URI, checked against the URI policy now."""
    max_bytes = kind.max_bytes(settings)
    tenant = repo.tenant_name(s, job.tenant_id) or ""
    object_id = parse_ref(ref, kind.prefix)
    if object_id is None:
        return _fetch_remote(ref, inputs / f"{kind.stem}.bin", settings, tenant, max_bytes, kind.error_cls)
    row = kind.lookup(s, job.tenant_id, object_id)
    if row is None:
        raise InvalidSpecError(f"{kind.noun} {ref} not found")
    dest = inputs / f"{kind.stem}{_SUFFIX.get(row.format or '', '.bin')}"
    if row.storage_key:
        return _fetch_stored(storage, row.storage_key, row.sha256, dest)
    assert row.uri is not None
    return _fetch_remote(row.uri, dest, settings, tenant, max_bytes, kind.error_cls)


def materialise(s: Session, job: Job, storage: Storage, settings: Settings, inputs: Path) -> JobSpec:
    """The job's spec with local paths for its model and data, and the study named after the
    job, with its job id and tenant as the study's user attributes."""
    inputs.mkdir(parents=True, exist_ok=True)
    spec = JobSpec.model_validate(job.spec)
    if spec.model.weights is not None:
        spec.model.weights = str(_input_file(s, job, spec.model.weights, _MODEL, storage, settings, inputs))
    source = spec.data.source
    if parse_ref(source, DATASET_REF) is not None or is_uri(source):
        spec.data.source = str(_input_file(s, job, source, _DATASET, storage, settings, inputs))
    if spec.search is not None:
        spec.search.storage = None
        # One study per job, never a user-chosen name: studies of other tenants share the storage.
        spec.search.study_name = f"pxp-job-{job.id}"
        # Whose it is, for optuna-dashboard and other tools reading the storage.
        spec.search.study_user_attrs = {
            "job_id": job.id,
            "tenant": repo.tenant_name(s, job.tenant_id) or "",
            "tenant_id": job.tenant_id,
        }
    return spec
