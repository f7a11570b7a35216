"""The checks `lsearch doctor` runs: is this machine ready for a long search? One check per
question, each with a one-line verdict (ok, warn or fail) and its figures.

The checks read; they never write. Nothing is created: no database (a SQLite file that is
not there is only looked for, an existing one is probed in a transaction that is rolled
back, as is a PostgreSQL database), no study, no data or weights download (the training
check trains on synthetic data, with random weights where the study's are not on disk), no
file in the current folder.

One module per kind of check: `machine` (torch, the device, CUDA, the CPU), `storage`,
`data` (the dataset and the weights) and `training`; `check` holds the verdict type. (Not
named `doctor`: `lsearch.doctor` is the Python API's function, which a submodule of that
name would replace once imported.)
"""

from __future__ import annotations

import torch

from lsearch.checks.check import STATUSES as STATUSES
from lsearch.checks.check import Check as Check
from lsearch.checks.check import first_line as first_line
from lsearch.checks.check import passed as passed
from lsearch.checks.data import check_data as check_data
from lsearch.checks.data import check_weights as check_weights
from lsearch.checks.data import imagenet_weights_file as imagenet_weights_file
from lsearch.checks.machine import check_cpu as check_cpu
from lsearch.checks.machine import check_cuda as check_cuda
from lsearch.checks.machine import check_device as check_device
from lsearch.checks.machine import check_torch as check_torch
from lsearch.checks.machine import parse_device as parse_device
from lsearch.checks.storage import check_storage as check_storage
from lsearch.checks.training import check_training as check_training
from lsearch.spec import StudySpec

__all__ = [
    "STATUSES",
    "Check",
    "check_cpu",
    "check_cuda",
    "check_data",
    "check_device",
    "check_storage",
    "check_torch",
    "check_training",
    "check_weights",
    "first_line",
    "imagenet_weights_file",
    "parse_device",
    "passed",
    "run_checks",
]


def run_checks(spec: StudySpec, url: str, device: str = "auto", train: bool = True) -> list[Check]:
    """Every check, in the order they print: torch, the device, each CUDA device (or the
    lack of one), the CPU, the storage, the data, the weights and, with `train`, one
    synthetic training epoch on the device."""
    device = parse_device(device)
    chosen = check_device(device)
    precision = spec.train.precision
    on_cpu = chosen.figures.get("device") == "cpu"
    weights = check_weights(spec)
    checks = [
        check_torch(),
        chosen,
        *check_cuda(device, precision),
        check_cpu(on_cpu, precision),
        check_storage(url),
        check_data(spec),
        weights,
    ]
    if train:
        target = chosen.figures.get("device")
        if target is None:
            checks.append(Check("training", "warn", "not run: the device check failed"))
        else:
            present = bool(weights.figures.get("present"))
            checks.append(check_training(spec, torch.device(target), present))
    return checks
