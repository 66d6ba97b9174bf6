"""Bad input is rejected by the spec (at the gateway, torch-free), not found by the worker
as an internal error (defect 5): bounded seeds, known device names, finite mean, positive std."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from pxp.spec import MAX_SEED, JobSpec

BASE = {"model": {"architecture": "digits_vgg"}}


@pytest.mark.parametrize(
    "patch",
    [
        {"splits": {"seed": 1e30}},
        {"splits": {"seed": MAX_SEED + 1}},
        {"splits": {"seed": -1}},
        {"criteria": [{"seed": 2**64}]},
        {"search": {"seed": 10**30}},
        {"device": "meta"},
        {"device": "cuda:x"},
        {"device": "cpu "},
        {"device": "xla"},
        {"data": {"std": [0]}},
        {"data": {"std": [0.2, -0.1, 0.3]}},
        {"data": {"std": []}},
        {"data": {"mean": [float("nan")]}},
        {"data": {"std": [float("inf")]}},
        {"prune": {"round_to": 0}},
        {"prune": {"round_to": "fast"}},
        {"prune": {"round_to": 4096}},
        {"search": {"budget_metric": "flops"}},
    ],
)
def test_bad_fields_are_rejected(patch):
    with pytest.raises(ValidationError):
        JobSpec.model_validate({**BASE, **patch})


@pytest.mark.parametrize("device", ["auto", "cpu", "cuda", "cuda:0", "cuda:12", "mps"])
def test_known_devices_are_accepted(device):
    assert JobSpec.model_validate({**BASE, "device": device}).device == device


def test_seed_bounds_are_inclusive():
    spec = JobSpec.model_validate({**BASE, "splits": {"seed": MAX_SEED}, "search": {"seed": 0}})
    assert spec.splits.seed == MAX_SEED


@pytest.mark.parametrize("value", ["auto", 1, 8, 16])
def test_round_to_accepts_auto_and_block_sizes(value):
    assert JobSpec.model_validate({**BASE, "prune": {"round_to": value}}).prune.round_to == value
