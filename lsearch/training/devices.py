"""Device policy: which device a worker trains on, how GPUs and CPU cores are shared among
the workers of one machine, and what the device can do (checked once per process).

- `--device` names are parsed and checked here (`resolve_device`); the CUDA device a worker
  gets becomes its current device (`torch.cuda.set_device`), so that everything that uses
  "the current GPU" (pinned-memory copies, capability checks, cuBLAS handles) works on it.
- `cuda:free` and `--gpus` share GPUs through lock files (`claim_gpu`).
- CPU cores: every worker on one machine holds a lock file in a shared folder
  (`CoreShare`); before each trial it counts the live holders and takes its share of the
  cores for torch's thread pool. Two processes that each take every core train several
  times slower together than apart; `--threads N` fixes the count instead.
"""

from __future__ import annotations

import fcntl
import functools
import os
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import torch

from lsearch.errors import UserError

GPU_LOCKS_ENV = "LSEARCH_GPU_LOCKS"
DEFAULT_GPU_LOCKS = "/tmp/lsearch-gpu-locks"
CPU_LOCKS_ENV = "LSEARCH_CPU_LOCKS"
DEFAULT_CPU_LOCKS = "/tmp/lsearch-cpu-locks"

# Lock files this process holds (claimed GPU slots, its CPU slot); open for its lifetime.
_HELD: list[IO[str]] = []


def parse_gpus(text: str | None) -> list[str]:
    """`0,1,2,3` -> ["0", "1", "2", "3"] (CUDA device indices or UUIDs)."""
    if not text:
        return []
    gpus = [part.strip() for part in text.split(",")]
    if not all(gpus):
        raise UserError(f"--gpus {text!r}: give a comma-separated list such as 0,1,2,3")
    return gpus


def worker_device(device: str, gpus: list[str]) -> str:
    """The --device of workers started with --gpus: CUDA (each sees only its GPU). An
    explicit --device cpu beside --gpus contradicts it, and so does a particular GPU
    (cuda:N, cuda:free): user errors, raised before anything starts."""
    if not gpus:
        return device
    if device == "cpu":
        raise UserError("--gpus and --device cpu contradict each other; leave out one of them")
    if device not in ("auto", "cuda"):
        # CUDA_VISIBLE_DEVICES shows each worker only its own GPU, as cuda:0: cuda:1 does not
        # exist in any worker, and cuda:free would share out GPUs --gpus already gave.
        raise UserError(
            f"--gpus gives each worker its GPU; leave out --device {device} or use --device cuda"
        )
    return "cuda"


def _try_lock(path: Path) -> IO[str] | None:
    handle = open(path, "w")  # noqa: SIM115 - held open as the lock
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        return None
    return handle


def claim_gpu(count: int, lock_dir: str | Path) -> tuple[int, IO[str]]:
    """Claim the least-shared of `count` GPUs through lock files in a folder every worker on
    the machine sees: workers fill slot 0 of every GPU, then slot 1, and so on. The lock
    lives as long as the returned file is open, and dies with the process.

    Needed where workers cannot be told their GPU, such as `docker compose --scale`, which
    gives every replica the same device reservation."""
    folder = Path(lock_dir)
    folder.mkdir(parents=True, exist_ok=True)
    slot = 0
    while True:
        for index in range(count):
            handle = _try_lock(folder / f"cuda-{index}-slot-{slot}.lock")
            if handle is not None:
                return index, handle
        slot += 1


def resolve_device(name: str, *, claim: bool = True) -> torch.device:
    """`auto` takes CUDA when present; asking for CUDA where there is none is a user error.
    `cuda:free` claims the least-shared GPU of this machine. A CUDA device becomes this
    process's current device.

    `claim=False` (a process that only starts and watches workers) checks the name the
    same way but takes no GPU: no slot lock, no current device, no cuDNN settings. `cuda`
    and `cuda:free` then give `cuda` without an index, as no GPU is this process's."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda:free":
        if not torch.cuda.is_available():
            raise UserError("--device cuda:free: no CUDA GPU is available here; use cpu or auto")
        if not claim:
            return torch.device("cuda")
        lock_dir = os.environ.get(GPU_LOCKS_ENV, DEFAULT_GPU_LOCKS)
        index, handle = claim_gpu(torch.cuda.device_count(), lock_dir)
        _HELD.append(handle)
        name = f"cuda:{index}"
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UserError(
            f"--device {name!r} is not a device; use auto, cpu, cuda, cuda:N or cuda:free"
        ) from None
    if device.type == "cpu":
        return device
    if device.type != "cuda":
        raise UserError(f"--device {name!r} is not supported; use auto, cpu, cuda or cuda:N")
    if not torch.cuda.is_available():
        raise UserError(f"--device {name}: no CUDA GPU is available here; use --device cpu or auto")
    count = torch.cuda.device_count()
    if device.index is not None and device.index >= count:
        raise UserError(
            f"--device {name}: this machine has {count} CUDA device(s), numbered 0..{count - 1}"
        )
    if not claim:
        # set_device would open a CUDA context on that GPU, taking its memory for nothing.
        return device
    device = torch.device("cuda", device.index if device.index is not None else 0)
    torch.cuda.set_device(device)
    set_determinism(device, True)
    return device


def set_determinism(device: torch.device, deterministic: bool) -> None:
    """On CUDA, deterministic cuDNN convolutions and cuBLAS workspaces, so that a rerun can
    repeat its numbers (`train.deterministic`, the default); or cuDNN autotuning, which picks
    the fastest kernels for each shape and gives up repeatable reruns. Whether reruns are
    bit-exact on a given GPU is measured by `scripts/gpu_check.sh`, not promised here. The
    CPU's kernels are deterministic either way."""
    if device.type != "cuda":
        return
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.backends.cudnn.benchmark = not deterministic
    torch.backends.cudnn.deterministic = deterministic


PRECISION_ENV = "LSEARCH_PRECISION"
PRECISIONS = ("auto", "bfloat16", "float16", "float32")
_DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": None}
# cuDNN has bfloat16 convolutions from compute capability 8.0 (Ampere) on.
BF16_CAPABILITY = (8, 0)


@dataclass(frozen=True)
class Precision:
    """The mixed-precision dtype a device trains under (None: plain float32), and why."""

    dtype: torch.dtype | None
    reason: str

    @property
    def name(self) -> str:
        return "float32" if self.dtype is None else str(self.dtype).removeprefix("torch.")

    @property
    def scales_gradients(self) -> bool:
        """float16 needs a gradient scaler (its range underflows small gradients)."""
        return self.dtype == torch.float16


def requested_precision(precision: str = "auto") -> str:
    """`train.precision`, unless $LSEARCH_PRECISION overrides it (the GPU check uses the
    variable to run the float16 path on a GPU that has bfloat16)."""
    chosen = os.environ.get(PRECISION_ENV) or precision
    if chosen not in PRECISIONS:
        raise UserError(
            f"precision {chosen!r} (train.precision or ${PRECISION_ENV}) is not one of "
            f"{', '.join(PRECISIONS)}"
        )
    return chosen


@functools.cache
def autocast_precision(device: torch.device, precision: str = "auto") -> Precision:
    """The mixed-precision dtype on `device` (checked once per process and precision).

    `auto`: bfloat16 on GPUs of compute capability 8.0 and above, float16 with a gradient
    scaler below (a T4 or V100: cuDNN has no bfloat16 convolutions there, although
    `torch.cuda.is_bf16_supported()` answers True by emulation); float32 on the CPU.
    `bfloat16`, `float16` or `float32` force one; bfloat16 where the GPU lacks it and any
    mixed precision on the CPU are user errors.

    >>> autocast_precision(torch.device("cpu")).name
    'float32'
    """
    if precision == "float32":
        return Precision(None, "float32 asked for (train.precision)")
    if device.type != "cuda":
        if precision != "auto":
            raise UserError(
                f"precision {precision} needs a CUDA GPU; on the CPU lsearch trains in float32 "
                '(set train.precision = "auto")'
            )
        return Precision(None, "the CPU trains in float32")
    major, minor = torch.cuda.get_device_capability(device)
    native_bf16 = (major, minor) >= BF16_CAPABILITY and torch.cuda.is_bf16_supported(
        including_emulation=False
    )
    if precision == "bfloat16" and not native_bf16:
        raise UserError(
            f"precision bfloat16 needs compute capability 8.0 or above; {device} has "
            f'{major}.{minor}: use train.precision = "float16" or "auto"'
        )
    if precision in ("bfloat16", "float16"):
        return Precision(_DTYPES[precision], f"{precision} asked for (train.precision)")
    if native_bf16:
        return Precision(torch.bfloat16, f"compute capability {major}.{minor} has bfloat16")
    return Precision(
        torch.float16,
        f"compute capability {major}.{minor} has no bfloat16 convolutions: float16 with a "
        "gradient scaler",
    )


def autocast_dtype(device: torch.device, precision: str = "auto") -> torch.dtype | None:
    """The dtype of `autocast_precision` (None: no autocast)."""
    return autocast_precision(device, precision).dtype


def describe_device(device: torch.device) -> str:
    """The device as recorded with a study or trial: `cpu`, or the CUDA device with its
    name, its physical index and its UUID, e.g. `cuda:0 (NVIDIA H200, physical GPU 1,
    GPU-5c3e...)`. A worker given its GPU through CUDA_VISIBLE_DEVICES sees it as cuda:0
    whichever GPU it is, so the logical index alone cannot tell the workers' GPUs apart.
    `cuda` without an index (a process that trains on no GPU of its own) stays `cuda`."""
    if device.type != "cuda":
        return "cpu"
    if device.index is None:
        return "cuda"
    parts = [torch.cuda.get_device_name(device)]
    physical = str(device.index)
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        entries = [entry.strip() for entry in visible.split(",")]
        physical = entries[device.index] if device.index < len(entries) else ""
    # An entry may be a UUID (GPU-..., MIG-...) rather than an index; the UUID shows it.
    if physical.isdigit():
        parts.append(f"physical GPU {physical}")
    uuid = getattr(torch.cuda.get_device_properties(device), "uuid", None)
    text = str(uuid) if uuid is not None else ""
    if text and not text.startswith(("GPU-", "MIG-")):
        text = f"GPU-{text}"
    if text:
        parts.append(text)
    elif physical and not physical.isdigit():
        parts.append(physical)
    return f"{device} ({', '.join(parts)})"


class CoreShare:
    """This worker's share of the machine's CPU cores, among the lsearch workers running on
    it. Each worker holds one slot lock file in `lock_dir`; `refresh` counts the slots held
    (by this worker and the others alive) and sets torch's thread count to the cores divided
    by them, at least 1. With `threads`, that count is used as given."""

    def __init__(
        self, threads: int | None = None, lock_dir: str | Path | None = None, cores: int = 0
    ) -> None:
        self.threads = threads
        self.cores = cores or len(os.sched_getaffinity(0))
        self.folder = Path(lock_dir or os.environ.get(CPU_LOCKS_ENV, DEFAULT_CPU_LOCKS))
        self.handle: IO[str] | None = None
        self.slot = -1
        if threads is None:
            self.folder.mkdir(parents=True, exist_ok=True)
            self.slot = 0
            while self.handle is None:
                self.handle = _try_lock(self.folder / f"cpu-slot-{self.slot}.lock")
                self.slot += 0 if self.handle is not None else 1

    def workers(self) -> int:
        """How many workers hold a slot now, this one included."""
        held = 1
        for path in self.folder.glob("cpu-slot-*.lock"):
            if path.name == f"cpu-slot-{self.slot}.lock":
                continue
            probe = _try_lock(path)
            if probe is None:
                held += 1
            else:
                probe.close()
        return held

    def share(self) -> int:
        if self.threads is not None:
            return self.threads
        return max(1, self.cores // self.workers())

    def refresh(self) -> int:
        """Set torch's thread count to this worker's share now; the count set."""
        count = self.share()
        if torch.get_num_threads() != count:
            torch.set_num_threads(count)
        return count

    def close(self) -> None:
        if self.handle is not None:
            self.handle.close()
            self.handle = None
