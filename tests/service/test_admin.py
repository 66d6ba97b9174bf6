"""The admin key functions behind ``pxp-service keys``."""

from __future__ import annotations

import json

import pytest

from service import admin, keys
from service.settings import Settings


def test_keys_create_list_revoke_on_a_fresh_embedded_directory(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("PXP_DATA_DIR", str(tmp_path / "fresh"))
    for name in ("PXP_DATABASE_URL", "PXP_BROKER_URL"):
        monkeypatch.delenv(name, raising=False)
    admin.get_settings.cache_clear()
    try:
        assert admin.main(["create", "--tenant", "acme", "--name", "ci"]) == 0
        created = json.loads(capsys.readouterr().out)
        parsed = keys.parse(created["key"])
        assert parsed is not None and parsed.key_id == created["key_id"] and created["tenant"] == "acme"
        assert admin.main(["list", "--tenant", "acme"]) == 0
        listed = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
        assert [(k["key_id"], k["name"], k["revoked_at"]) for k in listed] == [
            (created["key_id"], "ci", None)
        ]
        assert created["key"] not in json.dumps(listed)
        assert admin.main(["revoke", created["key_id"]]) == 0
        assert admin.main(["revoke", created["key_id"]]) == 1
    finally:
        admin.get_settings.cache_clear()


def test_empty_tenant_is_refused(tmp_path):
    with pytest.raises(ValueError):
        admin.create_key("  ", settings=Settings(data_dir=tmp_path))


@pytest.mark.service
def test_revoked_key_stops_working_on_postgres(prod_settings, api):
    created = admin.create_key("admin-test", settings=prod_settings)
    headers = {"Authorization": f"Bearer {created.key}"}
    # The key is committed through the admin's own connection; the API's rolled-back
    # transaction still sees it (read committed).
    assert api.client.get("/v1/jobs", headers=headers).status_code == 200
    assert admin.revoke_key(created.key_id, settings=prod_settings)
    assert api.client.get("/v1/jobs", headers=headers).status_code == 401
    assert any(
        k.key_id == created.key_id and k.revoked_at
        for k in admin.list_keys("admin-test", settings=prod_settings)
    )
