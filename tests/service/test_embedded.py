"""``pxp-service serve`` with no configuration: SQLite, a local directory and the embedded worker."""

from __future__ import annotations

import io
import json
import stat
import subprocess
import sys
import time

import httpx
import pytest

from pxp.client import LocalServer, PxpClient, watch
from tests.conftest import ROOT, wait_for

SCRIPTED = {"PXP_PROGRESS_MIN_INTERVAL_S": "0"}


class ScriptedServer(LocalServer):
    """:class:`LocalServer`, but the server is tests/service/scripted_server.py: the same
    ``service.embedded.main`` with the scripted pipeline passed in as an argument."""

    def start(self) -> ScriptedServer:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        cmd = [sys.executable, "-m", "tests.service.scripted_server", "--host", "127.0.0.1"]
        cmd += ["--port", str(self.port), "--workers", str(self.workers), "--log-level", "warning"]
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(cmd, cwd=ROOT, env=self.env, stdout=log, stderr=subprocess.STDOUT)

        def ready() -> bool:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}; see {self.log_path}")
            try:
                return httpx.get(self.url + "/readyz", timeout=1).status_code == 200
            except httpx.TransportError:
                return False

        try:
            wait_for(ready, self.startup_timeout_s, 0.2, "the embedded server")
        except BaseException:
            self.stop()
            raise
        key_file = self.data_dir / "api-key"
        self.api_key = key_file.read_text().strip() if key_file.is_file() else ""
        return self


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    data_dir = tmp_path_factory.mktemp("embedded")
    env = {k: "" for k in ("PXP_DATABASE_URL", "PXP_BROKER_URL", "PXP_STORAGE_BACKEND")}
    with ScriptedServer(data_dir, env={**SCRIPTED, **env}) as srv:
        yield srv


def _clean_env(monkeypatch):
    for name in ("PXP_DATABASE_URL", "PXP_BROKER_URL", "PXP_STORAGE_BACKEND"):
        monkeypatch.delenv(name, raising=False)


def test_embedded_server_is_ready_with_a_private_key_file(server):
    key_file = server.data_dir / "api-key"
    assert server.api_key.startswith("pxp_") and key_file.read_text().strip() == server.api_key
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert (server.data_dir / "pxp.db").is_file()
    with PxpClient(server.url, server.api_key) as client:
        assert client._http.get("/readyz").json()["checks"] == {
            "database": "ok",
            "broker": "ok",
            "storage": "ok",
        }


def test_job_runs_in_the_embedded_worker_with_a_progress_bar(server, tmp_path):
    out = io.StringIO()
    with PxpClient(server.url, server.api_key) as client:
        job = client.submit(
            {
                "model": {
                    "architecture": "digits_vgg",
                    "kwargs": {"script": "succeed", "steps": 4, "delay": 0.4},
                }
            }
        )
        final = watch(client, job["id"], stream=out, timeout=60)
        assert final["status"] == "succeeded", final
        paths = client.download_all(job["id"], tmp_path)
    assert paths["model.safetensors"].read_bytes() == b"weights-digits_vgg"
    lines = out.getvalue().splitlines()
    assert lines[-1].startswith("[##############################] 100.0% succeeded")
    assert any("stage" in line for line in lines)
    stored = list((server.data_dir / "artifacts" / "sha256").rglob("*"))
    assert any(p.is_file() for p in stored)


def test_restart_keeps_the_key_and_resumes_an_interrupted_job(tmp_path):
    env = {**SCRIPTED, "PXP_DATABASE_URL": "", "PXP_BROKER_URL": "", "PXP_EMBEDDED_STOP_TIMEOUT_S": "0.5"}
    spec = {
        "model": {"architecture": "digits_vgg", "kwargs": {"script": "succeed", "steps": 40, "delay": 0.1}}
    }
    with ScriptedServer(tmp_path, env=env) as first, PxpClient(first.url, first.api_key) as client:
        job_id = client.submit(spec)["id"]
        deadline = time.monotonic() + 30
        while client.job(job_id)["stage"] not in {f"stage{i}" for i in range(3, 40)}:
            assert time.monotonic() < deadline
            time.sleep(0.1)
        key = first.api_key
    # The stop terminated the job mid-way; the next start sees its worker process gone.
    with ScriptedServer(tmp_path, env=env) as second, PxpClient(second.url, second.api_key) as client:
        assert second.api_key == key
        final = client.wait(job_id, timeout=60, poll_interval=0.2)
        assert final["status"] == "succeeded" and final["attempts"] == 2
        seen = json.loads(client._http.get(f"/v1/jobs/{job_id}/artifacts/results.json").content)
        assert seen["attempts"] == 2 and len(seen["resumed"]) >= 3
