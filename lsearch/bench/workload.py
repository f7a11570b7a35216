"""What `lsearch bench` trains on: the study's data (or random images of its shape, offline)
and the model as a trial builds it for a seed.

Nothing here touches a storage: Optuna and SQLAlchemy are not imported.
"""

from __future__ import annotations

import atexit
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from lsearch.errors import UserError
from lsearch.spec import StudySpec
from lsearch.training.data import ImagePool, load_pool, split_for_seed
from lsearch.training.features import FeatureCache
from lsearch.training.models import LayeredModel, build_model
from lsearch.training.seed_run import SeedRun, seed_everything, start_seed_run

# Shapes of the datasets lsearch knows: channels, side, classes (before data.classes).
SHAPES = {"digits": (1, 8, 10), "cifar10": (3, 32, 10)}


def synthetic_pool(spec: StudySpec, device: torch.device) -> ImagePool:
    """Random uint8 images and balanced labels of the study's shape and counts."""
    channels, side, classes = SHAPES[spec.data.dataset]
    classes = len(spec.data.classes) if spec.data.classes else classes
    per_class = spec.data.train_per_class + spec.data.val_per_class
    generator = np.random.default_rng(0)
    images = generator.integers(0, 256, (per_class * classes, channels, side, side), np.uint8)
    labels = np.repeat(np.arange(classes), per_class)
    return ImagePool(
        images=torch.from_numpy(images).to(device),
        labels=torch.from_numpy(labels).to(device),
        num_classes=classes,
        mean=(0.5,) * channels,
        std=(0.29,) * channels,
    )


def bench_data(
    spec: StudySpec, device: torch.device, synthetic: bool
) -> tuple[StudySpec, ImagePool, list[str]]:
    """The pool to train on and the spec to build the model from, with notes on what was
    substituted (random data; random weights where the study's cannot be had offline)."""
    notes = []
    if synthetic:
        pool = synthetic_pool(spec, device)
        notes.append(f"synthetic data: random images of {spec.data.dataset}'s shape")
        if spec.model.weights != "none":
            try:
                build_model(spec.model, pool.images.shape[1], pool.num_classes, seed=0)
            except UserError:
                model = spec.model.model_copy(
                    update={"weights": str(random_weights(spec)), "weights_sha256": None}
                )
                spec = spec.model_copy(update={"model": model})
                notes.append(
                    "randomly initialised weights, the same for every seed as the study's would "
                    "be: the study's weights cannot be had here (the speed is the same)"
                )
    else:
        pool = load_pool(spec.data, device, spec.model.weights)
    return spec, pool, notes


def random_weights(spec: StudySpec) -> Path:
    """A file of randomly initialised weights of the study's architecture, standing in for
    pretrained ones that cannot be had here: like them, every seed starts its frozen layers
    from the same tensors (so seeds trained together share the frozen prefix). It lives in a
    folder of this process, removed when the process exits."""
    folder = Path(tempfile.mkdtemp(prefix="lsearch-bench-"))
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    path = folder / f"random-{spec.model.name}.pth"
    plain = spec.model.model_copy(update={"weights": "none", "weights_sha256": None})
    torch.save(build_model(plain, 3, 10, seed=0).model.state_dict(), path)
    return path


def trial_model(
    spec: StudySpec, pool: ImagePool, trainable_layers: int, seed: int = 0
) -> LayeredModel:
    """The model as a trial builds it for `seed` (objective.SearchObjective.start)."""
    seed_everything(seed)
    net = build_model(spec.model, pool.images.shape[1], pool.num_classes, seed=seed)
    net.freeze(trainable_layers)
    return net


def trial_runs(
    spec: StudySpec, pool: ImagePool, device: torch.device, seeds: Sequence[int],
    cache: FeatureCache,
) -> list[SeedRun]:  # fmt: skip
    """The seed-runs of the baseline configuration on `seeds`, as a trial starts them, sharing
    the feature cache as a worker's trials do (keyed by seed and trainable layers)."""
    base, runs = spec.baseline, []
    for seed in seeds:
        run = start_seed_run(
            seed, trial_model(spec, pool, base.trainable_layers, seed),
            split_for_seed(pool, spec.data, seed), pool, spec.data, spec.train,
            base.label_smoothing, base.lr, base.epochs, device,
        )  # fmt: skip
        run.features, run.features_key = cache, (seed, base.trainable_layers)
        runs.append(run)
    return runs


def sync(device: torch.device) -> None:
    """Wait for the work queued on `device` (a no-op on the CPU), so a clock reads it."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
