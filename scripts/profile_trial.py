"""Where one seed's epochs go on the CPU: data preparation (augmentation, resize,
normalisation), forward, backward and optimizer step in training, and evaluation.

    python scripts/profile_trial.py --study digits
    python scripts/profile_trial.py --study cifar10-resnet18 --set data.image_size=32 \\
        --set baseline.trainable_layers=2
"""

from __future__ import annotations

import argparse
import time
from collections import defaultdict
from collections.abc import Callable
from typing import Any

import torch

from lsearch.bench.workload import bench_data
from lsearch.spec import load_spec
from lsearch.training.data import split_for_seed
from lsearch.training.models import build_model
from lsearch.training.seed_run import start_seed_run


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--study", default="digits")
    parser.add_argument("--set", action="append", default=[])
    parser.add_argument("--epochs", type=int, default=3)
    args = parser.parse_args()
    spec = load_spec(args.study, args.set)
    device = torch.device("cpu")
    spec, pool, notes = bench_data(spec, device, synthetic=spec.data.dataset != "digits")
    base = spec.baseline
    net = build_model(spec.model, pool.images.shape[1], pool.num_classes, seed=0)
    net.freeze(base.trainable_layers)
    run = start_seed_run(
        0, net, split_for_seed(pool, spec.data, 0), pool, spec.data, spec.train,
        base.label_smoothing, base.lr, args.epochs + 1, device,
    )  # fmt: skip
    run.evaluate(run.train_epoch())  # warm-up
    seconds: dict[str, float] = defaultdict(float)
    phase = ["train"]

    def timed(name: str, function: Callable[..., Any]) -> Callable[..., Any]:
        def wrapper(*a: Any, **k: Any) -> Any:
            start = time.perf_counter()
            try:
                return function(*a, **k)
            finally:
                if phase[0] == "train":
                    seconds[name] += time.perf_counter() - start

        return wrapper

    run._inputs = timed("prepare", run._inputs)  # type: ignore[method-assign]
    net.prefix = timed("forward, frozen prefix", net.prefix)  # type: ignore[method-assign]
    net.suffix = timed("forward, trainable groups", net.suffix)  # type: ignore[method-assign]
    run.optimizer.step = timed("optimizer step", run.optimizer.step)  # type: ignore[method-assign]
    backward = torch.Tensor.backward
    torch.Tensor.backward = timed("backward", backward)  # type: ignore[method-assign]
    started = time.perf_counter()
    for _ in range(args.epochs):
        phase[0] = "train"
        epoch_start = time.perf_counter()
        loss = run.train_epoch()
        seconds["training, all"] += time.perf_counter() - epoch_start
        phase[0] = "evaluate"
        evaluate_start = time.perf_counter()
        run.evaluate(loss)
        seconds["evaluation (cached features)"] += time.perf_counter() - evaluate_start
    torch.Tensor.backward = backward  # type: ignore[method-assign]
    total = time.perf_counter() - started
    threads = torch.get_num_threads()
    print(f"{spec.name}, {spec.model.name}, {args.epochs} epochs, {threads} threads: {total:.2f} s")
    for note in notes:
        print(f"  ({note})")
    for name, value in seconds.items():
        print(f"  {name:30s} {value:7.3f} s  {value / total:6.1%}")


if __name__ == "__main__":
    main()
