"""Trained zoo weights carry a checksum, and a retrain that differs from the reference says so."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import torch

from pxp.zoo import TINY_KWARGS, checksum, load_zoo_model, zoo_entry


def test_checksum_is_stable_and_sees_one_bit() -> None:
    model = torch.nn.Linear(3, 2)
    first = checksum.weights_sha256(model)
    assert checksum.weights_sha256(model) == first
    with torch.no_grad():
        flat = model.weight.view(-1)
        flat[0] = torch.nextafter(flat[0], torch.tensor(1e9))
    assert checksum.weights_sha256(model) != first


def test_trained_entry_records_its_checksum(tmp_path: Path) -> None:
    model, meta = load_zoo_model("digits_vgg", TINY_KWARGS["digits_vgg"], cache_dir=tmp_path)
    assert meta["weights_sha256"] == checksum.weights_sha256(model)
    entry = zoo_entry("digits_vgg", TINY_KWARGS["digits_vgg"], cache_dir=tmp_path)
    assert json.loads((entry / "meta.json").read_text())["weights_sha256"] == meta["weights_sha256"]


def test_a_retrain_that_differs_from_the_reference_is_reported(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    references = tmp_path / "refs.json"
    key = checksum.reference_key("digits_vgg-abc")
    references.write_text(json.dumps({key: "a" * 64}))
    assert checksum.compare_with_reference("digits_vgg-abc", "a" * 64, references) is True
    with caplog.at_level(logging.WARNING, logger="pxp.zoo.checksum"):
        assert checksum.compare_with_reference("digits_vgg-abc", "b" * 64, references) is False
    assert "not the reference" in caplog.text
    assert checksum.compare_with_reference("digits_vgg-other", "b" * 64, references) is None
