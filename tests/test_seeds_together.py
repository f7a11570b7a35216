"""Seeds trained together (lsearch.training.together) give each seed the numbers it gets
trained alone, to float tolerance: weights, BatchNorm statistics, losses and logits, for the
small CNN (two epochs of four batches, AdamW) and ResNet-18 (one epoch of one batch, SGD) at
every number of trainable layers, with augmentation; and a rerun of the batched path repeats itself
exactly.

ResNet-18 from a random initialisation at 32 px is numerically chaotic: its last stages see
1 × 1 feature maps, and the last bits that the summation order moves grow about tenfold a
step in the stem's gradient (measured: 1e-7 after one SGD step, 2e-5 after two, 2e-4 after
three; over two epochs of AdamW the losses part by 5 %). AdamW's first steps are about
lr · sign(gradient), so a gradient near 0 whose last bits differ moves a weight by lr either
way; SGD moves it by lr times the difference. Hence one step of SGD for ResNet-18: the
comparison then measures the batched computation, not the chaos."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any

import optuna
import pytest
import torch
import torch.nn.functional as F
from optuna.trial import FrozenTrial, TrialState

from lsearch.search.checkpoints import Checkpoints, open_artifact_store
from lsearch.search.loop import run_until
from lsearch.search.objective import SearchObjective, TrialConfig
from lsearch.spec import StudySpec
from lsearch.training import seed_run, together
from lsearch.training.data import load_pool, split_for_seed
from lsearch.training.models import build_model
from lsearch.training.seed_run import SeedRun, start_seed_run
from lsearch.training.together import (
    AUTO_LARGEST_SIDE,
    SeedGroup,
    seed_slice,
    together_on,
    trains_together,
)

CPU = torch.device("cpu")
SEEDS = (0, 1, 2)
EPOCHS = 2


def _spec(model: str, trainable: int, optimizer: str = "adamw") -> StudySpec:
    """`model`: resnet18, small_cnn from scratch, or "pretrained" (the small CNN with the
    digits-0-4 weights that ship in lsearch, as digits-transfer: a frozen prefix shared by
    every seed, with BatchNorm in it)."""
    resnet, pretrained = model == "resnet18", model == "pretrained"
    return StudySpec.model_validate(
        {
            "name": "together",
            "seeds": list(SEEDS),
            "data": {
                "dataset": "digits",
                "train_per_class": 6,
                "val_per_class": 4,
                "augment": {"crop_padding": 1},
                "image_size": 32 if resnet else None,
                **({"classes": [5, 6, 7, 8, 9]} if pretrained else {}),
            },
            "model": {"name": "small_cnn", "width": 16, "weights": "digits-0-4"}
            if pretrained
            else {"name": model, "width": 8},
            "train": {
                "batch_size": 64 if resnet else 16,
                "eval_batch_size": 64,
                "optimizer": "sgd" if resnet else optimizer,
                "schedule": "cosine",
            },
            "baseline": {
                "epochs": 1 if resnet else EPOCHS,
                "trainable_layers": trainable,
                "lr": 3e-3,
                "label_smoothing": 0.1,
            },
            "checkpoint": {"enabled": False},
        }
    )


def _runs(spec: StudySpec) -> list[SeedRun]:
    pool = load_pool(spec.data, CPU)
    base = spec.baseline
    runs = []
    for seed in SEEDS:
        net = build_model(spec.model, pool.images.shape[1], pool.num_classes, seed=seed)
        net.freeze(base.trainable_layers)
        runs.append(
            start_seed_run(
                seed,
                net,
                split_for_seed(pool, spec.data, seed),
                pool,
                spec.data,
                spec.train,
                base.label_smoothing,
                base.lr,
                base.epochs,
                CPU,
            )
        )
    return runs


def _together(spec: StudySpec) -> tuple[list[SeedRun], list[list[float]]]:
    runs = _runs(spec)
    group = SeedGroup(runs)
    return runs, [group.train_epoch() for _ in range(spec.baseline.epochs)]


# ResNet-18 with layer2 or more trainable: see the Gaussian-image test below.
CASES = (
    [("small_cnn", t) for t in (1, 2, 3, 4)]
    + [("pretrained", t) for t in (1, 2, 3)]
    + [("resnet18", t) for t in (1, 2, 3)]
)


@pytest.mark.parametrize(("model", "trainable"), CASES)
def test_seeds_together_match_each_seed_alone(model: str, trainable: int) -> None:
    spec = _spec(model, trainable)
    alone = _runs(spec)
    alone_losses = [[run.train_epoch() for run in alone] for _ in range(spec.baseline.epochs)]
    together, together_losses = _together(spec)
    torch.testing.assert_close(together_losses, alone_losses, rtol=1e-5, atol=1e-6)
    for one, other in zip(alone, together, strict=True):
        theirs = other.net.model.state_dict()
        # ResNet-18's gradients on digits are sums of thousands of terms that largely cancel
        # (flat backgrounds): a BatchNorm bias's gradient moves by 2 % relative between the
        # paths, 5e-5 in a weight after one step; on Gaussian images every gradient of the
        # two paths agrees to 1e-5 relative.
        atol = 5e-5 if model == "resnet18" else 1e-5
        for name, a in one.net.model.state_dict().items():
            torch.testing.assert_close(theirs[name], a, rtol=1e-4, atol=atol)
        # ResNet-18's logits sum 512 features through 20 layers: 1e-4 is its float tolerance.
        torch.testing.assert_close(
            other.predict(other.split.val_images), one.predict(one.split.val_images),
            rtol=1e-4, atol=1e-4,
        )  # fmt: skip
        frozen = one.net.groups[trainable:]
        assert all(not p.requires_grad for group in frozen for p in group.parameters())


@pytest.mark.parametrize("trainable", [4, 5, 6])
def test_resnet18_gradients_together_equal_alone_in_float64(trainable: int) -> None:
    """With layer2 and more trainable, ResNet-18's float32 gradients are chaotic: a
    pre-activation within rounding of 0 goes through its ReLU on one path and not on the
    other, and a gradient that is a sum of terms that largely cancel (a BatchNorm bias's)
    moves by about 1 %. Which path lands on float64's side is luck (measured on Gaussian
    images: seed 0 together 5e-6 from float64 and alone 0.3 %, another seed the other way
    round). So the batched computation is checked where rounding flips nothing: in float64,
    one forward and backward on Gaussian images, every gradient of every seed together
    equals the seed's own to 1e-9 relative."""
    spec = _spec("resnet18", trainable)
    runs = _runs(spec)
    for run in runs:
        run.net.model.double()
    group = SeedGroup(runs)
    generator = torch.Generator().manual_seed(1)
    inputs = torch.randn(len(SEEDS), 60, 3, 32, 32, generator=generator, dtype=torch.float64)
    labels = torch.stack([run.split.train_labels for run in runs])
    group.net.train_mode()
    logits = group.net.suffix(group._features(list(inputs)))
    sum(F.cross_entropy(logits[:, s], labels[s]) for s in range(len(SEEDS))).backward()
    for s, run in enumerate(runs):
        run.net.train_mode()
        F.cross_entropy(run.net.model(inputs[s]), labels[s]).backward()
        for name, param in run.net.model.named_parameters():
            grouped = group.net.model.get_parameter(name)
            if not param.requires_grad:
                assert grouped.grad is None, name
                continue
            together = seed_slice(grouped.grad, len(SEEDS), s, param.shape)
            torch.testing.assert_close(together, param.grad, rtol=1e-9, atol=1e-12)


def test_seeds_together_differ_from_each_other_and_repeat_exactly() -> None:
    """Each seed stays its own (different weights), and a rerun gives the same bits."""
    spec = _spec("small_cnn", 4, optimizer="sgd")
    first, first_losses = _together(spec)
    again, again_losses = _together(spec)
    assert first_losses == again_losses
    assert len({round(loss, 6) for loss in first_losses[-1]}) == len(SEEDS)
    for one, other in zip(first, again, strict=True):
        theirs = other.net.model.state_dict()
        assert all(torch.equal(a, theirs[name]) for name, a in one.net.model.state_dict().items())


def test_a_seed_that_leaves_the_group_lets_the_others_go_on_as_they_would_alone() -> None:
    """A comparison's seed-runs stop on their own: after epoch 1 seed 1 leaves, seeds 0 and 2
    go on together for epoch 2, then seed 2 leaves and seed 0 trains epoch 3 alone; every
    seed ends as it would have trained alone for its epochs."""
    spec = _spec("small_cnn", 3)
    alone = _runs(spec)
    expected = {run.seed: [] for run in alone}
    for epochs, run in zip((3, 1, 2), alone, strict=True):
        expected[run.seed] = [run.train_epoch() for _ in range(epochs)]
    runs = _runs(spec)
    group = SeedGroup(runs)
    losses = {run.seed: [loss] for run, loss in zip(runs, group.train_epoch(), strict=True)}
    group = group.without([runs[1]])
    assert group is not None and [run.seed for run in group.runs] == [0, 2]
    for run, loss in zip(group.runs, group.train_epoch(), strict=True):
        losses[run.seed].append(loss)
    assert group.without([runs[2]]) is None, "one seed left trains alone"
    losses[0].append(runs[0].train_epoch())
    torch.testing.assert_close(losses, expected, rtol=1e-5, atol=1e-6)
    for one, other in zip(alone, runs, strict=True):
        torch.testing.assert_close(
            other.net.trainable_state(), one.net.trainable_state(), rtol=1e-4, atol=1e-5
        )


def test_seeds_together_need_training_subsets_of_one_size() -> None:
    runs = _runs(_spec("small_cnn", 2))
    runs[1].split = dataclasses.replace(runs[1].split, train_labels=runs[1].split.train_labels[:-1])
    with pytest.raises(ValueError, match="training subsets of one size"):
        SeedGroup(runs).train_epoch()


# A search trial trained together or one seed after another, with a checkpoint every epoch.
TRIAL = {
    "name": "trial",
    "seeds": list(SEEDS),
    "data": {"dataset": "digits", "train_per_class": 12, "val_per_class": 10,
             "augment": {"crop_padding": 1}},
    "model": {"name": "small_cnn", "width": 8},
    "train": {"batch_size": 32, "optimizer": "adam", "schedule": "cosine", "patience": None},
    "space": {"label_smoothing": {"value": 0.1}, "epochs": {"value": 3}, "lr": {"value": 3e-3},
              "trainable_layers": {"value": 3}},
    "pruner": {"type": "none"},
    "checkpoint": {"every_s": 0},
}  # fmt: skip


REAL_SAVE = Checkpoints.save  # not a patched one: each trial records only its own


def _search_trial(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, together: bool
) -> tuple[FrozenTrial, dict[int, dict[str, Any]]]:
    """One search trial of TRIAL and the checkpoint written after each of its epochs."""
    spec = StudySpec.model_validate(
        {**TRIAL, "train": {**TRIAL["train"], "seeds_together": together}}
    )
    saved: dict[int, dict[str, Any]] = {}

    def save(self: Checkpoints, trial: Any, epoch: int, state: dict[str, Any]) -> None:
        saved[epoch] = state
        REAL_SAVE(self, trial, epoch, state)

    monkeypatch.setattr(Checkpoints, "save", save)
    folder = tmp_path / ("together" if together else "alone")
    folder.mkdir()
    checkpoints = Checkpoints(open_artifact_store(str(folder)))
    objective = SearchObjective(spec, load_pool(spec.data, CPU), CPU, checkpoints=checkpoints)
    study = optuna.create_study(direction="maximize")
    run_until(study, objective, 1)
    (trial,) = study.trials
    assert trial.state == TrialState.COMPLETE, trial.user_attrs
    return trial, saved


def test_a_search_trial_together_is_the_trial_alone_within_float_tolerance(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Whole trials: every curve and per-seed result of the trial trained together is the
    trial's alone, to float tolerance (accuracy to the image: none moved here); every epoch's
    checkpoint holds, per seed, the same weights, optimizer state and schedule and the same
    random stream (bit for bit), so either path resumes the other's checkpoint."""
    alone, alone_saved = _search_trial(tmp_path, monkeypatch, together=False)
    together, together_saved = _search_trial(tmp_path, monkeypatch, together=True)
    assert alone.user_attrs["seeds_together"] is False
    assert together.user_attrs["seeds_together"] is True
    for name in ("curve_train_loss", "curve_val_loss", "curve_val_ece", "val_nll_per_seed",
                 "val_ece_per_seed", "temperature_per_seed"):  # fmt: skip
        torch.testing.assert_close(
            together.user_attrs[name], alone.user_attrs[name], rtol=1e-4, atol=1e-5
        )
    assert together.user_attrs["curve_val_acc"] == alone.user_attrs["curve_val_acc"]
    assert sorted(together_saved) == sorted(alone_saved) == [1, 2, 3]
    for epoch, state in together_saved.items():
        for mine, theirs in zip(state["seeds"], alone_saved[epoch]["seeds"], strict=True):
            assert torch.equal(mine["generator"], theirs["generator"])
            assert mine["scheduler"] == theirs["scheduler"]
            torch.testing.assert_close(mine["model"], theirs["model"], rtol=1e-4, atol=1e-5)
            torch.testing.assert_close(mine["optimizer"], theirs["optimizer"], rtol=1e-4, atol=1e-6)


def test_a_checkpoint_written_alone_resumes_together_and_the_other_way_round(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Resume after epoch 1 from one path's checkpoint and train epochs 2 and 3 on the other:
    the seeds end where the uninterrupted trial does."""
    spec = StudySpec.model_validate(TRIAL)
    alone, alone_saved = _search_trial(tmp_path, monkeypatch, together=False)
    _, together_saved = _search_trial(tmp_path, monkeypatch, together=True)
    objective = SearchObjective(spec, load_pool(spec.data, CPU), CPU)
    config = TrialConfig(0.1, 3, 3e-3, 3)
    for written, resume_together in ((alone_saved, True), (together_saved, False)):
        runs = [objective.start(seed, config) for seed in SEEDS]
        for run, state in zip(runs, written[1]["seeds"], strict=True):
            assert run.load_state_dict(state, epoch=1) is False
        if resume_together:
            group = SeedGroup(runs)
            losses = [group.train_epoch() for _ in (2, 3)]
        else:
            losses = [[run.train_epoch() for run in runs] for _ in (2, 3)]
        expected = [[curve[epoch - 1] for curve in alone.user_attrs["curve_train_loss"]]
                    for epoch in (2, 3)]  # fmt: skip
        torch.testing.assert_close(losses, expected, rtol=1e-4, atol=1e-5)
        for run, state in zip(runs, alone_saved[3]["seeds"], strict=True):
            torch.testing.assert_close(
                run.net.trainable_state(), state["model"], rtol=1e-4, atol=1e-5
            )


def test_seeds_together_is_left_out_of_the_spec_check() -> None:
    """A worker on another device (auto: on on CUDA, off on the CPU) may continue a study."""
    spec = StudySpec.model_validate(TRIAL)
    other = StudySpec.model_validate({**TRIAL, "train": {**TRIAL["train"], "seeds_together": True}})
    assert spec.fingerprint() == other.fingerprint()
    assert spec.same_trials_as(other.to_dict()) and spec.same_trials_as(other.to_dict(), True)


def test_auto_trains_seeds_together_on_cuda_up_to_64_px_and_never_under_a_gradient_scaler() -> None:
    spec = StudySpec.model_validate(TRIAL)
    runs = _runs(_spec("small_cnn", 2))
    cuda = torch.device("cuda")
    assert trains_together("auto", cuda, runs) and not trains_together("auto", CPU, runs)
    assert trains_together(True, CPU, runs) and not trains_together(False, cuda, runs)
    assert not trains_together(True, cuda, runs[:1]), "one seed has nothing to group"
    # Up to 64 px auto groups on CUDA; at 224 px (the CIFAR-10 study) it measured slower.
    assert together_on("auto", cuda, AUTO_LARGEST_SIDE) and AUTO_LARGEST_SIDE == 64
    assert not together_on("auto", cuda, AUTO_LARGEST_SIDE + 1) and together_on(True, cuda, 224)
    for run in runs:
        run.data = run.data.model_copy(update={"image_size": 224})
    assert not trains_together("auto", cuda, runs) and trains_together(True, cuda, runs)
    for run in runs:
        run.data = run.data.model_copy(update={"image_size": None})
    runs[0].scaler = torch.amp.GradScaler("cpu")  # float16 on a GPU without bfloat16
    assert not trains_together(True, cuda, runs)
    with pytest.raises(ValueError, match="gradient scaler"):
        SeedGroup(runs)
    assert spec.train.seeds_together == "auto"


def _layout_mismatches(optimizer: torch.optim.Optimizer) -> list[str]:
    """The optimizer's states whose strides are not their parameter's, which CUDA's fused
    Adam refuses ("params, grads, exp_avgs, and exp_avg_sqs must have same dtype, device, and
    layout") and the CPU's takes."""
    return [
        f"{key} of a {tuple(param.shape)} parameter: {value.stride()} vs {param.stride()}"
        for group in optimizer.param_groups
        for param in group["params"]
        for key, value in optimizer.state.get(param, {}).items()
        if value.shape == param.shape and value.stride() != param.stride()
    ]


def test_optimizer_states_take_their_parameters_layout_on_resume_and_regrouping(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With channels_last models, as on CUDA: a checkpoint written with contiguous tensors (on
    the CPU) resumes alone and together, a group hands its state to each seed, and a group a
    seed left goes on, every optimizer state in its parameter's layout. On an H200 every trial
    resumed on the GPU failed at its first step with the error above (2026-12-04)."""
    _, saved = _search_trial(tmp_path, monkeypatch, together=False)
    monkeypatch.setattr(seed_run, "channels_last", lambda device: True)
    monkeypatch.setattr(together, "channels_last", lambda device: True)
    spec = StudySpec.model_validate(TRIAL)
    objective = SearchObjective(spec, load_pool(spec.data, CPU), CPU)
    config = TrialConfig(0.1, 3, 3e-3, 3)
    alone = objective.start(0, config)
    assert not all(p.is_contiguous() for p in alone.net.trainable_parameters()), "not mocked"
    alone.load_state_dict(saved[1]["seeds"][0], epoch=1)
    assert _layout_mismatches(alone.optimizer) == []
    runs = [objective.start(seed, config) for seed in SEEDS]
    for run, state in zip(runs, saved[1]["seeds"], strict=True):
        run.load_state_dict(state, epoch=1)
    group = SeedGroup(runs)
    assert _layout_mismatches(group.optimizer) == []
    group.train_epoch()
    group.sync_optimizers()
    assert [_layout_mismatches(run.optimizer) for run in runs] == [[], [], []]
    smaller = group.without([runs[1]])
    assert smaller is not None and _layout_mismatches(smaller.optimizer) == []
    smaller.train_epoch()
    assert smaller.without([runs[2]]) is None
    assert _layout_mismatches(runs[0].optimizer) == []
    assert math.isfinite(runs[0].train_epoch())
