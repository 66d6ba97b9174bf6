"""The gateway's torch-free name lists stay equal to pxp's registries."""

from __future__ import annotations

import pytest

from service.api.job_requests import BUNDLED_DATA
from service.validation.architectures import KNOWN_ARCHITECTURES, TIMM_PREFIX, check_architecture

pytest.importorskip("torch")


def test_architectures_match_pxp_models():
    from pxp.models import list_architectures

    assert sorted(KNOWN_ARCHITECTURES) == sorted(list_architectures())


def test_timm_prefix_matches_pxp_models():
    from pxp.models.registry import TIMM_PREFIX as PXP_TIMM_PREFIX

    assert TIMM_PREFIX == PXP_TIMM_PREFIX
    check_architecture("timm/vit_tiny_patch16_224")


def test_bundled_data_sources_match_pxp_data():
    from pxp.data.digits import SOURCES

    assert set(SOURCES) == BUNDLED_DATA
