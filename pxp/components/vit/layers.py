"""Prunable components of an explicit-attention ViT: heads, MLP hidden neurons, fc2 outputs.

Hook points and their aggregation (:func:`pxp.components.base.aggregate`):

- ``heads``: ``<block>.<attention>.heads``, output ``(B, T, H, D)``, ``channel_dim=2``. The
  context of head ``h`` at query ``t`` is ``Σ_k A[h,t,k] V[h,k,:]``, so summing its relevance
  over ``D`` gives that query's relevance for the head, the same quantity as summing the
  attention relevance over keys (ARCHITECTURE.md); then ``|·|`` per query, sum over queries and samples.
- ``neurons``: the MLP's first Linear (fc1), output ``(B, T, N)``. Masking its output zeroes
  the neuron after the activation too (GELU(0) = 0). Under LRP the activation passes
  relevance unchanged, so the relevance read here is the neuron's relevance.
- ``fc2``: the MLP's second Linear, output ``(B, T, E)``: one residual-stream dimension of
  that block's MLP contribution.

Depth groups early / middle / late are the thirds of the block order, found from the
module types, not from names.
"""

from __future__ import annotations

import torch
from torch import nn

from pxp.components.base import PrunableLayer
from pxp.components.vit.convert import is_explicit
from pxp.components.vit.mlp import find_mlp_units, is_mlp_model, units_weight_norms
from pxp.components.vit.modules import EXPLICIT_BLOCKS, ExplicitEncoderBlock, ExplicitSelfAttention
from pxp.errors import InvalidSpecError, UnsupportedArchitectureError
from pxp.spec import VIT_GROUPS, ComponentKind

_DEPTH_GROUPS = VIT_GROUPS[:3]


def block_group(index: int, count: int) -> str:
    """early / middle / late by thirds of the block order."""
    return _DEPTH_GROUPS[min(2, (index * 3) // max(count, 1))]


def explicit_blocks(model: nn.Module) -> list[tuple[str, nn.Module]]:
    if not is_explicit(model):
        raise UnsupportedArchitectureError(
            "model is not in explicit-attention form; prepare it with pxp.components.prepare_model(model, 'vit')"
        )
    return [(name, m) for name, m in model.named_modules() if isinstance(m, EXPLICIT_BLOCKS)]


def _mlp_linears(block: nn.Module, where: str) -> tuple[str, str]:
    linears = [name for name, m in block.get_submodule("mlp").named_children() if isinstance(m, nn.Linear)]
    if len(linears) != 2:
        raise UnsupportedArchitectureError(
            f"{where}.mlp has {len(linears)} Linear layers, expected fc1 and fc2"
        )
    return f"mlp.{linears[0]}", f"mlp.{linears[1]}"


def _attention_name(block: nn.Module) -> str:
    return "self_attention" if isinstance(block, ExplicitEncoderBlock) else "attn"


def _block_layers(name: str, block: nn.Module, kind: ComponentKind, group: str) -> PrunableLayer:
    if kind == "heads":
        attn_path = f"{name}.{_attention_name(block)}"
        attn = block.get_submodule(_attention_name(block))
        assert isinstance(attn, ExplicitSelfAttention)
        return PrunableLayer(f"{attn_path}.heads", "heads", attn.num_heads, 2, attn_path, group, 0)
    fc1, fc2 = _mlp_linears(block, name)
    path = f"{name}.{fc1 if kind == 'neurons' else fc2}"
    linear = block.get_submodule(fc1 if kind == "neurons" else fc2)
    assert isinstance(linear, nn.Linear)
    return PrunableLayer(path, kind, linear.out_features, 2, path, group, 0)


def _mlp_candidates(model: nn.Module, kind: ComponentKind) -> list[tuple[str, PrunableLayer]]:
    """(block, layer) per ConvNeXt / Swin / EVA block: only its MLP neurons are prunable."""
    if kind != "neurons":
        raise InvalidSpecError(
            f"{type(model).__name__} (ConvNeXt / Swin / EVA) prunes only MLP 'neurons', not {kind!r}: "
            "its attention heads and residual dimensions are not supported"
        )
    units = find_mlp_units(model)
    return [
        (
            u.block,
            PrunableLayer(u.hook, "neurons", u.size, u.channel_dim, u.hook, block_group(i, len(units)), 0),
        )
        for i, u in enumerate(units)
    ]


def find_vit_layers(
    model: nn.Module, kind: ComponentKind, exclude: list[str] | tuple[str, ...] = ()
) -> list[PrunableLayer]:
    """One PrunableLayer per block for ``kind`` in forward order, skipping excluded ones.

    ``exclude`` may name a layer's hook point, its producer, or a whole block.
    """
    if kind not in ("heads", "neurons", "fc2"):
        raise InvalidSpecError(f"ViTs prune 'heads', 'neurons' or 'fc2', not {kind!r}")
    if not is_explicit(model) and is_mlp_model(model):
        candidates = _mlp_candidates(model, kind)
    else:
        blocks = explicit_blocks(model)
        candidates = [
            (block_name, _block_layers(block_name, block, kind, block_group(i, len(blocks))))
            for i, (block_name, block) in enumerate(blocks)
        ]
    known = {n for block_name, layer in candidates for n in (block_name, layer.name, layer.producer)}
    unknown = sorted(set(exclude) - known)
    if unknown:
        raise UnsupportedArchitectureError(
            f"excluded name(s) {unknown} are not {kind} layers or blocks of the model"
        )
    layers: list[PrunableLayer] = []
    for block_name, layer in candidates:
        if {block_name, layer.name, layer.producer} & set(exclude):
            continue
        layers.append(
            PrunableLayer(
                layer.name,
                layer.kind,
                layer.size,
                layer.channel_dim,
                layer.producer,
                layer.group,
                len(layers),
            )
        )
    return layers


def vit_module_groups(model: nn.Module) -> dict[str, str]:
    """Composite group of every Linear / Conv2d: its block's depth group, "fc" for the classifier.

    Modules outside the blocks are the patch embedding (convolutions: "early") and
    the classifier head(s) (linears: "fc").
    """
    blocks = explicit_blocks(model)
    groups: dict[str, str] = {}
    for i, (block_name, block) in enumerate(blocks):
        group = block_group(i, len(blocks))
        for name, module in block.named_modules():
            if isinstance(module, (nn.Linear, nn.Conv2d)):
                groups[f"{block_name}.{name}"] = group
    for name, module in model.named_modules():
        if name in groups:
            continue
        if isinstance(module, nn.Linear):
            groups[name] = "fc"
        elif isinstance(module, nn.Conv2d):
            groups[name] = "early"
    return groups


def weight_norms(model: nn.Module, layer: PrunableLayer) -> torch.Tensor:
    """L1 norm of the weights producing each component (biases excluded, as for conv filters).

    A head's weights are its rows of the q, k and v projections; a neuron's (or fc2
    output's) weights are its row of fc1 (fc2). In ConvNeXt / Swin / EVA MLPs a neuron's
    weights are its rows of every projection producing it (SwiGLU: gate and value).
    """
    if not is_explicit(model) and is_mlp_model(model):
        if layer.kind != "neurons":
            raise InvalidSpecError(f"no weight norm for component kind {layer.kind!r} of an MLP block")
        for units in find_mlp_units(model):
            if units.hook == layer.name:
                return units_weight_norms(model, units)
        raise InvalidSpecError(f"{layer.name} is not an MLP hook point of the model")
    producer = model.get_submodule(layer.producer)
    if layer.kind == "heads":
        assert isinstance(producer, ExplicitSelfAttention)
        heads = producer.num_heads
        return sum(
            (
                p.weight.detach().abs().reshape(heads, -1).sum(1)
                for p in (producer.q_proj, producer.k_proj, producer.v_proj)
            ),
            start=torch.zeros(
                heads, dtype=producer.q_proj.weight.dtype, device=producer.q_proj.weight.device
            ),
        )
    if layer.kind in ("neurons", "fc2"):
        assert isinstance(producer, nn.Linear)
        return producer.weight.detach().abs().sum(1)
    raise InvalidSpecError(f"no ViT weight norm for component kind {layer.kind!r}")
