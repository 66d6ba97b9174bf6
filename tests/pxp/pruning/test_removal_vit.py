from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from pxp.components import find_layers, prepare_model
from pxp.models import get_architecture, instantiate
from pxp.models.compressed import PrunedMultiheadAttention, load_compressed
from pxp.pruning.export import export_compressed
from pxp.pruning.masking import masked
from pxp.pruning.ranking import rank
from pxp.pruning.removal import removal_planner, remove_pruned

ARCHS = {
    "torchvision": ("digits_vit", {"num_layers": 2, "num_heads": 4, "hidden_dim": 32, "mlp_dim": 64}),
    "timm": (
        "timm/vit_tiny_patch16_224",
        {"img_size": 16, "patch_size": 8, "depth": 2, "in_chans": 1, "num_classes": 10},
    ),
    "timm_avg": (
        "timm/vit_tiny_patch16_224",
        {"img_size": 16, "patch_size": 8, "depth": 2, "in_chans": 1, "num_classes": 10, "global_pool": "avg"},
    ),
}
SIDE = {"torchvision": 32, "timm": 16, "timm_avg": 16}


def build(key: str) -> tuple[nn.Module, str, dict]:
    """A registry ViT with weights large enough that heads and neurons matter (torchvision zero-inits its head)."""
    arch, kwargs = ARCHS[key]
    info = get_architecture(arch)
    kwargs = info.effective_kwargs(kwargs)
    model = instantiate(info, kwargs)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.Linear):
                m.weight.normal_(0.0, 0.2, generator=g)
                if m.bias is not None:
                    m.bias.normal_(0.0, 0.1, generator=g)
    return model.eval(), arch, kwargs


def masked_logits(prepared: nn.Module, layers, keep, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad(), masked(prepared, layers, keep):
        return prepared(x)


@pytest.mark.parametrize("key", sorted(ARCHS))
@pytest.mark.parametrize("kind", ["heads", "neurons", "fc2"])
def test_removed_vit_equals_masked(key: str, kind: str) -> None:
    model, _, _ = build(key)
    prepared = prepare_model(model, "vit")
    layers = find_layers(prepared, "vit", kind)
    torch.manual_seed(1)
    order = rank(layers, {layer.name: torch.rand(layer.size) for layer in layers})
    side = SIDE[key]
    x_verify, x_check = torch.randn(3, 1, side, side), torch.randn(5, 1, side, side)
    planner = removal_planner(prepared, "vit", layers, x_verify)
    for rate in (0.3, 0.6):
        keep = order.keep_masks(rate)
        result = remove_pruned(prepared, "vit", layers, keep, x_verify, planner=planner)
        want = masked_logits(prepared, layers, keep, x_check)
        with torch.no_grad():
            got = result.model(x_check)
        assert float((got - want).abs().max()) <= 1e-5 * float(want.abs().max())
        assert type(result.model) is type(model)
        if kind == "fc2":
            assert result.params_after == result.params_before and result.removed_components == 0
            assert result.zeroed_components == sum(int((~m).sum()) for m in keep.values()) > 0
        else:
            assert result.params_after < result.params_before and result.zeroed_components == 0


def test_torchvision_blocks_keep_multihead_attention_unless_they_lose_heads() -> None:
    model, _, _ = build("torchvision")
    prepared = prepare_model(model, "vit")
    layers = find_layers(prepared, "vit", "heads")
    keep = {layer.name: torch.ones(layer.size, dtype=torch.bool) for layer in layers}
    keep[layers[1].name][torch.tensor([0, 2])] = False
    result = remove_pruned(prepared, "vit", layers, keep, torch.randn(2, 1, 32, 32))
    blocks = result.model.encoder.layers
    assert isinstance(blocks[0].self_attention, nn.MultiheadAttention)
    attention = blocks[1].self_attention
    assert (
        isinstance(attention, PrunedMultiheadAttention)
        and attention.num_heads == 2
        and attention.head_dim == 8
    )
    assert list(result.modules) == ["encoder.layers.encoder_layer_1.self_attention"]
    assert result.kept_indices[layers[1].name] == [1, 3]


def test_neuron_removal_parameter_count() -> None:
    model, _, _ = build("timm")
    prepared = prepare_model(model, "vit")
    layers = find_layers(prepared, "vit", "neurons")
    keep = rank(layers, {layer.name: torch.rand(layer.size) for layer in layers}).keep_masks(0.5)
    result = remove_pruned(prepared, "vit", layers, keep, torch.randn(2, 1, 16, 16))
    dim = model.embed_dim
    removed = sum(int((~m).sum()) for m in keep.values())
    assert result.params_before - result.params_after == removed * (
        dim + 1 + dim
    )  # fc1 row + bias, fc2 column


@pytest.mark.parametrize("key", ["torchvision", "timm_avg"])
def test_vit_export_reloads_in_library_classes(tmp_path: Path, key: str) -> None:
    model, arch, kwargs = build(key)
    prepared = prepare_model(model, "vit")
    side = SIDE[key]
    x = torch.randn(3, 1, side, side)
    result = None
    for kind in ("heads", "neurons"):
        layers = find_layers(prepared, "vit", kind)
        keep = rank(layers, {layer.name: torch.rand(layer.size) for layer in layers}).keep_masks(0.5)
        result = remove_pruned(prepared, "vit", layers, keep, x)
        paths = export_compressed(
            tmp_path / kind,
            result,
            x,
            architecture=arch,
            family="vit",
            kwargs=kwargs,
            class_names=[str(i) for i in range(10)],
            formats=["safetensors", "onnx"],
        )
        loaded = load_compressed(tmp_path / kind)
        assert type(loaded) is type(model)
        with torch.no_grad():
            torch.testing.assert_close(loaded(x), result.model(x), rtol=1e-5, atol=1e-5)
        assert paths["onnx"].is_file()


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["heads", "neurons"])
def test_vit_b_16_removal_equals_masking(kind: str) -> None:
    import torchvision

    torch.manual_seed(0)
    model = torchvision.models.vit_b_16(num_classes=1000)
    nn.init.normal_(model.heads.head.weight, std=0.02)
    prepared = prepare_model(model.eval(), "vit")
    layers = find_layers(prepared, "vit", kind)
    order = rank(layers, {layer.name: torch.rand(layer.size) for layer in layers})
    x = torch.randn(2, 3, 224, 224)
    planner = removal_planner(prepared, "vit", layers, x)
    for rate in (0.3, 0.5):
        keep = order.keep_masks(rate)
        result = remove_pruned(prepared, "vit", layers, keep, x, planner=planner)
        want = masked_logits(prepared, layers, keep, x)
        with torch.no_grad():
            got = result.model(x)
        assert float((got - want).abs().max()) <= 1e-4 * float(want.abs().max())
        assert result.params_after < result.params_before
