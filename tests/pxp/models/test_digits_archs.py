from __future__ import annotations

import pytest
import torch
from torch import nn
from torchvision.models import ResNet, VisionTransformer

from pxp.models import get_architecture, instantiate, load_weights


def _build(name: str, **kwargs: object) -> nn.Module:
    info = get_architecture(name)
    return instantiate(info, info.effective_kwargs(kwargs))


def test_digits_vgg_shapes_and_layout() -> None:
    model = _build("digits_vgg", widths=[8, 16], convs_per_stage=2, hidden=16)
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    assert [c.out_channels for c in convs] == [8, 8, 16, 16]
    assert len(bns) == len(convs)
    assert convs[0].in_channels == 1
    assert model(torch.randn(3, 1, 32, 32)).shape == (3, 10)


def test_digits_resnet18_is_adapted_torchvision_resnet() -> None:
    model = _build("digits_resnet18", base_width=8)
    assert isinstance(model, ResNet)
    assert model.conv1.kernel_size == (3, 3) and model.conv1.stride == (1, 1)
    assert model.conv1.in_channels == 1
    assert isinstance(model.maxpool, nn.Identity)
    assert [len(getattr(model, f"layer{i}")) for i in range(1, 5)] == [2, 2, 2, 2]
    assert model.layer4[0].conv1.out_channels == 64
    assert model.fc.in_features == 64
    assert model(torch.randn(2, 1, 32, 32)).shape == (2, 10)


def test_digits_vit_one_channel_patch_embedding() -> None:
    model = _build("digits_vit", num_layers=2, num_heads=2, hidden_dim=16, mlp_dim=32)
    assert isinstance(model, VisionTransformer)
    assert model.conv_proj.in_channels == 1
    assert model.conv_proj.kernel_size == (4, 4) and model.conv_proj.stride == (4, 4)
    assert model.conv_proj.weight.std() > 0
    assert len(model.encoder.layers) == 2
    assert model(torch.randn(2, 1, 32, 32)).shape == (2, 10)


@pytest.mark.parametrize(
    ("name", "kwargs"),
    [
        ("digits_vgg", {"widths": [4, 8], "convs_per_stage": 1, "hidden": 8, "num_classes": 4}),
        ("digits_resnet18", {"base_width": 4, "layers": [1, 1, 1, 1], "in_channels": 3}),
        ("digits_vit", {"num_layers": 1, "num_heads": 2, "hidden_dim": 8, "mlp_dim": 8, "in_channels": 3}),
    ],
)
def test_kwargs_reproduce_the_model(name: str, kwargs: dict) -> None:
    """The kwargs alone rebuild a module tree into which the state dict loads strictly."""
    torch.manual_seed(1)
    original = get_architecture(name).builder(**get_architecture(name).effective_kwargs(kwargs))
    rebuilt = _build(name, **kwargs)
    load_weights(rebuilt, original.state_dict())
    x = torch.randn(2, kwargs.get("in_channels", 1), 32, 32)
    torch.testing.assert_close(original.eval()(x), rebuilt.eval()(x))
