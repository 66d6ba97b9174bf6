"""Search-split A_PR of a grid of composites (convolution rule × classifier rule × aggregation × normalisation).

Used to choose the search's seeds (pxp.search.space.known_good_configs): the seed-0
splits capped at 200 evaluation samples, as in ``bench/job.py --max-eval-samples 200``.

    .venv/bin/python bench/composite_probe.py digits_vgg
    .venv/bin/python bench/composite_probe.py digits_resnet18 --split-seed 1 --small   # the ResNet seeds

``--split-seed`` draws other splits than the ones the convergence bench measures on, so
seeds chosen from the probe are not fitted to the measured search split. ``--small``
probes only the classifier rules and rankings that mattered on VGG (abs aggregation).
"""

from __future__ import annotations

import argparse
import itertools
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch

from pxp import pipeline
from pxp.search.evaluator import TrialEvaluator
from pxp.search.space import TrialConfig
from pxp.spec import CompositeSpec, JobSpec, ModelSpec, RuleSpec, SplitSpec

_EPS_DEPTHS = ((1e-6, 1e-6, 0.25), (1e-6, 0.25, 0.25), (0.25, 0.25, 0.25), (1e-6, 1e-6, 1.0))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("model", nargs="?", default="digits_vgg")
    parser.add_argument("--split-seed", type=int, default=0)
    parser.add_argument("--small", action="store_true")
    parser.add_argument(
        "--epsilons", action="store_true", help="ε magnitudes per depth (under an ε or α2β1 classifier)"
    )
    args = parser.parse_args()
    torch.set_num_threads(1)
    spec = JobSpec(
        model=ModelSpec(architecture=args.model),
        splits=SplitSpec(max_eval_samples=200, seed=args.split_seed),
        device="cpu",
    )
    state = pipeline.build_state(spec, pipeline.silent())
    evaluator = TrialEvaluator(
        state.prepared,
        state.family,
        state.layers,
        state.reference,
        state.search,
        list(spec.prune.rates),
        ("abs", "signed"),
        rate_order="descending",
    )
    eps, gamma, zplus = (
        RuleSpec(name="epsilon", param=1e-6),
        RuleSpec(name="gamma", param=0.25),
        RuleSpec(name="zplus"),
    )

    def ab(alpha: float) -> RuleSpec:
        return RuleSpec(name="alpha_beta", param=alpha)

    convs = {"eps": eps, "gamma": gamma, "zplus": zplus, "ab2": ab(2.0)}
    fcs = {"eps": eps, "ab1": ab(1.0), "ab2": ab(2.0), "ab3": ab(3.0), "zplus": zplus, "gamma": gamma}
    rankings: tuple[tuple[str, bool], ...] = (("abs", False), ("signed", False), ("abs", True))
    if args.small:
        convs = {"eps": eps, "gamma": gamma, "zplus": zplus}
        fcs = {"eps": eps, "ab2": ab(2.0)}
        rankings = (("abs", False), ("abs", True))
    if args.epsilons:
        print("| low | mid | high | classifier | search A_PR |")
        print("|---|---|---|---|---|")
        fc_rules = {
            "eps": eps,
            "ab1": ab(1.0),
            "ab2": ab(2.0),
            "ab3": ab(3.0),
            "zplus": zplus,
            "gamma": gamma,
        }
        grid = [
            *((low, mid, high, fc) for low, mid, high in _EPS_DEPTHS for fc in ("eps", "ab2")),
            *((1e-6, 1e-6, 1e-6, fc) for fc in ("ab1", "ab3", "zplus", "gamma")),
            *((e, e, e, "eps") for e in (1e-9, 1e-3)),
        ]
        for low, mid, high, fc_name in grid:
            rules = {
                "low": RuleSpec(name="epsilon", param=low),
                "mid": RuleSpec(name="epsilon", param=mid),
                "high": RuleSpec(name="epsilon", param=high),
                "fc": fc_rules[fc_name],
            }
            measure = evaluator.evaluate(TrialConfig(CompositeSpec(rules=rules), "abs", False))
            print(f"| ε({low:g}) | ε({mid:g}) | ε({high:g}) | {fc_name} | {measure.apr:.4f} |", flush=True)
        return
    print("| convolutions | classifier | aggregation | per-layer normalisation | search A_PR |")
    print("|---|---|---|---|---|")
    for (conv_name, conv), (fc_name, fc) in itertools.product(convs.items(), fcs.items()):
        composite = CompositeSpec(rules={"low": conv, "mid": conv, "high": conv, "fc": fc})
        for aggregation, normalize in rankings:
            measure = evaluator.evaluate(TrialConfig(composite, aggregation, normalize))  # type: ignore[arg-type]
            print(
                f"| {conv_name} | {fc_name} | {aggregation} | {normalize} | {measure.apr:.4f} |", flush=True
            )


if __name__ == "__main__":
    main()
