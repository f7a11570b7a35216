"""The GPU check: what a lent GPU runs first (`bash scripts/gpu_check.sh OUT.json`).

Every step runs the real lsearch (the CLI in subprocesses, bench in this process) on synthetic
data or digits images with random weights, so nothing downloadable is needed, and writes its
figures into one JSON file, rewritten after each step (a check cut short still leaves what it
measured). On a GPU it measures the CUDA path at 32, 64 and 224 px; on a CPU (and in CI) it
runs the same steps at 32 px with tiny sizes and reports the CUDA-only steps as not run, so the
script cannot rot.

Steps: doctor; bench at each size with and without train.deterministic (and the usual way
at the largest), and three seeds together against one at a time; a short ResNet-18 search on
digits images; two reruns compared for bit-exactness (in both determinism modes); an interrupt
and its resume, compared with an uninterrupted run; a GPU checkpoint resumed on the CPU and a
CPU one on the GPU; a comparison whose seeds leave their group one by one; float16 with the
gradient scaler (forced by LSEARCH_PRECISION on a GPU that has bfloat16); two workers on one
GPU.
"""

from __future__ import annotations

import json
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch

from lsearch.checks import machine as machine_check

CUDA = torch.cuda.is_available()
# One budget for the whole check: a step that cannot finish before it is not started.
DEADLINE_S = float(os.environ.get("LSEARCH_GPU_CHECK_LIMIT_S", "450" if CUDA else "170"))
STARTED = time.monotonic()
# Only the steps whose names hold this text (a rerun of what failed, within a short lease).
ONLY = os.environ.get("LSEARCH_GPU_CHECK_ONLY", "")

# Sizes per mode. On the CPU every step is tiny: it shows the steps run, not the speed.
if CUDA:
    BENCH_SIZES = (32, 64, 224)
    SEARCH = ["--set", "data.image_size=224", "--set", "space.epochs=3", "--trials", "2"]
    # Long enough for Ctrl-C to land inside the trial: on an H200 it landed 8 to 20 epochs
    # after the check saw the first checkpoint.
    INTERRUPT = ["--set", "data.image_size=64", "--set", "space.epochs=100", "--trials", "1"]
    SMALL = ["--set", "data.image_size=32", "--set", "space.epochs=3"]
    BENCH_SETS = {}
    BENCH_EPOCHS = 2
    # Moving between devices: small images, for the CPU side to be quick; sixty epochs, for the
    # interrupt to land inside the trial (the H200 runs stopped at epochs 3 to 21 of 60).
    COMPARE = ["--set", "data.image_size=32", "--set", "baseline.epochs=12"]
    CROSS = ["--set", "data.train_per_class=20", "--set", "data.val_per_class=20", "--trials",
             "1", "--set", "data.image_size=32", "--set", "space.epochs=60"]  # fmt: skip
else:
    BENCH_SIZES = (32,)
    TINY = ["--set", "data.train_per_class=4", "--set", "data.val_per_class=4",
            "--set", "seeds=[0, 1]", "--set", "train.batch_size=16"]  # fmt: skip
    SEARCH = [*TINY, "--set", "data.image_size=32", "--set", "space.epochs=2", "--trials", "2"]
    INTERRUPT = [*TINY, "--set", "data.image_size=32", "--set", "space.epochs=12",
                 "--trials", "1"]  # fmt: skip
    SMALL = [*TINY, "--set", "data.image_size=32", "--set", "space.epochs=2"]
    BENCH_SETS = {"data": {"train_per_class": 4, "val_per_class": 4}}
    BENCH_EPOCHS = 1
    CROSS = INTERRUPT
    COMPARE = [*TINY, "--set", "data.image_size=32", "--set", "baseline.epochs=6"]

# ResNet-18 with random weights on digits images (1 channel, repeated to 3), upsampled.
# The last bits of float results depend on the thread count: fix it for comparisons.
MODEL = ["--study", "digits", "--set", "model.name=resnet18", "--set", "model.weights=none",
         "--set", "baseline.trainable_layers=2",
         "--threads", str(min(8, len(os.sched_getaffinity(0))))]  # fmt: skip
RESNET = [*MODEL, "--set", "space.trainable_layers=2", "--set", "train.patience=100",
          "--set", "pruner.type=none"]  # fmt: skip
NOT_ON_CPU = "not run: needs a CUDA GPU"


class Check:
    """The JSON file, written whole after every step."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.work = Path(tempfile.mkdtemp(prefix="lsearch-gpu-check-"))
        self.result: dict[str, Any] = {"machine": machine(), "mode": "gpu" if CUDA else "cpu",
                                       "limit_s": DEADLINE_S, "steps": []}  # fmt: skip
        self.save()

    def save(self) -> None:
        steps = self.result["steps"]
        self.result["ok"] = all(step["status"] != "fail" for step in steps)
        self.result["seconds"] = round(time.monotonic() - STARTED, 1)
        text = json.dumps(self.result, indent=2, default=str)
        partial = self.path.with_name(self.path.name + ".partial")
        partial.write_text(text + "\n")
        partial.replace(self.path)

    def step(self, name: str, run: Callable[[], dict[str, Any]], cuda_only: bool = False,
             needs_s: float = 10) -> dict[str, Any]:  # fmt: skip
        """Run one step, catching what it raises; its figures or the reason it did not run."""
        entry: dict[str, Any] = {"name": name}
        left = DEADLINE_S - (time.monotonic() - STARTED)
        if ONLY and ONLY not in name:
            entry.update(status="not run", why=f"not selected (LSEARCH_GPU_CHECK_ONLY={ONLY})")
        elif cuda_only and not CUDA:
            entry.update(status="not run", why=NOT_ON_CPU)
        elif left < needs_s:
            entry.update(status="not run", why=f"out of time ({left:.0f} s of the budget left)")
        else:
            begun = time.monotonic()
            try:
                entry.update(status="ok", **run())
            except Exception as exc:  # one step's failure is a figure, not the end of the check
                entry.update(status="fail", error=f"{type(exc).__name__}: {exc}"[-2000:])
            entry["seconds"] = round(time.monotonic() - begun, 1)
        print(f"gpu check: {name}: {entry['status']} {entry.get('why', '')}", file=sys.stderr)
        self.result["steps"].append(entry)
        self.save()
        return entry


def machine() -> dict[str, Any]:
    info: dict[str, Any] = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cpu": machine_check.cpu_model(),
        "cores": len(os.sched_getaffinity(0)),
    }
    if CUDA:
        info["gpu"] = torch.cuda.get_device_name(0)
        info["capability"] = ".".join(map(str, torch.cuda.get_device_capability(0)))
        info["gpu_memory_mb"] = round(torch.cuda.get_device_properties(0).total_memory / 2**20)
    return info


def lsearch(*args: str, cwd: Path, env: dict[str, str] | None = None,
            timeout: float = 240) -> subprocess.CompletedProcess[str]:  # fmt: skip
    """The real CLI, as a user runs it (python -m lsearch: no console script needed)."""
    full_env = {**os.environ, **(env or {})}
    full_env.pop("LSEARCH_STORAGE", None)
    return subprocess.run(
        [sys.executable, "-m", "lsearch", *args], cwd=cwd, env=full_env, capture_output=True,
        text=True, timeout=timeout, stdin=subprocess.DEVNULL,
    )  # fmt: skip


def succeeded(result: subprocess.CompletedProcess[str]) -> None:
    if result.returncode != 0:
        raise RuntimeError(f"exit {result.returncode}: {result.stderr.strip()[-1500:]}")


def trials(storage: str, study: str | None = "digits") -> list[Any]:
    """The trials of the check's study: the searches run the digits study file; None, the
    storage's only study (a comparison's)."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    return optuna.load_study(study_name=study, storage=storage).get_trials()


def curves(trial: Any) -> dict[str, Any]:
    return {key: value for key, value in trial.user_attrs.items() if key.startswith("curve_")}


def search(folder: Path, *extra: str, env: dict[str, str] | None = None) -> tuple[list, float]:
    """A short search in its own folder and SQLite file; its trials and wall time."""
    folder.mkdir(parents=True, exist_ok=True)
    storage = f"sqlite:///{folder / 'study.db'}"
    begun = time.monotonic()
    succeeded(lsearch("run", *RESNET, *extra, "--storage", storage, "--quiet", cwd=folder,
                      env=env))  # fmt: skip
    return trials(storage), round(time.monotonic() - begun, 1)


def doctor(check: Check) -> dict[str, Any]:
    args = ["doctor", "--json", "--study", "cifar10-resnet18", "--set", "model.weights=none",
            "--storage", f"sqlite:///{check.work / 'doctor.db'}"]  # fmt: skip
    if not CUDA:
        args += ["--set", "data.image_size=32", "--set", "data.train_per_class=4",
                 "--set", "data.val_per_class=4"]  # fmt: skip
    result = lsearch(*args, cwd=check.work)
    report = json.loads(result.stdout)
    if result.returncode not in (0, 1):
        succeeded(result)
    return {"exit_code": result.returncode, "checks": report["checks"]}


def bench_spec(deterministic: bool, size: int, weights: str = "none") -> tuple[Any, torch.device]:
    """The study bench times (cifar10-resnet18 at `size` px) and the device."""
    from lsearch.spec import load_spec
    from lsearch.training.devices import resolve_device, set_determinism

    overrides = [f"data.image_size={size}", f"train.deterministic={str(deterministic).lower()}",
                 f"model.weights=\"{weights}\""]  # fmt: skip
    for table, values in BENCH_SETS.items():
        overrides += [f"{table}.{key}={value}" for key, value in values.items()]
    device = resolve_device("cuda" if CUDA else "cpu")
    set_determinism(device, deterministic)
    return load_spec("cifar10-resnet18", overrides), device


def bench(deterministic: bool, size: int, baseline: bool = False) -> dict[str, Any]:
    """lsearch bench in this process (one CUDA start-up for every size and mode)."""
    from lsearch.bench import speed as benchmark

    spec, device = bench_spec(deterministic, size)
    result = benchmark.measure_speed(spec, device, BENCH_EPOCHS, synthetic=True, baseline=baseline)
    return result.to_json(len(spec.seeds), benchmark.mean_epochs(spec))


def seeds_together(size: int) -> dict[str, Any]:
    """lsearch bench --seeds 3: the seeds of a trial together against one at a time."""
    from lsearch.bench.seeds import measure_seeds_together
    from lsearch.bench.workload import bench_data, random_weights

    # One random set of pretrained-like weights for every seed (a shared frozen prefix, as
    # with ImageNet's), written here: asking for ImageNet's would try a download first, and
    # a GPU box with no network may make that wait (the H200 runs set https_proxy to a
    # closed port so that it failed at once).
    spec, device = bench_spec(True, size)
    spec, device = bench_spec(True, size, weights=str(random_weights(spec)))
    spec, pool, _ = bench_data(spec, device, synthetic=True)
    return measure_seeds_together(spec, pool, device, 3, BENCH_EPOCHS).to_json()


def reruns(check: Check, deterministic: bool) -> dict[str, Any]:
    mode = ["--set", f"train.deterministic={str(deterministic).lower()}"]
    name = "deterministic" if deterministic else "autotuned"
    first, first_s = search(check.work / f"rerun-{name}-a", *SEARCH, *mode)
    second, second_s = search(check.work / f"rerun-{name}-b", *SEARCH, *mode)
    same_params = [a.params for a in first] == [b.params for b in second]
    same = same_params and all(curves(a) == curves(b) for a, b in zip(first, second, strict=True))
    differs = sorted({key for a, b in zip(first, second, strict=False)
                      for key in curves(a) if curves(a)[key] != curves(b).get(key)})  # fmt: skip
    return {"bit_exact": same, "same_params": same_params, "differing_curves": differs,
            "wall_s": [first_s, second_s], "trials": len(first),
            "val_acc": [t.user_attrs.get("val_acc") for t in first]}  # fmt: skip


def wait_for_checkpoint(storage: str, process: subprocess.Popen[str], timeout: float) -> int:
    """Poll the study until its running trial points at a checkpoint; its epoch."""
    from lsearch.store.catalog import CHECKPOINT_ATTR

    begun = time.monotonic()
    while time.monotonic() - begun < timeout:
        if process.poll() is not None:
            raise RuntimeError("the trial ended before a checkpoint was written")
        try:
            for trial in trials(storage):
                pointer = trial.user_attrs.get(CHECKPOINT_ATTR)
                if pointer and trial.state.name == "RUNNING":
                    return int(pointer["epoch"])
        except Exception:  # the file, its tables or the study are still being made
            pass
        time.sleep(0.05)
    raise TimeoutError("no checkpoint appeared")


def interrupted(folder: Path, size_args: list[str], first_device: str, resume_device: str,
                compare: bool = True) -> dict[str, Any]:  # fmt: skip
    """A trial on `first_device` stopped by Ctrl-C after its first checkpoint, then resumed
    on `resume_device`; with `compare`, its curves against the same trial run without a stop
    (a move between devices restarts the random streams: not comparable by design)."""
    folder.mkdir(parents=True, exist_ok=True)
    storage = f"sqlite:///{folder / 'study.db'}"
    args = ["run", *RESNET, *size_args, "--storage", storage, "--quiet",
            "--set", "checkpoint.every_s=0", "--grace-period", "600"]  # fmt: skip
    first = [*args, "--device", first_device]
    env = {**os.environ}
    env.pop("LSEARCH_STORAGE", None)
    worker = subprocess.Popen([sys.executable, "-m", "lsearch", *first], cwd=folder, env=env,
                              stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True)  # fmt: skip
    try:
        epoch = wait_for_checkpoint(storage, worker, timeout=120)
        worker.send_signal(signal.SIGINT)
        _, stderr = worker.communicate(timeout=120)
    finally:
        if worker.poll() is None:
            worker.kill()
    if worker.returncode != 130:
        raise RuntimeError(f"the interrupted worker exited {worker.returncode}: {stderr[-800:]}")
    resuming = lsearch(*args, "--device", resume_device, cwd=folder)
    succeeded(resuming)
    done = [t for t in trials(storage) if t.state.name == "COMPLETE"]
    if not done:
        raise RuntimeError("the resumed trial did not complete")
    resumed = done[-1]
    if resumed.user_attrs.get("resumed_from_epoch") is None:
        # Nothing was resumed, so nothing was checked (the first H200 runs reported such steps
        # as passed; their retries had failed, see match_parameter_layout): say why, with
        # every trial's state and the resuming worker's last words.
        found = [(t.number, t.state.name, t.user_attrs.get("device", "")[:8],
                  t.system_attrs.get("failed_trial"), t.user_attrs.get("resumed_from_epoch"),
                  t.user_attrs.get("checkpoint_error"), t.user_attrs.get("fail_reason"))
                 for t in trials(storage)]  # fmt: skip
        raise RuntimeError(
            "no trial resumed: trials (number, state, device, retry of, resumed_from_epoch, "
            f"checkpoint_error, fail_reason)={found}; the resuming worker's stderr ends "
            f"{resuming.stderr.strip()[-1500:]!r}"
        )
    figures = {
        "checkpoint_epoch_at_stop": epoch,
        "resumed_from_epoch": resumed.user_attrs.get("resumed_from_epoch"),
        "resumed_on_other_device": resumed.user_attrs.get("resumed_on_other_device"),
        "device": resumed.user_attrs.get("device"),
        "val_acc": resumed.user_attrs.get("val_acc"),
    }
    if compare:
        straight, _ = search(folder / "uninterrupted", *size_args, "--device", first_device)
        if curves(resumed) != curves(straight[0]):  # deterministic kernels: bit for bit
            theirs = straight[0].user_attrs.get("val_acc")
            raise RuntimeError(
                "the resumed trial's curves differ from the uninterrupted one's: val_acc "
                f"{resumed.user_attrs.get('val_acc')} against {theirs}"
            )
        figures["same_as_uninterrupted"] = True
        figures["val_acc_uninterrupted"] = straight[0].user_attrs.get("val_acc")
    return figures


def comparison_together(check: Check) -> dict[str, Any]:
    """A comparison whose cells train their seeds together, each seed stopping on its own
    (patience 1): the others go on as a smaller group and the last one alone, each with the
    optimizer state the group handed over (on an H200 such states, contiguous where the
    parameters are channels_last, failed every trial resumed there, and would have failed
    this)."""
    folder = check.work / "compare"
    folder.mkdir(parents=True, exist_ok=True)
    storage = f"sqlite:///{folder / 'study.db'}"
    begun = time.monotonic()
    succeeded(lsearch("compare", *MODEL, *COMPARE, "--grid", "label_smoothing=0,0.1",
                      "--set", "train.seeds_together=true", "--set", "train.patience=1",
                      "--set", "seeds=[0, 1, 2]",  # a worker groups as many seed-runs
                      "--seeds", "0-2", "--storage", storage, "--quiet", cwd=folder))  # fmt: skip
    runs: dict[float, list[int]] = {}
    for trial in trials(storage, study=None):
        if trial.state.name != "COMPLETE" or trial.user_attrs.get("seeds_together") is not True:
            raise RuntimeError(f"trial {trial.number}: {trial.state.name}, "
                               f"{trial.user_attrs.get('fail_reason')}")  # fmt: skip
        smoothing = trial.user_attrs["config"]["label_smoothing"]
        runs.setdefault(smoothing, []).append(trial.user_attrs["epochs_run"])
    if all(len(set(epochs)) == 1 for epochs in runs.values()):
        raise RuntimeError(f"every seed of a cell stopped together, so none left a group: {runs}")
    return {"epochs_run_per_cell": {str(k): v for k, v in runs.items()},
            "wall_s": round(time.monotonic() - begun, 1)}  # fmt: skip


def float16(check: Check) -> dict[str, Any]:
    env = {"LSEARCH_PRECISION": "float16"}
    found, wall = search(check.work / "float16", *SMALL, "--trials", "1", env=env)
    (trial,) = found
    if trial.user_attrs.get("precision") != "float16":
        raise RuntimeError(f"trained in {trial.user_attrs.get('precision')}, not float16")
    return {"precision": "float16", "val_acc": trial.user_attrs.get("val_acc"),
            "state": trial.state.name, "wall_s": wall}  # fmt: skip


def two_workers(check: Check) -> dict[str, Any]:
    found, wall = search(check.work / "two-workers", *SMALL, "--trials", "4", "--workers", "2",
                         "--device", "cuda:free")  # fmt: skip
    return {"wall_s": wall, "states": [t.state.name for t in found],
            "devices": sorted({str(t.user_attrs.get("device")) for t in found})}  # fmt: skip


def main() -> int:
    if len(sys.argv) != 2:
        print("usage: bash scripts/gpu_check.sh OUT.json", file=sys.stderr)
        return 2
    check = Check(Path(sys.argv[1]).resolve())
    check.step("doctor", lambda: doctor(check), needs_s=20)
    for size in BENCH_SIZES:
        for deterministic in (True, False):
            largest = size == BENCH_SIZES[-1] and deterministic
            check.step(f"bench {size} px, deterministic={deterministic}",
                       lambda s=size, d=deterministic, b=largest: bench(d, s, baseline=b),
                       cuda_only=not deterministic)  # fmt: skip
        check.step(f"seeds together {size} px", lambda s=size: seeds_together(s))
    check.step("search and rerun, deterministic", lambda: reruns(check, True), needs_s=30)
    check.step("search and rerun, cuDNN autotuned", lambda: reruns(check, False),
               cuda_only=True, needs_s=30)  # fmt: skip
    device = "cuda" if CUDA else "cpu"
    check.step("interrupt and resume", lambda: interrupted(check.work / "interrupt", INTERRUPT,
                                                           device, device), needs_s=30)  # fmt: skip
    check.step("GPU checkpoint resumed on the CPU",
               lambda: interrupted(check.work / "to-cpu", CROSS, "cuda", "cpu", compare=False),
               cuda_only=True, needs_s=30)  # fmt: skip
    check.step("CPU checkpoint resumed on the GPU",
               lambda: interrupted(check.work / "to-gpu", CROSS, "cpu", "cuda", compare=False),
               cuda_only=True, needs_s=30)  # fmt: skip
    check.step("comparison, seeds leaving their group", lambda: comparison_together(check),
               needs_s=30)  # fmt: skip
    check.step("float16 with the gradient scaler", lambda: float16(check), cuda_only=True)
    check.step("two workers on one GPU", lambda: two_workers(check), cuda_only=True, needs_s=30)
    print(
        f"gpu check: wrote {check.path} ({'ok' if check.result['ok'] else 'FAILED'})",
        file=sys.stderr,
    )
    return 0 if check.result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
