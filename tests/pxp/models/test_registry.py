from __future__ import annotations

import inspect
import json

import pytest
import torch
from torch import nn

from pxp.errors import InvalidSpecError, UnsupportedArchitectureError
from pxp.models import (
    IMAGENET_MEAN,
    ZOO_ARCHITECTURES,
    build_model,
    get_architecture,
    instantiate,
    list_architectures,
)
from pxp.spec import ModelSpec

TORCHVISION = [f"vgg{d}{bn}" for d in (11, 13, 16, 19) for bn in ("", "_bn")] + [
    "resnet18",
    "resnet34",
    "resnet50",
    "resnet101",
    "resnet152",
    "wide_resnet50_2",
    "wide_resnet101_2",
    "resnext50_32x4d",
    "resnext101_32x8d",
    "vit_b_16",
    "vit_b_32",
    "vit_l_16",
    "vit_l_32",
    "vit_h_14",
]
GENERIC = ["ResNet", "VGG", "VisionTransformer"]
FAMILIES = [
    "mobilenet_v2",
    "mobilenet_v3_small",
    "mobilenet_v3_large",
    "efficientnet_b0",
    "efficientnet_b1",
    "efficientnet_b2",
    "efficientnet_b3",
    "efficientnet_v2_s",
    "regnet_x_400mf",
    "regnet_y_400mf",
    "regnet_y_800mf",
    "densenet121",
    "densenet169",
]
#: ConvNeXt / Swin: family "vit", MLP neurons only (pxp.components.vit.mlp).
MLP_FAMILIES = [
    *(f"convnext_{size}" for size in ("tiny", "small", "base", "large")),
    *(f"swin_{size}" for size in ("t", "s", "b")),
    *(f"swin_v2_{size}" for size in ("t", "s", "b")),
]


def test_list_names_exactly_the_builtins() -> None:
    assert list_architectures() == sorted(
        [*TORCHVISION, *GENERIC, *FAMILIES, *MLP_FAMILIES, *ZOO_ARCHITECTURES]
    )
    with_timm = list_architectures(include_timm=True)
    assert "timm/vit_tiny_patch16_224" in with_timm
    assert "timm/deit_small_patch16_224" in with_timm
    for name in ("convnext_atto", "swin_tiny_patch4_window7_224", "eva02_tiny_patch14_224"):
        assert f"timm/{name}" in with_timm
    assert not any(n.startswith("timm/resnet") for n in with_timm)


@pytest.mark.parametrize("name", TORCHVISION)
def test_imagenet_entries(name: str) -> None:
    info = get_architecture(name)
    assert info.family == ("vit" if name.startswith("vit") else "cnn")
    assert (info.input_channels, info.image_size, info.mean) == (3, 224, IMAGENET_MEAN)
    assert info.default_kwargs["num_classes"] == 1000


@pytest.mark.parametrize(
    "name", TORCHVISION + FAMILIES + list(ZOO_ARCHITECTURES) + ["timm/vit_tiny_patch16_224"]
)
def test_every_name_builds_on_meta(name: str) -> None:
    """Constructs every architecture without allocating weights (the full builds are slow)."""
    info = get_architecture(name)
    # RegNet's initialisation reads tensor values, which meta tensors have not; it is small.
    with torch.device("cpu" if name.startswith("regnet") else "meta"):
        model = info.builder(**info.effective_kwargs({"num_classes": 7}))
    assert isinstance(model, nn.Module)
    last = [m for m in model.modules() if isinstance(m, nn.Linear)][-1]
    assert last.out_features == 7


@pytest.mark.parametrize("name", ["resnet18", "vgg11"])
def test_imagenet_forward_shapes(name: str) -> None:
    loaded = build_model(ModelSpec(architecture=name, kwargs={"num_classes": 5}))
    assert not loaded.model.training
    assert loaded.num_classes == 5
    with torch.no_grad():
        out = loaded.model(torch.randn(1, 3, 224, 224))
    assert out.shape == (1, 5)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["vit_b_16", "resnet50", "vgg16"])
def test_imagenet_forward_shapes_large(name: str) -> None:
    loaded = build_model(ModelSpec(architecture=name))
    with torch.no_grad():
        out = loaded.model(torch.randn(2, 3, 224, 224))
    assert out.shape == (2, 1000)
    assert loaded.info.family == ("vit" if name.startswith("vit") else "cnn")


def test_random_init_is_deterministic_and_leaves_global_rng_alone() -> None:
    info = get_architecture("digits_vgg")
    torch.manual_seed(123)
    expected_next = torch.rand(1)
    torch.manual_seed(123)
    a = instantiate(info, info.effective_kwargs({"widths": [4, 8], "convs_per_stage": 1}))
    assert torch.equal(torch.rand(1), expected_next)
    b = instantiate(info, info.effective_kwargs({"widths": [4, 8], "convs_per_stage": 1}))
    for (ka, va), (kb, vb) in zip(a.state_dict().items(), b.state_dict().items(), strict=True):
        assert ka == kb and torch.equal(va, vb)


def test_unknown_name_lists_close_names() -> None:
    with pytest.raises(UnsupportedArchitectureError, match="resnet18") as err:
        get_architecture("resnet19")
    assert "did you mean" in str(err.value)


def test_timm_non_vit_and_unknown_are_refused() -> None:
    with pytest.raises(UnsupportedArchitectureError, match="not a VisionTransformer"):
        get_architecture("timm/resnet50")
    with pytest.raises(UnsupportedArchitectureError, match="timm/vit_tiny_patch16_224"):
        get_architecture("timm/vit_tiny_patch16_22")


def test_timm_vit_builds_small_and_resolves_input() -> None:
    spec = ModelSpec(
        architecture="timm/vit_tiny_patch16_224",
        kwargs={"img_size": 32, "patch_size": 8, "in_chans": 1, "depth": 2, "num_classes": 3},
    )
    loaded = build_model(spec)
    assert loaded.info.family == "vit"
    assert (loaded.info.image_size, loaded.info.input_channels) == (32, 1)
    assert len(loaded.info.mean) == len(loaded.info.std) == 1
    with torch.no_grad():
        assert loaded.model(torch.randn(2, 1, 32, 32)).shape == (2, 3)


def test_deit_is_vit_family() -> None:
    info = get_architecture("timm/deit_tiny_patch16_224")
    assert info.family == "vit"
    assert info.image_size == 224


@pytest.mark.parametrize(
    ("name", "kwargs", "match"),
    [
        ("resnet18", {"no_such_kwarg": 1}, "no_such_kwarg"),
        ("digits_vit", {"hidden_dim": 10, "num_heads": 4}, "divisible"),
        ("digits_vgg", {"widths": []}, "widths"),
        ("digits_resnet18", {"layers": [2, 2]}, "four positive"),
        ("resnet18", {"weights": "IMAGENET1K_V1"}, "never downloads"),
        ("timm/vit_tiny_patch16_224", {"pretrained": True}, "never downloads"),
    ],
)
def test_bad_kwargs_are_spec_errors(name: str, kwargs: dict, match: str) -> None:
    info = get_architecture(name)
    with pytest.raises(InvalidSpecError, match=match):
        instantiate(info, info.effective_kwargs(kwargs))


@pytest.mark.parametrize("name", ZOO_ARCHITECTURES)
def test_zoo_defaults_name_every_constructor_argument(name: str) -> None:
    """Effective kwargs of a zoo model describe it fully, even if builder defaults change later."""
    info = get_architecture(name)
    assert set(info.default_kwargs) == set(inspect.signature(info.builder).parameters)
    assert json.loads(json.dumps(info.effective_kwargs())) == info.effective_kwargs()


@pytest.mark.parametrize(
    ("name", "heads"),
    [
        ("digits_vit", True),
        ("vit_b_16", True),
        ("timm/deit_tiny_patch16_224", True),
        ("timm/vit_tiny_patch16_224.augreg_in21k", True),
        ("convnext_tiny", False),
        ("swin_t", False),
        ("timm/convnext_atto", False),
        ("timm/eva02_tiny_patch14_224", False),
        ("digits_resnet18", False),
    ],
)
def test_prunes_heads_by_default_names_the_vits_whose_default_components_are_heads(
    name: str, heads: bool
) -> None:
    from pxp.models import prunes_heads_by_default

    assert prunes_heads_by_default(name) is heads
