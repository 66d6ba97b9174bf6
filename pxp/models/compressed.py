"""Rebuild a compressed model from ``manifest.json`` + ``model.safetensors``, without pickle.

The manifest names a registry architecture and its constructor kwargs (the
*unpruned* model), plus ``modules``: for every module that structural removal
changed, its type and new sizes (see :func:`module_spec`). Loading builds the
architecture, resizes those modules in place (:func:`resize_module`), checks the
weights' sha256 and loads them strictly. Every module type used is a plain
torch / torchvision / timm class, except :class:`PrunedMultiheadAttention`: a
torchvision ``nn.MultiheadAttention`` cannot hold fewer heads than
``embed_dim / head_dim``, so a block that lost heads gets this drop-in module
(same call signature, same state-dict keys).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from pxp.errors import InvalidModelError
from pxp.hashing import sha256_file

MANIFEST_NAME = "manifest.json"
WEIGHTS_NAME = "model.safetensors"
MANIFEST_FORMAT = "pxp-compressed"
MANIFEST_VERSION = 1


class PrunedMultiheadAttention(nn.Module):
    """Self-attention with ``num_heads`` heads of ``head_dim`` each, where ``num_heads * head_dim`` may
    differ from ``embed_dim``.

    Drop-in for torchvision's use of ``nn.MultiheadAttention`` (``batch_first=True``,
    called as ``attn(x, x, x, need_weights=False)``); its parameters keep
    ``nn.MultiheadAttention``'s names (``in_proj_weight``, ``in_proj_bias``,
    ``out_proj``), so a state dict maps one to one.
    """

    def __init__(self, embed_dim: int, num_heads: int, head_dim: int, bias: bool = True) -> None:
        super().__init__()
        if num_heads < 1 or head_dim < 1:
            raise ValueError(f"num_heads and head_dim must be positive, got {num_heads}, {head_dim}")
        self.embed_dim = embed_dim
        self.num_heads = num_heads
        self.head_dim = head_dim
        inner = num_heads * head_dim
        self.in_proj_weight = nn.Parameter(torch.empty(3 * inner, embed_dim))
        self.in_proj_bias = nn.Parameter(torch.zeros(3 * inner)) if bias else None
        self.out_proj = nn.Linear(inner, embed_dim, bias=bias)
        nn.init.xavier_uniform_(self.in_proj_weight)

    def forward(
        self,
        query: torch.Tensor,
        key: torch.Tensor | None = None,
        value: torch.Tensor | None = None,
        need_weights: bool = False,
        **_: Any,
    ) -> tuple[torch.Tensor, None]:
        b, n, _e = query.shape
        qkv = F.linear(query, self.in_proj_weight, self.in_proj_bias)
        qkv = qkv.reshape(b, n, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]
        ctx = F.scaled_dot_product_attention(q, k, v)
        ctx = ctx.transpose(1, 2).reshape(b, n, self.num_heads * self.head_dim)
        return self.out_proj(ctx), None


def _timm_attention_class() -> type | None:
    try:
        from timm.layers import Attention
    except ImportError:  # pragma: no cover - timm is a core dependency
        return None
    return Attention


def module_spec(module: nn.Module) -> dict[str, Any]:
    """Type and sizes of a module, enough for :func:`resize_module` to give a fresh one its shapes."""
    if isinstance(module, nn.Conv2d):
        spec: dict[str, Any] = {
            "type": "Conv2d",
            "in_channels": module.in_channels,
            "out_channels": module.out_channels,
        }
        if module.groups != 1:
            spec["groups"] = module.groups
        return spec
    if isinstance(module, nn.Linear):
        return {"type": "Linear", "in_features": module.in_features, "out_features": module.out_features}
    if isinstance(module, nn.BatchNorm2d | nn.BatchNorm1d):
        return {"type": type(module).__name__, "num_features": module.num_features}
    if isinstance(module, PrunedMultiheadAttention):
        return {
            "type": "PrunedMultiheadAttention",
            "embed_dim": module.embed_dim,
            "num_heads": module.num_heads,
            "head_dim": module.head_dim,
            "bias": module.in_proj_bias is not None,
        }
    timm_attention = _timm_attention_class()
    if timm_attention is not None and isinstance(module, timm_attention):
        return {"type": "timm.Attention", "num_heads": module.num_heads, "head_dim": module.head_dim}
    raise InvalidModelError(f"no size spec for module type {type(module).__name__}")


def _fresh(tensor: torch.Tensor | None, shape: tuple[int, ...]) -> torch.Tensor | None:
    if tensor is None:
        return None
    return torch.empty(shape, dtype=tensor.dtype, device=tensor.device)


def _set(module: nn.Module, name: str, value: torch.Tensor | None) -> None:
    if value is None:
        return
    if name in module._parameters:
        module._parameters[name] = nn.Parameter(value, requires_grad=False)
    else:
        module._buffers[name] = value


def _int(spec: dict[str, Any], key: str) -> int:
    value = spec.get(key)
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise InvalidModelError(f"module spec {spec}: {key!r} must be a positive integer")
    return value


def _is_depthwise(module: nn.Conv2d) -> bool:
    return module.groups == module.in_channels == module.out_channels > 1


def _resize_conv(module: nn.Conv2d, spec: dict[str, Any]) -> None:
    cin, cout = _int(spec, "in_channels"), _int(spec, "out_channels")
    if _is_depthwise(module):
        # Depthwise (one filter per channel) stays depthwise at the new width (at width 1 the
        # spec of the removed module records no groups: one group).
        if not cin == cout == spec.get("groups", 1):
            raise InvalidModelError("a depthwise convolution must stay depthwise (in = out = groups)")
        _set(module, "weight", _fresh(module.weight, (cout, 1, *module.weight.shape[2:])))
        _set(module, "bias", _fresh(module.bias, (cout,)))
        module.in_channels = module.out_channels = module.groups = cout
        return
    if module.groups != 1:
        # Other grouped convs keep their number of groups; each group narrows equally.
        groups = module.groups
        if spec.get("groups") != groups or cin % groups or cout % groups:
            raise InvalidModelError(
                f"a grouped convolution keeps its {groups} groups and channel counts divisible by them "
                f"(spec: groups={spec.get('groups')!r}, {cin} -> {cout} channels)"
            )
        _set(module, "weight", _fresh(module.weight, (cout, cin // groups, *module.weight.shape[2:])))
        _set(module, "bias", _fresh(module.bias, (cout,)))
        module.in_channels, module.out_channels = cin, cout
        return
    _set(module, "weight", _fresh(module.weight, (cout, cin, *module.weight.shape[2:])))
    _set(module, "bias", _fresh(module.bias, (cout,)))
    module.in_channels, module.out_channels = cin, cout


def _resize_linear(module: nn.Linear, spec: dict[str, Any]) -> None:
    fin, fout = _int(spec, "in_features"), _int(spec, "out_features")
    _set(module, "weight", _fresh(module.weight, (fout, fin)))
    _set(module, "bias", _fresh(module.bias, (fout,)))
    module.in_features, module.out_features = fin, fout


def _resize_bn(module: nn.BatchNorm2d | nn.BatchNorm1d, spec: dict[str, Any]) -> None:
    n = _int(spec, "num_features")
    for name in ("weight", "bias", "running_mean", "running_var"):
        _set(module, name, _fresh(getattr(module, name), (n,)))
    module.num_features = n


def _resize_timm_attention(module: Any, spec: dict[str, Any]) -> None:
    heads, head_dim = _int(spec, "num_heads"), _int(spec, "head_dim")
    if head_dim != module.head_dim:
        raise InvalidModelError(
            f"timm attention head_dim {head_dim} differs from the architecture's {module.head_dim}"
        )
    if not isinstance(module.norm, nn.Identity):
        raise InvalidModelError("timm attention with scale_norm cannot lose heads")
    inner = heads * head_dim
    qkv, proj = module.qkv, module.proj
    _resize_linear(qkv, {"in_features": qkv.in_features, "out_features": 3 * inner})
    _resize_linear(proj, {"in_features": inner, "out_features": proj.out_features})
    if getattr(module, "gate", None) is not None:
        _resize_linear(module.gate, {"in_features": module.gate.in_features, "out_features": inner})
    module.num_heads, module.attn_dim = heads, inner


def resize_module(model: nn.Module, name: str, spec: dict[str, Any]) -> None:
    """Give module ``name`` of ``model`` the sizes in ``spec`` (uninitialised tensors), in place.

    Attention modules named ``PrunedMultiheadAttention`` replace the module at ``name``.
    """
    try:
        module = model.get_submodule(name)
    except AttributeError:
        raise InvalidModelError(
            f"manifest names module {name!r}, which the architecture does not have"
        ) from None
    kind = spec.get("type")
    if kind == "Conv2d" and isinstance(module, nn.Conv2d):
        _resize_conv(module, spec)
    elif kind == "Linear" and isinstance(module, nn.Linear):
        _resize_linear(module, spec)
    elif kind in ("BatchNorm2d", "BatchNorm1d") and type(module).__name__ == kind:
        assert isinstance(module, nn.BatchNorm2d | nn.BatchNorm1d)
        _resize_bn(module, spec)
    elif kind == "timm.Attention" and type(module).__name__ == "Attention" and hasattr(module, "qkv"):
        _resize_timm_attention(module, spec)
    elif kind == "PrunedMultiheadAttention" and isinstance(
        module, nn.MultiheadAttention | PrunedMultiheadAttention
    ):
        bias = spec.get("bias", True)
        if not isinstance(bias, bool):
            raise InvalidModelError(f"module spec {spec}: 'bias' must be a boolean")
        new = PrunedMultiheadAttention(
            _int(spec, "embed_dim"), _int(spec, "num_heads"), _int(spec, "head_dim"), bias=bias
        )
        parent_name, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent_name) if parent_name else model, child, new)
    else:
        raise InvalidModelError(
            f"manifest module {name!r}: spec type {kind!r} does not fit {type(module).__name__}"
        )


def read_manifest(directory: str | Path) -> dict[str, Any]:
    """The parsed, shape-checked ``manifest.json`` of a compressed-model directory."""
    path = Path(directory) / MANIFEST_NAME
    if not path.is_file():
        raise InvalidModelError(f"{str(directory)!r} has no {MANIFEST_NAME}")
    try:
        manifest = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InvalidModelError(f"{MANIFEST_NAME}: not valid JSON ({exc})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != MANIFEST_FORMAT:
        raise InvalidModelError(f"{MANIFEST_NAME}: not a pxp compressed-model manifest")
    if manifest.get("version") != MANIFEST_VERSION:
        raise InvalidModelError(f"{MANIFEST_NAME}: unsupported version {manifest.get('version')!r}")
    for key, kind in (("architecture", str), ("kwargs", dict), ("modules", dict), ("weights", dict)):
        if not isinstance(manifest.get(key), kind):
            raise InvalidModelError(f"{MANIFEST_NAME}: {key!r} missing or not a {kind.__name__}")
    return manifest


def build_compressed_architecture(manifest: dict[str, Any]) -> nn.Module:
    """The manifest's architecture with its modules resized; resized weights are uninitialised (load them next)."""
    from pxp.models.build import instantiate
    from pxp.models.registry import get_architecture

    model = instantiate(get_architecture(manifest["architecture"]), manifest["kwargs"])
    for name, spec in manifest["modules"].items():
        if not isinstance(spec, dict):
            raise InvalidModelError(f"{MANIFEST_NAME}: module {name!r} spec is not an object")
        resize_module(model, name, spec)
    return model.eval()


def load_compressed(directory: str | Path, *, check_hash: bool = True) -> nn.Module:
    """The compressed model saved by :func:`pxp.pruning.export.export_compressed`, in eval mode on CPU.

    Reads only JSON and safetensors. Raises :class:`InvalidModelError` when the
    manifest is malformed, the weights' sha256 does not match it, or the weights
    are corrupt, truncated or do not fit the rebuilt architecture.
    """
    from pxp.models.checkpoint import load_state_dict_file, load_weights

    directory = Path(directory)
    manifest = read_manifest(directory)
    weights = manifest["weights"]
    file_name = weights.get("file", WEIGHTS_NAME)
    if not isinstance(file_name, str) or Path(file_name).name != file_name:
        raise InvalidModelError(f"{MANIFEST_NAME}: weights file must be a plain file name, got {file_name!r}")
    path = directory / file_name
    if not path.is_file():
        raise InvalidModelError(f"{path.name} is missing from {str(directory)!r}")
    if check_hash and weights.get("sha256") != sha256_file(path):
        raise InvalidModelError(
            f"{path.name}: sha256 does not match the manifest (the file is corrupt, truncated or was replaced)"
        )
    state = load_state_dict_file(path)
    model = build_compressed_architecture(manifest)
    load_weights(model, state)
    return model.eval()
