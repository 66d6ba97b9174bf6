"""The consumer columns of each ViT component: exactly the input columns masking it zeroes."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from pxp.components import find_layers, prepare_model
from pxp.pruning.masking import masked
from pxp.pruning.vit_consumers import vit_consumers
from pxp.spec import ComponentKind
from tests.pxp.pruning.test_removal_vit import SIDE, build
from tests.pxp.test_mlp_families import SMALL_SWIN, _build


def _prepared(case: str) -> tuple[nn.Module, str, torch.Tensor]:
    if case in ("torchvision", "timm"):
        model, _, _ = build(case)
        side, channels = SIDE[case], 1
    else:
        name, kwargs = {
            "swin": ("timm/swin_tiny_patch4_window7_224", SMALL_SWIN),
            "eva": ("timm/eva02_tiny_patch14_224", {"img_size": 32, "depth": 1}),
        }[case]
        model, _ = _build(name, kwargs)
        side, channels = 32, 3
    x = torch.randn(2, channels, side, side, generator=torch.Generator().manual_seed(0))
    return prepare_model(model, "vit"), case, x


@pytest.mark.parametrize(
    ("case", "kind"),
    [
        ("torchvision", "heads"),
        ("torchvision", "neurons"),
        ("timm", "heads"),
        ("swin", "neurons"),
        ("eva", "neurons"),
    ],
)
def test_masking_one_component_zeroes_exactly_its_consumer_columns(case: str, kind: ComponentKind) -> None:
    prepared, _, x = _prepared(case)
    layers = find_layers(prepared, "vit", kind)
    consumers = vit_consumers(prepared, layers)
    assert set(consumers) == {layer.name for layer in layers}
    for layer in layers[:2]:
        ((name, idx, root),) = consumers[layer.name]
        seen: list[torch.Tensor] = []
        handle = prepared.get_submodule(name).register_forward_pre_hook(
            lambda _m, args, seen=seen: seen.append(args[0].detach().reshape(-1, args[0].shape[-1]))
        )
        try:
            for unit in (0, layer.size - 1):
                keep = {other.name: torch.ones(other.size, dtype=torch.bool) for other in layers}
                keep[layer.name][unit] = False
                with torch.no_grad(), masked(prepared, layers, keep):
                    prepared(x)
                columns = seen[-1]
                zero = (columns == 0).all(0)
                assert torch.equal(zero, torch.zeros_like(zero).index_fill_(0, idx[root == unit], True))
        finally:
            handle.remove()


def test_fc2_outputs_have_no_consumer_to_refit() -> None:
    prepared, _, _ = _prepared("torchvision")
    assert vit_consumers(prepared, find_layers(prepared, "vit", "fc2")) == {}
