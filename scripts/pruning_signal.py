"""How well a trial's value after epoch k predicts its final value: the evidence behind a
pruner's warm-up and interval. Run an unpruned search, then read its learning curves:

    lsearch run --trials 100 --set pruner.type=none --name digits-unpruned
    python scripts/pruning_signal.py --study digits-unpruned

For each epoch k it prints the Spearman rank correlation, over the complete trials, between
the value the pruner would have seen after k epochs (the best mean validation accuracy over
seeds so far, as lsearch reports it) and the trial's final value. A pruner that checks at an
epoch of low correlation prunes good trials by chance.
"""

from __future__ import annotations

import argparse

import numpy as np
import optuna
from optuna.trial import TrialState
from scipy.stats import spearmanr

from lsearch.storage import open_storage, resolve_url


def reported_curve(curves: list[list[float]]) -> np.ndarray:
    """The pruner's view of a trial: the running best of the mean over seeds."""
    return np.maximum.accumulate(np.mean(np.asarray(curves, dtype=float), axis=0))


def signal(trials: list[optuna.trial.FrozenTrial], epochs: int) -> list[tuple[int, float]]:
    views = [reported_curve(t.user_attrs["curve_val_acc"]) for t in trials]
    final = np.array([view[-1] for view in views])
    out = []
    for k in range(1, epochs + 1):
        at_k = np.array([view[min(k, len(view)) - 1] for view in views])
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
    trials = [
        t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        if "curve_val_acc" in t.user_attrs
    ]  # fmt: skip
    print(f"{len(trials)} complete trials of {args.study}")
    print("epoch  Spearman(value after the epoch, final value)")
    for k, rho in signal(trials, args.epochs):
        print(f"{k:5d}  {rho:+.2f}")


if __name__ == "__main__":
    main()
