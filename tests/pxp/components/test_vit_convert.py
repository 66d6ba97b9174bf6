"""The explicit-attention form of torchvision and timm ViTs: same forward, user's model untouched, reversible."""

from __future__ import annotations

import copy
from typing import Any

import pytest
import torch
import torchvision
from timm.models.deit import VisionTransformerDistilled
from timm.models.vision_transformer import VisionTransformer as TimmViT
from torch import nn
from torchvision.models.vision_transformer import EncoderBlock, VisionTransformer

from pxp.attribution import ScoringContext, compute_scores
from pxp.components import find_layers, prepare_model
from pxp.components.vit import ViTCanonizer, is_explicit, prepare_vit
from pxp.components.vit.modules import ExplicitEncoderBlock, ExplicitTimmBlock
from pxp.errors import UnsupportedArchitectureError
from pxp.spec import AttributionSpec


def randomize(model: nn.Module, seed: int = 0) -> Any:
    """Non-trivial weights everywhere: torchvision zero-initialises the head and the q/k/v biases."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.LayerNorm):
                module.weight.copy_(1 + 0.1 * torch.randn(module.weight.shape, generator=gen))
                module.bias.copy_(0.1 * torch.randn(module.bias.shape, generator=gen))
            elif isinstance(module, nn.Linear):
                module.weight.copy_(torch.randn(module.weight.shape, generator=gen) / module.in_features**0.5)
                if module.bias is not None:
                    module.bias.copy_(0.1 * torch.randn(module.bias.shape, generator=gen))
            elif isinstance(module, nn.MultiheadAttention):
                module.in_proj_weight.copy_(
                    torch.randn(module.in_proj_weight.shape, generator=gen) / module.embed_dim**0.5
                )
                module.in_proj_bias.copy_(0.1 * torch.randn(module.in_proj_bias.shape, generator=gen))
    return model.eval()


def tiny_torchvision(num_layers: int = 3) -> Any:
    torch.manual_seed(0)
    model = VisionTransformer(
        image_size=16,
        patch_size=4,
        num_layers=num_layers,
        num_heads=4,
        hidden_dim=32,
        mlp_dim=64,
        num_classes=10,
    )
    return randomize(model)


def tiny_timm(fused: bool = True, **kwargs: Any) -> Any:
    torch.manual_seed(0)
    options: dict[str, Any] = dict(
        img_size=16, patch_size=4, embed_dim=32, depth=3, num_heads=4, mlp_ratio=2.0, num_classes=10
    )
    options.update(kwargs)
    model = randomize(TimmViT(**options))
    for block in model.blocks:
        block.attn.fused_attn = fused
    return model


def _max_rel_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max())


TIMM_VARIANTS: dict[str, dict[str, Any]] = {
    "token": {},
    "avg_fc_norm": {"global_pool": "avg", "fc_norm": True},
    "layerscale_regs_no_cls": {
        "init_values": 0.1,
        "reg_tokens": 2,
        "no_embed_class": True,
        "class_token": False,
        "global_pool": "avg",
    },
    "no_qkv_bias": {"qkv_bias": False},
}


def test_torchvision_explicit_forward_matches_fused_mha() -> None:
    model: Any = tiny_torchvision()
    prepared: Any = prepare_model(model, "vit")
    assert all(isinstance(b, ExplicitEncoderBlock) for b in prepared.encoder.layers)
    x = torch.randn(4, 3, 16, 16)
    with torch.no_grad():
        assert _max_rel_diff(prepared(x), model(x)) < 1e-5


@pytest.mark.parametrize("fused", [True, False], ids=["sdpa", "manual"])
@pytest.mark.parametrize("variant", sorted(TIMM_VARIANTS))
def test_timm_explicit_forward_matches(variant: str, fused: bool) -> None:
    model: Any = tiny_timm(fused=fused, **TIMM_VARIANTS[variant])
    prepared: Any = prepare_model(model, "vit")
    assert all(isinstance(b, ExplicitTimmBlock) for b in prepared.blocks)
    x = torch.randn(4, 3, 16, 16)
    with torch.no_grad():
        assert _max_rel_diff(prepared(x), model(x)) < 1e-5


def test_timm_distilled_deit_forward_matches() -> None:
    torch.manual_seed(0)
    model = randomize(
        VisionTransformerDistilled(
            img_size=16, patch_size=4, embed_dim=32, depth=2, num_heads=4, num_classes=10
        )
    )
    prepared: Any = prepare_model(model, "vit")
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        assert _max_rel_diff(prepared(x), model(x)) < 1e-5
    assert isinstance(prepared, VisionTransformerDistilled)


def test_vit_b_16_explicit_forward_matches_at_224() -> None:
    torch.manual_seed(0)
    model = torchvision.models.vit_b_16(num_classes=10).eval()
    nn.init.normal_(model.heads.head.weight, std=0.02)
    prepared: Any = prepare_model(model, "vit")
    assert len(find_layers(prepared, "vit", "heads")) == 12
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        assert _max_rel_diff(prepared(x), model(x)) < 1e-4


def _hook_count(model: nn.Module) -> int:
    return sum(
        len(m._forward_hooks)
        + len(m._forward_pre_hooks)
        + len(m._backward_hooks)
        + len(m._backward_pre_hooks)
        for m in model.modules()
    )


def test_user_model_is_never_modified() -> None:
    model: Any = tiny_torchvision()
    before = copy.deepcopy(model.state_dict())
    x = torch.randn(3, 3, 16, 16)
    with torch.no_grad():
        logits = model(x)
    prepared: Any = prepare_model(model, "vit")
    layers = find_layers(prepared, "vit", "heads")
    compute_scores(ScoringContext(prepared, "vit", layers, x, torch.tensor([0, 1, 2])), AttributionSpec())
    assert all(isinstance(b, EncoderBlock) for b in model.encoder.layers)
    assert not is_explicit(model)
    after = model.state_dict()
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert _hook_count(model) == 0
    with torch.no_grad():
        assert torch.equal(model(x), logits)


@pytest.mark.parametrize("family", ["torchvision", "timm_avg"])
def test_canonizer_converts_and_restores_in_place(family: str) -> None:
    model: Any = tiny_torchvision() if family == "torchvision" else tiny_timm(global_pool="avg")
    modules_before = dict(model.named_modules())
    state_before = copy.deepcopy(model.state_dict())
    class_before = type(model)
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        logits = model(x)
    canonizer = ViTCanonizer()
    (instance,) = canonizer.apply(model)
    assert is_explicit(model)
    with torch.no_grad():
        assert _max_rel_diff(model(x), logits) < 1e-5
    instance.remove()
    assert type(model) is class_before
    assert dict(model.named_modules()).keys() == modules_before.keys()
    assert all(m is modules_before[name] for name, m in model.named_modules())
    assert all(torch.equal(v, state_before[k]) for k, v in model.state_dict().items())
    with torch.no_grad():
        assert torch.equal(model(x), logits)


def test_prepare_is_idempotent_and_names_are_deterministic() -> None:
    a = prepare_model(tiny_torchvision(), "vit")
    b = prepare_model(tiny_torchvision(), "vit")
    assert prepare_vit(a) is a
    assert [n for n, _ in a.named_modules()] == [n for n, _ in b.named_modules()]
    assert "encoder.layers.encoder_layer_0.self_attention.heads" in dict(a.named_modules())


def test_non_vit_is_rejected() -> None:
    with pytest.raises(UnsupportedArchitectureError):
        prepare_model(torchvision.models.resnet18(num_classes=10), "vit")


def test_unsupported_block_reverts_the_blocks_already_converted() -> None:
    model: Any = tiny_timm(global_pool="avg")
    model.blocks[-1].attn.q_norm = nn.LayerNorm(8)
    blocks = list(model.blocks)
    with pytest.raises(UnsupportedArchitectureError, match="q_norm"):
        ViTCanonizer().apply(model)
    assert list(model.blocks) == blocks
    assert type(model) is TimmViT
    assert not hasattr(model, "token_mean")
