"""A whole job, end to end and stage by stage: the product's path against the one it replaced, in one run.

Part A (``--mode job``), per model: ``pxp.pipeline.run`` twice for each job kind,
once with ``baseline=True`` (the old path: masked curves; the search with only
the default, user and literature seeds, no exact pruning, no plateau stop) and
once as shipped (:func:`pxp.pruning.evaluate.evaluate_curve`'s fast sweep, the
per-family seeds, exact pruning, plateau stop), each into a fresh directory.
Job kinds: ``criteria`` (all six criteria, no search) and ``search`` (the LRP
criterion plus a ``--trials``-trial search). The bench asserts that every
criterion's test curve, and the default composite's search-split A_PR, are
identical on both paths, then prints per stage old s, new s, old/new, and the
end-to-end ratio. Stage times come from the job's own progress events: each
interval between two events is charged to the later event's stage (so
"post-search" is the best/default test curves and the rate choice, and "export"
the removal, verification and export).

Part B (``--mode convergence``), per model and sampler seed: a search on the
shipped path with no plateau stop; how many trials until the best search-split
A_PR is within 0.005 of the ``--sampler-trials``-trial best (a pruned trial
provably could not have raised the best, so the best-so-far curve is exact).

    .venv/bin/python bench/job.py --threads 1                                   # both parts
    .venv/bin/python bench/job.py --mode job --models digits_vgg --trials 30 --threads 1
    .venv/bin/python bench/job.py --mode convergence --sampler-trials 100 --sampler-seeds 2 --threads 1
    .venv/bin/python bench/job.py --tiny --trials 6 --sampler-trials 12 --sampler-seeds 1  # smoke run
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import optuna
import torch

from pxp import pipeline
from pxp.pipeline.budget import recovery as job_recovery
from pxp.pruning.evaluate import CurveInfo, evaluate_curve
from pxp.search import run_search
from pxp.spec import (
    CRITERIA,
    AttributionSpec,
    ExportSpec,
    JobResult,
    JobSpec,
    ModelSpec,
    ProgressEvent,
    PruneSpec,
    SearchSpec,
    SplitSpec,
)
from pxp.stages import StageStore
from pxp.zoo import TINY_KWARGS, load_zoo_model

WITHIN = 0.005
STAGES = ["load", "scoring", "curves", "search", "post-search", "export"]


def _stage(event: str) -> str:
    if event in ("load", "data"):
        return "load"
    if event.startswith("attribution:"):
        return "scoring"
    if event.startswith("curve:"):
        return "curves"
    # "explain" (heatmaps, added after this bench was written) closes the removal and export interval.
    return {"search": "search", "export": "post-search", "explain": "export", "done": "export"}[event]


def timed_job(spec: JobSpec, baseline: bool) -> tuple[JobResult, dict[str, float], float]:
    """Run the job into a fresh directory; its result, seconds per stage and end-to-end seconds."""
    seconds = dict.fromkeys(STAGES, 0.0)
    last = time.perf_counter()

    def on_event(event: ProgressEvent) -> None:
        nonlocal last
        now = time.perf_counter()
        seconds[_stage(event.stage)] += now - last
        last = now

    with tempfile.TemporaryDirectory() as out:
        start = last = time.perf_counter()
        result = pipeline.run(spec, Path(out), on_event, baseline=baseline)
        total = time.perf_counter() - start
    return result, seconds, total


def job_spec(model: str, args: argparse.Namespace, search: bool) -> JobSpec:
    criteria = (
        [AttributionSpec(criterion="lrp")] if search else [AttributionSpec(criterion=c) for c in CRITERIA]
    )
    return JobSpec(
        model=ModelSpec(architecture=model, kwargs=TINY_KWARGS[model] if args.tiny else {}),
        criteria=criteria,
        splits=SplitSpec(max_eval_samples=args.max_eval_samples, seed=args.split_seed),
        prune=product_prune() if args.product else PruneSpec(),
        search=SearchSpec(trials=args.trials, seed=0) if search else None,
        export=ExportSpec(),
        device="cpu",
    )


def check_identical(old: JobResult, new: JobResult, search: bool, recovered: bool) -> None:
    """Curves the two paths must agree on: every criterion's test curve; the search's default."""
    old_curves = {c.label: c.accuracies for c in old.curves if "optimised" not in c.label}
    new_curves = {c.label: c.accuracies for c in new.curves if "optimised" not in c.label}
    assert old_curves == new_curves, "the fast path's curves differ from the masked ones"
    if search and not recovered:
        # With recovery, the new path's trials score the recovered model and the old path's the
        # plain masked one: their search-split A_PRs measure different models.
        assert old.search is not None and new.search is not None
        assert old.search.search_apr_default == new.search.search_apr_default


def jobs(args: argparse.Namespace) -> None:
    for model in args.models:
        load_zoo_model(model, TINY_KWARGS[model] if args.tiny else None, progress=True)
        # Warm-up, untimed: the first job in a process pays lazy imports and allocator growth.
        warm = pipeline.build_state(job_spec(model, args, False), pipeline.silent())
        with tempfile.TemporaryDirectory() as scratch:
            pipeline.score(warm, AttributionSpec(criterion="lrp"), StageStore(Path(scratch)))
        for kind in args.jobs:
            search = kind == "search"
            spec = job_spec(model, args, search)
            runs = {}
            # Old path first on even models, new first on odd ones: drift in machine load hits both.
            order = [True, False] if args.models.index(model) % 2 == 0 else [False, True]
            for baseline in order:
                runs[baseline] = timed_job(spec, baseline)
            (old, old_s, old_total), (new, new_s, new_total) = runs[True], runs[False]
            check_identical(old, new, search, bool(spec.prune.recovery))
            title = f"{args.trials}-trial search job" if search else "six-criteria job"
            print(f"\n### {model}: {title} (identical criterion curves: yes)\n")
            print("| stage | old s | new s | old / new |")
            print("|---|---|---|---|")
            for stage in STAGES:
                if old_s[stage] < 0.005 and new_s[stage] < 0.005:
                    continue
                ratio = old_s[stage] / new_s[stage] if new_s[stage] > 0 else float("inf")
                print(f"| {stage} | {old_s[stage]:.2f} | {new_s[stage]:.2f} | {ratio:.2f}× |")
            print(
                f"| **end to end** | **{old_total:.1f}** | **{new_total:.1f}** | **{old_total / new_total:.2f}×** |"
            )
            if search:
                assert old.search is not None and new.search is not None
                n_old, n_new = old.search.trials_completed, new.search.trials_completed
                print(
                    f"\nsearch: old {n_old} trials complete, best search A_PR {old.search.search_apr_best:.4f}, "
                    f"test A_PR {old.search.test_apr_best:.4f}; new {n_new} complete (the rest pruned or "
                    f"not run after a plateau), best search A_PR {new.search.search_apr_best:.4f}, "
                    f"test A_PR {new.search.test_apr_best:.4f}; default search A_PR "
                    f"{new.search.search_apr_default:.4f} (old path: {old.search.search_apr_default:.4f})",
                    flush=True,
                )


def convergence(args: argparse.Namespace) -> None:
    print(
        f"\n## Trials to within {WITHIN} of the {args.sampler_trials}-trial best (shipped path, search split)\n"
    )
    print(
        "| model | sampler seed | best @10 | best @30 | best @N | trials to within 0.005 | pruned | seconds |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for model in args.models:
        spec = job_spec(model, args, search=False)
        state = pipeline.build_state(spec, pipeline.silent())
        for s in range(args.sampler_seeds):
            seed = args.first_sampler_seed + s
            started = time.perf_counter()
            outcome = run_search(
                model=state.prepared,
                family=state.family,
                layers=state.layers,
                reference=state.reference,
                search_split=state.search,
                prune=spec.prune,
                spec=SearchSpec(trials=args.sampler_trials, seed=seed, plateau_trials=None),
            )
            elapsed = time.perf_counter() - started
            values = {r["number"]: r["value"] for r in outcome.history if r["state"] == "COMPLETE"}
            numbers = sorted(r["number"] for r in outcome.history if r["state"] in ("COMPLETE", "PRUNED"))
            best, curve = float("-inf"), []
            for n in numbers:
                best = max(best, values.get(n, float("-inf")))
                curve.append(best)
            needed = next(i + 1 for i, v in enumerate(curve) if v >= curve[-1] - WITHIN)
            at = {m: curve[min(m, len(curve)) - 1] for m in (10, 30)}
            print(
                f"| {model} | {seed} | {at[10]:.4f} | {at[30]:.4f} | {curve[-1]:.4f} | {needed} "
                f"| {outcome.trials_pruned} | {elapsed:.0f} |",
                flush=True,
            )
            best_trial = max(
                (r for r in outcome.history if r["state"] == "COMPLETE"), key=lambda r: r["value"]
            )
            print(f"<!-- best: trial {best_trial['number']}, {best_trial['params']} -->", flush=True)


def product_prune() -> PruneSpec:
    """``pxp compress``'s default pruning: least squares + BN re-estimation, coupled, β = 1, rounded."""
    return PruneSpec(
        recovery=["least_squares", "bn_reestimate"], coupled=True, cost_exponent=1.0, round_to="auto"
    )


def recovery_curves(args: argparse.Namespace) -> None:
    """The recovered test curve of the default LRP ranking, old (unstaged) then new, in one process."""
    print("\n## Recovered curves (least squares + BN re-estimation, coupled, β = 1), test split\n")
    print(
        "| model | rates | old s | new s | old / new | repeated rates | identical "
        "| no recovery, fast sweep s | recovered new / no recovery |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for model in args.models:
        spec = job_spec(model, args, search=False).model_copy(update={"prune": product_prune()})
        state = pipeline.build_state(spec, pipeline.silent())
        with tempfile.TemporaryDirectory() as scratch:
            scores = pipeline.score(state, AttributionSpec(criterion="lrp"), StageStore(Path(scratch)))
        order = state.order(scores)
        recovery = job_recovery(state)
        x, y = state.test
        rates = list(spec.prune.rates)
        seconds, curves, infos = {}, {}, {}
        for method in ("masked", "auto"):
            info = CurveInfo()
            started = time.perf_counter()
            curves[method] = evaluate_curve(
                state.prepared, order, rates, x, y, method=method, recovery=recovery, info=info
            )
            seconds[method] = time.perf_counter() - started
            infos[method] = info
        # The same ranking without recovery, by the fast sweep: what a trial's curve cost before
        # trials scored the recovered model.
        started = time.perf_counter()
        evaluate_curve(state.prepared, order, rates, x, y, planner=state.planner())
        plain = time.perf_counter() - started
        same = curves["masked"] == curves["auto"]
        assert same, "the staged recovered curve differs from the unstaged one"
        repeats = sum("repeat" in m for m in infos["auto"].methods)
        print(
            f"| {model} | {len(rates)} | {seconds['masked']:.1f} | {seconds['auto']:.1f} "
            f"| {seconds['masked'] / seconds['auto']:.2f}× | {repeats} | yes | {plain:.1f} "
            f"| {seconds['auto'] / plain:.1f}× |",
            flush=True,
        )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--mode", choices=["job", "convergence", "recovery", "all"], default="all")
    parser.add_argument("--models", nargs="+", default=["digits_vgg", "digits_resnet18"])
    parser.add_argument("--jobs", nargs="+", choices=["criteria", "search"], default=["criteria", "search"])
    parser.add_argument("--trials", type=int, default=30, help="search budget of the search job")
    parser.add_argument("--sampler-trials", type=int, default=100)
    parser.add_argument("--sampler-seeds", type=int, default=2)
    parser.add_argument("--first-sampler-seed", type=int, default=100)
    parser.add_argument(
        "--max-eval-samples", type=int, default=None, help="cap on the search and test splits"
    )
    parser.add_argument(
        "--product",
        action="store_true",
        help="jobs with pxp compress's default pruning (least squares + BN, coupled, β = 1, round_to auto)",
    )
    parser.add_argument(
        "--split-seed", type=int, default=0, help="seed of the reference / search / test splits"
    )
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    parser.add_argument("--tiny", action="store_true", help="the zoo's tiny configurations (smoke runs)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    print(f"<!-- {' '.join(sys.argv)} | threads {args.threads} -->")
    started = time.perf_counter()
    if args.mode in ("job", "all"):
        jobs(args)
    if args.mode in ("convergence", "all"):
        convergence(args)
    if args.mode in ("recovery", "all"):
        recovery_curves(args)
    print(f"\n<!-- total {time.perf_counter() - started:.0f}s -->")


if __name__ == "__main__":
    main()
