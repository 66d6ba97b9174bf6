"""Python client of the pxp service (torch-free; needs only httpx).

>>> from pxp.client import PxpClient, watch
>>> with PxpClient("http://127.0.0.1:8000", api_key) as client:
...     model = client.upload_model("model.safetensors", "digits_vgg")
...     data = client.upload_dataset("digits.tar")
...     job = client.submit({"prune": {"rates": [0.0, 0.2, 0.4]}}, model_id=model["id"], dataset_id=data["id"])
...     final = watch(client, job["id"])          # live progress bar
...     client.download_all(job["id"], "out/")    # sha256-verified

The URL defaults to ``$PXP_URL`` or ``http://127.0.0.1:8000``; the key to ``$PXP_API_KEY``
or the file an embedded server writes (``$PXP_DATA_DIR/api-key``, default ``.pxp/api-key``).
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from types import TracebackType
from typing import IO, Any

import httpx

DEFAULT_URL = "http://127.0.0.1:8000"
TERMINAL = frozenset({"succeeded", "failed", "cancelled"})

Job = dict[str, Any]


class PxpApiError(Exception):
    """An error response of the service: HTTP status, ``error`` code and ``detail``."""

    def __init__(self, status: int, error: str, detail: str) -> None:
        super().__init__(f"{status} {error}: {detail}")
        self.status = status
        self.error = error
        self.detail = detail


def default_url() -> str:
    """The service URL: ``$PXP_URL``, else ``http://127.0.0.1:8000``."""
    return os.environ.get("PXP_URL", DEFAULT_URL)


def default_api_key() -> str | None:
    """The API key: ``$PXP_API_KEY``, else the embedded server's key file, else None."""
    if os.environ.get("PXP_API_KEY"):
        return os.environ["PXP_API_KEY"]
    key_file = Path(os.environ.get("PXP_DATA_DIR", ".pxp")) / "api-key"
    if key_file.is_file():
        return key_file.read_text().strip() or None
    return None


class PxpClient:
    """A synchronous client of the pxp REST API (``/v1``), one HTTP connection pool.

    Args:
        base_url: the gateway's URL (default :func:`default_url`).
        api_key: the tenant's key, sent as ``Authorization: Bearer`` (default :func:`default_api_key`).
        timeout: seconds for each request.
        transport: an httpx transport (tests pass the ASGI app's).

    Every method raises :class:`PxpApiError` for an error response (4xx/5xx) and
    ``httpx.TransportError`` when the server cannot be reached after its retries.
    Reads and submits are retried on transport errors; uploads are not.
    """

    def __init__(
        self,
        base_url: str | None = None,
        api_key: str | None = None,
        *,
        timeout: float = 60.0,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.base_url = (base_url or default_url()).rstrip("/")
        key = api_key if api_key is not None else default_api_key()
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        self._http = httpx.Client(
            base_url=self.base_url, headers=headers, timeout=timeout, transport=transport
        )

    # Plumbing --------------------------------------------------------------------------

    def close(self) -> None:
        """Close the connection pool."""
        self._http.close()

    def __enter__(self) -> PxpClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @staticmethod
    def _raise_for(resp: httpx.Response) -> None:
        if resp.is_success:
            return
        try:
            body = resp.json()
            error, detail = str(body.get("error", "error")), str(body.get("detail", resp.text))
        except (ValueError, AttributeError):
            error, detail = "error", resp.text[:500]
        raise PxpApiError(resp.status_code, error, detail)

    def _request(self, method: str, path: str, retries: int = 0, **kwargs: Any) -> Any:
        for attempt in range(retries + 1):
            try:
                resp = self._http.request(method, path, **kwargs)
            except httpx.TransportError:
                if attempt == retries:
                    raise
                time.sleep(min(2.0**attempt, 10.0))
                continue
            self._raise_for(resp)
            return resp.json()
        raise AssertionError("unreachable")

    # Models and datasets -----------------------------------------------------------------

    def upload_model(self, path: str | Path, architecture: str, kwargs: dict[str, Any] | None = None) -> dict:
        """Upload a checkpoint (safetensors or a torch.save zip of a state_dict).

        Args:
            path: the local checkpoint file.
            architecture: a registered architecture name (e.g. ``resnet18``, ``timm/vit_small_patch16_224``).
            kwargs: constructor keyword arguments (JSON values), e.g. ``{"num_classes": 10}``.

        Returns:
            The model resource: ``{id, architecture, kwargs, sha256, size_bytes, ...}``.

        Raises:
            PxpApiError: 400/413/422 for a file or architecture the gateway refuses.
        """
        path = Path(path)
        with open(path, "rb") as fh:
            return self._request(
                "POST",
                "/v1/models",
                data={"architecture": architecture, "kwargs": json.dumps(kwargs or {})},
                files={"file": (path.name, fh, "application/octet-stream")},
            )

    def register_model(self, uri: str, architecture: str, kwargs: dict[str, Any] | None = None) -> dict:
        """Register a checkpoint the workers fetch from ``uri`` (e.g. a pre-signed URL).

        Returns the model resource; raises :class:`PxpApiError` (422) for a refused URI.
        """
        return self._request(
            "POST",
            "/v1/models",
            data={"architecture": architecture, "kwargs": json.dumps(kwargs or {}), "uri": uri},
        )

    def upload_dataset(self, path: str | Path) -> dict:
        """Upload an ImageFolder tar/zip (``<class>/<image>``) or a safetensors tensor file.

        Returns the dataset resource ``{id, sha256, size_bytes, ...}``; raises
        :class:`PxpApiError` (400/413/422) for an archive the gateway refuses.
        """
        path = Path(path)
        with open(path, "rb") as fh:
            return self._request(
                "POST", "/v1/datasets", files={"file": (path.name, fh, "application/octet-stream")}
            )

    def register_dataset(self, uri: str) -> dict:
        """Register a dataset the workers fetch from ``uri``; returns the dataset resource."""
        return self._request("POST", "/v1/datasets", data={"uri": uri})

    def model(self, model_id: str) -> dict:
        """The model resource ``model_id``; :class:`PxpApiError` 404 if it is not this tenant's."""
        return self._request("GET", f"/v1/models/{model_id}", retries=2)

    def dataset(self, dataset_id: str) -> dict:
        """The dataset resource ``dataset_id``; :class:`PxpApiError` 404 if it is not this tenant's."""
        return self._request("GET", f"/v1/datasets/{dataset_id}", retries=2)

    # Jobs ------------------------------------------------------------------------------

    def submit(
        self,
        spec: Any = None,
        *,
        model_id: str | None = None,
        dataset_id: str | None = None,
        idempotency_key: str | None = None,
        callback_url: str | None = None,
    ) -> Job:
        """Create a job; returns the queued job (``{id, status, ...}``, HTTP 202).

        ``callback_url`` receives the job's final JSON on its terminal state, signed with the
        tenant's webhook secret (see docs/integrations.md).

        ``spec`` is a :class:`pxp.spec.JobSpec` or its dict; ``model_id``/``dataset_id``
        reference uploaded resources (or set ``spec.model.checkpoint``/``spec.data.source``
        to ``model:<id>``/``dataset:<id>``). A transport failure is retried under the same
        ``Idempotency-Key`` (generated if not given), so it never makes two jobs.

        Raises:
            PxpApiError: 422 for an invalid spec, 404 for an unknown model or dataset.
        """
        if spec is None:
            spec_dict: dict[str, Any] = {}
        elif hasattr(spec, "model_dump"):
            spec_dict = spec.model_dump(mode="json", exclude_none=True)
        else:
            spec_dict = dict(spec)
        body = {"spec": spec_dict, "model_id": model_id, "dataset_id": dataset_id}
        if callback_url is not None:
            body["callback_url"] = callback_url
        headers = {"Idempotency-Key": idempotency_key or uuid.uuid4().hex}
        return self._request("POST", "/v1/jobs", retries=3, json=body, headers=headers)

    def deliveries(self, job_id: str) -> list[dict[str, Any]]:
        """The job's webhook deliveries (status, attempts, last HTTP status), oldest first."""
        out: list[dict[str, Any]] = self._request("GET", f"/v1/jobs/{job_id}/deliveries", retries=3)
        return out

    def job(self, job_id: str) -> Job:
        """The job's current state: status, stage, progress, metrics, error; 404 if unknown."""
        return self._request("GET", f"/v1/jobs/{job_id}", retries=3)

    def jobs(self, *, limit: int | None = None, cursor: str | None = None, status: str | None = None) -> dict:
        """One page: ``{items, next_cursor}``."""
        params = {
            k: v for k, v in {"limit": limit, "cursor": cursor, "status": status}.items() if v is not None
        }
        return self._request("GET", "/v1/jobs", retries=3, params=params)

    def iter_jobs(self, *, status: str | None = None, page_size: int = 100) -> Iterator[Job]:
        """Every job of this tenant (optionally of one status), newest first, page by page."""
        cursor: str | None = None
        while True:
            page = self.jobs(limit=page_size, cursor=cursor, status=status)
            yield from page["items"]
            cursor = page.get("next_cursor")
            if not cursor:
                return

    def cancel(self, job_id: str) -> Job:
        """Ask to cancel the job; returns its state (``cancel_requested: true``). A running
        job stops at its next step; a finished job is left as it is."""
        return self._request("POST", f"/v1/jobs/{job_id}/cancel", retries=2)

    def events(self, job_id: str, *, timeout: float | None = None) -> Iterator[Job]:
        """Follow the job's server-sent events; yields job states until the final one."""
        with self._http.stream(
            "GET", f"/v1/jobs/{job_id}/events", timeout=httpx.Timeout(timeout, connect=10.0)
        ) as resp:
            if not resp.is_success:
                resp.read()
                self._raise_for(resp)
            event = "message"
            data: list[str] = []
            for line in resp.iter_lines():
                if not line:
                    if data:
                        job = json.loads("\n".join(data))
                        yield job
                        if event == "end":
                            return
                    event, data = "message", []
                elif line.startswith(":"):
                    continue
                else:
                    field, _, value = line.partition(":")
                    value = value[1:] if value.startswith(" ") else value
                    if field == "event":
                        event = value
                    elif field == "data":
                        data.append(value)

    def wait(
        self,
        job_id: str,
        *,
        timeout: float | None = None,
        poll_interval: float = 1.0,
        on_update: Callable[[Job], None] | None = None,
    ) -> Job:
        """Poll until the job is finished; raise ``TimeoutError`` after ``timeout`` seconds."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            job = self.job(job_id)
            if on_update is not None:
                on_update(job)
            if job["status"] in TERMINAL:
                return job
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"job {job_id} still {job['status']} after {timeout} s")
            time.sleep(poll_interval)

    # Artifacts -------------------------------------------------------------------------

    def artifacts(self, job_id: str) -> list[dict]:
        """The job's artifacts: ``[{name, sha256, size_bytes, content_type}, ...]``."""
        return self._request("GET", f"/v1/jobs/{job_id}/artifacts", retries=3)

    def download(self, job_id: str, name: str, dest: str | Path) -> Path:
        """Download one artifact to ``dest`` (a file, or a directory to put it in) and verify its sha256."""
        dest = Path(dest)
        with self._http.stream("GET", f"/v1/jobs/{job_id}/artifacts/{name}") as resp:
            if not resp.is_success:
                resp.read()
                self._raise_for(resp)
            expected = resp.headers.get("x-checksum-sha256")
            disposition = resp.headers.get("content-disposition", "")
            filename = (
                disposition.split("filename=", 1)[-1].strip('"') if "filename=" in disposition else name
            )
            target = dest / Path(filename).name if dest.is_dir() else dest
            target.parent.mkdir(parents=True, exist_ok=True)
            tmp = target.with_name(target.name + ".part")
            digest = hashlib.sha256()
            with open(tmp, "wb") as out:
                for chunk in resp.iter_bytes(1024 * 1024):
                    digest.update(chunk)
                    out.write(chunk)
        if expected and digest.hexdigest() != expected:
            tmp.unlink(missing_ok=True)
            raise OSError(f"artifact {name}: sha256 mismatch (got {digest.hexdigest()}, expected {expected})")
        tmp.replace(target)
        return target

    def download_all(
        self, job_id: str, dest_dir: str | Path, names: list[str] | None = None
    ) -> dict[str, Path]:
        """Download every artifact (or those in ``names``) into ``dest_dir``, each sha256-verified.

        Returns name -> local path. Raises ``OSError`` on a checksum mismatch (nothing
        partial is left behind) and :class:`PxpApiError` for an unknown job.
        """
        dest_dir = Path(dest_dir)
        dest_dir.mkdir(parents=True, exist_ok=True)
        wanted = [a["name"] for a in self.artifacts(job_id) if names is None or a["name"] in names]
        return {name: self.download(job_id, name, dest_dir) for name in wanted}


# Live progress -----------------------------------------------------------------------------


class ProgressBar:
    """One-line progress bar on a terminal; one line per stage change otherwise."""

    def __init__(self, stream: IO[str] | None = None, width: int = 30) -> None:
        self.stream = stream or sys.stderr
        self.width = width
        self.tty = hasattr(self.stream, "isatty") and self.stream.isatty()
        self._last: tuple[Any, ...] | None = None

    def update(self, job: Job) -> None:
        fraction = float(job.get("progress") or 0.0)
        filled = round(fraction * self.width)
        bar = "#" * filled + "." * (self.width - filled)
        stage = job.get("stage") or job.get("status", "")
        trial = f" trial {job['trial']}" if job.get("trial") is not None else ""
        text = f"[{bar}] {fraction * 100:5.1f}% {job.get('status', '')}: {stage}{trial}"
        if job.get("message"):
            text += f" - {str(job['message'])[:60]}"
        key = (job.get("status"), stage, job.get("trial"), round(fraction, 3))
        if key == self._last:
            return
        if self.tty:
            self.stream.write("\r\x1b[2K" + text)
        elif self._last is None or key[:3] != self._last[:3]:
            self.stream.write(text + "\n")
        self._last = key
        self.stream.flush()

    def close(self, job: Job | None = None) -> None:
        if job is not None:
            self.update(job)
        if self.tty:
            self.stream.write("\n")
        self.stream.flush()


def watch(
    client: PxpClient,
    job_id: str,
    *,
    stream: IO[str] | None = None,
    timeout: float | None = None,
    poll_interval: float = 1.0,
) -> Job:
    """Show a live progress bar until the job finishes; return the final job.

    Follows the server-sent events, and falls back to polling if the stream breaks.
    """
    bar = ProgressBar(stream)
    final: Job | None = None
    try:
        for job in client.events(job_id, timeout=timeout):
            bar.update(job)
            if job["status"] in TERMINAL:
                final = job
                break
    except (httpx.TransportError, PxpApiError):
        pass
    if final is None or final.get("spec") is None:
        final = client.wait(job_id, timeout=timeout, poll_interval=poll_interval, on_update=bar.update)
    bar.close(final)
    return final


# A local embedded server -------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class LocalServer:
    """Run ``pxp-service serve`` (embedded mode: SQLite, local artifacts, a worker process) in a
    subprocess on a free loopback port, for the demo, notebooks, tests and benchmarks.

    >>> with LocalServer(".pxp-demo") as server, PxpClient(server.url, server.api_key) as client:
    ...     ...

    The subprocess runs ``python -m service.embedded`` (the ``service`` extra must be
    installed); nothing of the service is imported into this process.
    """

    def __init__(
        self,
        data_dir: str | Path,
        *,
        port: int | None = None,
        env: dict[str, str] | None = None,
        workers: int = 1,
        startup_timeout_s: float = 90.0,
        log_path: str | Path | None = None,
    ) -> None:
        self.data_dir = Path(data_dir)
        self.port = port or _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = {**os.environ, **(env or {}), "PXP_DATA_DIR": str(self.data_dir)}
        self.env.pop("PXP_BROKER_URL", None)
        self.workers = workers
        self.startup_timeout_s = startup_timeout_s
        self.log_path = Path(log_path) if log_path else self.data_dir / "server.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.api_key = ""

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    def start(self) -> LocalServer:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        cmd = [sys.executable, "-m", "service.embedded", "--host", "127.0.0.1", "--port", str(self.port)]
        cmd += ["--workers", str(self.workers), "--log-level", "warning"]
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(cmd, env=self.env, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + self.startup_timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"pxp server exited with {self.proc.returncode}; see {self.log_path}")
            try:
                if httpx.get(self.url + "/readyz", timeout=1).status_code == 200:
                    key_file = self.data_dir / "api-key"
                    self.api_key = key_file.read_text().strip() if key_file.is_file() else ""
                    return self
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        self.stop()
        raise TimeoutError(f"pxp server not ready after {self.startup_timeout_s} s; see {self.log_path}")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def __enter__(self) -> LocalServer:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


# Functions the ``pxp submit/status/download`` CLI calls ------------------------------------


def submit(
    spec: Any = None,
    *,
    model: str | Path | None = None,
    architecture: str | None = None,
    kwargs: dict[str, Any] | None = None,
    data: str | Path | None = None,
    follow: bool = False,
    url: str | None = None,
    api_key: str | None = None,
    idempotency_key: str | None = None,
    stream: IO[str] | None = None,
) -> Job:
    """Upload ``model`` (a checkpoint path, with ``architecture``/``kwargs``) and ``data`` (an
    archive path; ``digits`` or a URI are passed through) and submit ``spec``; with
    ``follow``, show the progress bar and return the final job."""
    spec_dict: dict[str, Any] = {}
    if spec is not None:
        spec_dict = (
            spec.model_dump(mode="json", exclude_none=True) if hasattr(spec, "model_dump") else dict(spec)
        )
    with PxpClient(url, api_key) as client:
        model_id = dataset_id = None
        if model is not None:
            arch = architecture or spec_dict.get("model", {}).get("architecture")
            if not arch:
                raise ValueError("an architecture is needed to upload a model")
            uploaded = client.upload_model(model, arch, kwargs or spec_dict.get("model", {}).get("kwargs"))
            model_id = uploaded["id"]
            spec_dict.pop("model", None)
        elif architecture is not None:
            spec_dict.setdefault("model", {})["architecture"] = architecture
            if kwargs:
                spec_dict["model"]["kwargs"] = kwargs
        if data is not None:
            text = str(data)
            if Path(text).is_file():
                dataset_id = client.upload_dataset(text)["id"]
                spec_dict.get("data", {}).pop("source", None)
            else:
                spec_dict.setdefault("data", {})["source"] = text
        job = client.submit(
            spec_dict, model_id=model_id, dataset_id=dataset_id, idempotency_key=idempotency_key
        )
        if follow:
            job = watch(client, job["id"], stream=stream)
        return job


def status(
    job_id: str | None = None,
    *,
    follow: bool = False,
    url: str | None = None,
    api_key: str | None = None,
    stream: IO[str] | None = None,
) -> Job | list[Job]:
    """One job's state (with ``follow``, watched to the end), or the latest page of jobs."""
    with PxpClient(url, api_key) as client:
        if job_id is None:
            return client.jobs()["items"]
        if follow:
            return watch(client, job_id, stream=stream)
        return client.job(job_id)


def download(
    job_id: str,
    dest: str | Path = ".",
    *,
    names: list[str] | None = None,
    url: str | None = None,
    api_key: str | None = None,
) -> dict[str, Path]:
    """Download a job's artifacts (all, or ``names``) into ``dest``, sha256-verified."""
    with PxpClient(url, api_key) as client:
        return client.download_all(job_id, dest, names)
