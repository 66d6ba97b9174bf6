"""Map torch-free RuleSpecs to zennit rule templates."""

from __future__ import annotations

from zennit.core import Hook
from zennit.rules import AlphaBeta, Epsilon, Gamma, ZPlus

from pxp.spec import RuleSpec


def zennit_rule(rule: RuleSpec) -> Hook:
    if rule.name == "epsilon":
        return Epsilon(epsilon=rule.param)
    if rule.name == "gamma":
        return Gamma(gamma=rule.param)
    if rule.name == "alpha_beta":
        assert rule.param is not None
        return AlphaBeta(alpha=rule.param, beta=rule.param - 1.0)
    return ZPlus()
