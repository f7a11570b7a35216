"""The machine: torch and its CUDA and cuDNN, the device lsearch would train on, each CUDA
device (memory and the precision lsearch trains in there), and the CPU."""

from __future__ import annotations

import os
import platform
from pathlib import Path
from typing import Any

import torch

from lsearch.checks.check import Check, first_line
from lsearch.errors import UserError


def parse_device(name: str) -> str:
    """Check a --device name (auto, cpu, cuda, cuda:N); a bad one is a user error. Whether
    the device is there is a check of its own (`check_device`), not an error.

    >>> parse_device("cuda:1")
    'cuda:1'
    >>> parse_device("tpu")
    Traceback (most recent call last):
    ...
    lsearch.errors.UserError: --device 'tpu' is not a device; use auto, cpu, cuda or cuda:N
    """
    problem = UserError(f"--device {name!r} is not a device; use auto, cpu, cuda or cuda:N")
    if name == "auto":
        return name
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError):
        raise problem from None
    if device.type not in ("cpu", "cuda"):
        raise problem
    return name


def _cudnn_version() -> str | None:
    try:
        version = torch.backends.cudnn.version()
    except Exception:
        return None
    if not version:
        return None
    # cuDNN 9 encodes major * 10000 + minor * 100 + patch; cuDNN 8 major * 1000 + ...
    major, rest = (version // 10000, version % 10000) if version >= 90000 else divmod(version, 1000)
    return f"{major}.{rest // 100}.{rest % 100}"


def check_torch() -> Check:
    """torch's version and the CUDA and cuDNN it was built with.

    >>> check_torch().status
    'ok'
    """
    cuda, cudnn = torch.version.cuda, _cudnn_version()
    parts = [f"torch {torch.__version__}"]
    parts.append(f"built for CUDA {cuda}" if cuda else "a CPU-only build (no CUDA)")
    if cudnn:
        parts.append(f"cuDNN {cudnn}")
    figures = {"torch": torch.__version__, "cuda": cuda, "cudnn": cudnn}
    return Check("torch", "ok", ", ".join(parts), figures)


def _precision(device: torch.device, precision: str) -> tuple[Any, str | None]:
    """lsearch's Precision on `device` for the study's train.precision, or the UserError's
    message where it is impossible there."""
    from lsearch.training.devices import autocast_precision, requested_precision

    try:
        return autocast_precision(device, requested_precision(precision)), None
    except UserError as exc:
        return None, str(exc)


def check_device(name: str) -> Check:
    """The device lsearch would train on for --device `name`; one that is not there is a
    failed check (`auto` falls back to the CPU; `check_cuda` warns about that).

    >>> check_device("cpu").figures["device"]
    'cpu'
    """
    from lsearch.training.devices import describe_device, resolve_device

    if name == "auto" and not torch.cuda.is_available():
        detail = "training on cpu (--device auto, and no CUDA GPU here)"
        return Check("device", "ok", detail, {"device": "cpu"})
    try:
        device = resolve_device(name)
    except UserError as exc:
        return Check("device", "fail", str(exc), {"device": None})
    return Check("device", "ok", f"training on {describe_device(device)}", {"device": str(device)})


def check_cuda(requested: str = "auto", precision: str = "auto") -> list[Check]:
    """One check per CUDA device: name, compute capability, total and free memory, and the
    autocast dtype lsearch trains under there, and why. Without CUDA, one check saying so:
    a warning, or a failure where --device asked for CUDA (`requested`).

    >>> import unittest.mock
    >>> with unittest.mock.patch("torch.cuda.is_available", return_value=False):
    ...     [(c.name, c.status) for c in check_cuda("cuda")]
    [('cuda', 'fail')]
    """
    if not torch.cuda.is_available():
        asked = requested.startswith("cuda")
        detail = "no CUDA device (torch.cuda.is_available() is False)"
        detail += f": --device {requested} cannot run here" if asked else ": lsearch uses the CPU"
        return [Check("cuda", "fail" if asked else "warn", detail, {"available": False})]
    checks = []
    for index in range(torch.cuda.device_count()):
        device = torch.device("cuda", index)
        name = f"cuda:{index}"
        try:
            label = torch.cuda.get_device_name(index)
            major, minor = torch.cuda.get_device_capability(index)
            free, total = torch.cuda.mem_get_info(index)
        except Exception as exc:  # a device in a bad state
            checks.append(Check(name, "fail", f"cannot query the device ({first_line(exc)})"))
            continue
        figures: dict[str, Any] = {
            "index": index,
            "gpu": label,
            "capability": f"{major}.{minor}",
            "total_memory_mb": total / 2**20,
            "free_memory_mb": free / 2**20,
        }
        memory = f"{total / 2**30:.1f} GiB, {free / 2**30:.1f} GiB free"
        found, problem = _precision(device, precision)
        if found is None:
            figures.update(precision=None, precision_reason=problem)
            detail = f"{label}, capability {major}.{minor}, {memory}; {problem}"
            checks.append(Check(name, "fail", detail, figures))
            continue
        figures.update(precision=found.name, precision_reason=found.reason)
        detail = f"{label}, capability {major}.{minor}, {memory}; {found.name} ({found.reason})"
        checks.append(Check(name, "ok", detail, figures))
    return checks


def cpu_model() -> str:
    """The CPU's model name as `lscpu` gives it (Linux's /proc/cpuinfo), else what Python's
    platform module knows: measured timings name the CPU they were measured on.

    >>> isinstance(cpu_model(), str)
    True
    """
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def check_cpu(trains_here: bool = True, precision: str = "auto") -> Check:
    """The CPU: cores this process may use, torch's threads, and its precision (float32).
    An impossible train.precision fails only where the CPU is the device that trains.

    >>> check_cpu().figures["precision"]
    'float32'
    """
    cores = len(os.sched_getaffinity(0))
    figures: dict[str, Any] = {
        "cores": cores,
        "machine_cores": os.cpu_count(),
        "model": cpu_model(),
        "torch_threads": torch.get_num_threads(),
    }
    base = f"{cores} cores usable, torch uses {torch.get_num_threads()} threads"
    found, problem = _precision(torch.device("cpu"), precision)
    if found is None:
        figures.update(precision=None, precision_reason=problem)
        return Check("cpu", "fail" if trains_here else "ok", f"{base}; {problem}", figures)
    figures.update(precision=found.name, precision_reason=found.reason)
    return Check("cpu", "ok", f"{base}; {found.name} ({found.reason})", figures)
