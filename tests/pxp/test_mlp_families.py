"""ConvNeXt, Swin and EVA: MLP neurons found, scored, masked, removed (== masked), exported, reloaded.

Random weights at 32×32, the smallest configurations the builders allow. Layer scales are
set to 1 so that the MLPs matter to the logits (ConvNeXt initialises them to 1e-6, which
would make any removal look exact).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from pxp import pipeline
from pxp.attribution import ScoringContext, compute_scores
from pxp.components import find_layers, prepare_model
from pxp.errors import InvalidSpecError, UnsupportedArchitectureError
from pxp.models import build_model
from pxp.models.compressed import load_compressed
from pxp.pruning.export import export_compressed
from pxp.pruning.masking import masked
from pxp.pruning.removal import remove_pruned
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

SMALL_SWIN: dict[str, Any] = {
    "img_size": 32,
    "embed_dim": 24,
    "depths": [1, 1, 1, 1],
    "num_heads": [1, 2, 3, 4],
    "window_size": 4,
}
#: (architecture, kwargs, type of the MLP module after export, hook point suffix)
CASES: list[tuple[str, dict[str, Any], str, str]] = [
    ("convnext_tiny", {}, "Sequential", "block.3"),
    (
        "timm/swin_tiny_patch4_window7_224",
        {
            "img_size": 32,
            "embed_dim": 24,
            "depths": [1, 1, 2, 1],
            "num_heads": [1, 2, 3, 4],
            "window_size": 4,
        },
        "Mlp",
        "mlp.fc1",
    ),
    ("timm/eva02_tiny_patch14_224", {"img_size": 32, "depth": 3}, "GluMlp", "mlp.fc1_x"),
    # 1×1-conv MLP (conv_mlp) and torchvision Swin: the same code paths, slower on 2 cores.
    pytest.param("timm/convnext_atto", {}, "Mlp", "mlp.fc1", marks=pytest.mark.slow),
    pytest.param("swin_t", {}, "MLP", "mlp.0", marks=pytest.mark.slow),
]


def _build(name: str, kwargs: dict[str, Any]) -> tuple[nn.Module, dict[str, Any]]:
    torch.manual_seed(0)
    loaded = build_model(ModelSpec(architecture=name, kwargs={**kwargs, "num_classes": 10}))
    with torch.no_grad():
        for pname, param in loaded.model.named_parameters():
            if pname.endswith(("layer_scale", "gamma")):
                param.fill_(1.0)
    return loaded.model, loaded.kwargs


def _keep(scores: dict[str, torch.Tensor], rate: float) -> dict[str, torch.Tensor]:
    """Per layer, the lowest-scoring ``rate`` of the neurons pruned."""
    keep = {}
    for name, s in scores.items():
        mask = torch.ones(s.numel(), dtype=torch.bool)
        mask[s.argsort()[: int(rate * s.numel())]] = False
        keep[name] = mask
    return keep


@pytest.mark.parametrize(("name", "kwargs", "mlp_type", "hook"), CASES)
def test_mlp_neurons_score_mask_remove_export_and_reload(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    name: str,
    kwargs: dict[str, Any],
    mlp_type: str,
    hook: str,
) -> None:
    model, effective = _build(name, kwargs)
    prepared = prepare_model(model, "vit")
    layers = find_layers(prepared, "vit")
    assert layers and all(layer.kind == "neurons" and layer.name.endswith(hook) for layer in layers)
    torch.manual_seed(1)
    x, y = torch.randn(4, 3, 32, 32), torch.randint(0, 10, (4,))
    ctx = ScoringContext(prepared, "vit", layers, x, y)
    for criterion in ("weight", "gradient"):
        scores = compute_scores(ctx, AttributionSpec(criterion=criterion))  # type: ignore[arg-type]
        assert set(scores) == {layer.name for layer in layers}
        for layer in layers:
            s = scores[layer.name]
            assert s.shape == (layer.size,) and bool(torch.isfinite(s).all()) and float(s.std()) > 0
    keep = _keep(scores, 0.3)
    with torch.no_grad():
        unpruned = prepared(x)
        with masked(prepared, layers, keep):
            want = prepared(x)
    # The pruned neurons matter: masking them moves the logits well beyond float noise.
    assert float((want - unpruned).abs().max()) > 1e-3 * float(unpruned.abs().max())
    removal = remove_pruned(prepared, "vit", layers, keep, x)
    assert removal.removed_components == sum(int((~k).sum()) for k in keep.values())
    assert removal.zeroed_components == 0 and removal.params_after < removal.params_before
    with torch.no_grad():
        got = removal.model(x)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-6)
    export_compressed(
        tmp_path,
        removal,
        x,
        architecture=name,
        family="vit",
        kwargs=effective,
        class_names=[str(i) for i in range(10)],
        formats=["safetensors"],
        check_reload=False,  # reloaded and compared below, without pickle
    )

    def no_pickle(*args: Any, **kw: Any) -> Any:
        raise AssertionError("torch.load (pickle) used to reload the export")

    monkeypatch.setattr(torch, "load", no_pickle)
    reloaded = load_compressed(tmp_path)
    assert sum(p.numel() for p in reloaded.parameters()) == removal.params_after
    mlp = reloaded.get_submodule(layers[0].name.rpartition(".")[0])
    assert type(mlp).__name__ == mlp_type
    with torch.no_grad():
        torch.testing.assert_close(reloaded(x), want, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize(
    ("name", "kwargs"),
    [
        ("timm/swin_tiny_patch4_window7_224", SMALL_SWIN),
        pytest.param("convnext_tiny", {}, marks=pytest.mark.slow),
    ],
)
def test_job_defaults_to_neurons_runs_the_gradient_criteria_exports_and_reloads(
    tmp_path: Path, name: str, kwargs: dict[str, Any]
) -> None:
    spec = JobSpec(
        model=ModelSpec(architecture=name, kwargs={**kwargs, "num_classes": 10}),
        data=DataSpec(image_size=32),
        criteria=[AttributionSpec(criterion="weight"), AttributionSpec(criterion="gradient")],
        splits=SplitSpec(reference_samples_per_class=2, max_eval_samples=40),
        prune=PruneSpec(rates=[0.0, 0.3], rate=0.3),
        export=ExportSpec(enabled=True, measure_latency=False),
        baseline=BaselineSpec(allow_low_accuracy=True),
        device="cpu",
    )
    result = pipeline.run(spec, tmp_path)
    assert [c.label for c in result.curves] == ["weight", "gradient"]
    assert all(c.components == "neurons" for c in result.curves)
    comp = result.compression
    assert comp is not None and comp["components_removed"] > 0 and comp["components_zeroed"] == 0
    model = load_compressed(tmp_path)
    assert sum(p.numel() for p in model.parameters()) == comp["params_after"] < comp["params_before"]


@pytest.mark.parametrize(
    ("name", "kwargs", "reason"),
    [
        ("convnext_tiny", {}, "ConvNeXt blocks"),
        ("timm/eva02_tiny_patch14_224", {"img_size": 32, "depth": 1}, "rotary"),
        ("timm/swin_tiny_patch4_window7_224", SMALL_SWIN, "shifted-window"),
    ],
)
def test_lrp_is_refused_with_the_reason(name: str, kwargs: dict[str, Any], reason: str) -> None:
    model, _ = _build(name, kwargs)
    prepared = prepare_model(model, "vit")
    layers = find_layers(prepared, "vit")
    ctx = ScoringContext(prepared, "vit", layers, torch.randn(2, 3, 32, 32), torch.zeros(2, dtype=torch.long))
    with pytest.raises(UnsupportedArchitectureError) as info:
        compute_scores(ctx, AttributionSpec(criterion="lrp"))
    assert reason in str(info.value) and "--criterion gradient" in str(info.value)


def test_heads_and_normalized_hidden_units_are_refused() -> None:
    model, _ = _build("timm/eva02_tiny_patch14_224", {"img_size": 32, "depth": 1})
    with pytest.raises(InvalidSpecError, match="only MLP 'neurons'"):
        find_layers(prepare_model(model, "vit"), "vit", "heads")
    # ConvNeXt-V2's GlobalResponseNorm normalizes the hidden units: not prunable as neurons.
    model, _ = _build("timm/convnextv2_atto", {})
    with pytest.raises(UnsupportedArchitectureError, match="GlobalResponseNormMlp"):
        find_layers(prepare_model(model, "vit"), "vit")
    # EVA with scale_mlp has a LayerNorm over the SwiGLU hidden units.
    model, _ = _build("timm/eva02_tiny_patch14_224", {"img_size": 32, "depth": 1, "scale_mlp": True})
    with pytest.raises(UnsupportedArchitectureError, match="normalizes its hidden units"):
        find_layers(prepare_model(model, "vit"), "vit")
