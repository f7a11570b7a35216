"""How close a training step of a study's model comes to this CPU's arithmetic peak: the step's
FLOPs (torch.utils.flop_counter) over its time, against a large float32 matrix product on the
same threads. Batching seeds together only removes per-operation overhead; a step already
near the peak has little of that to lose.

    python scripts/flop_rate.py [--study digits] [--threads 2] [--set KEY=VALUE ...]
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from lsearch.bench.workload import bench_data
from lsearch.spec import load_spec
from lsearch.training.data import trained_side
from lsearch.training.models import build_model


def seconds_per_call(work, repeats: int) -> float:
    for _ in range(max(3, repeats // 10)):  # warm-up: allocator, oneDNN's kernel choices
        work()
    begun = time.perf_counter()
    for _ in range(repeats):
        work()
    return (time.perf_counter() - begun) / repeats


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--study", default="digits")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--set", action="append", default=[])
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    spec = load_spec(args.study, args.set)
    # Random images of the dataset's shape where it is not digits (CIFAR-10 may be absent).
    spec, pool, _ = bench_data(spec, torch.device("cpu"), spec.data.dataset != "digits")
    side = trained_side(spec.data)
    net = build_model(spec.model, pool.images.shape[1], pool.num_classes, seed=0)
    net.freeze(spec.baseline.trainable_layers)
    params = [p for p in net.model.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(params, lr=1e-3, fused=True)
    images = torch.randn(spec.train.batch_size, net.in_channels, side, side)
    labels = torch.randint(0, pool.num_classes, (spec.train.batch_size,))

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        F.cross_entropy(net.model(images), labels, label_smoothing=0.1).backward()
        optimizer.step()

    with FlopCounterMode(display=False) as counter:
        step()
    flops = counter.get_total_flops()
    step_s = seconds_per_call(step, 200)
    a, b = torch.randn(2048, 2048), torch.randn(2048, 2048)
    peak = 2 * 2048**3 / seconds_per_call(lambda: a @ b, 10)
    rate = flops / step_s
    print(f"{args.study}: a training step of {spec.train.batch_size} images is "
          f"{flops / 1e6:.0f} MFLOP in {step_s * 1e3:.2f} ms: {rate / 1e9:.1f} GFLOP/s, "
          f"{rate / peak:.0%} of a 2048 x 2048 float32 matrix product's "
          f"{peak / 1e9:.1f} GFLOP/s on {args.threads} threads")  # fmt: skip


if __name__ == "__main__":
    main()
