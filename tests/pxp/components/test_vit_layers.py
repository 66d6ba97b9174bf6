"""ViT components: discovery, depth groups, weight norms and masks that remove a component exactly."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch import nn
from torchvision.models.vision_transformer import VisionTransformer

from pxp.attribution import ScoringContext, compute_scores
from pxp.components import find_layers, prepare_model
from pxp.components.vit import vit_module_groups, weight_norms
from pxp.errors import InvalidSpecError, UnsupportedArchitectureError
from pxp.pruning.masking import masked
from pxp.pruning.ranking import rank
from pxp.spec import AttributionSpec

from .test_vit_convert import randomize, tiny_timm


def six_block_vit() -> Any:
    torch.manual_seed(0)
    model = VisionTransformer(
        image_size=16, patch_size=4, num_layers=6, num_heads=4, hidden_dim=32, mlp_dim=48, num_classes=10
    )
    return randomize(model).double()


@pytest.fixture(scope="module")
def original() -> VisionTransformer:
    return six_block_vit()


@pytest.fixture(scope="module")
def prepared(original: VisionTransformer) -> Any:
    return prepare_model(original, "vit")


def test_layers_per_kind(prepared: nn.Module) -> None:
    heads = find_layers(prepared, "vit")
    assert [layer.kind for layer in heads] == ["heads"] * 6
    assert heads[0].name == "encoder.layers.encoder_layer_0.self_attention.heads"
    assert heads[0].producer == "encoder.layers.encoder_layer_0.self_attention"
    assert [(layer.size, layer.channel_dim) for layer in heads] == [(4, 2)] * 6
    assert [layer.group for layer in heads] == ["early", "early", "middle", "middle", "late", "late"]
    neurons = find_layers(prepared, "vit", "neurons")
    assert [layer.name for layer in neurons][:2] == [
        "encoder.layers.encoder_layer_0.mlp.0",
        "encoder.layers.encoder_layer_1.mlp.0",
    ]
    assert {layer.size for layer in neurons} == {48}
    fc2 = find_layers(prepared, "vit", "fc2")
    assert fc2[-1].name == "encoder.layers.encoder_layer_5.mlp.3" and fc2[-1].size == 32
    assert [layer.index for layer in fc2] == list(range(6))


def test_exclude_by_block_producer_or_hook_point(prepared: nn.Module) -> None:
    layers = find_layers(
        prepared,
        "vit",
        "heads",
        exclude=["encoder.layers.encoder_layer_0", "encoder.layers.encoder_layer_2.self_attention"],
    )
    assert [layer.name.split(".")[2] for layer in layers] == [f"encoder_layer_{i}" for i in (1, 3, 4, 5)]
    assert [layer.index for layer in layers] == [0, 1, 2, 3]
    neurons = find_layers(prepared, "vit", "neurons", exclude=["encoder.layers.encoder_layer_5.mlp.0"])
    assert len(neurons) == 5
    with pytest.raises(UnsupportedArchitectureError):
        find_layers(prepared, "vit", "heads", exclude=["encoder.layers.encoder_layer_9"])
    with pytest.raises(InvalidSpecError):
        find_layers(prepared, "vit", "filters")


def test_unprepared_model_is_rejected(original: VisionTransformer) -> None:
    with pytest.raises(UnsupportedArchitectureError, match="prepare"):
        find_layers(original, "vit", "heads")


def test_module_groups(prepared: nn.Module) -> None:
    groups = vit_module_groups(prepared)
    assert groups["heads.head"] == "fc"
    assert groups["conv_proj"] == "early"
    assert groups["encoder.layers.encoder_layer_1.self_attention.q_proj"] == "early"
    assert groups["encoder.layers.encoder_layer_3.mlp.3"] == "middle"
    assert groups["encoder.layers.encoder_layer_4.self_attention.out_proj"] == "late"


def test_timm_layers_and_groups() -> None:
    prepared: Any = prepare_model(tiny_timm(), "vit")
    heads = find_layers(prepared, "vit", "heads")
    assert [layer.name for layer in heads] == [f"blocks.{i}.attn.heads" for i in range(3)]
    assert [layer.group for layer in heads] == ["early", "middle", "late"]
    assert find_layers(prepared, "vit", "neurons")[0].name == "blocks.0.mlp.fc1"
    assert vit_module_groups(prepared)["head"] == "fc"


def test_weight_norms_from_the_fused_projection(original: VisionTransformer, prepared: nn.Module) -> None:
    mha = original.encoder.layers[2].self_attention
    rows = mha.in_proj_weight.detach().abs().view(3, 4, 8, 32)
    expected = rows.sum(dim=(0, 2, 3))
    layer = find_layers(prepared, "vit", "heads")[2]
    assert torch.allclose(weight_norms(prepared, layer), expected)
    neurons = find_layers(prepared, "vit", "neurons")[2]
    fc1 = original.encoder.layers[2].mlp[0].weight.detach()
    assert torch.allclose(weight_norms(prepared, neurons), fc1.abs().sum(1))


def _block_io(prepared: Any, index: int, x: torch.Tensor) -> tuple[torch.Tensor, Any]:
    """The input of block ``index`` for images ``x``, and the block."""
    block = prepared.encoder.layers[index]
    store: dict[str, torch.Tensor] = {}
    handle = block.register_forward_pre_hook(lambda _m, args: store.update(x=args[0]))
    with torch.no_grad():
        prepared(x)
    handle.remove()
    return store["x"], block


def _perturb_rows(linear: nn.Linear, rows: slice, seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        linear.weight[rows] += torch.randn(
            linear.weight[rows].shape, generator=gen, dtype=linear.weight.dtype
        )
        linear.bias[rows] += 1.0


def test_masked_head_is_independent_of_its_qkv_weights() -> None:
    prepared: Any = prepare_model(six_block_vit(), "vit")
    layers = find_layers(prepared, "vit", "heads")
    inputs, block = _block_io(prepared, 1, torch.randn(2, 3, 16, 16, dtype=torch.float64))
    keep = {layer.name: torch.ones(layer.size, dtype=torch.bool) for layer in layers}
    keep[layers[1].name][2] = False
    attn = block.self_attention
    with torch.no_grad(), masked(prepared, layers, keep):
        before = block(inputs)
        for i, proj in enumerate((attn.q_proj, attn.k_proj, attn.v_proj)):
            _perturb_rows(proj, slice(16, 24), seed=i)
        after_masked_head_changed = block(inputs)
        _perturb_rows(attn.v_proj, slice(0, 8), seed=5)
        after_kept_head_changed = block(inputs)
    assert torch.equal(before, after_masked_head_changed)
    assert not torch.allclose(before, after_kept_head_changed)


def test_all_heads_masked_leaves_only_the_out_proj_bias() -> None:
    prepared: Any = prepare_model(six_block_vit(), "vit")
    layers = find_layers(prepared, "vit", "heads")
    keep = {layer.name: torch.zeros(layer.size, dtype=torch.bool) for layer in layers}
    inputs, block = _block_io(prepared, 0, torch.randn(2, 3, 16, 16, dtype=torch.float64))
    with torch.no_grad(), masked(prepared, layers, keep):
        out = block.self_attention(block.ln_1(inputs))
    assert torch.equal(out, block.self_attention.out_proj.bias.expand_as(out))


def test_masked_neuron_and_fc2_output_contribute_nothing() -> None:
    prepared: Any = prepare_model(six_block_vit(), "vit")
    neurons = find_layers(prepared, "vit", "neurons")
    fc2 = find_layers(prepared, "vit", "fc2")
    inputs, block = _block_io(prepared, 3, torch.randn(2, 3, 16, 16, dtype=torch.float64))
    keep = {layer.name: torch.ones(layer.size, dtype=torch.bool) for layer in neurons + fc2}
    keep[neurons[3].name][7] = False
    keep[fc2[3].name][5] = False
    with torch.no_grad(), masked(prepared, neurons + fc2, keep):
        before = block(inputs)
        residual = block.attn_residual.add(inputs, block.dropout(block.self_attention(block.ln_1(inputs))))
        _perturb_rows(block.mlp[0], slice(7, 8), seed=1)
        block.mlp[3].weight[:, 7] += 3.0
        assert torch.equal(block(inputs), before)
        block.mlp[3].weight[5] += 3.0
        block.mlp[3].bias[5] += 3.0
        assert torch.equal(block(inputs), before)
    assert torch.equal(before[..., 5], residual[..., 5])


def test_nested_masks_compose_and_rankings_nest() -> None:
    prepared: Any = prepare_model(six_block_vit(), "vit")
    layers = find_layers(prepared, "vit", "heads")
    x = torch.randn(4, 3, 16, 16, dtype=torch.float64)
    scores = compute_scores(ScoringContext(prepared, "vit", layers, x, torch.arange(4)), AttributionSpec())
    order = rank(layers, scores)
    low, high = order.keep_masks(0.25), order.keep_masks(0.5)
    assert all(torch.all(high[n] <= low[n]) for n in low)
    assert sum(int((~high[n]).sum()) for n in high) == 12
    with torch.no_grad():
        with masked(prepared, layers, low), masked(prepared, layers, high):
            nested = prepared(x)
        both = {n: low[n] & high[n] for n in low}
        with masked(prepared, layers, both):
            single = prepared(x)
        with masked(prepared, layers, high):
            assert torch.equal(prepared(x), single)
        unmasked = prepared(x)
    assert torch.equal(nested, single)
    assert not torch.allclose(unmasked, single)
