"""LRP composites for Vision Transformers: AttnLRP on the explicit-attention form.

Rules by module (groups from :func:`pxp.components.vit.vit_module_groups`):

- Linear layers (q/k/v, out projection, fc1, fc2) get their block's depth-group rule
  (early / middle / late thirds), the classifier head the "fc" rule, the patch
  embedding the "early" rule; ε on a Linear uses :class:`~pxp.attribution.attnlrp.LinearEpsilon`
  (zennit's ε without its second forward pass);
- LayerNorm: ε-rule with the std held constant; elementwise activations (GELU, …)
  and timm's LayerScale: identity (relevance passes unchanged);
- residual sums, token means and averaged heads: Norm (split by contribution);
- ``Q·Kᵀ``: uniform split; softmax and ``A·V`` by ``spec.softmax``:

  ========================  ====================  ==========================
  ``softmax``               softmax               ``A·V``
  ========================  ====================  ==========================
  ``attnlrp``               x ⊙ (R − s Σ R)       uniform split
  ``attnlrp_zplus``         z+ on Taylor terms    uniform split
  ``cp_lrp``                blocked               all relevance to the values
  ========================  ====================  ==========================

Every module is called once per forward, as zennit requires (it keeps one
grad_output per hooked module). A model not yet in explicit form is canonized
in place for the duration of the composite and restored afterwards.
"""

from __future__ import annotations

from torch import nn
from zennit.core import Composite, Hook
from zennit.rules import Norm, Pass
from zennit.types import Activation

from pxp.attribution.attnlrp import (
    BilinearRule,
    BlockRule,
    LayerNormRule,
    LinearEpsilon,
    SoftmaxTaylorRule,
    SoftmaxZPlusRule,
)
from pxp.attribution.rules import zennit_rule
from pxp.components.vit import ViTCanonizer, is_explicit, vit_module_groups
from pxp.components.vit.modules import (
    AttentionSoftmax,
    AttentionValues,
    QueryKeyScores,
    ResidualSum,
    StackedMean,
)
from pxp.spec import VIT_GROUPS, CompositeSpec


def _is_layer_scale(module: nn.Module) -> bool:
    return type(module).__name__ == "LayerScale" and type(module).__module__.startswith("timm.")


def _softmax_rules(spec: CompositeSpec, stabilizer: float) -> tuple[Hook, Hook]:
    if spec.softmax == "cp_lrp":
        return BlockRule(), BilinearRule(stabilizer, shares=(0.0, 1.0))
    softmax = SoftmaxTaylorRule(stabilizer) if spec.softmax == "attnlrp" else SoftmaxZPlusRule(stabilizer)
    return softmax, BilinearRule(stabilizer)


def build_vit_composite(model: nn.Module, spec: CompositeSpec, *, stabilizer: float = 1e-6) -> Composite:
    """The AttnLRP composite of ``spec`` for a ViT (explicit or not).

    ``stabilizer`` is the ε of the rules that have no tunable parameter (LayerNorm,
    matmuls, softmax z+, Norm); the linear layers' ε comes from ``spec``.
    """
    templates = {group: zennit_rule(spec.rule_for(group)) for group in VIT_GROUPS}
    linear_templates = {
        group: LinearEpsilon(rule.param)
        if rule.name == "epsilon" and rule.param is not None
        else templates[group]
        for group, rule in ((g, spec.rule_for(g)) for g in VIT_GROUPS)
    }
    softmax_rule, values_rule = _softmax_rules(spec, stabilizer)
    layer_norm = LayerNormRule(stabilizer)
    scores = BilinearRule(stabilizer)
    norm = Norm(stabilizer)
    identity = Pass()

    def module_map(ctx: dict, name: str, module: nn.Module) -> Hook | None:
        if name == "":
            ctx["groups"] = vit_module_groups(module)
            return None
        if isinstance(module, (nn.Linear, nn.Conv2d)):
            group = ctx["groups"].get(name)
            if group is None:
                return None
            return linear_templates[group] if isinstance(module, nn.Linear) else templates[group]
        if isinstance(module, nn.LayerNorm):
            return layer_norm
        if isinstance(module, QueryKeyScores):
            return scores
        if isinstance(module, AttentionSoftmax):
            return softmax_rule
        if isinstance(module, AttentionValues):
            return values_rule
        if isinstance(module, (ResidualSum, StackedMean)):
            return norm
        if (
            isinstance(module, Activation) and not isinstance(module, nn.MultiheadAttention)
        ) or _is_layer_scale(module):
            return identity
        return None

    canonizers = [] if is_explicit(model) else [ViTCanonizer()]
    return Composite(module_map=module_map, canonizers=canonizers)
