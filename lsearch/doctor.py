"""`lsearch doctor`: is this machine ready for a long search? One check per question, each
with a one-line verdict (ok, warn or fail) and its figures.

The checks read; they never write. Nothing is created: no database (a SQLite file that is
not there is only looked for, an existing one is probed in a transaction that is rolled
back, as is a PostgreSQL database), no study, no data or weights download (the training
check trains on synthetic data, with random weights where the study's are not on disk), no
file in the current folder.
"""

from __future__ import annotations

import os
import socket
import sqlite3
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlparse

import torch

from lsearch.errors import UserError
from lsearch.spec import StudySpec

STATUSES = ("ok", "warn", "fail")
CONNECT_TIMEOUT_S = 5
PROBE_PREFIX = "lsearch_doctor_probe_"


@dataclass
class Check:
    """One check's verdict: `status` is ok, warn or fail; `detail` is one line; `figures`
    are the numbers and facts behind it (for --json).

    >>> Check("data", "ok", "digits ships with scikit-learn").to_json()
    {'name': 'data', 'status': 'ok', 'detail': 'digits ships with scikit-learn'}
    """

    name: str
    status: str
    detail: str
    figures: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.status not in STATUSES:
            raise ValueError(f"status {self.status!r} is not one of {STATUSES}")

    def to_json(self) -> dict[str, Any]:
        return {**self.figures, "name": self.name, "status": self.status, "detail": self.detail}


def first_line(exc: BaseException, secrets: tuple[str, ...] = ()) -> str:
    """The exception's class and the first line of its message, with each secret replaced
    by *** (drivers sometimes echo the connection string).

    >>> first_line(ValueError("bad password s3cret\\nmore"), ("s3cret",))
    'ValueError: bad password ***'
    """
    lines = str(exc).strip().splitlines()
    text = lines[0].strip() if lines else ""
    for secret in secrets:
        if secret:
            text = text.replace(secret, "***")
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


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


# Torch, devices, precision.


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
        "torch_threads": torch.get_num_threads(),
    }
    base = f"{cores} cores usable, torch uses {torch.get_num_threads()} threads"
    found, problem = _precision(torch.device("cpu"), precision)
    if found is None:
        figures.update(precision=None, precision_reason=problem)
        return Check("cpu", "fail" if trains_here else "ok", f"{base}; {problem}", figures)
    figures.update(precision=found.name, precision_reason=found.reason)
    return Check("cpu", "ok", f"{base}; {found.name} ({found.reason})", figures)


# Storage.


def _secrets(url: str) -> tuple[str, ...]:
    from sqlalchemy.engine import make_url

    try:
        password = make_url(url).password
    except Exception:
        return ()
    if not password:
        return ()
    password = str(password)
    return (password, quote(password, safe=""))


def _check_sqlite(path: Path, shown: str) -> Check:
    figures: dict[str, Any] = {"url": shown, "backend": "sqlite", "path": str(path)}
    if not path.exists():
        folder = path.parent
        figures.update(exists=False)
        if not folder.is_dir():
            detail = f"{shown}: folder {folder} does not exist; create it first"
            return Check("storage", "fail", detail, figures | {"writable": False})
        writable = os.access(folder, os.W_OK | os.X_OK)
        figures.update(writable=writable)
        if not writable:
            detail = f"{shown}: not created yet, and folder {folder} is not writable"
            return Check("storage", "fail", detail, figures)
        detail = f"{shown}: not created yet: lsearch run will create it (folder writable)"
        return Check("storage", "ok", detail, figures)
    figures.update(exists=True)
    if not path.is_file():
        return Check("storage", "fail", f"{shown}: {path} is not a file", figures)
    probe = PROBE_PREFIX + uuid.uuid4().hex[:8]
    # mode=rw opens an existing file and never creates one; the probe table is rolled back.
    uri = f"file:{quote(str(path.resolve()))}?mode=rw"
    try:
        connection = sqlite3.connect(uri, uri=True, timeout=CONNECT_TIMEOUT_S, isolation_level=None)
    except sqlite3.Error as exc:
        return Check("storage", "fail", f"{shown}: cannot open ({first_line(exc)})", figures)
    try:
        has_optuna = connection.execute(
            "SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name = 'studies'"
        ).fetchone()[0]
        studies = (
            connection.execute("SELECT count(*) FROM studies").fetchone()[0] if has_optuna else 0
        )
        connection.execute("BEGIN")
        try:
            connection.execute(f'CREATE TABLE "{probe}" (x INTEGER)')
        finally:
            connection.execute("ROLLBACK")
    except sqlite3.Error as exc:
        figures.update(writable=False)
        return Check("storage", "fail", f"{shown}: not writable ({first_line(exc)})", figures)
    finally:
        connection.close()
    figures.update(writable=True, studies=studies)
    held = f"holds {studies} studies" if has_optuna else "no Optuna tables yet"
    return Check("storage", "ok", f"{shown}: exists and writable ({held})", figures)


def _check_database(url: str, shown: str, backend: str) -> Check:
    import sqlalchemy
    from sqlalchemy.pool import NullPool

    figures: dict[str, Any] = {"url": shown, "backend": backend}
    secrets = _secrets(url)
    kwargs: dict[str, Any] = {"poolclass": NullPool}
    if backend == "postgresql":
        kwargs["connect_args"] = {"connect_timeout": CONNECT_TIMEOUT_S}
    probe = PROBE_PREFIX + uuid.uuid4().hex[:8]
    engine = None
    stage = "cannot connect"
    try:
        engine = sqlalchemy.create_engine(url, **kwargs)
        with engine.connect() as connection:
            stage = "reachable but not writable"
            figures.update(exists=True)
            has_optuna = sqlalchemy.inspect(connection).has_table("studies")
            connection.rollback()  # end the inspection's implicit transaction
            transaction = connection.begin()
            try:
                connection.execute(sqlalchemy.text(f'CREATE TABLE "{probe}" (x integer)'))
            finally:
                transaction.rollback()
    except ModuleNotFoundError as exc:
        detail = f"{shown}: driver not installed ({exc.name}); pip install it"
        return Check("storage", "fail", detail, figures)
    except Exception as exc:
        original = getattr(exc, "orig", None) or exc
        figures.update(writable=False)
        detail = f"{shown}: {stage} ({first_line(original, secrets)})"
        return Check("storage", "fail", detail, figures)
    finally:
        if engine is not None:
            engine.dispose()
    figures.update(writable=True)
    held = (
        "holds Optuna's tables" if has_optuna else "empty: lsearch run will create Optuna's tables"
    )
    return Check("storage", "ok", f"{shown}: reachable and writable ({held})", figures)


def _check_grpc(url: str, shown: str) -> Check:
    figures: dict[str, Any] = {"url": shown, "backend": "grpc"}
    host, _, port = url.removeprefix("grpc://").rstrip("/").rpartition(":")
    if not host or not port.isdigit():
        return Check("storage", "fail", f"{shown}: write a proxy address as grpc://host:port")
    try:
        with socket.create_connection((host, int(port)), timeout=CONNECT_TIMEOUT_S):
            pass
    except OSError as exc:
        detail = f"{shown}: proxy not reachable ({first_line(exc)}); start `lsearch proxy`"
        return Check("storage", "fail", detail, figures)
    detail = f"{shown}: proxy port reachable; writes not checked (the proxy's database)"
    return Check("storage", "ok", detail, figures)


def check_storage(url: str) -> Check:
    """Whether the storage is reachable and writable, without creating anything: a SQLite
    file that is not there is fine if its folder is writable; an existing one, or a
    PostgreSQL database, gets a probe table in a transaction that is rolled back; a
    grpc:// proxy gets a TCP connection. The URL is shown with its password masked.

    >>> check_storage("sqlite:////no-such-folder/x.db").detail
    'sqlite:////no-such-folder/x.db: folder /no-such-folder does not exist; create it first'
    """
    from sqlalchemy.engine import make_url

    from lsearch.store.storage import mask_url, sqlite_path

    shown = mask_url(url)
    if url.startswith("grpc://"):
        return _check_grpc(url, shown)
    try:
        parsed = make_url(url)
    except Exception:
        return Check("storage", "fail", f"{shown}: not a storage URL", {"url": shown})
    backend = parsed.get_backend_name()
    if backend == "sqlite":
        path = sqlite_path(parsed)
        if path is None:
            return Check(
                "storage", "warn", f"{shown}: in memory, nothing is kept",
                {"url": shown, "backend": backend},
            )  # fmt: skip
        return _check_sqlite(path, shown)
    return _check_database(url, shown, backend)


# Data and weights.


def check_data(spec: StudySpec) -> Check:
    """Whether the study's dataset is on disk (nothing is downloaded).

    >>> from lsearch.spec import load_spec
    >>> check_data(load_spec("digits")).detail
    'digits ships with scikit-learn'
    """
    from lsearch.training.data import CIFAR10_FOLDER, CIFAR10_TEST_BATCH, CIFAR10_TRAIN_BATCHES

    dataset = spec.data.dataset
    if dataset == "digits":
        return Check("data", "ok", "digits ships with scikit-learn", {"dataset": dataset})
    folder = Path(spec.data.root) / CIFAR10_FOLDER
    needed = (*CIFAR10_TRAIN_BATCHES, CIFAR10_TEST_BATCH)
    missing = [name for name in needed if not (folder / name).is_file()]
    figures = {"dataset": dataset, "folder": str(folder), "present": not missing}
    figures["missing"] = missing
    if not missing:
        return Check("data", "ok", f"{dataset}: all {len(needed)} batches in {folder}", figures)
    what = "missing" if len(missing) == len(needed) else f"incomplete (no {', '.join(missing)})"
    get = f"or extract cifar-10-python.tar.gz under {spec.data.root}"
    if spec.data.download:
        detail = (
            f"{dataset}: {folder} {what}; lsearch run downloads it there on its first run where "
            f"the network allows (data.download = true), {get}"
        )
        return Check("data", "warn", detail, figures)
    detail = f"{dataset}: {folder} {what} and data.download = false: lsearch run will stop; {get}"
    return Check("data", "fail", detail, figures)


def imagenet_weights_file() -> Path:
    """Where torchvision caches ResNet-18's ImageNet weights (torch hub's checkpoints)."""
    from torchvision.models import ResNet18_Weights

    name = os.path.basename(urlparse(ResNet18_Weights.IMAGENET1K_V1.url).path)
    return Path(torch.hub.get_dir()) / "checkpoints" / name


def check_weights(spec: StudySpec) -> Check:
    """Whether the study's pretrained weights are on disk (nothing is downloaded):
    figures["present"] says whether training may use them.

    >>> from lsearch.spec import load_spec
    >>> check_weights(load_spec("digits")).detail
    'n/a: model.weights = none (trained from scratch)'
    """
    weights = spec.model.weights
    figures: dict[str, Any] = {"weights": weights}
    if weights == "none":
        detail = "n/a: model.weights = none (trained from scratch)"
        return Check("weights", "ok", detail, figures | {"present": True})
    if weights == "imagenet":
        if spec.model.name != "resnet18":
            detail = f"model.weights = 'imagenet' exists for resnet18 only, not {spec.model.name}"
            return Check("weights", "fail", detail, figures | {"present": False})
        path = imagenet_weights_file()
        figures.update(file=str(path))
        if path.is_file():
            detail = f"imagenet: torchvision's ResNet-18 weights cached at {path}"
            return Check("weights", "ok", detail, figures | {"present": True})
        detail = (
            f"imagenet: not in torch's cache ({path}); downloaded on first use where the "
            "network allows, or set model.weights to a local state-dict file"
        )
        return Check("weights", "warn", detail, figures | {"present": False})
    path = Path(weights)
    figures.update(file=str(path))
    if path.is_file():
        size = path.stat().st_size / 2**20
        return Check("weights", "ok", f"{path} ({size:.1f} MB)", figures | {"present": True})
    detail = f"model.weights: no file at {path}; give a state-dict file, 'imagenet' or 'none'"
    return Check("weights", "fail", detail, figures | {"present": False})


# Training.


def check_training(spec: StudySpec, device: torch.device, weights_present: bool = True) -> Check:
    """Train one synthetic epoch of the study's baseline configuration (after a warm-up
    epoch) as a trial does: its speed, and the memory a whole trial needs. Weights that are
    not on disk are replaced by random ones (same speed), so nothing is downloaded."""
    from lsearch.bench import speed as benchmark
    from lsearch.training.devices import set_determinism

    notes = ""
    if spec.model.weights != "none" and not weights_present:
        spec = spec.model_copy(update={"model": spec.model.model_copy(update={"weights": "none"})})
        notes = "; random weights (the study's are not here; the speed is the same)"
    try:
        set_determinism(device, spec.train.deterministic)
        result = benchmark.measure_speed(spec, device, epochs=1, synthetic=True, baseline=False)
    except torch.cuda.OutOfMemoryError:
        detail = f"out of memory on {device}: lower train.batch_size or data.image_size"
        return Check("training", "fail", detail)
    except Exception as exc:
        return Check("training", "fail", f"one synthetic epoch failed ({first_line(exc)})")
    speed = result.lsearch
    # The figure to size workers by (bench.TrialMemory), not one seed's peak.
    per_worker = result.trial_memory.per_worker_mb if result.trial_memory else speed.peak_memory_mb
    figures: dict[str, Any] = {
        "train_images_per_s": speed.train_images_per_s,
        "eval_images_per_s": speed.eval_images_per_s,
        "seconds_per_epoch": speed.seconds_per_epoch,
        "peak_memory_mb": speed.peak_memory_mb,
        "per_worker_mb": per_worker,
        "random_weights": bool(notes),
        "bench": result.to_json(len(spec.seeds), benchmark.mean_epochs(spec)),
    }
    detail = (
        f"{result.model} at {result.image_size} px on {result.device}: "
        f"{speed.train_images_per_s:,.0f} train img/s, {speed.eval_images_per_s:,.0f} eval img/s, "
        f"{speed.seconds_per_epoch:.3f} s/epoch; a whole trial ({len(spec.seeds)} seeds) "
        f"needs {per_worker:,.0f} MB per worker{notes}"
    )
    return Check("training", "ok", detail, figures)


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


def passed(checks: list[Check]) -> bool:
    """True when no check failed (warnings pass).

    >>> passed([Check("a", "ok", ""), Check("b", "warn", "")])
    True
    """
    return all(check.status != "fail" for check in checks)
