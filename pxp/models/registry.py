"""Architecture registry: torchvision ImageNet models, timm models (``timm/<name>``) and the digits zoo.

Builders never download anything: torchvision models are built with
``weights=None`` and timm models with ``pretrained=False``; kwargs that would
fetch weights are refused.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import inspect
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from torch import nn

import pxp.models.digits as digits
import pxp.models.generic as generic
from pxp.errors import UnsupportedArchitectureError
from pxp.spec import Family

IMAGENET_MEAN: tuple[float, ...] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, ...] = (0.229, 0.224, 0.225)
TIMM_PREFIX = "timm/"
#: timm modules whose models are ``timm.models.vision_transformer.VisionTransformer`` s.
_TIMM_VIT_MODULES = ("vision_transformer", "deit")
#: timm modules pruned by MLP neurons only (:mod:`pxp.components.vit.mlp`), with the name
#: prefix a model must have: ``eva`` also holds rope ViTs (DINOv3 …) that are not EVA.
_TIMM_MLP_MODULES: dict[str, str] = {"convnext": "convnext", "swin_transformer": "swin", "eva": "eva"}
#: Architecture prefixes of timm's ConvNeXt / Swin / EVA models (pruned by MLP neurons only).
_TIMM_MLP_PREFIXES = ("convnext", "swin", "swinv2", "eva", "eva02")


@dataclass(frozen=True)
class ArchitectureInfo:
    name: str
    family: Family
    builder: Callable[..., nn.Module]
    #: Constructor kwargs used when the spec does not override them; always holds ``num_classes``.
    #: For zoo builders it holds every constructor default, so effective kwargs (and the zoo's
    #: cache keys and export manifests built from them) describe the model completely.
    default_kwargs: dict[str, Any]
    input_channels: int
    image_size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    #: Builder kwargs that change the input channel count / image size, if the builder has them.
    channels_kwarg: str | None = None
    image_size_kwarg: str | None = None
    #: Kwargs refused because they would download weights or read files.
    forbidden_kwargs: frozenset[str] = field(default_factory=frozenset)
    #: Checkpoint descriptors (:func:`pxp.models.infer.describe`) this builder takes as kwargs,
    #: descriptor name -> kwarg name; a checkpoint fills the ones the user leaves out.
    inferable: dict[str, str] = field(default_factory=lambda: {"num_classes": "num_classes"})
    #: Whether the name is a generic class (``ResNet``) rather than a fixed configuration.
    generic: bool = False

    def effective_kwargs(self, kwargs: dict[str, Any] | None = None) -> dict[str, Any]:
        return {**self.default_kwargs, **(kwargs or {})}

    def resolve(self, kwargs: dict[str, Any]) -> ArchitectureInfo:
        """This info with ``input_channels`` / ``image_size`` as the given effective kwargs set them."""
        changes: dict[str, Any] = {}
        if self.channels_kwarg and self.channels_kwarg in kwargs:
            changes["input_channels"] = int(kwargs[self.channels_kwarg])
        if self.image_size_kwarg and self.image_size_kwarg in kwargs:
            size = kwargs[self.image_size_kwarg]
            changes["image_size"] = int(size[0] if isinstance(size, (list, tuple)) else size)
        if "input_channels" in changes and changes["input_channels"] != len(self.mean):
            channels = changes["input_channels"]
            changes["mean"] = (sum(self.mean) / len(self.mean),) * channels
            changes["std"] = (sum(self.std) / len(self.std),) * channels
        return dataclasses.replace(self, **changes) if changes else self


ZOO_ARCHITECTURES: tuple[str, ...] = ("digits_vgg", "digits_resnet18", "digits_vit")


def _torchvision(name: str, target: str) -> Callable[..., nn.Module]:
    def build(**kwargs: Any) -> nn.Module:
        import torchvision.models

        return getattr(torchvision.models, name)(weights=None, progress=False, **kwargs)

    build.__name__ = f"torchvision_{name}"
    # The class whose constructor receives the kwargs, for error messages.
    build.__wrapped_target__ = target  # type: ignore[attr-defined]  # a marker attribute on a function object
    return build


def _signature_defaults(builder: Callable[..., nn.Module]) -> dict[str, Any]:
    """Every keyword default of ``builder``, tuples as lists (JSON-friendly)."""
    defaults: dict[str, Any] = {}
    for name, param in inspect.signature(builder).parameters.items():
        if param.default is not inspect.Parameter.empty:
            defaults[name] = list(param.default) if isinstance(param.default, tuple) else param.default
    return defaults


#: Torchvision CNN families beyond VGG/ResNet: (name, class). LRP is refused on them where
#: it is not faithful (:mod:`pxp.attribution.support`); the other criteria work.
_EXTRA_CNNS: tuple[tuple[str, str], ...] = (
    ("mobilenet_v2", "MobileNetV2"),
    ("mobilenet_v3_small", "MobileNetV3"),
    ("mobilenet_v3_large", "MobileNetV3"),
    *((f"efficientnet_b{i}", "EfficientNet") for i in range(4)),
    ("efficientnet_v2_s", "EfficientNet"),
    ("regnet_x_400mf", "RegNet"),
    ("regnet_y_400mf", "RegNet"),
    ("regnet_y_800mf", "RegNet"),
    ("densenet121", "DenseNet"),
    ("densenet169", "DenseNet"),
)
#: torchvision ConvNeXt / Swin models: family "vit", pruned by MLP neurons only
#: (:mod:`pxp.components.vit.mlp`); LRP is refused on them (:mod:`pxp.attribution.support`).
_MLP_MODELS: tuple[tuple[str, str], ...] = (
    *((f"convnext_{size}", "ConvNeXt") for size in ("tiny", "small", "base", "large")),
    *((f"swin_{size}", "SwinTransformer") for size in ("t", "s", "b")),
    *((f"swin_v2_{size}", "SwinTransformer") for size in ("t", "s", "b")),
)


def _builtin() -> dict[str, ArchitectureInfo]:
    table: dict[str, ArchitectureInfo] = {}
    tv_forbidden = frozenset({"weights", "progress"})
    cnn_names = [f"vgg{d}{bn}" for d in (11, 13, 16, 19) for bn in ("", "_bn")]
    cnn_names += ["resnet18", "resnet34", "resnet50", "resnet101", "resnet152"]
    cnn_names += ["wide_resnet50_2", "wide_resnet101_2", "resnext50_32x4d", "resnext101_32x8d"]
    for name in cnn_names:
        table[name] = ArchitectureInfo(
            name=name,
            family="cnn",
            builder=_torchvision(name, "VGG" if name.startswith("vgg") else "ResNet"),
            default_kwargs={"num_classes": 1000},
            input_channels=3,
            image_size=224,
            mean=IMAGENET_MEAN,
            std=IMAGENET_STD,
            forbidden_kwargs=tv_forbidden,
        )
    for name in ("vit_b_16", "vit_b_32", "vit_l_16", "vit_l_32", "vit_h_14"):
        table[name] = ArchitectureInfo(
            name=name,
            family="vit",
            builder=_torchvision(name, "VisionTransformer"),
            default_kwargs={"num_classes": 1000},
            input_channels=3,
            image_size=224,
            mean=IMAGENET_MEAN,
            std=IMAGENET_STD,
            image_size_kwarg="image_size",
            forbidden_kwargs=tv_forbidden,
            inferable={"num_classes": "num_classes", "image_size": "image_size"},
        )
    families: list[tuple[Family, tuple[tuple[str, str], ...]]] = [
        ("vit", _MLP_MODELS),
        ("cnn", _EXTRA_CNNS),
    ]
    for family, models in families:
        for name, target in models:
            table[name] = ArchitectureInfo(
                name=name,
                family=family,
                builder=_torchvision(name, target),
                default_kwargs={"num_classes": 1000},
                input_channels=3,
                image_size=224,
                mean=IMAGENET_MEAN,
                std=IMAGENET_STD,
                forbidden_kwargs=tv_forbidden,
            )
    vit_descriptors = ("image_size", "patch_size", "num_layers", "hidden_dim", "mlp_dim", "num_classes")
    generics: list[tuple[str, Family, Callable[..., nn.Module], tuple[str, ...], str | None]] = [
        (
            "VisionTransformer",
            "vit",
            generic.vision_transformer,
            (*vit_descriptors, "representation_size"),
            "image_size",
        ),
        (
            "ResNet",
            "cnn",
            generic.resnet,
            ("block", "layers", "groups", "width_per_group", "num_classes"),
            None,
        ),
        ("VGG", "cnn", generic.vgg, ("cfg", "batch_norm", "num_classes"), None),
    ]
    for name, family, builder, descriptors, size_kwarg in generics:
        table[name] = ArchitectureInfo(
            name=name,
            family=family,
            builder=builder,
            default_kwargs={"num_classes": 1000},
            input_channels=3,
            image_size=224,
            mean=IMAGENET_MEAN,
            std=IMAGENET_STD,
            channels_kwarg="in_channels",
            image_size_kwarg=size_kwarg,
            inferable={d: d for d in (*descriptors, "in_channels")},
            generic=True,
        )
    zoo_inferable: dict[str, dict[str, str]] = {
        "digits_vgg": {d: d for d in ("num_classes", "in_channels", "widths", "convs_per_stage", "hidden")},
        "digits_resnet18": {"num_classes": "num_classes", "in_channels": "in_channels", "layers": "layers"}
        | {"stem_width": "base_width"},
        "digits_vit": {d: d for d in (*vit_descriptors, "in_channels")},
    }
    zoo: list[tuple[str, Family, Callable[..., nn.Module], str | None]] = [
        ("digits_vgg", "cnn", digits.digits_vgg, None),
        ("digits_resnet18", "cnn", digits.digits_resnet18, None),
        ("digits_vit", "vit", digits.digits_vit, "image_size"),
    ]
    for name, family, builder, size_kwarg in zoo:
        table[name] = ArchitectureInfo(
            name=name,
            family=family,
            builder=builder,
            default_kwargs=_signature_defaults(builder),
            input_channels=1,
            image_size=32,
            mean=digits.DIGITS_MEAN,
            std=digits.DIGITS_STD,
            channels_kwarg="in_channels",
            image_size_kwarg=size_kwarg,
            inferable=zoo_inferable[name],
        )
    return table


_BUILTIN: dict[str, ArchitectureInfo] = _builtin()


@functools.cache
def _timm_vit_names() -> frozenset[str]:
    """Supported timm names: ViT / DeiT, and ConvNeXt / Swin / EVA (MLP neurons only)."""
    import timm

    names = set(timm.list_models(module=list(_TIMM_VIT_MODULES)))
    for module, prefix in _TIMM_MLP_MODULES.items():
        names.update(n for n in timm.list_models(module=module) if n.startswith(prefix))
    return frozenset(names)


@functools.cache
def _timm_takes_img_size(arch: str) -> bool:
    """Whether the timm model's constructor has an ``img_size`` (ConvNeXt's has not)."""
    return not arch.startswith("convnext")


@functools.cache
def _timm_all_names() -> frozenset[str]:
    import timm

    return frozenset(timm.list_models())


def _timm_info(name: str) -> ArchitectureInfo:
    model_name = name[len(TIMM_PREFIX) :]
    arch = model_name.split(".", 1)[0]
    if arch not in _timm_vit_names():
        if arch in _timm_all_names():
            raise UnsupportedArchitectureError(
                f"timm model {model_name!r} is not a VisionTransformer/DeiT, ConvNeXt, Swin or EVA model; "
                "only those timm families are supported"
            )
        close = difflib.get_close_matches(arch, sorted(_timm_vit_names()), n=5, cutoff=0.6)
        raise UnsupportedArchitectureError(
            f"unknown timm model {model_name!r}"
            + (f" (did you mean {', '.join(TIMM_PREFIX + c for c in close)}?)" if close else "")
        )
    from timm.models import get_pretrained_cfg

    cfg = get_pretrained_cfg(model_name)
    input_size = tuple(cfg.input_size) if cfg is not None and cfg.input_size else (3, 224, 224)
    mean = tuple(cfg.mean) if cfg is not None and cfg.mean else IMAGENET_MEAN
    std = tuple(cfg.std) if cfg is not None and cfg.std else IMAGENET_STD
    num_classes = cfg.num_classes if cfg is not None and cfg.num_classes else 1000

    def build(**kwargs: Any) -> nn.Module:
        import timm

        return timm.create_model(model_name, pretrained=False, **kwargs)

    build.__name__ = f"timm_{arch}"
    return ArchitectureInfo(
        name=name,
        family="vit",
        builder=build,
        default_kwargs={"num_classes": int(num_classes)},
        input_channels=int(input_size[0]),
        image_size=int(input_size[-1]),
        mean=tuple(float(m) for m in mean),
        std=tuple(float(s) for s in std),
        channels_kwarg="in_chans",
        image_size_kwarg="img_size" if _timm_takes_img_size(arch) else None,
        forbidden_kwargs=frozenset(
            {"pretrained", "pretrained_cfg", "pretrained_cfg_overlay", "checkpoint_path", "cache_dir"}
        ),
        inferable=(
            {"num_classes": "num_classes", "image_size": "img_size", "in_channels": "in_chans"}
            if arch.split("_", 1)[0] not in _TIMM_MLP_PREFIXES
            else {"num_classes": "num_classes"}
        ),
    )


def get_architecture(name: str) -> ArchitectureInfo:
    """The registry entry for ``name``; timm models are named ``timm/<model_name>``.

    Raises :class:`UnsupportedArchitectureError` with close names when it is unknown.
    """
    if name in _BUILTIN:
        return _BUILTIN[name]
    if name.startswith(TIMM_PREFIX):
        return _timm_info(name)
    close = difflib.get_close_matches(name, list(_BUILTIN), n=5, cutoff=0.5)
    hint = f" (did you mean {', '.join(close)}?)" if close else ""
    raise UnsupportedArchitectureError(
        f"unknown architecture {name!r}{hint}. Known: {sorted(_BUILTIN)} and timm ViT/DeiT, ConvNeXt, "
        f"Swin and EVA models as '{TIMM_PREFIX}<name>'."
    )


def list_architectures(include_timm: bool = False) -> list[str]:
    """Built-in names, sorted; with ``include_timm`` also every supported ``timm/<name>``."""
    names = sorted(_BUILTIN)
    if include_timm:
        names += sorted(TIMM_PREFIX + n for n in _timm_vit_names())
    return names


def is_zoo(name: str) -> bool:
    return name in ZOO_ARCHITECTURES


def prunes_heads_by_default(name: str) -> bool:
    """Whether a job on architecture ``name`` prunes attention heads unless told otherwise.

    True for ViT / DeiT models (:func:`pxp.components.default_kind`: heads); False for
    CNNs and for ConvNeXt / Swin / EVA, which prune MLP neurons. Decided from the name
    alone, so nothing is built; an unknown name raises like :func:`get_architecture`.
    """
    info = get_architecture(name)
    if info.family != "vit" or name in dict(_MLP_MODELS):
        return False
    if name.startswith(TIMM_PREFIX):
        arch = name[len(TIMM_PREFIX) :].split(".", 1)[0]
        return arch.split("_", 1)[0] not in _TIMM_MLP_PREFIXES
    return True
