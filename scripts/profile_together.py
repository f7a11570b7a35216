"""Where the time of a trial's seeds goes, trained together against one at a time: one epoch
of the cifar10-resnet18 baseline (synthetic images, random weights shared by every seed, as
`lsearch bench --seeds` times it) under torch.profiler, its operators by device time.

    python scripts/profile_together.py --size 224 [--seeds 3] [--rows 12] [--out FOLDER]

On CUDA the table is by CUDA time and FOLDER gets a Chrome trace per way (chrome://tracing).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

from lsearch.bench.workload import bench_data, random_weights, trial_runs
from lsearch.spec import load_spec
from lsearch.training.devices import resolve_device
from lsearch.training.features import FeatureCache
from lsearch.training.together import SeedGroup


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--rows", type=int, default=12)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    device = resolve_device("cuda" if torch.cuda.is_available() else "cpu")
    spec = load_spec("cifar10-resnet18", [f"data.image_size={args.size}"])
    spec = load_spec("cifar10-resnet18", [f"data.image_size={args.size}",
                                          f'model.weights="{random_weights(spec)}"'])  # fmt: skip
    spec, pool, _ = bench_data(spec, device, synthetic=True)
    cuda = device.type == "cuda"
    activities = [ProfilerActivity.CPU, *([ProfilerActivity.CUDA] if cuda else [])]
    for together in (False, True):
        runs = trial_runs(spec, pool, device, range(args.seeds), FeatureCache.for_device(device))
        group = SeedGroup(runs) if together else None

        def epoch(group: SeedGroup | None = group, runs: list = runs) -> None:
            losses = group.train_epoch() if group else [run.train_epoch() for run in runs]
            for run, loss in zip(runs, losses, strict=True):
                run.evaluate(loss)

        epoch()  # warm-up: allocator, cuDNN's choices, the feature cache
        if cuda:
            torch.cuda.synchronize()
        with profile(activities=activities) as prof:
            epoch()
            if cuda:
                torch.cuda.synchronize()
        name = "together" if together else "one at a time"
        print(f"\n== {args.seeds} seeds {name}, {args.size} px, one epoch ({device}) ==")
        key = "self_cuda_time_total" if cuda else "self_cpu_time_total"
        print(prof.key_averages().table(sort_by=key, row_limit=args.rows, max_name_column_width=60))
        if args.out is not None:
            args.out.mkdir(parents=True, exist_ok=True)
            prof.export_chrome_trace(str(args.out / f"trace-{name.replace(' ', '-')}.json"))


if __name__ == "__main__":
    main()
