"""Vision Transformers: explicit-attention form, prunable components, weight norms."""

from pxp.components.vit.convert import ViTCanonizer, convert_in_place, is_explicit, prepare_vit
from pxp.components.vit.layers import (
    block_group,
    explicit_blocks,
    find_vit_layers,
    vit_module_groups,
    weight_norms,
)

__all__ = [
    "ViTCanonizer",
    "block_group",
    "convert_in_place",
    "explicit_blocks",
    "find_vit_layers",
    "is_explicit",
    "prepare_vit",
    "vit_module_groups",
    "weight_norms",
]
