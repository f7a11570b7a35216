"""Training a comparison: its study (created or checked, with its metadata), the objective of
one seed-run, and the one trial loop (`search.loop.run_trials`) with a comparison's schedule.

One seed-run is one trial of the comparison study, whose params are the configuration and
the seed: results are keyed by them, so a rerun trains only what is missing, more seeds
train only the new ones, and several workers (or machines) share the grid with the same
crash recovery as a search.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import partial
from typing import Any

import optuna
import torch
from optuna.trial import FrozenTrial, TrialState

from lsearch.comparison.group import train_claimed
from lsearch.comparison.plan import Key, Plan, failed_keys, key_of, pending_plans, trial_key
from lsearch.comparison.race import race_plans
from lsearch.comparison.request import Request
from lsearch.errors import UserError
from lsearch.search.loop import Liveness, Step, run_trials
from lsearch.search.objective import SearchObjective, TrialConfig
from lsearch.search.study import produced_by
from lsearch.search.trial_group import TrialGroup
from lsearch.search.workers import picking_rank
from lsearch.spec import StudySpec
from lsearch.store.catalog import (
    COMPARISON,
    DUPLICATE_ATTR,
    FAIL_REASON_ATTR,
    FINGERPRINT_ATTR,
    KIND_ATTR,
    OUT_OF_MEMORY_ATTR,
    PRODUCED_BY_ATTR,
    SEARCH_STUDY_ATTR,
    SPEC_ATTR,
    TEST_AT_ATTR,
    find_study,
    is_comparison,
)
from lsearch.training.data import ImagePool, TestSet, trained_side
from lsearch.training.devices import CoreShare, autocast_precision, requested_precision
from lsearch.training.seed_run import NonFiniteLossError
from lsearch.training.together import together_on


def open_comparison(
    storage: optuna.storages.BaseStorage,
    name: str,
    spec: StudySpec,
    search_study: str | None,
    device: str,
) -> optuna.Study:
    """Create or load a comparison study; refuse one made from a spec that trains differently."""
    existing = find_study(storage, name)
    if existing is not None:
        attrs = existing.user_attrs
        if not is_comparison(existing):
            raise UserError(
                f"study '{name}' in this storage is a search, not a comparison; pass --name"
            )
        stored = attrs.get(SPEC_ATTR)
        if stored is not None and not spec.same_trials_as(stored, comparison=True):
            raise UserError(
                f"comparison '{name}' in this storage was trained from a different study file or "
                "--set values; use the same ones to extend it, or pass --name for a new one"
            )
    study = optuna.create_study(
        storage=storage,
        study_name=name,
        direction="maximize",
        sampler=optuna.samplers.RandomSampler(seed=0),  # never samples: every param is fixed
        load_if_exists=True,
    )
    if SPEC_ATTR not in study.user_attrs:
        study.set_user_attr(KIND_ATTR, COMPARISON)
        study.set_user_attr(SEARCH_STUDY_ATTR, search_study)
        study.set_user_attr(SPEC_ATTR, spec.to_dict())
        study.set_user_attr(FINGERPRINT_ATTR, spec.fingerprint())
        study.set_user_attr(PRODUCED_BY_ATTR, {**produced_by(), "device": device})
    return study


Planner = Callable[[Sequence[FrozenTrial]], list[Plan]]
"""The seed-runs a comparison wants, given the study's trials (fixed, or a race's)."""


def as_planner(plans: Sequence[Plan] | Planner) -> Planner:
    """A fixed list of plans as a Planner; a Planner as it is."""
    if callable(plans):
        return plans
    fixed = list(plans)
    return lambda trials: fixed


class NothingLeft(Exception):
    """Every seed-run of the plan is taken: another worker started the last one first."""


def _started_key(trial: FrozenTrial) -> Key | None:
    """The seed-run a trial chose, from its params (None before it chose one)."""
    if "seed" not in trial.params:
        return None
    return key_of(trial.params, int(trial.params["seed"]))


class SeedRunObjective:
    """The objective of a comparison trial: it claims a pending seed-run that no other
    worker has started and trains it, with test metrics. A retried trial (its worker died)
    arrives with its params and resumes its checkpoint. Workers that ask at the same moment
    take different seed-runs by their picking rank (search.workers.picking_rank)."""

    def __init__(
        self,
        objective: SearchObjective,
        test_set: TestSet,
        plans: Sequence[Plan] | Planner,
    ) -> None:
        self.objective = objective
        self.test_set = test_set
        self.planner = as_planner(plans)

    @property
    def device(self) -> torch.device:
        """The device the seed-runs train on (named in an out-of-memory fail_reason)."""
        return self.objective.device

    def free_plans(self, trials: Sequence[FrozenTrial], own_number: int | None) -> list[Plan]:
        """The plan's seed-runs not complete, failed for a reason, or started by a trial
        other than `own_number`."""
        taken = set(failed_keys(trials))  # failed for a reason: not trained again
        for trial in trials:
            busy = trial.state in (TrialState.RUNNING, TrialState.WAITING, TrialState.COMPLETE)
            key = _started_key(trial)
            if trial.number != own_number and busy and key is not None:
                taken.add(key)
        return [plan for plan in self.planner(trials) if plan.key not in taken]

    def next_plan(self, study: optuna.Study, own_number: int) -> Plan:
        """A seed-run of the plan that is not complete, failed for a reason, or started by
        another trial; NothingLeft when every one is."""
        trials = study.get_trials(deepcopy=False)
        free = self.free_plans(trials, own_number)
        if not free:
            raise NothingLeft("another worker started the last seed-run first; nothing trained")
        # Workers choosing at the same moment take different places in the list.
        rank = picking_rank(trials, own_number)
        return free[rank % len(free)]

    def _plan(self, trial: optuna.Trial) -> Plan:
        if trial.params:  # a retry of a trial whose worker died
            params = trial.params
            config = TrialConfig(
                float(params["label_smoothing"]), int(params["epochs"]), float(params["lr"]),
                int(params["trainable_layers"]),
            )  # fmt: skip
            return Plan(config, int(params["seed"]), tuple(trial.user_attrs.get(TEST_AT_ATTR, ())))
        try:
            return self.next_plan(trial.study, trial.number)
        except NothingLeft as exc:
            trial.set_user_attr(FAIL_REASON_ATTR, str(exc))
            raise

    @staticmethod
    def _yield_to_another_claim(trial: optuna.Trial, plan: Plan) -> None:
        """Workers that chose at the same moment with fewer seed-runs free than workers
        choosing take the same one (`rank % len(free)`). Each checks after writing its claim,
        so at least one of two sees the other's: a trial that sees another trial running,
        waiting or complete on its seed-run yields, marked `duplicate_of` (not a failed
        seed-run: see plan.failed_keys) and, like every failed trial, with its fail_reason."""
        for other in trial.study.get_trials(deepcopy=False):
            busy = other.state in (TrialState.RUNNING, TrialState.WAITING, TrialState.COMPLETE)
            if other.number != trial.number and busy and _started_key(other) == plan.key:
                reason = f"trial {other.number} took this seed-run first; nothing trained"
                trial.set_user_attr(DUPLICATE_ATTR, other.number)
                trial.set_user_attr(FAIL_REASON_ATTR, reason)
                raise NothingLeft(reason)

    def _claim(self, trial: optuna.Trial, plan: Plan | None = None) -> Plan:
        """Write `trial`'s claim on `plan` (or on the seed-run it chooses, or that it
        retries) as its params, then check that no other trial claimed it first."""
        plan = plan or self._plan(trial)
        c = plan.config
        # Single-value distributions: the trial takes exactly these values, and the
        # dashboard shows them as params (ranges wide enough for any comparison).
        trial.suggest_float("label_smoothing", c.label_smoothing, c.label_smoothing)
        trial.suggest_int("epochs", c.epochs, c.epochs)
        trial.suggest_float("lr", c.lr, c.lr, log=True)
        trial.suggest_int("trainable_layers", c.trainable_layers, c.trainable_layers)
        trial.suggest_int("seed", plan.seed, plan.seed)
        trial.set_user_attr(TEST_AT_ATTR, list(plan.test_at))
        self._yield_to_another_claim(trial, plan)
        return plan

    def __call__(self, trial: optuna.Trial) -> float:
        """Train one seed-run alone: the one this trial retries, or a free one it claims."""
        plan = self._claim(trial)
        return self._train_alone(trial, plan)

    def _train_alone(self, trial: optuna.Trial, plan: Plan) -> float:
        attrs = self.objective.train(
            trial, plan.config, [plan.seed], prunes=False, test_set=self.test_set,
            test_at=plan.test_at,
        )  # fmt: skip
        return float(attrs["test_acc"])

    def group_size(self) -> int:
        """How many seed-runs of one cell a worker claims and trains together: as many as
        a search trial of the study trains (`seeds`, whose memory `lsearch bench`
        measures), where `train.seeds_together` groups seeds on this device; else 1."""
        spec = self.objective.spec
        precision = autocast_precision(self.device, requested_precision(spec.train.precision))
        if precision.scales_gradients:  # float16's one scaler would skip every seed's step
            return 1
        side = trained_side(spec.data)
        return len(spec.seeds) if together_on(spec.train.seeds_together, self.device, side) else 1

    def train_group(self, group: TrialGroup) -> None:
        """The trial loop's step (search.trial_group.run_one): claim a seed-run for the
        group's first trial, then, unless it is a retry (which resumes alone from its
        checkpoint), more free seed-runs of the same cell for fresh trials, up to
        `group_size`; train them together, each trial told as its seed-run ends."""
        first = group.trials[0]
        retry = bool(first.params)
        plan = self._claim(first)
        claims = [(first, plan)]
        if not retry:
            claims += self._claim_more(group, plan)
        if len(claims) == 1:
            group.finish(first, self._train_alone(first, plan))
            return
        train_claimed(self.objective, claims, self.test_set, group)

    def _claim_more(self, group: TrialGroup, first: Plan) -> list[tuple[optuna.Trial, Plan]]:
        claims: list[tuple[optuna.Trial, Plan]] = []
        size = self.group_size()
        while 1 + len(claims) < size:
            trials = group.study.get_trials(deepcopy=False)
            # A seed-run that ran out of memory once tries again alone.
            ran_out = {trial_key(t) for t in trials if t.user_attrs.get(OUT_OF_MEMORY_ATTR)}
            if first.key in ran_out:
                break
            free = [
                plan
                for plan in self.free_plans(trials, None)
                if plan.config == first.config and plan.key not in ran_out
            ]
            if not free:
                break
            # Workers growing groups at the same moment take different seed-runs.
            rank = picking_rank(trials, group.trials[0].number)
            trial = group.add()
            try:
                claims.append((trial, self._claim(trial, free[rank % len(free)])))
            except NothingLeft as exc:  # another worker claimed it at the same moment
                group.finish(trial, exc)
                break
        return claims


class SeedRunsLeft:
    """A comparison's schedule: trials until every planned seed-run is complete or failed
    for a reason (a NaN loss or an exception, not retried; out of device memory, retried
    once: see plan.failed_keys). Retries of dead workers' trials go first; a worker with
    nothing to start waits while others' runs of the plan are RUNNING."""

    catch: tuple[type[Exception], ...] = (NonFiniteLossError, NothingLeft)

    def __init__(self, plans: Sequence[Plan] | Planner) -> None:
        self.planner = as_planner(plans)

    def next_step(self, trials: Sequence[FrozenTrial]) -> Step:
        """TRIAL while a retry waits or a seed-run is unstarted; WAIT while others run the
        last ones; STOP when every one is settled."""
        settled: set[Key] = set(failed_keys(trials))  # complete, or failed for a reason
        started: set[Key] = set()  # running or waiting
        for trial in trials:
            key = _started_key(trial)
            if key is None:
                continue
            if trial.state == TrialState.COMPLETE:
                settled.add(key)
            elif trial.state in (TrialState.RUNNING, TrialState.WAITING):
                started.add(key)
        keys = {plan.key for plan in self.planner(trials)}
        if any(t.state == TrialState.WAITING for t in trials) or keys - settled - started:
            return Step.TRIAL
        return Step.WAIT if started - settled else Step.STOP

    def done_after(self, study: optuna.Study, trial: FrozenTrial) -> bool:
        """Nothing ends a comparison early: next_step decides."""
        return False


def run_plans(
    study: optuna.Study,
    objective: SeedRunObjective,
    liveness: Liveness | None,
    callbacks: Sequence[Callable[[optuna.Study, FrozenTrial], None]] = (),
    on_wait: Callable[[optuna.Study], None] | None = None,
    poll_seconds: float = 2.0,
) -> None:
    """Train the objective's planned seed-runs in the one trial loop (`run_trials`) until
    every one is settled (see SeedRunsLeft). With heartbeats, a worker with nothing to start
    waits while others' runs are RUNNING, since a dead worker's run comes back as a retry;
    without them (gRPC proxy) it leaves."""
    schedule = SeedRunsLeft(objective.planner)
    run_trials(study, objective, schedule, callbacks, liveness, poll_seconds, on_wait)


def train_pending(
    request: Request,
    study: optuna.Study,
    data: tuple[ImagePool, TestSet],
    device: torch.device,
    liveness: Liveness | None,
    progress: Any,
    cores: CoreShare | None = None,
) -> None:
    """Train this worker's share of the pending seed-runs (with any others, through the
    storage) until none is left to start or running."""
    from lsearch.search.launch import open_checkpoints

    plans: Sequence[Plan] | Planner = pending_plans(request, study)
    if not plans:
        return
    if request.race is not None:  # recomputed from the study before every trial
        plans = partial(race_plans, request)
    pool, test_set = data
    objective = SearchObjective(
        request.spec, pool, device, on_epoch=progress.on_epoch,
        checkpoints=open_checkpoints(request.spec), cores=cores,
    )  # fmt: skip
    run_plans(
        study,
        SeedRunObjective(objective, test_set, plans),
        liveness,
        callbacks=[progress.on_trial],
        on_wait=progress.poll,
    )
