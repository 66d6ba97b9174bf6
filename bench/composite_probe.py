"""Search-split A_PR of a grid of composites (convolution rule × classifier rule × aggregation × normalisation).

Used to choose the search's seeds (pxp.search.space.known_good_configs): the seed-0
splits capped at 200 evaluation samples, as in ``bench/job.py --max-eval-samples 200``.

    .venv/bin/python bench/composite_probe.py digits_vgg
"""

from __future__ import annotations

import itertools
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch

from pxp import pipeline
from pxp.search.evaluator import TrialEvaluator
from pxp.search.space import TrialConfig
from pxp.spec import CompositeSpec, JobSpec, ModelSpec, RuleSpec, SplitSpec


def main() -> None:
    torch.set_num_threads(1)
    name = sys.argv[1] if len(sys.argv) > 1 else "digits_vgg"
    spec = JobSpec(model=ModelSpec(architecture=name), splits=SplitSpec(max_eval_samples=200), device="cpu")
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
    print("| convolutions | classifier | aggregation | per-layer normalisation | search A_PR |")
    print("|---|---|---|---|---|")
    for (conv_name, conv), (fc_name, fc) in itertools.product(convs.items(), fcs.items()):
        composite = CompositeSpec(rules={"low": conv, "mid": conv, "high": conv, "fc": fc})
        for aggregation, normalize in (("abs", False), ("signed", False), ("abs", True)):
            measure = evaluator.evaluate(TrialConfig(composite, aggregation, normalize))  # type: ignore[arg-type]
            print(
                f"| {conv_name} | {fc_name} | {aggregation} | {normalize} | {measure.apr:.4f} |", flush=True
            )


if __name__ == "__main__":
    main()
