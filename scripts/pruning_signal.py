"""How well a trial's value after epoch k predicts its final value: the evidence behind a
pruner's warm-up and interval. Run an unpruned search, then read its learning curves:

    lsearch run --trials 100 --set pruner.type=none --name digits-unpruned
    python scripts/pruning_signal.py --study digits-unpruned

For each epoch k it prints the Spearman rank correlation, over the complete trials, between
the value the pruner saw after k epochs (lsearch's own `Progress.reported`, rebuilt from the
trial's recorded curves under the study's stored objective settings) and the trial's final
value. A pruner that checks at an epoch of low correlation prunes good trials by chance.
"""

from __future__ import annotations

import argparse

import optuna
from optuna.trial import TrialState
from scipy.stats import spearmanr

from lsearch.search.trial_progress import TrialProgress
from lsearch.spec import Objective, StudySpec
from lsearch.store.catalog import SPEC_ATTR
from lsearch.store.storage import open_storage, resolve_url


def signal(
    trials: list[optuna.trial.FrozenTrial], objective: Objective, epochs: int
) -> list[tuple[int, float]]:
    runs = [TrialProgress.from_curves(t.user_attrs) for t in trials]
    final = [p.reported(objective, p.epochs_run) for p in runs]
    out = []
    for k in range(1, epochs + 1):
        at_k = [p.reported(objective, min(k, p.epochs_run)) for p in runs]
        out.append((k, float(spearmanr(at_k, final).statistic)))
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--storage", default=None)
    parser.add_argument("--study", required=True)
    parser.add_argument("--epochs", type=int, default=10)
    args = parser.parse_args()
    storage = open_storage(resolve_url(args.storage), must_exist=True)
    study = optuna.load_study(study_name=args.study, storage=storage)
    objective = StudySpec.model_validate(study.user_attrs[SPEC_ATTR]).objective
    trials = [
        t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        if "curve_val_ece" in t.user_attrs
    ]  # fmt: skip
    print(f"{len(trials)} complete trials of {args.study}")
    print("epoch  Spearman(value after the epoch, final value)")
    for k, rho in signal(trials, objective, args.epochs):
        print(f"{k:5d}  {rho:+.2f}")


if __name__ == "__main__":
    main()
