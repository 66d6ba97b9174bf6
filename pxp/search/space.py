"""The search space: which LRP composite, aggregation and normalisation one trial tries.

Parameter names are stable (they are stored in the study and read back on resume):
``rule_<group>`` ∈ {epsilon, gamma, alpha_beta, zplus} per depth group, with the
conditional continuous parameter ``epsilon_<group>`` / ``gamma_<group>`` /
``alpha_<group>`` on a log scale; ``softmax`` for ViTs; ``aggregation`` and
``normalize_per_layer`` when the spec searches them.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, cast, get_args

import optuna
from torch import nn

from pxp.components import Family
from pxp.spec import (
    _PARAM_RANGES,
    CNN_GROUPS,
    VIT_GROUPS,
    Aggregation,
    AttributionSpec,
    CompositeSpec,
    RuleName,
    RuleSpec,
    SoftmaxRule,
)

RULES: tuple[str, ...] = ("epsilon", "gamma", "alpha_beta", "zplus")
SOFTMAX_RULES: tuple[str, ...] = get_args(SoftmaxRule)
AGGREGATIONS: tuple[str, ...] = get_args(Aggregation)
#: Name of the continuous parameter of each rule, as it appears in trial params.
_PARAM_PREFIX = {"epsilon": "epsilon", "gamma": "gamma", "alpha_beta": "alpha"}


@dataclass(frozen=True)
class TrialConfig:
    """What one trial evaluates: a composite, how relevance is aggregated, and how it is ranked."""

    composite: CompositeSpec
    aggregation: Aggregation
    normalize_per_layer: bool

    def key(self) -> str:
        """A canonical string: equal configs give equal keys (used to memoise trials)."""
        return f"{self.composite.model_dump_json()}|{self.aggregation}|{self.normalize_per_layer}"

    def attribution(self, batch_size: int = 32, seed: int = 0) -> AttributionSpec:
        return AttributionSpec.model_validate(
            {
                "criterion": "lrp",
                "composite": self.composite,
                "aggregation": self.aggregation,
                "batch_size": batch_size,
                "seed": seed,
            }
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "composite": self.composite.model_dump(),
            "aggregation": self.aggregation,
            "normalize_per_layer": self.normalize_per_layer,
        }


def composite_groups(model: nn.Module, family: Family) -> tuple[str, ...]:
    """The depth groups whose rule actually reaches a module of ``model``, in forward order.

    A group with no module (a two-conv CNN has no ``high``) would only add a
    dimension that cannot change the objective, so it is not searched.
    """
    if family == "cnn":
        from pxp.components.cnn import cnn_module_groups

        present = set(cnn_module_groups(model).values())
        return tuple(g for g in CNN_GROUPS if g in present)
    from pxp.components.vit import vit_module_groups

    present = set(vit_module_groups(model).values())
    return tuple(g for g in VIT_GROUPS if g in present)


@dataclass(frozen=True)
class SearchSpace:
    """The dimensions of one search; the fixed values stand in for dimensions not searched."""

    family: Family
    groups: tuple[str, ...]
    search_aggregation: bool
    search_normalization: bool
    fixed_aggregation: Aggregation = "abs"
    fixed_normalize: bool = False

    @property
    def search_softmax(self) -> bool:
        return self.family == "vit"

    def signature(self) -> dict[str, Any]:
        return {
            "family": self.family,
            "groups": list(self.groups),
            "rules": list(RULES),
            "ranges": {k: list(v) for k, v in sorted(_PARAM_RANGES.items())},
            "softmax": list(SOFTMAX_RULES) if self.search_softmax else None,
            "aggregation": list(AGGREGATIONS) if self.search_aggregation else self.fixed_aggregation,
            "normalize_per_layer": [False, True] if self.search_normalization else self.fixed_normalize,
        }

    def suggest(self, trial: optuna.Trial) -> TrialConfig:
        rules: dict[str, RuleSpec] = {}
        for group in self.groups:
            name = cast(RuleName, trial.suggest_categorical(f"rule_{group}", RULES))
            param = None
            if name in _PARAM_PREFIX:
                low, high = _PARAM_RANGES[name]
                param = trial.suggest_float(f"{_PARAM_PREFIX[name]}_{group}", low, high, log=True)
            rules[group] = RuleSpec(name=name, param=param)
        extra: dict[str, Any] = {}
        if self.search_softmax:
            extra["softmax"] = trial.suggest_categorical("softmax", SOFTMAX_RULES)
        composite = CompositeSpec(rules=rules, **extra)
        aggregation = self.fixed_aggregation
        if self.search_aggregation:
            aggregation = cast(Aggregation, trial.suggest_categorical("aggregation", AGGREGATIONS))
        normalize = self.fixed_normalize
        if self.search_normalization:
            normalize = trial.suggest_categorical("normalize_per_layer", (False, True))
        return TrialConfig(composite, aggregation, normalize)

    def params_of(self, config: TrialConfig) -> dict[str, Any]:
        """Trial params that make :meth:`suggest` return ``config`` (for enqueueing known configs)."""
        params: dict[str, Any] = {}
        for group in self.groups:
            rule = config.composite.rule_for(group)
            params[f"rule_{group}"] = rule.name
            if rule.name in _PARAM_PREFIX:
                params[f"{_PARAM_PREFIX[rule.name]}_{group}"] = rule.param
        if self.search_softmax:
            params["softmax"] = config.composite.softmax
        if self.search_aggregation:
            params["aggregation"] = config.aggregation
        if self.search_normalization:
            params["normalize_per_layer"] = config.normalize_per_layer
        return params

    def config_from_params(self, params: Mapping[str, Any]) -> TrialConfig:
        """Inverse of :meth:`params_of`, for reading a stored trial back."""
        rules = {}
        for group in self.groups:
            name = params[f"rule_{group}"]
            param = params.get(f"{_PARAM_PREFIX[name]}_{group}") if name in _PARAM_PREFIX else None
            rules[group] = RuleSpec(name=name, param=param)
        extra = {"softmax": params["softmax"]} if "softmax" in params else {}
        composite = CompositeSpec(rules=rules, **extra)
        return TrialConfig(
            composite,
            params.get("aggregation", self.fixed_aggregation),
            bool(params.get("normalize_per_layer", self.fixed_normalize)),
        )

    def normalise(self, config: TrialConfig) -> TrialConfig:
        """``config`` as this space can express it: groups not searched dropped, fixed dims applied."""
        return self.config_from_params(self.params_of(config))


def default_config(space: SearchSpace) -> TrialConfig:
    """The 2024 paper's default: ε(1e-6) in every group, with the space's fixed aggregation and ranking."""
    return space.normalise(TrialConfig(CompositeSpec(), space.fixed_aggregation, space.fixed_normalize))


def literature_configs(space: SearchSpace) -> list[tuple[str, TrialConfig]]:
    """Established composites tried right after the default, before the sampler explores.

    - ``yeom2021``: α2β1 in every group, the rule of the original Pruning-by-Explaining paper;
    - ``montavon2019``: γ(0.25) in the lower two groups, ε(0.25) above, ε(1e-6) at the
      classifier, the layer-wise recipe of Montavon et al., "LRP: an overview" (2019).

    The search can then only improve on each of them, and TPE starts from informed points.
    """
    groups = space.groups
    alpha_beta = {g: RuleSpec(name="alpha_beta", param=2.0) for g in groups}
    lower = [g for g in groups if g != "fc"][:2]
    layered = {
        g: RuleSpec(name="gamma", param=0.25)
        if g in lower
        else RuleSpec(name="epsilon", param=1e-6 if g == "fc" else 0.25)
        for g in groups
    }
    return [
        (
            role,
            space.normalise(
                TrialConfig(CompositeSpec(rules=rules), space.fixed_aggregation, space.fixed_normalize)
            ),
        )
        for role, rules in (("yeom2021", alpha_beta), ("montavon2019", layered))
    ]


def has_residual_sum(model: nn.Module) -> bool:
    """Whether ``model``'s traced graph adds two computed tensors (a skip connection); False if untraceable."""
    import operator

    import torch
    import torch.fx

    adds = {operator.add, operator.iadd, torch.add}
    try:
        graph = torch.fx.symbolic_trace(model).graph
    except Exception:  # a model fx cannot trace gets the plain seeds
        return False
    return any(
        node.op == "call_function"
        and node.target in adds
        and sum(isinstance(a, torch.fx.Node) and a.op != "placeholder" for a in node.args) == 2
        for node in graph.nodes
    )


def _rules(groups: tuple[str, ...], pick: dict[str, RuleSpec], fc: RuleSpec) -> dict[str, RuleSpec]:
    return {g: fc if g == "fc" else pick[g] for g in groups if g in pick or g == "fc"}


def known_good_configs(space: SearchSpace, *, residual: bool = False) -> list[tuple[str, TrialConfig]]:
    """Per-family composites that pruned best in published and in our own searches, tried before TPE explores.

    Plain CNNs (low / mid / high / fc):

    - ``pxp2024_eps_over_zplus``: z+ in the low and mid convolutions, ε(0.25) in the
      high ones, ε(1e-6) at the classifier: the layer-wise pattern ("ε above, γ / z+
      below") that Hatefi et al., "Pruning By Explaining Revisited" (2024), found to
      beat uniform rules for CNNs;
    - ``pxp2024_{eps,gamma,zplus}_ab_fc``: ε(1e-6), γ(0.25) or z+ in every convolution
      and α2β1 at the classifier, ranked with per-layer normalisation where the space
      searches it. Every winner of this repository's digits-VGG searches had α-β at
      the classifier (README, "LRP optimised by search"), and a probe of rule ×
      aggregation × normalisation on that model (docs/performance.md) found
      normalisation to be what makes α-β at the classifier pay; TPE alone took 30–60
      trials to combine them.

    Residual CNNs (``residual=True``: a skip connection adds two branches, as in ResNets).
    The plain-CNN seeds above score far below the default there (a probe on digits
    ResNet-18 with other splits than the convergence bench's, ``bench/composite_probe.py
    digits_resnet18 --split-seed 1 --small`` / ``--epsilons``: 0.41–0.47 with per-layer
    normalisation against 0.54 for ε; ε(0.25) or z+ in the convolutions 0.22–0.40), so
    they are replaced by what pruned best on that model:

    - ``pxp_resnet_gamma_low_ab_fc``: γ(0.25) in the low convolutions, ε(1e-6) above,
      α2β1 at the classifier, no per-layer normalisation (the pattern of the best trial of
      a 40-trial search on those other splits, ``bench/job.py --mode convergence --models
      digits_resnet18 --sampler-trials 40 --sampler-seeds 1 --split-seed 1
      --max-eval-samples 200``);
    - ``pxp_resnet_eps_ab_fc``: ε(1e-6) in every convolution, α2β1 at the classifier, no
      normalisation (0.539 in the probe, beside the default's 0.542).

    ViTs (early / middle / late / fc): ``pxp2024_cp_lrp`` (ε everywhere, softmax by
    CP-LRP, value path only) and ``pxp2024_gamma_early_cp`` (γ(0.25) in the early and
    middle blocks, ε above, CP-LRP), the AttnLRP-style choices the 2024 paper
    reports strongest for transformers.

    Seeding only adds starting points: the search's best can only improve on them.
    """
    groups = space.groups
    eps = RuleSpec(name="epsilon", param=1e-6)
    eps_high = RuleSpec(name="epsilon", param=0.25)
    gamma = RuleSpec(name="gamma", param=0.25)
    zplus = RuleSpec(name="zplus")
    ab = RuleSpec(name="alpha_beta", param=2.0)
    normalize = True if space.search_normalization else space.fixed_normalize
    candidates: list[tuple[str, dict[str, RuleSpec], SoftmaxRule, bool]]
    if space.family == "cnn" and residual:
        plain = space.fixed_normalize
        candidates = [
            (
                "pxp_resnet_gamma_low_ab_fc",
                _rules(groups, {"low": gamma, "mid": eps, "high": eps}, ab),
                "attnlrp",
                plain,
            ),
            (
                "pxp_resnet_eps_ab_fc",
                _rules(groups, {"low": eps, "mid": eps, "high": eps}, ab),
                "attnlrp",
                plain,
            ),
        ]
    elif space.family == "cnn":
        candidates = [
            (
                "pxp2024_eps_over_zplus",
                _rules(groups, {"low": zplus, "mid": zplus, "high": eps_high}, eps),
                "attnlrp",
                space.fixed_normalize,
            ),
        ]
        for name, conv in (("eps", eps), ("gamma", gamma), ("zplus", zplus)):
            rules = _rules(groups, {"low": conv, "mid": conv, "high": conv}, ab)
            candidates.append((f"pxp2024_{name}_ab_fc", rules, "attnlrp", normalize))
    else:
        candidates = [
            ("pxp2024_cp_lrp", {}, "cp_lrp", space.fixed_normalize),
            (
                "pxp2024_gamma_early_cp",
                _rules(groups, {"early": gamma, "middle": gamma, "late": eps}, eps),
                "cp_lrp",
                space.fixed_normalize,
            ),
        ]
    return [
        (
            role,
            space.normalise(
                TrialConfig(CompositeSpec(rules=rules, softmax=softmax), space.fixed_aggregation, norm)
            ),
        )
        for role, rules, softmax, norm in candidates
    ]
