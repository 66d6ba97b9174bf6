"""Bring a job's model and dataset to local files and point the spec at them.

The gateway stored references (``model:<id>``, ``dataset:<id>`` or an allowed URI); here
they become local paths, as ``pxp.pipeline.run`` expects. Objects are re-checked
against the job's tenant, and URIs against the URI policy at fetch time. Files already
present with the right sha256 (a resumed job) are not downloaded again.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from sqlalchemy.orm import Session

from pxp.errors import InvalidDataError, InvalidModelError, InvalidSpecError
from pxp.spec import JobSpec
from service.db.models import DatasetObject, Job, ModelObject
from service.settings import Settings
from service.storage import Storage
from service.storage.remote import fetch_uri

MODEL_REF = "model:"
DATASET_REF = "dataset:"
_SUFFIX = {
    "safetensors": ".safetensors",
    "torch-zip": ".pt",
    "tar": ".tar",
    "zip": ".zip",
}


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(1024 * 1024):
            digest.update(chunk)
    return digest.hexdigest()


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


def _fetch_remote(uri: str, dest: Path, settings: Settings, max_bytes: int, error_cls: type) -> Path:
    if dest.is_file():
        return dest
    tmp = dest.with_name(dest.name + ".part")
    try:
        fetch_uri(uri, tmp, settings, max_bytes=max_bytes, error_cls=error_cls)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    tmp.replace(dest)
    return dest


def _model_file(s: Session, job: Job, ref: str, storage: Storage, settings: Settings, inputs: Path) -> Path:
    if ref.startswith(MODEL_REF):
        row = s.get(ModelObject, ref[len(MODEL_REF) :])
        if row is None or row.tenant_id != job.tenant_id:
            raise InvalidSpecError(f"model {ref} not found")
        dest = inputs / f"model{_SUFFIX.get(row.format or '', '.bin')}"
        if row.storage_key:
            return _fetch_stored(storage, row.storage_key, row.sha256, dest)
        assert row.uri is not None
        return _fetch_remote(row.uri, dest, settings, settings.max_model_bytes, InvalidModelError)
    return _fetch_remote(ref, inputs / "model.bin", settings, settings.max_model_bytes, InvalidModelError)


def _data_file(s: Session, job: Job, ref: str, storage: Storage, settings: Settings, inputs: Path) -> Path:
    if ref.startswith(DATASET_REF):
        row = s.get(DatasetObject, ref[len(DATASET_REF) :])
        if row is None or row.tenant_id != job.tenant_id:
            raise InvalidSpecError(f"dataset {ref} not found")
        dest = inputs / f"data{_SUFFIX.get(row.format or '', '.bin')}"
        if row.storage_key:
            return _fetch_stored(storage, row.storage_key, row.sha256, dest)
        assert row.uri is not None
        return _fetch_remote(row.uri, dest, settings, settings.max_dataset_bytes, InvalidDataError)
    return _fetch_remote(ref, inputs / "data.bin", settings, settings.max_dataset_bytes, InvalidDataError)


def materialise(s: Session, job: Job, storage: Storage, settings: Settings, inputs: Path) -> JobSpec:
    """The job's spec with local paths for its model and data, and the study named after the job."""
    inputs.mkdir(parents=True, exist_ok=True)
    spec = JobSpec.model_validate(job.spec)
    if spec.model.weights is not None:
        spec.model.weights = str(_model_file(s, job, spec.model.weights, storage, settings, inputs))
    source = spec.data.source
    if source.startswith(DATASET_REF) or "://" in source:
        spec.data.source = str(_data_file(s, job, source, storage, settings, inputs))
    if spec.search is not None:
        spec.search.storage = None
        # One study per job, never a user-chosen name: studies of other tenants share the storage.
        spec.search.study_name = f"pxp-job-{job.id}"
    return spec
