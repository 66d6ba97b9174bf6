"""More torchvision CNN families, with random weights at 32×32 on digits (the gate overridden).

Every non-LRP criterion runs; structural removal is verified against masking inside the
export stage (a mismatch raises VerificationError); the export reloads without pickle.
LRP is refused where it cannot be faithful, with the reason and the criteria that work.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from pxp import pipeline
from pxp.attribution.support import NON_LRP_CRITERIA
from pxp.components import find_layers, prepare_model
from pxp.errors import UnsupportedArchitectureError
from pxp.models import build_model
from pxp.models.compressed import load_compressed
from pxp.pruning.curve import accuracy
from pxp.spec import (
    AttributionSpec,
    BaselineSpec,
    DataSpec,
    ExportSpec,
    JobSpec,
    ModelSpec,
    PruneSpec,
    SplitSpec,
)


def _spec(name: str, criteria: tuple[str, ...] = NON_LRP_CRITERIA, export: bool = True) -> JobSpec:
    return JobSpec(
        model=ModelSpec(architecture=name, kwargs={"num_classes": 10}),
        data=DataSpec(image_size=32),
        criteria=[AttributionSpec(criterion=c) for c in criteria],  # type: ignore[arg-type]
        splits=SplitSpec(reference_samples_per_class=2, max_eval_samples=40),
        prune=PruneSpec(rates=[0.0, 0.3], rate=0.3),
        export=ExportSpec(enabled=export, measure_latency=False),
        baseline=BaselineSpec(allow_low_accuracy=True),
        device="cpu",
    )


@pytest.mark.parametrize(
    "name",
    [
        "mobilenet_v2",
        # The default run keeps one family (depthwise, inverted residuals); the rest are slow on 2 cores.
        pytest.param("mobilenet_v3_small", marks=pytest.mark.slow),
        pytest.param("efficientnet_b0", marks=pytest.mark.slow),
        pytest.param("densenet121", marks=pytest.mark.slow),
    ],
)
def test_family_runs_every_gradient_criterion_removes_and_reloads(tmp_path: Path, name: str) -> None:
    result = pipeline.run(_spec(name), tmp_path)
    assert [c.label for c in result.curves] == list(NON_LRP_CRITERIA)
    assert result.compression is not None
    assert result.compression["params_after"] < result.compression["params_before"]
    model = load_compressed(tmp_path)
    assert sum(p.numel() for p in model.parameters()) == result.compression["params_after"]
    x, y = pipeline.build_state(_spec(name, ("weight",)), pipeline.silent()).test
    assert accuracy(model, x, y) == pytest.approx(result.compression["test_accuracy"])


@pytest.mark.parametrize(
    ("name", "reason"),
    [
        ("mobilenet_v2", "inverted residuals"),
        ("mobilenet_v3_small", "squeeze-excitation"),
        ("efficientnet_b0", "SiLU"),
        ("regnet_x_400mf", "RegNet blocks"),
        ("densenet121", "pre-activation"),
    ],
)
def test_lrp_is_refused_with_the_reason_and_the_criteria_that_work(name: str, reason: str) -> None:
    with pytest.raises(UnsupportedArchitectureError) as info:
        pipeline.build_state(_spec(name, ("lrp",), export=False), pipeline.silent())
    assert reason in str(info.value) and "--criterion gradient" in str(info.value)


@pytest.mark.slow  # ~70 s on 2 cores; tests/pxp/pruning/test_removal_families.py covers removal + export fast
def test_grouped_convs_run_the_criteria_and_export_removed(tmp_path: Path) -> None:
    result = pipeline.run(_spec("regnet_x_400mf", ("weight",)), tmp_path)
    assert [c.label for c in result.curves] == ["weight"]
    assert result.compression is not None
    assert result.compression["components_removed"] > 0
    assert result.compression["params_after"] < result.compression["params_before"]
    model = load_compressed(tmp_path)
    assert sum(p.numel() for p in model.parameters()) == result.compression["params_after"]


def test_squeeze_excitation_gates_are_not_prunable_filters() -> None:
    loaded = build_model(ModelSpec(architecture="mobilenet_v3_small", kwargs={"num_classes": 10}))
    prepared = prepare_model(loaded.model, "cnn")
    producers = {layer.producer for layer in find_layers(prepared, "cnn")}
    se_expand = {n for n, m in prepared.named_modules() if n.endswith("block.1.fc2") or n.endswith(".fc2")}
    assert se_expand and not (se_expand & producers)
    assert any(n.endswith(".fc1") for n in producers)
    with torch.no_grad():
        assert prepared(torch.randn(1, 3, 32, 32)).shape == (1, 10)
