"""``run_search``: tune the LRP composite so that the ranking it produces prunes best.

The objective is A_PR on the **search split**. The test split is not an
argument: the search cannot see it, and the caller reports test figures for
:attr:`SearchOutcome.best` and :attr:`SearchOutcome.default` itself.

How it converges quickly (all seeded and resumable):

- **Seeds.** The study starts with enqueued known-good composites: the paper's ε
  default (trial 0, the baseline), the user's composite, the literature's
  (:func:`~pxp.search.space.literature_configs`) and the per-family winners
  (:func:`~pxp.search.space.known_good_configs`). They count among TPE's start-up
  trials, so TPE models the space from informed points at once.
- **Sampler.** Multivariate TPE with ``group=True`` (the rule parameters are
  conditional on the rule), seeded (:func:`pxp.search.study.make_sampler`).
- **Exact trial pruning** (``SearchSpec.exact_pruning``, on by default): a trial
  whose partial curve proves it cannot beat the best complete trial is stopped
  (:class:`~pxp.search.evaluator.CannotBeat`, reported to Optuna as pruned). It
  could not have won, so the best configuration is the one a full evaluation of
  every trial would find among the same trials. Enqueued seeds are never pruned.
- **Plateau stop** (``SearchSpec.plateau_trials``, default 20): the search ends once
  that many finished trials in a row (in trial-number order, counting earlier
  runs of the study) have not raised the best A_PR. The rule reads only the stored
  trials, so a resumed plateaued study stops again at once.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import optuna
import torch
from optuna.trial import FrozenTrial, TrialState
from pydantic import ValidationError
from torch import nn

import pxp.search.study as studies
from pxp.components import Family, PrunableLayer
from pxp.errors import InvalidDataError, InvalidSpecError
from pxp.pruning.hardware import resolve_round_to
from pxp.pruning.recovery import Recovery
from pxp.search.evaluator import CannotBeat, Ranker, TrialEvaluator
from pxp.search.space import (
    SearchSpace,
    TrialConfig,
    composite_groups,
    default_config,
    has_residual_sum,
    known_good_configs,
    literature_configs,
)
from pxp.spec import AttributionSpec, PruneSpec, SearchSpec

#: ``progress(finished trials, trial budget, best search-split A_PR so far)``, after every trial.
#: It may raise :class:`pxp.errors.JobCancelledError`: the search stops and the study stays resumable.
ProgressCallback = Callable[[int, int, float | None], None]


@dataclass(frozen=True)
class ComputedConfig:
    """A configuration's relevance scores and, if its trial completed here, its search-split curve."""

    #: The scores of the configuration's aggregation, as :func:`pxp.attribution.compute_scores` returns them.
    scores: dict[str, torch.Tensor]
    #: Accuracy per rate of ``prune.rates`` (ascending) on the search split, or None.
    accuracies: list[float] | None = None
    #: :meth:`~pxp.pruning.ranking.PruneOrder.mask_key` of the order those accuracies belong to.
    mask_key: tuple[object, ...] | None = None

    def curve_for(self, mask_key: tuple[object, ...]) -> list[float] | None:
        """The search-split accuracies, if they were measured on the order with ``mask_key``."""
        return self.accuracies if self.accuracies is not None and self.mask_key == mask_key else None


@dataclass
class SearchOutcome:
    """The result of a search, all on the search split."""

    best: AttributionSpec
    best_normalize_per_layer: bool
    best_value: float
    default: AttributionSpec
    default_normalize_per_layer: bool
    default_value: float
    trials_completed: int
    trials_pruned: int
    trials_failed: int
    study_name: str
    #: The storage URL with any password redacted.
    storage: str
    sampler: str
    fingerprint: str
    #: sha256 of the tensors the objective scored trials on (see :func:`pxp.search.study.tensor_digest`).
    search_data_sha256: str
    reference_data_sha256: str
    history: list[dict[str, Any]] = field(default_factory=list)
    importances: dict[str, float] = field(default_factory=dict)
    requeued_trials: list[int] = field(default_factory=list)
    #: The search ended on the plateau rule before its trial budget.
    stopped_on_plateau: bool = False
    #: What this process computed for the ``"best"`` and ``"default"`` configurations (not
    #: serialised): the job reuses their relevance scores and the best one's search-split
    #: curve instead of computing them again.
    computed: dict[str, ComputedConfig] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "study_name": self.study_name,
            "storage": self.storage,
            "sampler": self.sampler,
            "fingerprint": self.fingerprint,
            "search_data_sha256": self.search_data_sha256,
            "reference_data_sha256": self.reference_data_sha256,
            "best": self.best.model_dump(),
            "best_normalize_per_layer": self.best_normalize_per_layer,
            "best_value": self.best_value,
            "default": self.default.model_dump(),
            "default_normalize_per_layer": self.default_normalize_per_layer,
            "default_value": self.default_value,
            "trials_completed": self.trials_completed,
            "trials_pruned": self.trials_pruned,
            "trials_failed": self.trials_failed,
            "requeued_trials": self.requeued_trials,
            "stopped_on_plateau": self.stopped_on_plateau,
            "importances": self.importances,
            "history": self.history,
        }


def _check_inputs(
    family: str,
    layers: list[PrunableLayer],
    reference: tuple[torch.Tensor, torch.Tensor],
    search_split: tuple[torch.Tensor, torch.Tensor],
    prune: PruneSpec,
    base: AttributionSpec,
) -> None:
    if family not in ("cnn", "vit"):
        raise InvalidSpecError(f"the search supports the 'cnn' and 'vit' families, not {family!r}")
    if not layers:
        raise InvalidSpecError("the search needs at least one prunable layer")
    if base.criterion != "lrp":
        raise InvalidSpecError(f"the search tunes LRP; the base criterion is {base.criterion!r}")
    if not any(rate > 0 for rate in prune.rates):
        raise InvalidSpecError("the search needs at least one pruning rate above 0: A_PR would be constant")
    for split, (x, y) in (("reference", reference), ("search", search_split)):
        if len(x) == 0 or len(x) != len(y):
            raise InvalidDataError(
                f"the {split} split needs as many labels as samples, at least one: {len(x)}/{len(y)}"
            )


def run_search(
    *,
    model: nn.Module,
    family: Family,
    layers: list[PrunableLayer],
    reference: tuple[torch.Tensor, torch.Tensor],
    search_split: tuple[torch.Tensor, torch.Tensor],
    prune: PruneSpec,
    spec: SearchSpec,
    storage: str | None = None,
    study_name: str | None = None,
    base: AttributionSpec | None = None,
    progress: ProgressCallback | None = None,
    baseline: bool = False,
) -> SearchOutcome:
    """Run (or resume) the search and return its best configuration.

    ``model`` is prepared (:func:`pxp.components.prepare_model`); ``reference``
    gives the relevance, ``search_split`` the A_PR of each trial. ``storage``
    (else ``spec.storage``) is an Optuna RDB URL; ``None`` keeps the study in
    memory, which cannot be resumed. ``study_name`` (else ``spec.study_name``)
    defaults to one derived from the search's fingerprint, so re-running the
    same job resumes its study. ``base`` supplies the batch size, seed, the
    aggregation when it is not searched, and a user composite tried early
    alongside the paper's default (trial 0).

    Budgets: ``spec.trials`` finished (complete or pruned) trials in the study,
    counting those of earlier runs; ``spec.timeout_s`` wall-clock seconds, also
    counting earlier runs' trials.

    ``baseline=True`` runs the search as it was before the fast path (masked
    curves, coarse-to-fine rates, only the default, user and literature seeds, no
    exact pruning, no plateau stop): internal, for ``bench/job.py`` to measure
    the product's path against in the same process.
    """
    base = base or AttributionSpec.model_validate({})
    try:
        spec = SearchSpec.model_validate(spec.model_dump())
    except ValidationError as exc:
        raise InvalidSpecError(f"invalid search spec: {exc}") from exc
    _check_inputs(family, layers, reference, search_split, prune, base)
    space = SearchSpace(
        family=family,
        groups=composite_groups(model, family),
        search_aggregation=spec.search_aggregation,
        search_normalization=spec.search_normalization,
        fixed_aggregation=base.aggregation,
        fixed_normalize=prune.normalize_per_layer,
    )
    # What a trial scores beyond plain masks (the job's recovery and ranking), named in the
    # fingerprint only when set, so studies of plain-mask searches keep their fingerprint.
    scored: dict[str, Any] = {}
    if not baseline:
        if prune.recovery:
            scored["recovery"] = list(prune.recovery)
        if prune.coupled:
            scored["coupled"] = True
        if prune.cost_exponent:
            scored["cost_exponent"] = prune.cost_exponent
        round_to = resolve_round_to(prune.round_to, layers, reference[0].device)
        if round_to > 1:
            scored["round_to"] = round_to
    search_sha = studies.tensor_digest([("x", search_split[0]), ("y", search_split[1])])
    reference_sha = studies.tensor_digest([("x", reference[0]), ("y", reference[1])])
    fingerprint = studies.fingerprint(
        {
            "space": space.signature(),
            "rates": prune.rates,
            "min_keep": prune.min_keep,
            "layers": [(la.name, la.kind, la.size, la.group) for la in layers],
            "model": studies.tensor_digest(sorted(model.state_dict().items())),
            "reference": reference_sha,
            "search": search_sha,
        }
        | ({"objective": scored} if scored else {})
    )
    url = storage if storage is not None else spec.storage
    name = study_name or spec.study_name or f"pxp-search-{fingerprint[:16]}"
    default = default_config(space)
    starts = [("default", default)]
    if base.composite is not None:
        starts.append(
            (
                "user",
                space.normalise(TrialConfig(base.composite, base.aggregation, prune.normalize_per_layer)),
            )
        )
    starts += literature_configs(space)
    if not baseline:
        residual = family == "cnn" and has_residual_sum(model)
        starts += known_good_configs(space, residual=residual)
    seen: set[str] = set()
    enqueue = []
    for role, config in starts:
        if config.key() not in seen:
            seen.add(config.key())
            enqueue.append((space.params_of(config), role))
    study, requeued = studies.open_study(
        url=url, name=name, spec=spec, expected_fingerprint=fingerprint, enqueue=enqueue
    )

    evaluator: TrialEvaluator | None = None

    def get_evaluator() -> TrialEvaluator:
        nonlocal evaluator
        if evaluator is None:
            evaluator = TrialEvaluator(
                model=model,
                family=family,
                layers=layers,
                reference=reference,
                evaluation=search_split,
                rates=list(prune.rates),
                aggregations=("abs", "signed") if spec.search_aggregation else (base.aggregation,),
                min_keep=prune.min_keep,
                batch_size=base.batch_size,
                curve_method="masked" if baseline else "auto",
                # Median pruning compares partial curves, which need the coarse-to-fine order;
                # the exact bound falls fastest from the highest rate down.
                rate_order="coarse_to_fine" if baseline or spec.median_pruning else "descending",
                recovery=_job_recovery(model, family, layers, reference, prune)
                if "recovery" in scored
                else None,
                ranker=_job_ranker(model, family, layers, reference, prune) if scored else None,
            )
        return evaluator

    exact_pruning = spec.exact_pruning and not baseline
    plateau = None if baseline else spec.plateau_trials

    def objective(trial: optuna.Trial) -> float:
        config = space.suggest(trial)

        # The enqueued reference configurations report their partial curves (other trials are
        # compared with them) but are never pruned: their full A_PR is the baseline.
        prunable = studies.ROLE_ATTR not in trial.user_attrs

        def on_point(step: int, _rate: float, _acc: float, estimate: float) -> None:
            if spec.median_pruning or exact_pruning:
                trial.report(estimate, step)
            if spec.median_pruning and prunable and trial.should_prune():
                raise optuna.TrialPruned()

        beat = _best_value(trial.study) if exact_pruning and prunable else None
        try:
            measure = get_evaluator().evaluate(config, on_point, beat=beat)
        except CannotBeat as stop:
            trial.set_user_attr("pxp_bound", stop.bound)
            trial.set_user_attr("pxp_beat", stop.beat)
            raise optuna.TrialPruned(str(stop)) from None
        trial.set_user_attr("relevance_s", round(measure.relevance_s, 4))
        trial.set_user_attr("curve_s", round(measure.curve_s, 4))
        trial.set_user_attr("reused_relevance", measure.reused_relevance)
        if measure.repeated:
            trial.set_user_attr("repeated", True)
        trial.set_user_attr("accuracies", [measure.accuracies[r] for r in sorted(measure.accuracies)])
        if measure.nonfinite_scores:
            trial.set_user_attr("nonfinite_scores", measure.nonfinite_scores)
        return measure.apr

    def report(done_study: optuna.Study, _trial: FrozenTrial) -> None:
        if progress is not None:
            done = studies.count_finished(done_study)
            best = _best_value(done_study)
            progress(min(done, spec.trials), spec.trials, best)

    def stop_on_plateau(done_study: optuna.Study, _trial: FrozenTrial) -> None:
        if plateau is not None and _since_best(done_study) >= plateau:
            done_study.stop()

    remaining = spec.trials - studies.count_finished(study)
    time_left = None if spec.timeout_s is None else spec.timeout_s - studies.seconds_spent(study)
    callbacks: list[Callable[[optuna.Study, FrozenTrial], None]] = [
        optuna.study.MaxTrialsCallback(spec.trials, states=studies.FINISHED),
        report,
        stop_on_plateau,
    ]
    # A resumed study that already plateaued runs nothing more (beyond the baseline, if it is missing).
    plateaued = plateau is not None and _since_best(study) >= plateau
    if remaining > 0 and not plateaued and (time_left is None or time_left > 0):
        study.optimize(objective, n_trials=remaining, timeout=time_left, callbacks=callbacks)
    elif remaining > 0 and _default_trial(study) is None:
        # The wall-clock budget is spent, but the baseline every result is compared with must exist.
        study.optimize(objective, n_trials=1, callbacks=callbacks)

    outcome = _outcome(
        study, space, base, url, fingerprint, search_sha, reference_sha, requeued, spec, get_evaluator
    )
    if evaluator is not None:
        outcome.computed = _computed(evaluator, space, outcome, prune)
    outcome.stopped_on_plateau = (
        plateau is not None and _since_best(study) >= plateau and studies.count_finished(study) < spec.trials
    )
    return outcome


def _computed(
    evaluator: TrialEvaluator, space: SearchSpace, outcome: SearchOutcome, prune: PruneSpec
) -> dict[str, ComputedConfig]:
    """The evaluator's scores and curves of the outcome's best and default configurations."""
    rates = sorted(prune.rates)
    # A curve is the job's only if the trials evaluated what the job's curves evaluate: recovered
    # exactly when the job recovers (the old path's trials score plain masks whatever the job does).
    recovering = evaluator.recovery is not None and evaluator.recovery.enabled
    same_evaluation = recovering == bool(prune.recovery) and list(prune.rates) == rates
    found: dict[str, ComputedConfig] = {}
    for role, attribution, normalize in (
        ("best", outcome.best, outcome.best_normalize_per_layer),
        ("default", outcome.default, outcome.default_normalize_per_layer),
    ):
        config = TrialConfig(attribution.effective_composite(), attribution.aggregation, normalize)
        scores, measure = evaluator.known(space.normalise(config))
        if scores is None:
            continue
        accuracies = None
        if same_evaluation and measure is not None and set(measure.accuracies) == set(rates):
            accuracies = [measure.accuracies[r] for r in rates]
        found[role] = ComputedConfig(
            scores=scores, accuracies=accuracies, mask_key=measure.mask_key if measure else None
        )
    return found


def _job_recovery(
    model: nn.Module,
    family: Family,
    layers: list[PrunableLayer],
    reference: tuple[torch.Tensor, torch.Tensor],
    prune: PruneSpec,
) -> Recovery:
    """The job's recovery, as the pipeline builds it (:func:`pxp.pipeline.budget.recovery`)."""
    return Recovery(model, family, layers, reference[0], prune.recovery)


def _job_ranker(
    model: nn.Module,
    family: Family,
    layers: list[PrunableLayer],
    reference: tuple[torch.Tensor, torch.Tensor],
    prune: PruneSpec,
) -> Ranker:
    """Ranks a trial's scores as the job does (:func:`pxp.pruning.coupling.job_order`)."""
    from pxp.pruning.coupling import ComponentGraph, component_graph, job_order

    built: list[ComponentGraph] = []

    def graph() -> ComponentGraph:
        if not built:
            built.append(component_graph(model, family, layers, reference[0][:1]))
        return built[0]

    return lambda scores, normalize: job_order(layers, scores, prune, reference[0].device, graph, normalize)


def _since_best(study: optuna.Study) -> int:
    """Finished trials after the one that set the best A_PR (all finished trials when none completed)."""
    finished = sorted(study.get_trials(deepcopy=False, states=studies.FINISHED), key=lambda t: t.number)
    best, since = float("-inf"), 0
    for trial in finished:
        if trial.state == TrialState.COMPLETE and trial.value is not None and trial.value > best:
            best, since = trial.value, 0
        else:
            since += 1
    return since


def _best_value(study: optuna.Study) -> float | None:
    complete = studies.complete_trials(study)
    return max(t.value for t in complete if t.value is not None) if complete else None


def _default_trial(study: optuna.Study) -> FrozenTrial | None:
    for trial in studies.complete_trials(study):
        if trial.user_attrs.get(studies.ROLE_ATTR) == "default":
            return trial
    return None


def _history_row(trial: FrozenTrial, space: SearchSpace) -> dict[str, Any]:
    row: dict[str, Any] = {
        "number": trial.number,
        "state": trial.state.name,
        "value": trial.value,
        "params": trial.params,
        "duration_s": trial.duration.total_seconds() if trial.duration is not None else None,
        "intermediate": {str(k): v for k, v in sorted(trial.intermediate_values.items())},
        "user_attrs": trial.user_attrs,
    }
    if trial.state in studies.FINISHED:
        row["config"] = space.config_from_params(trial.params).to_dict()
    return row


def _importances(study: optuna.Study, seed: int) -> dict[str, float]:
    """fANOVA importances of the parameters every complete trial has (the conditional ones are left out)."""
    complete = studies.complete_trials(study)
    if len(complete) < 2:
        return {}
    try:
        evaluator = optuna.importance.FanovaImportanceEvaluator(seed=seed)
        return {
            k: float(v)
            for k, v in optuna.importance.get_param_importances(study, evaluator=evaluator).items()
        }
    except (ValueError, RuntimeError):
        return {}


def _outcome(
    study: optuna.Study,
    space: SearchSpace,
    base: AttributionSpec,
    url: str | None,
    fingerprint: str,
    search_sha: str,
    reference_sha: str,
    requeued: list[int],
    spec: SearchSpec,
    get_evaluator: Callable[[], TrialEvaluator],
) -> SearchOutcome:
    complete = studies.complete_trials(study)
    default = default_config(space)
    default_trial = _default_trial(study)
    if default_trial is not None and default_trial.value is not None:
        default_value = default_trial.value
    else:
        default_value = get_evaluator().evaluate(default).apr
    best_config, best_value = default, default_value
    # Ties keep the earlier trial, so the default wins a tie with anything found later.
    for trial in complete:
        if trial.value is not None and trial.value > best_value:
            best_config, best_value = space.config_from_params(trial.params), trial.value
    trials = study.get_trials(deepcopy=False)
    return SearchOutcome(
        best=best_config.attribution(base.batch_size, base.seed),
        best_normalize_per_layer=best_config.normalize_per_layer,
        best_value=best_value,
        default=default.attribution(base.batch_size, base.seed),
        default_normalize_per_layer=default.normalize_per_layer,
        default_value=default_value,
        trials_completed=len(complete),
        trials_pruned=sum(t.state == TrialState.PRUNED for t in trials),
        trials_failed=sum(t.state == TrialState.FAIL for t in trials),
        study_name=study.study_name,
        storage=studies.redact_url(url),
        sampler=spec.sampler,
        fingerprint=fingerprint,
        search_data_sha256=search_sha,
        reference_data_sha256=reference_sha,
        history=[_history_row(t, space) for t in trials],
        importances=_importances(study, spec.seed),
        requeued_trials=requeued,
    )
