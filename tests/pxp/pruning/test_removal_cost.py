from __future__ import annotations

import torch
import torchvision
from torch import nn

from pxp.models.compressed import PrunedMultiheadAttention
from pxp.pruning.cost import Cost, count_cost, removed_fractions


def test_known_macs_of_torchvision_models() -> None:
    # Published figures: ResNet-18 1.82 GMACs, 11.69 M parameters at 224×224.
    cost = count_cost(torchvision.models.resnet18(), (3, 224, 224))
    assert abs(cost.macs / 1e9 - 1.814) < 0.01
    assert cost.params == 11_689_512


def test_conv_and_linear_macs_are_exact() -> None:
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 5 * 5, 4))
    cost = count_cost(model, (3, 5, 5))
    assert cost.macs == 8 * 25 * 3 * 9 + 200 * 4
    assert cost.params == 8 * 27 + 8 + 200 * 4 + 4


def test_attention_macs_count_projections_and_both_matmuls() -> None:
    tokens, embed, heads, head_dim = 5, 16, 2, 4
    inner = heads * head_dim
    pruned = count_cost(PrunedMultiheadAttention(embed, heads, head_dim), (tokens, embed)).macs
    assert pruned == tokens * embed * 3 * inner + 2 * tokens * tokens * inner + tokens * inner * embed
    full = nn.MultiheadAttention(embed, 4, batch_first=True)

    class Wrapped(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.attn = full

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.attn(x, x, x, need_weights=False)[0]

    assert (
        count_cost(Wrapped(), (tokens, embed)).macs
        == tokens * embed * 4 * embed + 2 * tokens * tokens * embed
    )


def test_removed_fractions() -> None:
    fractions = removed_fractions(Cost(macs=200, params=100), Cost(macs=50, params=40))
    assert fractions == {"params_removed_fraction": 0.6, "flops_removed_fraction": 0.75}


def test_explicit_attention_form_costs_the_same_as_the_library_form() -> None:
    import timm

    from pxp.components import prepare_model
    from pxp.models.digits import digits_vit

    for model, shape in (
        (digits_vit(num_layers=2, num_heads=4, hidden_dim=32, mlp_dim=64), (1, 32, 32)),
        (
            timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=32, patch_size=8, depth=2),
            (3, 32, 32),
        ),
    ):
        assert count_cost(prepare_model(model, "vit"), shape) == count_cost(model, shape)
