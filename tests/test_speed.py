"""The fast paths give the numbers of the plain ones: the frozen prefix run apart, cached
validation features, checkpoints without frozen groups; and `lsearch bench` works offline,
without Optuna, on the CPU. Correctness only: speed is what `lsearch bench` measures."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys

import pytest
import torch

from lsearch.bench.search_runs import SearchRun, summarise_search
from lsearch.bench.speed import mean_epochs, measure_speed
from lsearch.bench.workload import synthetic_pool
from lsearch.spec import StudySpec, load_spec
from lsearch.training.data import load_pool, split_for_seed
from lsearch.training.features import FeatureCache
from lsearch.training.models import build_model
from lsearch.training.seed_run import SeedRun, make_optimizer, start_seed_run
from tests.conftest import TINY, TINY_SETS, run_lsearch

CPU = torch.device("cpu")


def tiny_spec(**changes: dict) -> StudySpec:
    raw = {
        "name": "tiny",
        "seeds": [0],
        "data": {"dataset": "digits", "train_per_class": 15, "val_per_class": 15},
        "model": {"name": "small_cnn", "width": 8},
        "train": {"batch_size": 32, "eval_batch_size": 64},
        "baseline": {"epochs": 3, "trainable_layers": 2, "lr": 3e-3},
        "checkpoint": {"enabled": False},
    }
    for table, values in changes.items():
        raw[table] = {**raw.get(table, {}), **values}
    return StudySpec.model_validate(raw)


@pytest.mark.parametrize("name", ["small_cnn", "resnet18"])
def test_prefix_then_suffix_is_the_whole_model(name: str) -> None:
    spec = tiny_spec(model={"name": name})
    net = build_model(spec.model, 3, 10, seed=0)
    x = torch.randn(4, 3, 32, 32)
    net.model.eval()
    whole = net.model(x)
    for trainable in range(1, len(net.groups) + 1):
        net.freeze(trainable)
        assert net.frozen_stages == len(net.groups) - trainable
        torch.testing.assert_close(net.suffix(net.prefix(x)), whole, rtol=0, atol=0)


def seed_run(spec: StudySpec, cache: FeatureCache | None = None) -> SeedRun:
    pool = load_pool(spec.data, CPU)
    net = build_model(spec.model, pool.images.shape[1], pool.num_classes, seed=0)
    net.freeze(spec.baseline.trainable_layers)
    base = spec.baseline
    run = start_seed_run(
        0, net, split_for_seed(pool, spec.data, 0), pool, spec.data, spec.train,
        base.label_smoothing, base.lr, base.epochs, CPU,
    )  # fmt: skip
    if cache is not None:
        run.features, run.features_key = cache, (0, base.trainable_layers)
    return run


@pytest.mark.parametrize("trainable", [1, 2, 4])
def test_cached_validation_features_give_the_uncached_logits(trainable: int) -> None:
    run = seed_run(tiny_spec(baseline={"trainable_layers": trainable}))
    for _ in range(2):
        run.train_epoch()
        cached = run.predict()
        uncached = run.predict(run.split.val_images)
        torch.testing.assert_close(cached, uncached)
        torch.testing.assert_close(
            run.net.model.eval()(run._inputs(run.split.val_images, augment=False)), cached
        )
    kept = run.features.get("val") is not None
    assert kept == (run.net.frozen_stages > 0), "computed once and kept, when a prefix is frozen"


def test_frozen_groups_and_their_batchnorm_statistics_never_change() -> None:
    run = seed_run(tiny_spec(baseline={"trainable_layers": 2}))
    frozen = run.net.groups[2:]
    before = [{k: v.clone() for k, v in g.state_dict().items()} for g in frozen]
    head_before = {k: v.clone() for k, v in run.net.groups[0].state_dict().items()}
    for _ in range(3):
        run.evaluate(run.train_epoch())
    for group, saved in zip(frozen, before, strict=True):
        for key, value in group.state_dict().items():
            assert torch.equal(value, saved[key]), key  # running_mean/var included
    assert any(
        not torch.equal(v, head_before[k]) for k, v in run.net.groups[0].state_dict().items()
    ), "the trainable head did train"


def test_a_checkpoint_leaves_frozen_groups_out_and_resumes_to_the_same_numbers() -> None:
    spec = tiny_spec(baseline={"trainable_layers": 2})
    straight = seed_run(spec)
    for _ in range(3):
        straight.train_epoch()
    interrupted = seed_run(spec)
    interrupted.train_epoch()
    state = interrupted.state_dict()
    frozen_keys = {f"block1.{k}" for k in interrupted.net.groups[3].state_dict()}
    assert frozen_keys and not frozen_keys & set(state["model"])
    resumed = seed_run(spec)
    assert resumed.load_state_dict(state, epoch=1) is False, "same device: the same stream"
    for _ in range(2):
        resumed.train_epoch()
    torch.testing.assert_close(resumed.predict(), straight.predict(), rtol=0, atol=0)


@pytest.mark.parametrize("optimizer", ["adam", "adamw", "sgd"])
def test_a_trial_steps_with_a_fused_optimizer_that_gives_the_plain_loop_s_numbers(
    optimizer: str,
) -> None:
    """The fast path's optimizer is PyTorch's fused kernel; the usual way (bench's baseline)
    is the plain loop. Both train to the same numbers to float tolerance."""
    spec = tiny_spec(baseline={"trainable_layers": 4}, train={"optimizer": optimizer})
    run = seed_run(spec)
    assert run.optimizer.defaults["fused"] is True
    conv = run.net.model.block2[0][0].weight
    assert conv.is_contiguous()  # channels_last is for CUDA only (slower here: see train.py)
    plain = seed_run(spec)
    plain.optimizer = make_optimizer(plain.net.trainable_parameters(), spec.train, 3e-3, False)
    assert not plain.optimizer.defaults.get("fused")
    for run_ in (run, plain):
        run_.scheduler = None
        run_.train_epoch()
    torch.testing.assert_close(run.predict(), plain.predict(), rtol=1e-4, atol=1e-4)


def test_a_process_reuses_features_across_trials_within_its_budget() -> None:
    spec = tiny_spec(baseline={"trainable_layers": 1})
    cache = FeatureCache()
    first = seed_run(spec, cache)
    first.predict()
    second = seed_run(spec, cache)  # a later trial: same seed, same frozen prefix
    assert second.val_features() is first.val_features()
    small = FeatureCache(budget_bytes=1000)
    assert not small.put("big", torch.zeros(1000))
    assert small.put("a", torch.zeros(100)) and small.put("b", torch.zeros(100))
    assert not small.put("c", torch.zeros(100)), "this trial's entries are never evicted"
    small.new_trial()
    assert small.get("b") is not None  # used again: kept through this trial
    assert small.put("c", torch.zeros(100)) and small.get("a") is None  # earlier trial's out
    assert small.get("b") is not None and small.get("c") is not None
    assert small.bytes <= small.budget_bytes


def test_three_seeds_cycling_through_a_cache_for_two_miss_once_an_epoch_not_always() -> None:
    """With room for two of three seeds' features, LRU evicted exactly the entry needed next
    and missed on every get (at 224 px: the prefix recomputed every epoch, the budget held
    for nothing); now two seeds hit every epoch after the first."""
    features = {seed: torch.zeros(100) for seed in range(3)}  # 400 bytes each
    cache = FeatureCache(budget_bytes=800)
    cache.new_trial()
    for _epoch in range(5):
        for seed, tensor in features.items():
            if cache.get(seed) is None:
                cache.put(seed, tensor)
    assert (cache.hits, cache.misses) == (8, 7)
    assert cache.stats() | {"budget": ""} == {
        "budget_bytes": 800, "budget": "", "entries": 2, "bytes": 800, "hits": 8, "misses": 7,
    }  # fmt: skip


def test_a_whole_network_trial_caches_no_inputs_and_gives_the_same_logits() -> None:
    """With nothing frozen the "features" are the preprocessed inputs: caching them saves a
    resize and holds 600 MB per seed at 224 px. They are not cached."""
    spec = tiny_spec(baseline={"trainable_layers": 4})  # small_cnn: all four groups train
    cache = FeatureCache()
    run = seed_run(spec, cache)
    run.train_epoch()
    torch.testing.assert_close(run.predict(), run.predict(run.split.val_images))
    assert cache.stats()["entries"] == 0 and cache.hits == cache.misses == 0


def test_the_gpu_feature_budget_is_a_quarter_of_the_free_memory(monkeypatch) -> None:
    from lsearch.training import features as train

    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (40 * 2**30, 80 * 2**30))
    budget, basis = train.feature_cache_budget(torch.device("cuda", 0))
    assert budget == 10 * 2**30
    assert basis == "10.0 GiB, a quarter of the 40.0 GiB free on cuda:0"


def test_bench_times_lsearch_and_the_usual_way_on_the_cpu() -> None:
    spec = tiny_spec()
    result = measure_speed(spec, CPU, epochs=1, synthetic=False, baseline=True)
    assert result.baseline is not None and result.speedup is not None and result.speedup > 0
    assert result.train_images == 150 and result.eval_images == 150
    out = result.to_json(len(spec.seeds), mean_epochs(spec))
    for key in ("train_images_per_s", "eval_images_per_s", "seconds_per_epoch",
                "peak_memory_mb", "device", "speedup_train", "search_100_trials_s"):  # fmt: skip
        assert key in out, key
    assert out["device"] == "cpu"
    json.dumps(out, allow_nan=False)


def test_synthetic_data_has_the_study_s_shape() -> None:
    spec = load_spec("cifar10-resnet18", ["data.train_per_class=2", "data.val_per_class=3"])
    pool = synthetic_pool(spec, CPU)
    assert pool.images.shape == (50, 3, 32, 32) and pool.images.dtype == torch.uint8
    assert torch.bincount(pool.labels).tolist() == [5] * 10


BARE = """
import sys
# A bare GPU box: no Optuna, no SQLAlchemy, no network, no CIFAR-10 files.
for name in ("optuna", "sqlalchemy", "optuna_dashboard"):
    sys.modules[name] = None
import socket
def no_network(*args, **kwargs):
    raise OSError("no network")
socket.socket.connect = no_network
from lsearch.cli import app
app(sys.argv[1:])
"""


def test_bench_json_runs_synthetic_without_files_network_or_optuna(tmp_path) -> None:
    result = subprocess.run(
        [sys.executable, "-c", BARE, "bench", "--study", "cifar10-resnet18", "--synthetic",
         "--json", "--epochs", "1", "--device", "cpu", "--set", "data.train_per_class=4",
         "--set", "data.val_per_class=4", "--set", "data.image_size=32"],
        cwd=tmp_path, capture_output=True, text=True, timeout=300,
        env={"PATH": "/usr/bin:/bin", "TORCH_HOME": str(tmp_path / "torch")},
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout)
    for key in ("train_images_per_s", "eval_images_per_s", "seconds_per_epoch",
                "peak_memory_mb", "device"):  # fmt: skip
        assert key in out, key
    assert out["device"] == "cpu" and out["model"] == "resnet18" and out["image_size"] == 32
    assert any("randomly initialised weights" in note for note in out["notes"])
    assert any("synthetic data" in note for note in out["notes"])
    assert not list(tmp_path.glob("*.db")), "bench needs no storage"


class SlowStore:
    """Records checkpoint writes; each write waits until the test lets it finish."""

    def __init__(self) -> None:
        import threading

        self.saved: list[tuple[int, float]] = []
        self.release = threading.Event()

    def save(self, trial: object, epoch: int, state: dict) -> None:
        self.release.wait(timeout=30)
        self.saved.append((epoch, float(state["w"][0])))


def test_checkpoints_are_written_in_the_background_and_never_hold_training_up() -> None:
    from lsearch.search.checkpoints import CheckpointWriter
    from lsearch.training.seed_run import snapshot

    store = SlowStore()
    writer = CheckpointWriter(store, trial=None, every_s=0, written_epoch=0)  # type: ignore[arg-type]
    weights = torch.zeros(1)
    for epoch in (1, 2, 3):
        weights += 1  # training goes on while epoch 1 is being written
        writer.epoch_done(epoch, snapshot({"w": weights}))  # as the objective hands it over
    assert store.saved == [], "epoch 1's write is still going; training did not wait"
    store.release.set()
    writer.flush()  # an interrupt: the last finished epoch is written before the hand-back
    assert store.saved == [(1, 1.0), (3, 3.0)], "a copy of each epoch's state, not the live one"
    assert writer.written_epoch == 3


def test_every_s_spaces_the_writes_and_a_failed_write_is_raised_in_training() -> None:
    """A write that fails for another reason than the file system (a full disk is a warning:
    tests/test_full_disk.py) is raised in the training thread."""
    from lsearch.search.checkpoints import CheckpointWriter

    store = SlowStore()
    store.release.set()
    writer = CheckpointWriter(store, trial=None, every_s=3600, written_epoch=0)  # type: ignore[arg-type]
    for epoch in (1, 2):
        writer.epoch_done(epoch, {"w": torch.tensor([float(epoch)])})
    writer.wait()
    assert store.saved == [], "within every_s of the trial's start: kept in memory only"
    writer.flush()
    assert store.saved == [(2, 2.0)]

    def broken(trial: object, epoch: int, state: dict) -> None:
        raise RuntimeError("the store broke")

    store.save = broken  # type: ignore[method-assign]
    writer.every_s = 0
    writer.epoch_done(3, {"w": torch.tensor([3.0])})
    with pytest.raises(RuntimeError, match="the store broke"):
        writer.wait()


def test_the_pruning_signal_script_ranks_the_pruner_s_view_against_the_final_value() -> None:
    """scripts/pruning_signal.py, on curves worked by hand, through lsearch's own view of a
    trial (TrialProgress.from_curves, TrialProgress.reported). Spearman's rho of ranks (1, 2, 3)
    against (3, 1, 2) is 1 - 6 * (4 + 1 + 1) / (3 * 8) = -0.5."""
    import importlib.util
    from pathlib import Path

    from optuna.trial import create_trial

    from lsearch.search.trial_progress import TrialProgress
    from lsearch.spec import Objective

    path = Path(__file__).parent.parent / "scripts" / "pruning_signal.py"
    spec = importlib.util.spec_from_file_location("pruning_signal", path)
    assert spec is not None and spec.loader is not None
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)

    def attrs(val_acc: list[list[float]]) -> dict[str, list[list[float]]]:
        other = [[0.0] * len(curve) for curve in val_acc]
        return {"curve_val_acc": val_acc, "curve_train_loss": other,
                "curve_val_loss": other, "curve_val_ece": other}  # fmt: skip

    best, final = Objective(select_epoch="best"), Objective(select_epoch="final")
    dip = TrialProgress.from_curves(attrs([[0.4, 0.3], [0.6, 0.3]]))  # mean 0.5, then 0.3
    assert dip.epochs_run == 2 and dip.history[1][0].val_acc == 0.6
    assert dip.reported(best, 2) == pytest.approx(0.5)
    assert dip.reported(final, 2) == pytest.approx(0.3)
    curves = [[[0.1, 0.9]], [[0.2, 0.5]], [[0.3, 0.7]]]
    trials = [create_trial(value=c[0][-1], user_attrs=attrs(c)) for c in curves]
    (k1, rho1), (k2, rho2) = script.signal(trials, best, epochs=2)
    assert (k1, k2) == (1, 2)
    assert rho1 == pytest.approx(-0.5) and rho2 == pytest.approx(1.0)


def test_search_summary_pairs_the_arms_by_sampler_seed() -> None:
    """Worked by hand: shares 300/1000, 500/1000, 200/800 = 0.3, 0.5, 0.25 (median 0.3),
    best-value differences -0.02, 0, -0.03 (median -0.02) and test-value differences
    0.01, -0.02, 0 (median 0)."""
    runs = []
    for seed, pruned, unpruned in (
        (0, (300, 10.0, 0.95, 0.92), (1000, 40.0, 0.97, 0.91)),
        (1, (500, 20.0, 0.96, 0.90), (1000, 50.0, 0.96, 0.92)),
        (2, (200, 5.0, 0.90, 0.88), (800, 30.0, 0.93, 0.88)),
    ):
        for is_pruned, (seed_epochs, wall, best, test) in ((True, pruned), (False, unpruned)):
            runs.append(SearchRun(seed, is_pruned, seed_epochs, wall, best, 0, test, {}))
    summary = summarise_search(runs)
    assert summary["sampler_seeds"] == 3
    assert summary["work_share"] == pytest.approx({"median": 0.3, "min": 0.25, "max": 0.5})
    assert summary["best_value_difference"] == pytest.approx(
        {"median": -0.02, "min": -0.03, "max": 0.0}
    )
    assert summary["test_value_difference"] == pytest.approx(
        {"median": 0.0, "min": -0.02, "max": 0.01}
    )
    assert summary["pruned"]["test_value"] == pytest.approx(
        {"median": 0.90, "min": 0.88, "max": 0.92}
    )
    assert summary["pruned"]["seed_epochs"] == {"median": 300.0, "min": 200.0, "max": 500.0}
    assert summary["unpruned"]["wall_s"] == {"median": 40.0, "min": 30.0, "max": 50.0}
    assert summary["unpruned"]["best_value"]["median"] == pytest.approx(0.96)


def test_bench_search_json_counts_every_seed_epoch_and_shows_progress(tmp_path) -> None:
    """3 trials of 3 epochs (fewer than the patience) on 3 seeds: the unpruned search trains
    exactly 27 seed-epochs. Progress goes to stderr, the JSON alone to stdout."""
    result = run_lsearch(
        "bench", "--search", "--trials", "3", "--sampler-seeds", "1", "--json", *TINY,
        cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    unpruned, pruned = (
        [run for run in summary["runs"] if run["pruned"] == arm] for arm in (False, True)
    )
    assert [run["seed_epochs"] for run in unpruned] == [27]
    assert 0 < pruned[0]["seed_epochs"] <= 27
    assert summary["work_share"]["median"] == pytest.approx(pruned[0]["seed_epochs"] / 27)
    # Each arm's best configuration, measured on the 500 test images over 5 new seeds.
    tests = [run["test_value"] for run in (pruned[0], unpruned[0])]
    for value in tests:  # a mean of 5 accuracies over 500 images: a multiple of 1/2500
        assert 0 < value <= 1 and value * 2500 == pytest.approx(round(value * 2500))
    assert summary["test_value_difference"]["median"] == pytest.approx(tests[0] - tests[1])
    # The pruner waits for 3 complete trials: both arms run the same 3 and choose alike, and
    # the choice is measured on the same new seeds in both.
    assert pruned[0]["best_config"] == unpruned[0]["best_config"] and tests[0] == tests[1]
    assert "sampler seed 0, unpruned: 27 seed-epochs" in result.stderr
    assert list(tmp_path.iterdir()) == []  # in memory: no storage left behind


def test_a_search_s_test_value_is_its_best_configuration_trained_on_the_new_seeds() -> None:
    """The test value is the best trial's configuration trained again on the given seeds and
    measured on the test set: the same number as training it so by hand."""
    import optuna

    from lsearch.bench.search_runs import run_search
    from lsearch.search.objective import SearchObjective, TrialConfig
    from lsearch.training.data import load_test_set

    spec = load_spec("digits", TINY_SETS)
    cpu = torch.device("cpu")
    pool, test_set = load_pool(spec.data, cpu), load_test_set(spec.data, cpu)
    run = run_search(spec, pool, cpu, 4, 0, prune=False, held_out=(test_set, [5, 6]))
    config = TrialConfig(**run.best_config)
    by_hand = SearchObjective(spec, pool, cpu).train(
        optuna.create_study().ask(), config, [5, 6], prunes=False, test_set=test_set
    )
    assert run.test_value == by_hand["test_acc"]
    assert by_hand["test_acc"] == pytest.approx(sum(by_hand["test_acc_per_seed"]) / 2)
    # Seeds 5 and 6 are not the search's: its own seeds give another number.
    search_seeds = SearchObjective(spec, pool, cpu).train(
        optuna.create_study().ask(), config, spec.seeds, prunes=False, test_set=test_set
    )
    assert search_seeds["test_acc"] != run.test_value


def test_bench_seeds_alternates_the_two_ways_and_reports_each_way_s_median(monkeypatch) -> None:
    """Rounds alternate which way goes first, each timing starts from fresh seed-runs, and
    each way's figure is S x epochs seed-epochs over its median round."""
    from lsearch.bench import seeds as bench_seeds

    timed: list[tuple[bool, int]] = []
    fake = {True: iter([1.0, 2.0, 9.0]), False: iter([3.0, 3.0, 4.0])}

    def seconds(runs: list, together: bool, epochs: int, device: torch.device) -> float:
        assert runs[0].net.model.training is True and len(runs) == 3
        timed.append((together, id(runs[0])))
        return next(fake[together])

    monkeypatch.setattr(bench_seeds, "_seconds", seconds)
    spec = tiny_spec()
    speed = bench_seeds.measure_seeds_together(spec, load_pool(spec.data, CPU), CPU, 3, 2)
    assert [together for together, _ in timed] == [False, True, True, False, False, True]
    assert len({runs for _, runs in timed}) == 6, "fresh seed-runs for every timing"
    assert speed.seed_epochs_per_s == 6 / 2.0 and speed.seed_epochs_per_s_one_at_a_time == 6 / 3.0
    assert speed.ratio == 1.5 and speed.to_json()["together_over_one_at_a_time"] == 1.5
    # Each round's ratio pairs the two timings of that round: 3/1, 3/2, 4/9.
    assert speed.to_json()["together_over_one_at_a_time_per_round"] == [3.0, 1.5, 4 / 9]
    assert speed.conclusion() == (
        "together trains 1.50x the seed-epochs per second of one at a time (median of 3 "
        "alternating rounds of 2 epochs each way; rounds from 0.44x to 3.00x); the rounds "
        "disagree on which way is faster: this machine's noise is larger than the difference, "
        "time more --epochs"
    )
    agreeing = dataclasses.replace(speed, round_ratios=(1.2, 1.5, 1.4))
    assert agreeing.conclusion().endswith("; rounds from 1.20x to 1.50x)")


def test_bench_seeds_trains_every_seed_each_epoch_both_ways(monkeypatch) -> None:
    """One timing of 2 epochs: a warm-up and 2 epochs, every seed trained and evaluated in
    each, through one SeedGroup together and through each seed's own run otherwise."""
    from lsearch.bench import seeds as bench_seeds
    from lsearch.training.together import SeedGroup

    calls: list[str] = []
    for cls, name in ((SeedRun, "train_epoch"), (SeedGroup, "train_epoch"), (SeedRun, "evaluate")):
        real = getattr(cls, name)

        def counted(self, *args, _real=real, _label=f"{cls.__name__}.{name}"):  # type: ignore[no-untyped-def]
            calls.append(_label)
            return _real(self, *args)

        monkeypatch.setattr(cls, name, counted)
    spec = tiny_spec()
    pool = load_pool(spec.data, CPU)
    for together in (True, False):
        calls.clear()
        runs = bench_seeds._fresh_runs(spec, pool, CPU, 3)
        assert [run.seed for run in runs] == [0, 1, 2]
        bench_seeds._seconds(runs, together, 2, CPU)
        trained = "SeedGroup.train_epoch" if together else "SeedRun.train_epoch"
        assert calls.count(trained) == (3 if together else 9)
        assert calls.count("SeedRun.evaluate") == 9 and len(calls) == (12 if together else 18)


def test_bench_seeds_json_runs_without_optuna_and_refuses_one_seed(tmp_path) -> None:
    command = [sys.executable, "-c", BARE, "bench", "--seeds", "2", "--epochs", "1", "--json",
               "--device", "cpu", *TINY]  # fmt: skip
    result = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout)
    assert out["seeds"] == 2 and out["study"] == "digits" and out["device"] == "cpu"
    ratio = out["seed_epochs_per_s"] / out["seed_epochs_per_s_one_at_a_time"]
    assert out["together_over_one_at_a_time"] == pytest.approx(ratio)
    assert len(out["together_over_one_at_a_time_per_round"]) == out["rounds"] == 3
    assert out["frozen_prefix"] == "none", "every layer of digits' baseline trains"
    one = run_lsearch("bench", "--seeds", "1", *TINY, cwd=tmp_path)
    assert one.returncode == 2 and "Traceback" not in one.stderr
    assert (
        one.stderr.strip()
        .splitlines()[-1]
        .endswith("--seeds must be at least 2 to train seeds together (got 1)")
    )
