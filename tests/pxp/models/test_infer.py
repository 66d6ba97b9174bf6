"""Kwargs and preprocessing read from a checkpoint; disagreements reported with both numbers."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
import torchvision
from torch import nn

from pxp.errors import InvalidModelError, InvalidSpecError
from pxp.models import build_model, get_architecture, instantiate, save_safetensors
from pxp.models.infer import describe
from pxp.spec import ModelSpec

#: The issue's checkpoint: a small torchvision ViT trained on 32×32 images.
SMALL_VIT = dict(
    image_size=32, patch_size=4, num_layers=4, num_heads=4, hidden_dim=128, mlp_dim=512, num_classes=10
)


def _save(model: nn.Module, path: Path) -> str:
    save_safetensors(model.state_dict(), path)
    return str(path)


def _same_logits(a: nn.Module, b: nn.Module, x: torch.Tensor) -> bool:
    with torch.no_grad():
        return torch.allclose(a.eval()(x), b.eval()(x), atol=1e-5)


def test_a_small_torchvision_vit_builds_from_its_checkpoint_alone(tmp_path: Path) -> None:
    original = torchvision.models.VisionTransformer(**SMALL_VIT)  # type: ignore[arg-type]
    weights = _save(original, tmp_path / "vit.safetensors")
    loaded = build_model(
        ModelSpec(architecture="VisionTransformer", kwargs={"num_heads": 4}, weights=weights)
    )
    assert {k: loaded.kwargs[k] for k in SMALL_VIT} == SMALL_VIT
    assert set(loaded.inferred) == set(SMALL_VIT) - {"num_heads"} | {"in_channels"}
    assert (loaded.info.image_size, loaded.info.input_channels) == (32, 3)
    assert loaded.sources == {"image_size": "checkpoint", "channels": "checkpoint"}
    assert _same_logits(original, loaded.model, torch.randn(2, 3, 32, 32))


def test_num_heads_must_be_given_since_no_checkpoint_stores_it(tmp_path: Path) -> None:
    weights = _save(torchvision.models.VisionTransformer(**SMALL_VIT), tmp_path / "vit.safetensors")  # type: ignore[arg-type]
    with pytest.raises(InvalidSpecError, match="num_heads is not stored in a checkpoint"):
        build_model(ModelSpec(architecture="VisionTransformer", weights=weights))


def test_a_named_vit_reports_the_checkpoints_own_numbers_and_the_generic_name(tmp_path: Path) -> None:
    weights = _save(torchvision.models.VisionTransformer(**SMALL_VIT), tmp_path / "vit.safetensors")  # type: ignore[arg-type]
    with pytest.raises(InvalidModelError) as info:
        build_model(ModelSpec(architecture="vit_b_16", weights=weights))
    message = str(info.value)
    assert "hidden_dim: checkpoint 128" in message and "model 768" in message
    assert "patch_size: checkpoint 4" in message and "model 16" in message
    assert "--model VisionTransformer" in message and '"image_size": 32' in message


@pytest.mark.parametrize(
    ("architecture", "kwargs", "make"),
    [
        ("ResNet", {"block": "basic", "layers": [2, 2, 2, 2], "num_classes": 10}, "resnet18"),
        ("ResNet", {"block": "bottleneck", "layers": [3, 4, 6, 3], "num_classes": 4}, "resnet50"),
        (
            "ResNet",
            {
                "block": "bottleneck",
                "layers": [3, 4, 6, 3],
                "groups": 32,
                "width_per_group": 4,
                "num_classes": 4,
            },
            "resnext50_32x4d",
        ),
        (
            "ResNet",
            {"block": "bottleneck", "layers": [3, 4, 6, 3], "width_per_group": 128, "num_classes": 4},
            "wide_resnet50_2",
        ),
        ("VGG", {"cfg": "A", "batch_norm": False, "num_classes": 3}, "vgg11"),
        ("VGG", {"cfg": "D", "batch_norm": True, "num_classes": 3}, "vgg16_bn"),
    ],
)
def test_kwargs_inferred_from_a_checkpoint_equal_the_constructors(
    tmp_path: Path, architecture: str, kwargs: dict[str, Any], make: str
) -> None:
    with torch.device("meta"):
        reference = getattr(torchvision.models, make)(num_classes=kwargs["num_classes"])
    state = {k: torch.zeros(v.shape, dtype=v.dtype) for k, v in reference.state_dict().items()}
    info = get_architecture(architecture)
    inferred = {info.inferable[k]: v for k, v in describe(state).items() if k in info.inferable}
    assert {k: inferred[k] for k in kwargs} == kwargs
    assert inferred["in_channels"] == 3


def test_a_resnet_checkpoint_builds_under_the_generic_name_with_its_numbers(tmp_path: Path) -> None:
    original = torchvision.models.resnet18(num_classes=10)
    weights = _save(original, tmp_path / "r18.safetensors")
    loaded = build_model(ModelSpec(architecture="ResNet", weights=weights))
    assert loaded.kwargs["block"] == "basic" and loaded.kwargs["layers"] == [2, 2, 2, 2]
    assert loaded.num_classes == 10
    assert _same_logits(original, loaded.model, torch.randn(1, 3, 64, 64))


def test_a_kwarg_that_contradicts_the_checkpoint_names_both_numbers(tmp_path: Path) -> None:
    weights = _save(torchvision.models.resnet18(num_classes=10), tmp_path / "r18.safetensors")
    with pytest.raises(InvalidModelError, match=r"layers: checkpoint \[2, 2, 2, 2\].*model \[3, 4, 6, 3\]"):
        build_model(
            ModelSpec(
                architecture="ResNet", kwargs={"block": "basic", "layers": [3, 4, 6, 3]}, weights=weights
            )
        )
    with pytest.raises(InvalidModelError, match=r"num_classes: checkpoint 10.*model 5"):
        build_model(ModelSpec(architecture="resnet18", kwargs={"num_classes": 5}, weights=weights))
    with pytest.raises(InvalidModelError, match=r'block: checkpoint "basic".*model "bottleneck"'):
        build_model(ModelSpec(architecture="resnet50", weights=weights))


def test_a_grayscale_checkpoint_sets_the_channels(tmp_path: Path) -> None:
    info = get_architecture("ResNet")
    original = instantiate(
        info, {"block": "basic", "layers": [1, 1, 1, 1], "num_classes": 3, "in_channels": 1}
    )
    weights = _save(original, tmp_path / "gray.safetensors")
    loaded = build_model(ModelSpec(architecture="ResNet", weights=weights))
    assert loaded.info.input_channels == 1 and len(loaded.info.mean) == 1
    assert loaded.sources == {"channels": "checkpoint"}
    assert _same_logits(original, loaded.model, torch.randn(1, 1, 32, 32))
    with pytest.raises(InvalidModelError, match=r"in_channels: checkpoint 1.*model 3"):
        build_model(ModelSpec(architecture="resnet18", weights=weights))


def test_the_digits_zoo_and_timm_fill_from_their_checkpoints(tmp_path: Path) -> None:
    vit_info = get_architecture("digits_vit")
    kwargs = {
        **vit_info.default_kwargs,
        "patch_size": 8,
        "num_layers": 1,
        "num_heads": 2,
        "hidden_dim": 32,
        "mlp_dim": 48,
    }
    weights = _save(instantiate(vit_info, kwargs), tmp_path / "dv.safetensors")
    loaded = build_model(ModelSpec(architecture="digits_vit", kwargs={"num_heads": 2}, weights=weights))
    assert {k: loaded.kwargs[k] for k in kwargs} == kwargs

    import timm

    timm_model = timm.create_model(
        "vit_tiny_patch16_224", pretrained=False, img_size=32, in_chans=1, num_classes=3
    )
    weights = _save(timm_model, tmp_path / "t.safetensors")
    loaded = build_model(ModelSpec(architecture="timm/vit_tiny_patch16_224", weights=weights))
    assert (loaded.info.image_size, loaded.info.input_channels, loaded.num_classes) == (32, 1, 3)


@pytest.mark.parametrize(
    ("name", "kwargs", "match"),
    [
        ("ResNet", {"block": "__import__('os')", "layers": [1, 1, 1, 1]}, "block must be one of"),
        ("ResNet", {"block": "basic", "layers": [1, 1]}, "four positive"),
        ("VGG", {"cfg": "Z"}, "cfg must be one of"),
        ("VGG", {"cfg": "A", "batch_norm": "yes"}, "true or false"),
        ("VisionTransformer", {"image_size": 32}, "missing"),
    ],
)
def test_generic_classes_take_json_kwargs_only_from_fixed_tables(
    name: str, kwargs: dict[str, Any], match: str
) -> None:
    info = get_architecture(name)
    with pytest.raises(InvalidSpecError, match=match):
        instantiate(info, info.effective_kwargs(kwargs))


def test_a_trained_torchvision_vit_compresses_under_the_generic_name(tmp_path: Path) -> None:
    """The zoo's digits ViT is a torchvision VisionTransformer with a 1-channel patch projection."""
    from pxp.cli import main
    from pxp.models.compressed import load_compressed
    from pxp.models.digits import DIGITS_MEAN, DIGITS_STD
    from pxp.zoo import TINY_KWARGS, load_zoo_model

    model, _ = load_zoo_model("digits_vit", TINY_KWARGS["digits_vit"])
    weights = _save(model, tmp_path / "vit.safetensors")
    heads = TINY_KWARGS["digits_vit"]["num_heads"]
    argv = ["compress", "--model", "VisionTransformer", "--model-kwargs", f'{{"num_heads": {heads}}}']
    argv += [
        "--weights",
        weights,
        "--mean",
        ",".join(map(str, DIGITS_MEAN)),
        "--std",
        ",".join(map(str, DIGITS_STD)),
    ]
    argv += ["--criterion", "weight", "--components", "neurons", "--rates", "0,0.5", "--rate", "0.5"]
    argv += ["--quiet", "--out", str(tmp_path / "out")]
    assert main(argv) == 0
    reloaded = load_compressed(tmp_path / "out")
    with torch.no_grad():
        assert reloaded(torch.randn(2, 1, 32, 32)).shape == (2, 10)


def test_an_image_size_the_vit_cannot_take_is_refused_with_both_numbers() -> None:
    from pxp import pipeline
    from pxp.spec import DataSpec, JobSpec
    from pxp.zoo import TINY_KWARGS

    spec = JobSpec(
        model=ModelSpec(architecture="digits_vit", kwargs=TINY_KWARGS["digits_vit"]),
        data=DataSpec(image_size=64),
    )
    with pytest.raises(InvalidSpecError, match=r"--image-size 64.*takes 32×32 images"):
        pipeline.build_state(spec, pipeline.silent())
