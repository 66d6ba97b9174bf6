"""LRP composites for CNNs: a rule per depth group, BN merged, residual sums explicit."""

from __future__ import annotations

from torch import nn
from torchvision.models.resnet import BasicBlock, Bottleneck
from zennit.canonizers import Canonizer, CompositeCanonizer, SequentialMergeBatchNorm
from zennit.core import Composite, Hook
from zennit.layer import Sum
from zennit.rules import Norm
from zennit.torchvision import ResNetBasicBlockCanonizer, ResNetBottleneckCanonizer
from zennit.types import AvgPool

from pxp.attribution.rules import zennit_rule
from pxp.components.cnn import cnn_module_groups
from pxp.spec import CompositeSpec


class ExactMergeBatchNorm(SequentialMergeBatchNorm):
    """zennit's BN merge, but the emptied BN also gets eps = 0.

    zennit leaves ``eps`` in place, so each merged BN still divides by
    sqrt(1 + eps): a 1e-4-level logit drift on a ResNet-18. With eps = 0 the
    canonized model computes the original function.
    """

    def register(self, linears, batch_norm):  # type: ignore[no-untyped-def]  # overrides zennit's untyped signature as is
        self._eps = batch_norm.eps
        super().register(linears, batch_norm)
        batch_norm.eps = 0.0

    def remove(self) -> None:
        super().remove()
        self.batch_norm.eps = self._eps


def cnn_canonizers(model: nn.Module) -> list[Canonizer]:
    if any(isinstance(m, (BasicBlock, Bottleneck)) for m in model.modules()):
        return [
            CompositeCanonizer(
                (ExactMergeBatchNorm(), ResNetBottleneckCanonizer(), ResNetBasicBlockCanonizer())
            )
        ]
    return [ExactMergeBatchNorm()]


def build_cnn_composite(model: nn.Module, spec: CompositeSpec) -> Composite:
    """Conv/linear layers get their depth group's rule; pooling and residual sums use Norm.

    Groups come from the forward order of the convs (thirds), so any torchvision-style
    CNN works without hard-coded module names. ReLUs are left to plain autograd
    rather than zennit's Pass rule: every rule above multiplies by its input, so the
    relevance reaching a ReLU output is already 0 where the ReLU is inactive, and
    the ReLU's gradient mask changes nothing. Pass would be wrong here, because
    zennit keeps one grad_output per hooked module and torchvision's ResNet blocks
    call the same ReLU module two or three times per forward.
    """
    groups = cnn_module_groups(model)
    templates = {group: zennit_rule(spec.rule_for(group)) for group in set(groups.values())}
    norm = Norm()

    def module_map(_ctx: dict, name: str, module: nn.Module) -> Hook | None:
        if isinstance(module, (nn.Conv2d, nn.Linear)):
            return templates[groups[name]] if name in groups else None
        if isinstance(module, (AvgPool, Sum)):
            return norm
        return None

    return Composite(module_map=module_map, canonizers=cnn_canonizers(model))
