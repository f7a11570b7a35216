"""The CUDA path, tested on the CPU: what a GPU would decide (precision by compute capability),
what it would copy (checkpoint snapshots stay on the device until a write starts; the dataset
is uploaded with a plain copy) and what it would resume (a GPU checkpoint on the CPU). The
capability and device queries are mocked; a `meta` tensor stands for one on a GPU, since it
too cannot be read without an explicit copy, and copying it to the host raises."""

from __future__ import annotations

import copy
import hashlib
import signal
import time
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import pytest
import torch

from lsearch.errors import UserError
from lsearch.search import checkpoints as checkpoint
from lsearch.store.catalog import CHECKPOINT_ATTR
from lsearch.training import data, devices
from lsearch.training.seed_run import resume_seed, snapshot
from tests.test_interrupts import LONG
from tests.test_speed import seed_run, tiny_spec
from tests.test_workers import finish, start_worker

CUDA = torch.device("cuda", 0)


@pytest.fixture
def gpu(monkeypatch: pytest.MonkeyPatch):
    """A mocked GPU of a settable compute capability; `is_bf16_supported` answers as PyTorch
    does, True by emulation on every GPU unless `including_emulation=False`."""
    capability = {"value": (8, 0)}

    def is_bf16_supported(including_emulation: bool = True) -> bool:
        return including_emulation or capability["value"] >= (8, 0)

    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda d=None: capability["value"])
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", is_bf16_supported)
    monkeypatch.delenv(devices.PRECISION_ENV, raising=False)
    devices.autocast_precision.cache_clear()
    yield capability
    devices.autocast_precision.cache_clear()


@pytest.mark.parametrize(
    ("capability", "dtype"),
    [((7, 0), "float16"), ((7, 5), "float16"), ((8, 0), "bfloat16"), ((9, 0), "bfloat16")],
)
def test_bfloat16_only_from_compute_capability_8_float16_with_a_scaler_below(
    gpu: dict, capability: tuple[int, int], dtype: str
) -> None:
    """A V100 (7.0) or T4 (7.5) answers True to `is_bf16_supported()` by emulation, but cuDNN
    has no bfloat16 convolutions there: they get float16 and a gradient scaler."""
    gpu["value"] = capability
    chosen = devices.autocast_precision(CUDA)
    assert chosen.name == dtype
    assert chosen.scales_gradients == (dtype == "float16")
    assert f"{capability[0]}.{capability[1]}" in chosen.reason


def test_precision_is_forced_by_the_study_or_the_environment(
    gpu: dict, monkeypatch: pytest.MonkeyPatch
) -> None:
    gpu["value"] = (9, 0)
    assert devices.autocast_precision(CUDA, "float16").scales_gradients
    assert devices.autocast_precision(CUDA, "float32").dtype is None
    monkeypatch.setenv(devices.PRECISION_ENV, "float16")
    assert devices.requested_precision("auto") == "float16", "the variable wins over the file"
    monkeypatch.setenv(devices.PRECISION_ENV, "half")
    with pytest.raises(UserError, match="LSEARCH_PRECISION"):
        devices.requested_precision("auto")
    gpu["value"] = (7, 5)
    with pytest.raises(UserError, match=r"compute capability 8\.0"):
        devices.autocast_precision(CUDA, "bfloat16")
    with pytest.raises(UserError, match="needs a CUDA GPU"):
        devices.autocast_precision(torch.device("cpu"), "float16")


def test_the_study_s_precision_reaches_the_seed_run(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(devices.PRECISION_ENV, raising=False)
    run = seed_run(tiny_spec(train={"precision": "float32"}))
    assert run.precision.dtype is None and run.scaler is None
    with pytest.raises(UserError, match="needs a CUDA GPU"):
        seed_run(tiny_spec(train={"precision": "float16"}))


def test_the_dataset_goes_to_the_gpu_in_one_plain_copy(monkeypatch: pytest.MonkeyPatch) -> None:
    """Pinned staging is no faster for a one-shot upload and keeps a page-locked block for the
    worker's lifetime (PyTorch's caching host allocator)."""
    copies: list[tuple[Any, dict]] = []

    def pin_memory(self: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        raise AssertionError("the dataset was staged through pinned memory")

    def to(self: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        copies.append((args, kwargs))
        return self

    monkeypatch.setattr(torch.Tensor, "pin_memory", pin_memory)
    monkeypatch.setattr(torch.Tensor, "to", to)
    data._to_device(np.zeros((4, 3), np.uint8), CUDA)
    assert copies == [((CUDA,), {})]


def test_a_snapshot_stays_on_the_device_and_shares_nothing_with_the_live_state() -> None:
    live = {"w": torch.ones(3), "opt": [torch.zeros(2)], "step": 4}
    copy = snapshot(live)
    live["w"].add_(1)
    live["opt"][0].add_(1)
    assert torch.equal(copy["w"], torch.ones(3)) and torch.equal(copy["opt"][0], torch.zeros(2))
    on_gpu = snapshot({"w": torch.empty(3, device="meta")})
    assert on_gpu["w"].device.type == "meta", "no copy to the host on the training thread"


class FakeCheckpoints:
    def __init__(self) -> None:
        self.saved: list[tuple[int, dict[str, Any]]] = []

    def save(self, trial: Any, epoch: int, state: dict[str, Any]) -> None:
        self.saved.append((epoch, state))


def test_a_write_copies_to_the_host_only_when_it_starts(monkeypatch: pytest.MonkeyPatch) -> None:
    """Before: every epoch copied the whole trainable state to the host, synchronously on the
    training thread, even when no write fell due (about 400 MB an epoch for three ResNet-18
    seeds with Adam). Now epochs only hand over device snapshots; the one copy to the host is
    the write's. Device tensors here are `meta`: copying one to the host would raise."""
    host_copies: list[int] = []
    real_to_host = checkpoint.to_host

    def counting_to_host(value: Any) -> Any:
        if isinstance(value, torch.Tensor):
            host_copies.append(value.numel() * value.element_size())
        return real_to_host(value)

    monkeypatch.setattr(checkpoint, "to_host", counting_to_host)
    store = FakeCheckpoints()
    writer = checkpoint.CheckpointWriter(store, trial=None, every_s=3600, written_epoch=0)  # type: ignore[arg-type]
    for epoch in range(1, 6):
        writer.epoch_done(epoch, snapshot({"w": torch.empty(2**20, device="meta")}))
    assert host_copies == [] and store.saved == [], "no write fell due: nothing left the device"
    writer.latest = (5, snapshot({"w": torch.full((3,), 5.0)}))
    writer.flush()  # an interrupt: the last finished epoch goes with the hand-back
    assert host_copies == [12] and [e for e, _ in store.saved] == [5], "one tensor, 12 bytes"
    assert store.saved[0][1]["w"].device.type == "cpu"


def test_the_cifar10_study_checkpoints_by_time() -> None:
    from lsearch.spec import load_spec

    assert load_spec("cifar10-resnet18", []).checkpoint.every_s >= 30


def as_if_saved_on_cuda(state: dict[str, Any], with_device: bool = True) -> dict[str, Any]:
    """A CPU seed state rewritten as a CUDA run would have saved it: a 16-byte generator."""
    moved = {**state, "generator": torch.zeros(16, dtype=torch.uint8), "device": "cuda"}
    if not with_device:  # written before checkpoints recorded their device
        del moved["device"]
    return moved


@pytest.mark.parametrize("with_device", [True, False])
def test_a_gpu_checkpoint_resumes_on_the_cpu_with_a_stream_seeded_from_seed_and_epoch(
    with_device: bool,
) -> None:
    spec = tiny_spec(baseline={"trainable_layers": 2})
    first = seed_run(spec)
    first.train_epoch()
    saved = as_if_saved_on_cuda(first.state_dict(), with_device)
    runs = [seed_run(spec), seed_run(spec)]
    for run in runs:
        # (a copy each: a loaded optimizer keeps the loaded tensors and steps them in place)
        assert run.load_state_dict(copy.deepcopy(saved), epoch=1) is True, "reported as a move"
        expected = torch.Generator().manual_seed(resume_seed(run.seed, 1)).get_state()
        assert torch.equal(run.generator.get_state(), expected)
        for key, value in first.net.trainable_state().items():
            assert torch.equal(run.net.trainable_state()[key], value), "weights carried over"
        run.train_epoch()
    torch.testing.assert_close(runs[0].predict(), runs[1].predict(), rtol=0, atol=0)


def test_a_trial_checkpointed_on_a_gpu_is_resumed_by_a_cpu_worker(tmp_path: Path) -> None:
    """A mixed fleet, or a rerun with --device cpu: the retry resumes, not the worker dies
    (before: `set_state` rejected the CUDA generator's 16-byte state with a RuntimeError)."""
    storage = f"sqlite:///{tmp_path / 'moved.db'}"
    run_until_epoch(tmp_path, storage, trial=0, epoch=1)
    study = optuna.load_study(study_name="digits", storage=storage)
    pointer = study.trials[1].user_attrs[CHECKPOINT_ATTR]
    path = tmp_path / "artifacts" / pointer["artifact_id"]
    state = torch.load(path, weights_only=True)
    state["seeds"] = [as_if_saved_on_cuda(seed) for seed in state["seeds"]]
    torch.save(state, path)
    # As the GPU worker would have pointed at it: with the new file's checksum.
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    retry_id = study.trials[1]._trial_id
    study._storage.set_trial_user_attr(retry_id, CHECKPOINT_ATTR, {**pointer, "sha256": digest})

    # The resumed trial is stopped again once it has trained on past the checkpoint.
    run_until_epoch(tmp_path, storage, trial=1, epoch=pointer["epoch"] + 1, device="cpu")
    study = optuna.load_study(study_name="digits", storage=storage)
    moved, retry = study.trials[1], study.trials[2]
    assert moved.user_attrs["resumed_on_other_device"] == "cuda -> cpu"
    assert moved.user_attrs["resumed_from_epoch"] == pointer["epoch"]
    assert "checkpoint_error" not in moved.user_attrs
    assert retry.user_attrs[CHECKPOINT_ATTR]["epoch"] > pointer["epoch"], "it trained on"


def run_until_epoch(
    cwd: Path, storage: str, *, trial: int, epoch: int, device: str = "auto"
) -> None:
    """Run a worker on a long trial until trial number `trial` has checkpointed `epoch`, then
    stop it with SIGTERM (it hands the trial back). Waiting for the epoch rather than a fixed
    --timeout: on a loaded machine the first epoch can take longer than any fixed time."""
    worker = start_worker(
        "--trials", "1", "--storage", storage, *LONG, "--set", "space.epochs=3000",
        "--device", device, cwd=cwd,
    )  # fmt: skip
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and worker.poll() is None:
        try:
            trials = optuna.load_study(study_name="digits", storage=storage).trials
        except KeyError:  # the study is not created yet
            trials = []
        pointer = trials[trial].user_attrs.get(CHECKPOINT_ATTR) if len(trials) > trial else None
        if pointer and pointer["epoch"] >= epoch:
            break
        time.sleep(0.1)
    worker.send_signal(signal.SIGTERM)
    code, stderr = finish(worker, timeout=120)
    assert code == 143 and "Traceback" not in stderr, stderr
