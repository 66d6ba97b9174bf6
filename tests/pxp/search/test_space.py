from __future__ import annotations

import optuna
import pytest

from pxp.search.space import (
    RULES,
    SOFTMAX_RULES,
    SearchSpace,
    TrialConfig,
    default_config,
    literature_configs,
)
from pxp.spec import CNN_GROUPS, VIT_GROUPS, CompositeSpec, RuleSpec


def _space(family: str = "cnn", **kwargs: object) -> SearchSpace:
    groups = CNN_GROUPS if family == "cnn" else VIT_GROUPS
    return SearchSpace(
        family=family, groups=groups, search_aggregation=True, search_normalization=True, **kwargs
    )  # type: ignore[arg-type]


def _sample(space: SearchSpace, n: int, seed: int = 0) -> list[tuple[dict, TrialConfig]]:
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=seed))
    out = []
    for _ in range(n):
        trial = study.ask()
        out.append((trial, space.suggest(trial)))
        study.tell(trial, 0.0)
    return [(t.params, c) for t, c in out]


def test_default_config_is_the_papers_epsilon_composite() -> None:
    config = default_config(_space())
    assert config.aggregation == "abs" and config.normalize_per_layer is False
    for group in CNN_GROUPS:
        assert config.composite.rule_for(group) == RuleSpec(name="epsilon", param=1e-6)


def test_params_round_trip_through_config() -> None:
    space = _space("vit")
    for params, config in _sample(space, 40):
        assert space.params_of(config) == params
        assert space.config_from_params(params) == config


def test_sampled_configs_cover_every_dimension_within_range() -> None:
    sampled = _sample(_space("vit"), 200)
    names = {c.composite.rule_for(g).name for _, c in sampled for g in VIT_GROUPS}
    assert names == set(RULES)
    assert {c.composite.softmax for _, c in sampled} == set(SOFTMAX_RULES)
    assert {c.aggregation for _, c in sampled} == {"abs", "signed"}
    assert {c.normalize_per_layer for _, c in sampled} == {False, True}
    epsilons = [p[f"epsilon_{g}"] for p, _ in sampled for g in VIT_GROUPS if f"epsilon_{g}" in p]
    assert min(epsilons) < 1e-6 < max(epsilons) <= 1.0  # log scale: tiny values are drawn as often as large


def test_cnn_space_has_no_softmax_and_fixed_dimensions_stay_fixed() -> None:
    space = SearchSpace(
        family="cnn",
        groups=("low", "fc"),
        search_aggregation=False,
        search_normalization=False,
        fixed_aggregation="signed",
        fixed_normalize=True,
    )
    for params, config in _sample(space, 10):
        assert set(params) <= {
            "rule_low",
            "rule_fc",
            "epsilon_low",
            "gamma_low",
            "alpha_low",
            "epsilon_fc",
            "gamma_fc",
            "alpha_fc",
        }
        assert config.aggregation == "signed" and config.normalize_per_layer is True
        assert set(config.composite.rules) == {"low", "fc"}


def test_normalise_drops_groups_the_space_does_not_search() -> None:
    space = SearchSpace(family="cnn", groups=("low",), search_aggregation=True, search_normalization=True)
    config = TrialConfig(
        CompositeSpec(rules={"low": RuleSpec(name="zplus"), "high": RuleSpec(name="gamma")}), "abs", False
    )
    assert set(space.normalise(config).composite.rules) == {"low"}


@pytest.mark.parametrize("rule", ["epsilon", "gamma", "alpha_beta"])
def test_sampled_parameters_are_valid_rule_specs(rule: str) -> None:
    space = _space()
    for params, _ in _sample(space, 100, seed=3):
        prefix = {"epsilon": "epsilon", "gamma": "gamma", "alpha_beta": "alpha"}[rule]
        for key, value in params.items():
            if key.startswith(prefix + "_"):
                RuleSpec(name=rule, param=value)


@pytest.mark.parametrize(("family", "lower"), [("cnn", {"low", "mid"}), ("vit", {"early", "middle"})])
def test_literature_composites(family: str, lower: set[str]) -> None:
    space = _space(family)
    configs = dict(literature_configs(space))
    assert set(configs) == {"yeom2021", "montavon2019"}
    groups = CNN_GROUPS if family == "cnn" else VIT_GROUPS
    for group in groups:
        assert configs["yeom2021"].composite.rule_for(group) == RuleSpec(name="alpha_beta", param=2.0)
        layered = configs["montavon2019"].composite.rule_for(group)
        assert layered.name == ("gamma" if group in lower else "epsilon")
    assert configs["montavon2019"].composite.rule_for("fc").param == 1e-6
    for config in configs.values():
        assert space.config_from_params(space.params_of(config)) == config


def test_residual_cnns_get_their_own_unnormalised_seeds() -> None:
    from torch import nn

    from pxp.models.digits import digits_resnet18, digits_vgg
    from pxp.search.space import has_residual_sum, known_good_configs

    space = _space("cnn")
    plain = dict(known_good_configs(space))
    residual = dict(known_good_configs(space, residual=True))
    assert set(residual) == {"pxp_resnet_gamma_low_ab_fc", "pxp_resnet_eps_ab_fc"}
    assert not set(plain) & set(residual)
    assert not any(config.normalize_per_layer for config in residual.values())
    gamma_low = residual["pxp_resnet_gamma_low_ab_fc"].composite
    assert gamma_low.rule_for("low").name == "gamma" and gamma_low.rule_for("mid").name == "epsilon"
    assert gamma_low.rule_for("fc") == RuleSpec(name="alpha_beta", param=2.0)
    for config in residual.values():
        assert space.config_from_params(space.params_of(config)) == config
    small_resnet = digits_resnet18(base_width=4, layers=(1, 1, 1, 1)).eval()
    assert has_residual_sum(small_resnet)
    assert not has_residual_sum(digits_vgg(widths=(8, 16, 16), convs_per_stage=1, hidden=24).eval())
    assert not has_residual_sum(nn.Sequential(nn.Linear(2, 2), nn.ReLU()))
