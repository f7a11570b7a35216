"""Workers on several GPUs, checked without a GPU: torch.cuda's answers are stood in for,
and the workers a supervisor would start are recorded instead of started."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch
from typer.testing import CliRunner

from lsearch.errors import UserError
from lsearch.training import devices
from tests.conftest import TINY, TINY_SETS, run_lsearch


@pytest.fixture
def fake_gpus(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[list[torch.device]]:
    """Two stand-in GPUs; the devices `torch.cuda.set_device` was called with; GPU slot
    locks in a folder of the test's own, and a fresh list of held locks."""
    current: list[torch.device] = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "set_device", current.append)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "NVIDIA H200")
    monkeypatch.setattr(
        torch.cuda, "get_device_properties", lambda device=None: SimpleNamespace(uuid="5c3e-01")
    )
    monkeypatch.setenv(devices.GPU_LOCKS_ENV, str(tmp_path / "gpu-locks"))
    monkeypatch.setenv(devices.CPU_LOCKS_ENV, str(tmp_path / "cpu-locks"))
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    held: list[Any] = []
    monkeypatch.setattr(devices, "_HELD", held)
    yield current
    for handle in held:
        handle.close()


@pytest.fixture
def started(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    """The workers `lsearch run` would start: their arguments and environments."""
    from lsearch.search import workers

    records: list[dict[str, Any]] = []

    def record(count: int, args: Any, gpus: Any, storage_url: str, stagger_s: float) -> list:
        for index in range(count):
            env = workers.worker_env(index, gpus, storage_url, count)
            records.append({"args": list(args), "gpus": env.get("CUDA_VISIBLE_DEVICES")})
        return []  # nothing to wait for

    monkeypatch.setattr(workers, "start_workers", record)
    return records


def invoke_run(tmp_path: Path, *args: str) -> Any:
    from lsearch.cli import app

    storage = f"sqlite:///{tmp_path / 'lsearch.db'}"
    return CliRunner().invoke(app, ["run", *TINY, "--storage", storage, "--trials", "1", *args])


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--gpus", "0,1"], ["0", "1"]),
        (["--gpus", "0,0"], ["0", "0"]),  # two workers share GPU 0
        (["--gpus", "0,1", "--workers", "3"], ["0", "1", "0"]),  # --workers wins, round robin
        (["--gpus", "1", "--workers", "2"], ["1", "1"]),
    ],
)
def test_gpus_starts_one_worker_per_listed_gpu_unless_workers_says(
    fake_gpus: list[torch.device],
    started: list[dict[str, Any]],
    tmp_path: Path,
    args: list[str],
    expected: list[str],
) -> None:
    result = invoke_run(tmp_path, *args)
    assert result.exit_code == 0, result.output
    assert [worker["gpus"] for worker in started] == expected
    for worker in started:
        device = worker["args"][worker["args"].index("--device") + 1]
        assert device == "cuda", "each worker trains on the one GPU it sees"
    assert fake_gpus == [], "the supervisor never makes a GPU its current device"


@pytest.mark.parametrize("device", ["cuda:1", "cuda:0", "cuda:free"])
def test_gpus_with_a_specific_cuda_device_is_a_user_error(device: str) -> None:
    """Each worker sees only its own GPU, as cuda:0: cuda:1 would not exist in any of them,
    and cuda:free would claim locks for a GPU --gpus already gave."""
    assert devices.worker_device("cuda", ["0", "1"]) == "cuda"
    with pytest.raises(UserError, match=f"leave out --device {device} or use --device cuda"):
        devices.worker_device(device, ["0", "1"])


def test_gpus_with_cuda_1_fails_before_anything_starts(tmp_path: Path) -> None:
    result = run_lsearch(
        "run", *TINY, "--gpus", "0,1", "--device", "cuda:1", "--trials", "1", cwd=tmp_path
    )
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "--gpus gives each worker its GPU" in lines[0], result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "lsearch.db").exists(), "no storage is touched"


def slot_zero_of_gpu_zero_is_free() -> bool:
    """Whether a worker could claim slot 0 of GPU 0 now (so no one else holds it)."""
    index, handle = devices.claim_gpu(2, os.environ[devices.GPU_LOCKS_ENV])
    handle.close()
    return index == 0


def test_resolving_without_a_claim_only_validates(fake_gpus: list[torch.device]) -> None:
    """What a supervisor does: it never trains, so it takes no GPU slot and opens no
    context on any GPU; mistakes are still caught."""
    saved = torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic
    try:
        torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic = True, False
        unclaimed = devices.resolve_device("cuda:free", claim=False)
        assert unclaimed.type == "cuda" and unclaimed.index is None, "no GPU is picked"
        assert devices.describe_device(unclaimed) == "cuda"
        assert devices.resolve_device("cuda:1", claim=False) == torch.device("cuda", 1)
        assert devices.resolve_device("cuda", claim=False) == torch.device("cuda")
        assert devices.resolve_device("auto", claim=False) == torch.device("cuda")
        assert devices.resolve_device("cpu", claim=False) == torch.device("cpu")
        assert fake_gpus == [] and devices._HELD == []
        assert (torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic) == (
            True,
            False,
        ), "no determinism settings changed"
        assert slot_zero_of_gpu_zero_is_free()
    finally:
        torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic = saved
    with pytest.raises(UserError, match=r"numbered 0\.\.1"):
        devices.resolve_device("cuda:2", claim=False)
    # A worker claims as before: slot 0 of GPU 0, its current device.
    assert devices.resolve_device("cuda:free") == torch.device("cuda", 0)
    assert fake_gpus == [torch.device("cuda", 0)] and len(devices._HELD) == 1
    assert not slot_zero_of_gpu_zero_is_free()


def test_resolving_without_a_claim_still_needs_cuda(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    for name in ("cuda:free", "cuda", "cuda:0"):
        with pytest.raises(UserError, match="no CUDA GPU is available"):
            devices.resolve_device(name, claim=False)


def test_a_supervisor_of_cuda_free_workers_claims_no_gpu(
    fake_gpus: list[torch.device], started: list[dict[str, Any]], tmp_path: Path
) -> None:
    """`run --workers 2 --device cuda:free`: the workers claim their GPUs; the supervisor,
    which only starts and watches them, holds no slot lock and sets no current device."""
    result = invoke_run(tmp_path, "--workers", "2", "--device", "cuda:free")
    assert result.exit_code == 0, result.output
    assert len(started) == 2
    assert all(w["args"][w["args"].index("--device") + 1] == "cuda:free" for w in started)
    assert fake_gpus == [] and devices._HELD == []
    assert slot_zero_of_gpu_zero_is_free(), "a worker can still claim slot 0 of GPU 0"


def test_check_and_load_for_a_process_that_does_not_train_claims_nothing(
    fake_gpus: list[torch.device],
) -> None:
    """The path `compare --workers W` and `evaluate --workers W` take."""
    from lsearch.search.launch import check_and_load
    from lsearch.spec import load_spec

    spec = load_spec("digits", TINY_SETS)
    device, pool, cores = check_and_load(spec, "cuda:free", trains=False)
    assert device.type == "cuda" and cores is None
    assert pool.images.device.type == "cpu"
    assert fake_gpus == [] and devices._HELD == [] and slot_zero_of_gpu_zero_is_free()


@pytest.mark.parametrize(
    ("visible", "device", "expected"),
    [
        ("1", 0, "cuda:0 (NVIDIA H200, physical GPU 1, GPU-5c3e-01)"),
        ("2,3", 1, "cuda:0 (NVIDIA H200, physical GPU 3, GPU-5c3e-01)"),
        (None, 1, "cuda:1 (NVIDIA H200, physical GPU 1, GPU-5c3e-01)"),
        ("GPU-5c3e-01", 0, "cuda:0 (NVIDIA H200, GPU-5c3e-01)"),  # a UUID, no index
    ],
)
def test_a_worker_records_its_physical_gpu(
    fake_gpus: list[torch.device],
    monkeypatch: pytest.MonkeyPatch,
    visible: str | None,
    device: int,
    expected: str,
) -> None:
    """CUDA_VISIBLE_DEVICES renumbers every worker's GPU to cuda:0; the record must still
    tell the workers' GPUs apart."""
    if visible is not None:
        monkeypatch.setenv("CUDA_VISIBLE_DEVICES", visible)
    # The logical index in the expected text is the device's own.
    expected = expected.replace("cuda:0", f"cuda:{device}", 1)
    assert devices.describe_device(torch.device("cuda", device)) == expected


def test_a_gpu_uuid_is_recorded_once_prefixed_and_only_when_known(
    fake_gpus: list[torch.device], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "1")
    cuda0 = torch.device("cuda", 0)
    prefixed = SimpleNamespace(uuid="GPU-5c3e-01")
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda device=None: prefixed)
    assert devices.describe_device(cuda0) == "cuda:0 (NVIDIA H200, physical GPU 1, GPU-5c3e-01)"
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda device=None: object())
    assert devices.describe_device(cuda0) == "cuda:0 (NVIDIA H200, physical GPU 1)"
    assert devices.describe_device(torch.device("cpu")) == "cpu"
