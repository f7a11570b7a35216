"""scripts/gpu_check.sh, the check a lent GPU runs first, run here on the CPU as CI runs it:
the same steps at 32 px with tiny sizes, the CUDA-only ones reported as not run, so that the
script cannot rot between the rare sessions that have a GPU."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
STEPS = [
    ("doctor", False),
    ("bench 32 px, deterministic=True", False),
    ("bench 32 px, deterministic=False", True),
    ("seeds together 32 px", False),
    ("search and rerun, deterministic", False),
    ("search and rerun, cuDNN autotuned", True),
    ("interrupt and resume", False),
    ("GPU checkpoint resumed on the CPU", True),
    ("CPU checkpoint resumed on the GPU", True),
    ("comparison, seeds leaving their group", False),
    ("float16 with the gradient scaler", True),
    ("two workers on one GPU", True),
]


# Loaded by every Python process of the check (PYTHONPATH): the check runs as on a bare GPU
# machine, from a checkout with lsearch not installed (no metadata; the first GPU run failed on
# that) and without the packages that such a machine lacks and gpu_wheels.sh does not carry.
BARE_MACHINE = """
import importlib.metadata as metadata
import sys

ABSENT = {"plotly", "optuna_dashboard", "psycopg", "selenium", "kubernetes_validate"}
_from_name = metadata.Distribution.from_name.__func__


def from_name(cls, name):
    if name.replace("_", "-").lower() == "lsearch":
        raise metadata.PackageNotFoundError(name)
    return _from_name(cls, name)


class Absent:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ABSENT:
            raise ImportError(f"{name} is not on the GPU machine")


metadata.Distribution.from_name = classmethod(from_name)
sys.meta_path.insert(0, Absent())
"""


def run_check(out: Path, **env: str) -> subprocess.CompletedProcess[str]:
    """scripts/gpu_check.sh writing `out`, in out's folder, with this Python and `env`."""
    return subprocess.run(
        ["bash", str(ROOT / "scripts" / "gpu_check.sh"), str(out)],
        cwd=out.parent, capture_output=True, text=True, timeout=400,
        env={"PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin", "PYTHON": sys.executable,
             **env},
    )  # fmt: skip


def test_the_gpu_check_runs_every_step_on_the_cpu_and_writes_one_json(tmp_path: Path) -> None:
    out = tmp_path / "gpu.json"
    bare = tmp_path.parent / f"{tmp_path.name}-site"
    bare.mkdir()
    (bare / "sitecustomize.py").write_text(BARE_MACHINE)
    result = run_check(out, LSEARCH_GPU_CHECK_LIMIT_S="170", PYTHONPATH=str(bare))
    assert result.returncode == 0, result.stderr[-3000:]
    # Nothing is downloaded (torch.hub announces it): a GPU box with no network may make a
    # download attempt wait rather than fail.
    assert "Downloading" not in result.stderr, result.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report["mode"] == "cpu" and report["ok"] is True
    assert report["machine"]["torch"] and report["machine"]["cores"] >= 1
    steps = {step["name"]: step for step in report["steps"]}
    assert [step["name"] for step in report["steps"]] == [name for name, _ in STEPS]
    for name, cuda_only in STEPS:
        expected = "not run" if cuda_only else "ok"
        assert steps[name]["status"] == expected, steps[name]
        if cuda_only:
            assert steps[name]["why"] == "not run: needs a CUDA GPU"

    doctor = steps["doctor"]
    assert doctor["exit_code"] == 0
    assert {check["name"] for check in doctor["checks"]} >= {"torch", "storage", "training"}
    bench = steps["bench 32 px, deterministic=True"]
    assert bench["image_size"] == 32 and bench["train_images_per_s"] > 0
    assert bench["trial_memory"]["seeds"] == 3 and bench["baseline"]["train_images_per_s"] > 0
    together = steps["seeds together 32 px"]
    assert together["seeds"] == 3 and together["seed_epochs_per_s_one_at_a_time"] > 0
    assert together["frozen_prefix"] == "shared", "ResNet-18 with two groups trainable"
    rerun = steps["search and rerun, deterministic"]
    assert rerun["bit_exact"] is True and rerun["trials"] == 2, rerun
    interrupt = steps["interrupt and resume"]
    # The hand-back writes the last finished epoch: the one seen before the stop, or later.
    assert interrupt["resumed_from_epoch"] >= interrupt["checkpoint_epoch_at_stop"] >= 1
    assert interrupt["same_as_uninterrupted"] is True, "the CPU resumes bit for bit"
    assert interrupt["resumed_on_other_device"] is None and interrupt["device"] == "cpu"
    left = steps["comparison, seeds leaving their group"]["epochs_run_per_cell"]
    assert all(len(epochs) == 3 for epochs in left.values()), left
    assert any(len(set(epochs)) > 1 for epochs in left.values()), "a seed left its group"
    assert not list(tmp_path.glob("*.db")) and sorted(p.name for p in tmp_path.iterdir()) == [
        "gpu.json"
    ], "the check works in a folder of its own"


def test_the_gpu_check_without_an_output_path_is_a_usage_error() -> None:
    result = subprocess.run(
        ["bash", str(ROOT / "scripts" / "gpu_check.sh")], capture_output=True, text=True
    )
    assert result.returncode == 2 and "usage: bash scripts/gpu_check.sh OUT.json" in result.stderr


def requirements(distribution: str) -> set[str]:
    """A distribution's required distributions on Linux x86-64 (no extras), by normalised name."""
    from importlib.metadata import requires

    from packaging.markers import default_environment
    from packaging.requirements import Requirement

    environment = {**default_environment(), "python_version": "3.12", "extra": "",
                   "platform_machine": "x86_64", "sys_platform": "linux"}  # fmt: skip
    names = set()
    for text in requires(distribution) or []:
        requirement = Requirement(text)
        if requirement.marker is None or requirement.marker.evaluate(environment):
            names.add(re.sub(r"[-_.]+", "-", requirement.name).lower())
    return names


def test_the_wheels_script_carries_everything_the_check_imports_that_a_gpu_box_lacks() -> None:
    """What a GPU machine has (device/KINDS.md's list, in part) plus gpu_wheels.sh's packages
    must cover lsearch's own needs for a search and everything those need in turn."""
    text = (ROOT / "scripts" / "gpu_wheels.sh").read_text()
    carried = set(re.search(r"packages=\(([^)]*)\)", text).group(1).split())
    on_the_gpu_box = {"torch", "torchvision", "numpy", "scipy", "scikit-learn", "typer", "rich",
                      "tqdm", "pyyaml", "packaging", "markupsafe"}  # fmt: skip
    needed = {"optuna", "sqlalchemy", "pydantic"}
    seen: set[str] = set()
    while needed - seen:
        name = (needed - seen).pop()
        seen.add(name)
        if name not in on_the_gpu_box:
            needed |= requirements(name)
    assert needed - on_the_gpu_box <= carried, needed - on_the_gpu_box - carried


def test_the_gpu_check_runs_only_the_steps_named_in_its_environment(tmp_path: Path) -> None:
    """LSEARCH_GPU_CHECK_ONLY: a rerun of one step within a short loan of a GPU."""
    out = tmp_path / "gpu.json"
    result = run_check(out, LSEARCH_GPU_CHECK_ONLY="doctor")
    assert result.returncode == 0, result.stderr[-3000:]
    steps = json.loads(out.read_text())["steps"]
    assert [step["name"] for step in steps] == [name for name, _ in STEPS]
    assert steps[0]["status"] == "ok" and steps[0]["exit_code"] == 0
    for step in steps[1:]:
        assert step["status"] == "not run"
        assert step["why"] == "not selected (LSEARCH_GPU_CHECK_ONLY=doctor)"
