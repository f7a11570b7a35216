"""The transfer gap of the offline default study: pretrained against random weights.

    .venv/bin/python scripts/transfer_gap.py [--seeds 10] [--storage sqlite:///gap.db]

Runs two comparisons of `trainable_layers` 1, 2 and 4 (all) on the `digits-transfer` study,
one with its pretrained weights (`digits-0-4`) and one with `model.weights = none` (weights
are not a grid factor, so they are two comparisons on the same seeds, hence the same data
subsets and batch orders), and prints a Markdown table: each cell's test accuracy and test
ECE with 95 % t intervals over seeds, and the difference pretrained − random paired by seed.
"""

from __future__ import annotations

import argparse

import lsearch
from lsearch.analysis.paired import paired_difference

LAYERS = [1, 2, 4]
METRICS = {"test_acc": True, "test_ece": False}  # higher is better


def pp(low: float, high: float) -> str:
    return f"[{100 * low:.1f}, {100 * high:.1f}]"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=10)
    parser.add_argument("--storage", default="sqlite:///transfer-gap.db")
    args = parser.parse_args()
    results = {}
    for weights in ("digits-0-4", "none"):
        results[weights] = lsearch.compare(
            {"trainable_layers": LAYERS},
            "digits-transfer",
            {"model.weights": weights},
            seeds=list(range(args.seeds)),
            storage=args.storage,
            device="cpu",
            name=f"transfer gap, weights {weights}",
        ).to_dict()
    print("| layers | metric | pretrained | random | pretrained − random (paired) |")
    print("| --- | --- | --- | --- | --- |")
    pairs = zip(results["digits-0-4"]["cells"], results["none"]["cells"], strict=True)
    for pretrained, random in pairs:
        assert pretrained["seeds"] == random["seeds"]
        for metric, higher in METRICS.items():
            a, b = pretrained["metrics"][metric], random["metrics"][metric]
            gap = paired_difference(a["per_seed"], b["per_seed"], higher_is_better=higher)
            print(
                f"| {pretrained['label'].removeprefix('layers ')} | {metric} "
                f"| {100 * a['mean']:.1f} % {pp(a['ci']['low'], a['ci']['high'])} "
                f"| {100 * b['mean']:.1f} % {pp(b['ci']['low'], b['ci']['high'])} "
                f"| {100 * gap.mean:+.1f} pp {pp(gap.ci.low, gap.ci.high)}, "
                f"p = {gap.t_pvalue:.2g}, n = {gap.n} |"
            )


if __name__ == "__main__":
    main()
