"""All criteria on the digits zoo models: unpruned accuracy, A_PR and safe rate on the test split.

10 reference samples per class, no fine-tuning, averaged over seeds (each seed
draws new reference/search/test splits and a new random baseline).

    python bench/criteria.py                                   # CNNs, 3 seeds
    python bench/criteria.py --models digits_vit:heads digits_vit:neurons
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pxp.pipeline import build_state, curve, score, silent
from pxp.spec import CRITERIA, AttributionSpec, JobSpec, ModelSpec, PruneSpec, SplitSpec
from pxp.stages import StageStore


def run_model(model: str, components: str | None, seeds: list[int], criteria: list[str]) -> dict[str, dict]:
    rows: dict[str, dict[str, list[float]]] = {c: {"unpruned": [], "apr": [], "safe": []} for c in criteria}
    for seed in seeds:
        spec = JobSpec(
            model=ModelSpec(architecture=model),
            splits=SplitSpec(reference_samples_per_class=10, seed=seed),
            prune=PruneSpec(components=components),
        )
        with tempfile.TemporaryDirectory() as tmp:
            store = StageStore(Path(tmp))
            state = build_state(spec, silent())
            for criterion in criteria:
                attribution = AttributionSpec(criterion=criterion, seed=seed)
                order = state.order(score(state, attribution, store))
                result = curve(state, criterion, order, "test", store)
                rows[criterion]["unpruned"].append(result.unpruned_accuracy)
                rows[criterion]["apr"].append(result.apr)
                rows[criterion]["safe"].append(result.safe_rate)
    return rows


def fmt(values: list[float], digits: int = 3) -> str:
    mean = statistics.mean(values)
    spread = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{mean:.{digits}f} ± {spread:.{digits}f}"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--models", nargs="+", default=["digits_vgg", "digits_resnet18"], help="name[:components]"
    )
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--criteria", nargs="+", default=list(CRITERIA), choices=list(CRITERIA))
    args = parser.parse_args()
    print("| model | components | criterion | unpruned acc | A_PR | safe rate (≤1 pt drop) |")
    print("|---|---|---|---|---|---|")
    for entry in args.models:
        model, _, components = entry.partition(":")
        started = time.monotonic()
        rows = run_model(model, components or None, list(range(args.seeds)), args.criteria)
        for criterion, r in sorted(rows.items(), key=lambda kv: -statistics.mean(kv[1]["apr"])):
            print(
                f"| {model} | {components or 'filters'} | {criterion} | {fmt(r['unpruned'])} | "
                f"{fmt(r['apr'])} | {fmt(r['safe'], 2)} |",
                flush=True,
            )
        print(f"<!-- {model}: {time.monotonic() - started:.0f}s for {args.seeds} seeds -->", flush=True)


if __name__ == "__main__":
    main()
