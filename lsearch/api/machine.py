"""This machine: how fast a study trains here (`bench_speed`), whether training a trial's
seeds together pays (`bench_seeds`), whether pruning pays (`bench_pruning`), and whether
everything a search needs is in place (`doctor`). `bench` needs neither a storage nor Optuna."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from lsearch.api.common import DEFAULT_STUDY, at_least
from lsearch.api.results import TableData
from lsearch.api.studyfile import Overrides, load_with_texts

if TYPE_CHECKING:
    from rich.console import Console

    from lsearch.bench.pruning import PruningResult
    from lsearch.bench.seeds import SeedsSpeed


@dataclass(frozen=True)
class Speed:
    """What `lsearch bench` measured (`bench.speed.BenchResult`) and how to show it."""

    result: Any  # bench.speed.BenchResult
    seeds: int
    mean_epochs: float
    on_cuda: bool

    def to_dict(self) -> dict[str, Any]:
        """What `lsearch bench --json` prints."""
        return dict(self.result.to_json(self.seeds, self.mean_epochs))

    def table(self) -> TableData:
        r = self.result
        title = (
            f"{r.study}: {r.model} at {r.image_size} px, {r.trainable_layers} trainable layer "
            f"groups, {r.device}"
        )
        # One seed's peak: torch's allocated memory on CUDA, the process's on the CPU.
        peak = "1-seed peak alloc. MB" if self.on_cuda else "peak RSS MB"
        rows = []
        for label, speed in (("lsearch", r.lsearch), ("usual way", r.baseline)):
            if speed is not None:
                rows.append([
                    label, f"{speed.train_images_per_s:,.0f}", f"{speed.eval_images_per_s:,.0f}",
                    f"{speed.seconds_per_epoch:.3f}", f"{speed.peak_memory_mb:,.0f}",
                ])  # fmt: skip
        header = ["", "train img/s", "eval img/s", "s/epoch", peak]
        return TableData(title, header, rows, left=0)

    def lines(self) -> list[str]:
        """The speed-up, the whole trial's memory, and what a 100-trial search would take."""
        r, lines = self.result, []
        if r.speedup is not None:
            lines.append(f"lsearch trains {r.speedup:.1f}x the images per second of the usual way")
        if r.trial_memory is not None:
            lines.append(_trial_memory(r.trial_memory))
        minutes = r.search_estimate_s(self.seeds, self.mean_epochs) / 60
        lines.append(
            f"a --trials 100 search ({self.seeds} seeds, {self.mean_epochs:g} epochs on "
            f"average) would take at most {minutes:,.1f} min here with no trial pruned"
        )
        return lines


def _trial_memory(memory: Any) -> str:
    """The whole trial's memory, led by the figure to size workers by."""
    cache = memory.feature_cache
    cached = (
        f"feature cache {memory.feature_cache_mb:,.1f} MB ({cache['hits']} hits, "
        f"{cache['misses']} misses; budget {cache['budget']})"
    )
    if memory.peak_reserved_mb is None:
        return (
            f"a whole trial ({memory.seeds} seeds) peaked at {memory.per_worker_mb:,.0f} MB of "
            f"process memory (peak RSS): size workers per machine by this; {cached}"
        )
    return (
        f"a whole trial ({memory.seeds} seeds) needs {memory.per_worker_mb:,.0f} MB of the GPU: "
        f"size workers per GPU by this (peak reserved {memory.peak_reserved_mb:,.0f} MB + the "
        f"CUDA context); peak allocated {memory.peak_allocated_mb:,.0f} MB; device used "
        f"{memory.device_used_mb:,.0f} MB (context and other processes included); {cached}"
    )


def _spec_on_device(study: str, overrides: Overrides, device: str) -> tuple[Any, Any]:
    from lsearch.training.devices import resolve_device, set_determinism

    spec, _ = load_with_texts(study, overrides)
    chosen = resolve_device(device)
    set_determinism(chosen, spec.train.deterministic)
    return spec, chosen


def bench_speed(
    study: str = DEFAULT_STUDY,
    overrides: Overrides = None,
    *,
    epochs: int = 3,
    device: str = "auto",
    synthetic: bool = False,
    baseline: bool = False,
    console: Console | None = None,
) -> Speed:
    """Time one seed of the study's [baseline] configuration as a trial trains it, measure a
    whole trial's memory, and with ``baseline`` time the usual way too (``lsearch bench``).

    >>> import lsearch
    >>> tiny = {"data.train_per_class": 10, "data.val_per_class": 10}
    >>> speed = lsearch.bench_speed("digits", tiny, epochs=1, device="cpu")
    >>> speed.to_dict()["train_images_per_s"] > 0, speed.table().header[1]
    (True, 'train img/s')
    """
    from lsearch.bench import speed as measuring

    at_least("--epochs", epochs, 1)
    spec, chosen = _spec_on_device(study, overrides, device)
    if console is not None:
        console.print(
            f"timing {spec.name} ({spec.model.name}) on {measuring.describe_device(chosen)}: "
            f"{epochs} epochs after a warm-up" + (", then the usual way" if baseline else ""),
            highlight=False,
        )
    result = measuring.measure_speed(spec, chosen, epochs, synthetic, baseline)
    return Speed(result, len(spec.seeds), measuring.mean_epochs(spec), chosen.type == "cuda")


def bench_seeds(
    study: str = DEFAULT_STUDY,
    overrides: Overrides = None,
    *,
    seeds: int = 3,
    epochs: int = 3,
    device: str = "auto",
    synthetic: bool = False,
    console: Console | None = None,
) -> SeedsSpeed:
    """Seed-epochs per second of the study's [baseline] configuration on ``seeds`` seeds,
    trained together and one at a time, alternating (``lsearch bench --seeds S``).

    >>> import lsearch
    >>> tiny = {"data.train_per_class": 10, "data.val_per_class": 10}
    >>> speed = lsearch.bench_seeds("digits", tiny, seeds=2, epochs=1, device="cpu")
    >>> speed.seeds, speed.ratio > 0, "seed_epochs_per_s_one_at_a_time" in speed.to_json()
    (2, True, True)
    """
    from lsearch.bench.seeds import ROUNDS, measure_seeds_together
    from lsearch.bench.workload import bench_data
    from lsearch.training.devices import describe_device

    at_least("--epochs", epochs, 1)
    spec, chosen = _spec_on_device(study, overrides, device)
    spec, pool, _ = bench_data(spec, chosen, synthetic)
    if console is not None:
        console.print(
            f"timing {seeds} seeds of {spec.name} ({spec.model.name}) on "
            f"{describe_device(chosen)} together and one at a time: {ROUNDS} alternating rounds "
            f"of {epochs} epochs each way, after a warm-up",
            highlight=False,
        )
    return measure_seeds_together(spec, pool, chosen, seeds, epochs)


def bench_pruning(
    study: str = DEFAULT_STUDY,
    overrides: Overrides = None,
    *,
    trials: int = 100,
    sampler_seeds: int = 5,
    device: str = "auto",
    console: Console | None = None,
) -> PruningResult:
    """Run the study's search with its pruner and with none over ``sampler_seeds`` sampler
    seeds, in memory, and compare the work, the best values and the chosen configurations on
    the test set (``lsearch bench --search``); each search's line goes to ``console``. (No
    example here: even a small one runs for a minute.)"""
    from lsearch.api.common import quiet_libraries
    from lsearch.bench.pruning import describe_run, measure_pruning
    from lsearch.training.devices import describe_device

    at_least("--trials", trials, 1)
    at_least("--sampler-seeds", sampler_seeds, 1)
    spec, chosen = _spec_on_device(study, overrides, device)
    quiet_libraries()
    show = console.print if console is not None else (lambda *a, **k: None)
    show(
        f"{sampler_seeds} sampler seeds x (pruned, unpruned) searches of {trials} trials "
        f"of {spec.name} on {describe_device(chosen)}",
        highlight=False,
    )
    return measure_pruning(
        spec, chosen, trials, sampler_seeds, lambda run: show(describe_run(run), highlight=False)
    )


@dataclass(frozen=True)
class Checkup:
    """The checks of `lsearch doctor` (`lsearch.checks.Check`: name, status, detail)."""

    study: str
    checks: list[Any]

    @property
    def ok(self) -> bool:
        from lsearch.checks import passed

        return passed(self.checks)

    def to_dict(self) -> dict[str, Any]:
        """What `lsearch doctor --json` prints."""
        return {"checks": [check.to_json() for check in self.checks], "ok": self.ok}

    def verdict(self) -> str:
        """`ready`, or how many checks failed; with the warnings counted."""
        counts = {s: sum(c.status == s for c in self.checks) for s in ("fail", "warn")}
        failed = f"{counts['fail']} check{'s' * (counts['fail'] != 1)} failed"
        warn = counts["warn"]
        return ("ready" if self.ok else failed) + (
            f" ({warn} warning{'s' * (warn != 1)})" if warn else ""
        )


def doctor(
    study: str = DEFAULT_STUDY,
    overrides: Overrides = None,
    *,
    storage: str | None = None,
    device: str = "auto",
    train: bool = True,
    console: Console | None = None,
) -> Checkup:
    """Check this machine before a long search (``lsearch doctor``): torch and CUDA, each
    GPU and its precision, the storage, the study's data and weights, and with ``train`` one
    synthetic training epoch. Changes nothing.

    >>> import lsearch, tempfile
    >>> url = f"sqlite:///{tempfile.mkdtemp()}/lsearch.db"
    >>> checkup = lsearch.doctor("digits", storage=url, device="cpu", train=False)
    >>> [check.name for check in checkup.checks][:2], sorted(checkup.to_dict())
    (['torch', 'device'], ['checks', 'ok'])
    """
    import logging

    from lsearch import checks as checkup
    from lsearch.store.storage import resolve_url

    spec, _ = load_with_texts(study, overrides)
    checkup.parse_device(device)
    logging.getLogger("sqlalchemy").setLevel(logging.WARNING)
    if train and console is not None:
        console.print(f"checking {spec.name}; training one synthetic epoch last", highlight=False)
    return Checkup(spec.name, checkup.run_checks(spec, resolve_url(storage), device, train))
