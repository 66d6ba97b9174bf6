"""MLP neurons of ConvNeXt, Swin and EVA blocks: the prunable units that no normalization couples.

These models are not converted to the explicit-attention form: only the hidden units of
each block's MLP are prunable (kind ``neurons``). A hidden unit is produced by rows of the
MLP's first projection (ConvNeXt / Swin: one row of ``fc1``; EVA's SwiGLU: one row of the
gate *and* one of the value projection) and consumed by one column of ``fc2``; no
LayerNorm sees it, so zeroing it at the hook point and removing those rows and that
column compute the same function. Everything else (ConvNeXt's depthwise convs, stem and
downsampling channels, which write through LayerNorms over channels; Swin and EVA
residual dimensions) is not prunable here.

Hook points (:class:`pxp.components.base.PrunableLayer`):

- torchvision ``CNBlock``: ``block.3`` (the first pointwise Linear, NHWC output,
  ``channel_dim=3``); masking its output zeroes the unit after GELU too (GELU(0) = 0).
- timm ``ConvNeXtBlock``: ``mlp.fc1`` (a Linear on NHWC, ``channel_dim=3``, or a 1×1
  conv with ``conv_mlp``, ``channel_dim=1``).
- torchvision ``SwinTransformerBlock`` / ``SwinTransformerBlockV2``: ``mlp.0`` (NHWC,
  ``channel_dim=3``); timm ``SwinTransformerBlock``: ``mlp.fc1`` (``(B, L, C)``, ``channel_dim=2``).
- timm ``EvaBlock`` / ``EvaBlockPostNorm``: plain ``Mlp``: ``mlp.fc1``; ``SwiGLU``:
  ``mlp.fc1_x`` (the value projection: ``SiLU(gate) · 0 = 0``, and activation × gradient
  there equals the hidden unit's); the fused ``GluMlp`` of EVA02 is split into
  :class:`SplitGluMlp` by :func:`prepare_mlp_model` so that the value half is its own
  Linear, and fused back on export (:func:`fuse_glu_mlps`).

An MLP with a normalization over its hidden units (timm ``scale_mlp``, ConvNeXt-V2's
GlobalResponseNorm) is refused: a zeroed unit would still shift that normalization.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from pxp.errors import UnsupportedArchitectureError

#: Class names of the blocks handled here, by library module prefix.
_TORCHVISION_BLOCKS = ("CNBlock", "SwinTransformerBlock", "SwinTransformerBlockV2")
_TIMM_BLOCKS = ("ConvNeXtBlock", "SwinTransformerBlock", "EvaBlock", "EvaBlockPostNorm")


@dataclass(frozen=True)
class MlpUnits:
    """Where one block's MLP hidden units live (paths relative to the model)."""

    block: str
    #: Hook point: the module whose output carries the units (its rows produce them).
    hook: str
    #: Every module whose output rows produce the units (``hook`` and, for SwiGLU, the gate).
    rows: tuple[str, ...]
    #: The module whose input columns consume the units.
    columns: str
    size: int
    channel_dim: int


class SplitGluMlp(nn.Module):
    """timm ``GluMlp`` with its fused first Linear split into gate (``fc1_g``) and value (``fc1_x``).

    Computes ``fc2(norm(drop1(act(fc1_g(x)) · fc1_x(x))))``, exactly ``GluMlp`` for
    ``chunk_dim=-1`` (the gate is the first half of the fused rows unless ``gate_last``).
    """

    def __init__(self, mlp: Any) -> None:
        super().__init__()
        hidden = mlp.fc1.out_features // 2
        gate, value = (
            (slice(hidden, 2 * hidden), slice(0, hidden))
            if mlp.gate_last
            else (
                slice(0, hidden),
                slice(hidden, 2 * hidden),
            )
        )
        self.gate_last = bool(mlp.gate_last)
        self.fc1_g = _rows(mlp.fc1, gate)
        self.fc1_x = _rows(mlp.fc1, value)
        self.act = mlp.act
        self.drop1 = mlp.drop1
        self.norm = mlp.norm
        self.fc2 = mlp.fc2
        self.drop2 = mlp.drop2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act(self.fc1_g(x)) * self.fc1_x(x)
        return self.drop2(self.fc2(self.norm(self.drop1(x))))


def _rows(linear: nn.Linear, rows: slice) -> nn.Linear:
    w = linear.weight[rows]
    out = nn.Linear(w.shape[1], w.shape[0], bias=linear.bias is not None, device=w.device, dtype=w.dtype)
    with torch.no_grad():
        out.weight.copy_(w)
        if linear.bias is not None:
            out.bias.copy_(linear.bias[rows])
    return out.requires_grad_(linear.weight.requires_grad)


def _library(module: nn.Module) -> str:
    return type(module).__module__.split(".", 1)[0]


def is_mlp_block(module: nn.Module) -> bool:
    """Whether ``module`` is a ConvNeXt / Swin / EVA block whose MLP neurons pxp prunes."""
    name, library = type(module).__name__, _library(module)
    return (library == "torchvision" and name in _TORCHVISION_BLOCKS) or (
        library == "timm" and name in _TIMM_BLOCKS
    )


def mlp_blocks(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """Every ConvNeXt / Swin / EVA block of ``model``, in module (= forward) order."""
    return [(name, m) for name, m in model.named_modules() if is_mlp_block(m)]


def _identity(module: nn.Module | None) -> bool:
    return module is None or isinstance(module, nn.Identity)


def _hidden_norm_error(where: str) -> UnsupportedArchitectureError:
    return UnsupportedArchitectureError(
        f"{where} normalizes its hidden units (scale_mlp / GlobalResponseNorm): a zeroed unit still "
        "shifts that normalization, so its MLP neurons cannot be pruned"
    )


def block_units(name: str, block: nn.Module) -> MlpUnits:
    """The MLP hidden units of one block (raises for MLP forms that are not handled)."""
    cls = type(block).__name__
    if _library(block) == "torchvision":
        seq = block.get_submodule("block" if cls == "CNBlock" else "mlp")
        children = list(seq.named_children())
        linears = [n for n, m in children if isinstance(m, nn.Linear)]
        acts = [m for _, m in children if isinstance(m, nn.GELU)]
        if len(linears) != 2 or len(acts) != 1:
            raise UnsupportedArchitectureError(f"{name}: expected an MLP Linear → GELU → Linear")
        prefix = f"{name}.{'block' if cls == 'CNBlock' else 'mlp'}"
        fc1 = seq.get_submodule(linears[0])
        assert isinstance(fc1, nn.Linear)
        return MlpUnits(
            name,
            f"{prefix}.{linears[0]}",
            (f"{prefix}.{linears[0]}",),
            f"{prefix}.{linears[1]}",
            fc1.out_features,
            3,
        )
    mlp = block.get_submodule("mlp")
    kind = type(mlp).__name__
    prefix = f"{name}.mlp"
    if not _identity(getattr(mlp, "norm", None)):
        raise _hidden_norm_error(f"{name}.mlp")
    if kind in ("SwiGLU", "SplitGluMlp"):
        fc1_x = mlp.get_submodule("fc1_x")
        assert isinstance(fc1_x, nn.Linear)
        return MlpUnits(
            name,
            f"{prefix}.fc1_x",
            (f"{prefix}.fc1_g", f"{prefix}.fc1_x"),
            f"{prefix}.fc2",
            fc1_x.out_features,
            2,
        )
    if kind == "GluMlp":
        raise UnsupportedArchitectureError(
            f"{name}.mlp is a fused GluMlp; prepare the model with pxp.components.prepare_model(model, 'vit')"
        )
    if kind != "Mlp":
        raise UnsupportedArchitectureError(
            f"{name}.mlp: timm {kind} is not supported (Mlp, SwiGLU, GluMlp are)"
        )
    fc1 = mlp.get_submodule("fc1")
    if isinstance(fc1, nn.Conv2d):
        if fc1.kernel_size != (1, 1) or fc1.groups != 1:
            raise UnsupportedArchitectureError(f"{name}.mlp.fc1 is not a 1×1 convolution")
        return MlpUnits(name, f"{prefix}.fc1", (f"{prefix}.fc1",), f"{prefix}.fc2", fc1.out_channels, 1)
    if not isinstance(fc1, nn.Linear):
        raise UnsupportedArchitectureError(f"{name}.mlp.fc1 is a {type(fc1).__name__}, not a Linear")
    # timm Swin flattens (B, H, W, C) to (B, L, C) before its MLP; ConvNeXt and EVA do not reshape
    # to 3-d (ConvNeXt keeps NHWC, EVA has tokens).
    channel_dim = 3 if cls == "ConvNeXtBlock" else 2
    return MlpUnits(name, f"{prefix}.fc1", (f"{prefix}.fc1",), f"{prefix}.fc2", fc1.out_features, channel_dim)


def split_glu_mlps(model: nn.Module) -> None:
    """Replace, in place, every timm ``GluMlp`` inside an MLP block by :class:`SplitGluMlp`."""
    for name, block in mlp_blocks(model):
        mlp = getattr(block, "mlp", None)
        if mlp is None or type(mlp).__name__ != "GluMlp":
            continue
        if getattr(mlp, "chunk_dim", -1) != -1 or not isinstance(mlp.fc1, nn.Linear):
            raise UnsupportedArchitectureError(f"{name}.mlp: a convolutional GluMlp is not supported")
        block.mlp = SplitGluMlp(mlp)


def fuse_glu_mlps(model: nn.Module) -> nn.Module:
    """Undo :func:`split_glu_mlps` in place: every :class:`SplitGluMlp` back to a timm ``GluMlp``."""
    from timm.layers import GluMlp

    for parent in list(model.modules()):
        for child_name, child in list(parent.named_children()):
            if not isinstance(child, SplitGluMlp):
                continue
            halves = [child.fc1_x, child.fc1_g] if child.gate_last else [child.fc1_g, child.fc1_x]
            fused: Any = GluMlp.__new__(GluMlp)
            nn.Module.__init__(fused)
            fused.chunk_dim = -1
            fused.gate_last = child.gate_last
            bias = halves[0].bias
            fc1 = nn.Linear(child.fc1_g.in_features, 2 * child.fc1_g.out_features, bias=bias is not None).to(
                device=halves[0].weight.device, dtype=halves[0].weight.dtype
            )
            with torch.no_grad():
                fc1.weight.copy_(torch.cat([h.weight for h in halves]))
                if bias is not None:
                    fc1.bias.copy_(torch.cat([h.bias for h in halves]))
            fused.fc1 = fc1.requires_grad_(False)
            for part in ("act", "drop1", "norm", "fc2", "drop2"):
                setattr(fused, part, getattr(child, part))
            setattr(parent, child_name, fused.eval())
    return model


def is_mlp_model(model: nn.Module) -> bool:
    """Whether ``model`` holds ConvNeXt / Swin / EVA blocks (and is pruned by MLP neurons)."""
    return bool(mlp_blocks(model))


def prepare_mlp_model(model: nn.Module) -> nn.Module:
    """``model`` (modified in place: pass a copy) with fused GluMlps split; other modules unchanged."""
    split_glu_mlps(model)
    return model


def find_mlp_units(model: nn.Module) -> list[MlpUnits]:
    """Every block's MLP units in forward order (raises if there is no block or one is unsupported)."""
    blocks = mlp_blocks(model)
    if not blocks:
        raise UnsupportedArchitectureError(f"{type(model).__name__} has no ConvNeXt, Swin or EVA block")
    return [block_units(name, block) for name, block in blocks]


def units_weight_norms(model: nn.Module, units: MlpUnits) -> torch.Tensor:
    """L1 norm, per hidden unit, of the rows producing it (all of ``units.rows``; biases excluded)."""
    total: torch.Tensor | None = None
    for path in units.rows:
        module = model.get_submodule(path)
        assert isinstance(module, nn.Linear | nn.Conv2d)
        norms = module.weight.detach().abs().reshape(module.weight.shape[0], -1).sum(1)
        total = norms if total is None else total + norms
    assert total is not None
    return total
