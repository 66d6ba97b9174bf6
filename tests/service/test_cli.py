"""``pxp-service``: the service's own command line (``serve``, ``keys``)."""

from __future__ import annotations

import json
import subprocess
import sys

from service import cli
from tests.conftest import ROOT


def test_keys_run_through_pxp_service(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("PXP_DATA_DIR", str(tmp_path))
    for name in ("PXP_DATABASE_URL", "PXP_BROKER_URL", "PXP_STORAGE_BACKEND"):
        monkeypatch.delenv(name, raising=False)
    from service.settings import get_settings

    get_settings.cache_clear()
    try:
        assert cli.main(["keys", "create", "--tenant", "acme"]) == 0
        created = json.loads(capsys.readouterr().out)
        assert created["tenant"] == "acme" and created["key"].startswith("pxp_")
        assert cli.main(["keys", "list"]) == 0
        assert created["key_id"] in capsys.readouterr().out
    finally:
        get_settings.cache_clear()


def test_unknown_or_missing_command_prints_usage():
    assert cli.main([]) == 2
    assert cli.main(["compress"]) == 2
    assert cli.main(["--help"]) == 0


def test_serve_help_runs_as_a_module():
    out = subprocess.run(
        [sys.executable, "-m", "service.cli", "serve", "--help"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0 and "pxp-service serve" in out.stdout, out.stderr
