"""Where a search job's time goes: per-phase wall-clock timers around one ``pxp.pipeline.run``.

Runs the same job as ``bench/job.py --mode job --jobs search`` (one path, the product's
by default) with timers wrapped around the functions that do the work: the trials'
relevance passes and curves (and, inside the curves, the staged forwards, the per-rate
model copies, the self-check and the tracing), Optuna's storage writes and sampling, and
the post-search stages. Timers nest (a curve's forwards are inside the curve), so the
rows do not add up to the total; the stage table at the top does.

    PYTHONPATH=. .venv/bin/python bench/search_profile.py --models digits_resnet18 --trials 30 --threads 1
    PYTHONPATH=. .venv/bin/python bench/search_profile.py --models digits_resnet18 --baseline   # the old path
"""

from __future__ import annotations

import argparse
import collections
import functools
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import optuna
import optuna.storages._rdb.storage as rdb
import torch

import pxp.pipeline.job as job_module
import pxp.pipeline.search as job_search
import pxp.pruning.fast_curve as fast_curve
import pxp.search.evaluator as evaluator
from pxp.search.space import SearchSpace

SECONDS: collections.defaultdict[str, float] = collections.defaultdict(float)
CALLS: collections.Counter[str] = collections.Counter()


def timed(owner: Any, name: str, label: str) -> None:
    """Replace ``owner.name`` by the same function, timed under ``label``."""
    inner: Callable[..., Any] = getattr(owner, name)

    @functools.wraps(inner)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        started = time.perf_counter()
        try:
            return inner(*args, **kwargs)
        finally:
            SECONDS[label] += time.perf_counter() - started
            CALLS[label] += 1

    setattr(owner, name, wrapper)


def instrument() -> None:
    timed(evaluator, "relevance_scores", "search: relevance passes")
    timed(evaluator, "evaluate_curve", "search: trial curves")
    timed(fast_curve._Stages, "run", "  curves: staged forwards")
    timed(fast_curve, "_rate_model", "  curves: per-rate model copies")
    timed(fast_curve, "_self_check", "  curves: self-checks")
    timed(fast_curve, "_trace", "  curves: fx tracing")
    timed(rdb.RDBStorage, "set_trial_intermediate_value", "search: storage, intermediate values")
    timed(rdb.RDBStorage, "set_trial_user_attr", "search: storage, user attributes")
    timed(SearchSpace, "suggest", "search: sampling (TPE + storage reads)")
    timed(optuna.Study, "optimize", "search: study.optimize (all trials)")
    timed(job_search, "score", "post-search: relevance (best / default)")
    timed(job_search, "curve", "post-search: test curves (best / default)")
    timed(job_module, "curve", "job: curves (criteria test curve, search-split curve)")
    timed(job_module, "refined_rate", "post-search: rate refinement")
    timed(job_module, "export_job", "export: removal, verification, export")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--models", nargs="+", default=["digits_resnet18"])
    parser.add_argument("--trials", type=int, default=30)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--baseline", action="store_true", help="the old path (pipeline.run(baseline=True))")
    parser.add_argument("--product", action="store_true", help="pxp compress's default pruning")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    import job as job_bench  # bench/job.py: the same job spec and stage timing

    instrument()
    spec_args = argparse.Namespace(
        tiny=False, max_eval_samples=None, split_seed=0, product=args.product, trials=args.trials
    )
    print(f"<!-- {' '.join(sys.argv)} | threads {args.threads} -->")
    for model in args.models:
        SECONDS.clear()
        CALLS.clear()
        spec = job_bench.job_spec(model, spec_args, True)
        result, stages, total = job_bench.timed_job(spec, args.baseline)
        assert result.search is not None
        path = "old path" if args.baseline else "new path"
        print(f"\n### {model}, {args.trials}-trial search job, {path}: {total:.1f} s end to end\n")
        print("| stage | s |\n|---|---|")
        for stage, seconds in stages.items():
            print(f"| {stage} | {seconds:.2f} |")
        print("\n| timer | s | calls |\n|---|---|---|")
        for label in sorted(SECONDS, key=lambda k: -SECONDS[k]):
            print(f"| {label} | {SECONDS[label]:.2f} | {CALLS[label]} |")
        print(
            f"\ncomplete trials {result.search.trials_completed}, best search A_PR "
            f"{result.search.search_apr_best:.4f}, default {result.search.search_apr_default:.4f}",
            flush=True,
        )


if __name__ == "__main__":
    main()
