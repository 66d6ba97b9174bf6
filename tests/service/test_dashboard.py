"""The ``/ui`` dashboard in a real browser: headless Chromium (Debian's ``/usr/bin/chromium``)
driven by Playwright against a live gateway, on a finished job seeded in the database with
curves, a search study, a compression summary with latency, and artifacts in S3."""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import shutil
from pathlib import Path

import httpx
import pytest

from service.db import repo
from service.db.models import JobStatus
from service.db.types import utcnow
from service.storage import make_storage, put_blob

CHROMIUM = "/usr/bin/chromium"
RATES = [round(0.05 * i, 2) for i in range(20)]


def _curve(label: str, drop: float, split: str = "test") -> dict:
    accs = [max(0.1, 0.95 - drop * r**2 * 4) for r in RATES]
    return {
        "label": label,
        "split": split,
        "components": "filters",
        "rates": RATES,
        "accuracies": accs,
        "unpruned_accuracy": 0.95,
        "apr": sum(accs) / len(accs),
        "safe_rate": 0.3,
    }


RESULT = {
    "architecture": "digits_vgg",
    "family": "cnn",
    "num_classes": 10,
    "class_names": [str(i) for i in range(10)],
    "split_sizes": {"reference": 100, "search": 300, "test": 600},
    "curves": [
        _curve("lrp", 0.15),
        _curve("gradient", 0.3),
        _curve("weight", 0.4),
        _curve("random", 0.8),
        _curve("lrp", 0.12, split="search"),
    ],
    "chosen_label": "lrp",
    "chosen_rate": 0.3,
    "compression": {
        "criterion": "lrp",
        "rate": 0.3,
        "params_before": 120000,
        "params_after": 61000,
        "macs_before": 9_000_000,
        "macs_after": 4_100_000,
        "params_removed_fraction": 0.49,
        "flops_removed_fraction": 0.54,
        "unpruned_test_accuracy": 0.95,
        "test_accuracy": 0.94,
        "latency": {"original_ms": 4.2, "compressed_ms": 2.1, "device": "cpu", "batch_size": 1},
    },
    "artifacts": {"model.safetensors": "model.safetensors", "study": "study.json"},
}
STUDY = {
    "study_name": "pxp-job-ui",
    "default_value": 0.80,
    "trials_completed": 12,
    "trials_pruned": 0,
    "history": [
        {"number": i, "state": "COMPLETE", "value": 0.78 + 0.01 * (i % 5) + 0.004 * i} for i in range(12)
    ],
}
MODEL_BYTES = b"safetensors-ish " + secrets.token_bytes(2048)


@pytest.fixture
def finished_job(committed_factory, worker_settings, tmp_path):
    storage = make_storage(worker_settings)
    with committed_factory() as s:
        key, plaintext = repo.create_api_key(s, f"ui-{secrets.token_hex(4)}")
        spec = {"model": {"architecture": "digits_vgg"}}
        job = repo.create_job(
            s, key.tenant_id, spec, model_id=None, dataset_id=None, idempotency_key=None, request_hash=None
        )
        s.commit()
        assert repo.claim_job(s, job.id, "ui-seed", utcnow())
        s.commit()
        assert repo.finish_job(
            s,
            job.id,
            "ui-seed",
            JobStatus.SUCCEEDED,
            result=RESULT,
            metrics={"chosen_label": "lrp", "chosen_rate": 0.3, "test_apr": 0.9},
        )
        for name, filename, content, ctype in (
            ("model.safetensors", "model.safetensors", MODEL_BYTES, "application/octet-stream"),
            ("study", "study.json", json.dumps(STUDY).encode(), "application/json"),
        ):
            path = tmp_path / filename
            path.write_bytes(content)
            sha = hashlib.sha256(content).hexdigest()
            repo.put_artifact(
                s,
                job.id,
                name=name,
                filename=filename,
                storage_key=put_blob(storage, path, sha, ctype),
                sha256=sha,
                size_bytes=len(content),
                content_type=ctype,
            )
        s.commit()
        return job.id, plaintext


@pytest.mark.service
def test_ui_is_static_with_a_strict_csp(live_gateway):
    resp = httpx.get(f"{live_gateway}/ui/", timeout=10)
    assert resp.status_code == 200 and '<canvas id="curves"' in resp.text
    assert "script-src 'self'" in resp.headers["content-security-policy"]
    js = httpx.get(f"{live_gateway}/ui/app.js", timeout=10)
    assert js.status_code == 200 and "drawChart" in js.text
    assert "http" not in js.text.replace("http.response", ""), (
        "the dashboard must load nothing from elsewhere"
    )


@pytest.mark.service
@pytest.mark.browser
@pytest.mark.timeout(120)
def test_dashboard_renders_curves_and_downloads_an_artifact(live_gateway, finished_job, tmp_path):
    if not Path(CHROMIUM).is_file():
        pytest.fail(f"{CHROMIUM} is missing: apt-get install chromium (.ci/run does)")
    from playwright.sync_api import sync_playwright

    job_id, key = finished_job
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True)
        try:
            page = browser.new_page(accept_downloads=True, viewport={"width": 1400, "height": 1000})
            errors: list[str] = []
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            page.on("console", lambda msg: errors.append(msg.text) if msg.type == "error" else None)
            page.goto(f"{live_gateway}/ui/")
            page.fill("#apikey", "pxp_wrong_key")
            page.click("#signin-form button")
            page.wait_for_selector("#signin-error:has-text('not valid')")
            errors.clear()  # the refused key's 401 is logged by the browser
            page.fill("#apikey", key)
            page.click("#signin-form button")
            page.click(f'tr[data-job="{job_id}"]', timeout=15000)
            page.wait_for_selector(f'#detail[data-rendered="{job_id}"]', timeout=15000)
            assert page.evaluate("sessionStorage.getItem('pxp.apiKey')") == key

            series = json.loads(page.get_attribute("#curves", "data-series") or "[]")
            assert series == [
                "lrp (test)",
                "gradient (test)",
                "weight (test)",
                "random (test)",
                "lrp (search)",
            ]
            assert page.get_attribute("#curves", "data-points") == str(5 * len(RATES))
            drawn = page.evaluate(
                """() => { const c = document.getElementById('curves');
                const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
                let n = 0; for (let i = 0; i < d.length; i += 4)
                  if (d[i] === 0x3b && d[i + 1] === 0x6f && d[i + 2] === 0xe0) n++;
                return n; }"""
            )
            assert drawn > 300, f"only {drawn} pixels of the lrp curve's colour"
            assert page.locator("#curves-legend li").count() == 5
            assert json.loads(page.get_attribute("#history", "data-series") or "[]") == [
                "trial A_PR",
                "best so far",
            ]
            assert "12 complete" in page.inner_text("#history-note")
            assert "2.00×" in page.inner_text('#compression tr[data-key="measured speed-up"]')
            assert "2.0 KiB" in page.inner_text('#compression tr[data-key="model file"]')

            with page.expect_download() as info:
                page.click('a[data-artifact="model.safetensors"]')
            download = info.value
            assert download.suggested_filename == "model.safetensors"
            assert Path(download.path()).read_bytes() == MODEL_BYTES

            shot = tmp_path / "dashboard.png"
            page.screenshot(path=str(shot), full_page=True)
            if os.environ.get("PXP_UI_SCREENSHOT"):
                shutil.copy(shot, os.environ["PXP_UI_SCREENSHOT"])
            assert errors == []
        finally:
            browser.close()
