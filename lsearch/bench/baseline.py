"""The usual way, for `lsearch bench --baseline`: the same configuration trained the way a
typical fine-tuning script does, in the same process, on the same data.

A torch `Dataset` with per-sample torchvision transforms (resized one image at a time on the
CPU), a `DataLoader`, the whole model in train mode with frozen layers only left out of the
optimizer, evaluation every epoch. On CUDA it is the script a user would write for a GPU
(`baseline_loader_options`, `baseline_precision`): loader worker processes kept across
epochs, pinned memory, and autocast in the dtype lsearch trains in (with a gradient scaler
for float16). On the CPU it loads in the main process and trains in float32, as lsearch does
there: loader workers would compete with training for the same cores.
"""

from __future__ import annotations

import contextlib
import os
from typing import Any

import torch
from torch.utils.data import Dataset

from lsearch.bench.timing import Speed, speed_of, timed_epochs
from lsearch.bench.workload import trial_model
from lsearch.spec import StudySpec
from lsearch.training.data import ImagePool, Split
from lsearch.training.devices import Precision, autocast_precision, requested_precision
from lsearch.training.seed_run import make_optimizer

# The usual script's DataLoader workers on a GPU box: as many as it may use, at most 8.
BASELINE_MAX_WORKERS = 8


def baseline_loader_options(device: torch.device) -> dict[str, Any]:
    """The usual script's DataLoader options on `device`. On CUDA: worker processes for the
    per-image transforms (as many as this process may run on, at most 8), kept across epochs
    so that their start-up is not timed every epoch, and pinned memory for the copies to the
    GPU. On the CPU: none, since workers would take the cores training runs on."""
    if device.type != "cuda":
        return {"num_workers": 0, "pin_memory": False}
    return {
        "num_workers": min(BASELINE_MAX_WORKERS, len(os.sched_getaffinity(0))),
        "persistent_workers": True,
        "pin_memory": True,
    }


def baseline_precision(
    spec: StudySpec, device: torch.device
) -> tuple[Precision, torch.amp.GradScaler | None]:
    """The usual script's autocast on `device`: the dtype lsearch trains in there (float32
    on the CPU), with a gradient scaler where that is float16."""
    precision = autocast_precision(device, requested_precision(spec.train.precision))
    scaler = torch.amp.GradScaler("cuda") if precision.scales_gradients else None
    return precision, scaler


class _Expand:
    """Repeat a one-channel image to the model's channels (a class, not a lambda: loader
    workers started by spawn or forkserver get the transforms by pickle)."""

    def __init__(self, channels: int) -> None:
        self.channels = channels

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return x.expand(self.channels, -1, -1)


class _Images(Dataset):
    """Images kept on the CPU, transformed one at a time: the usual Dataset."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, transform: Any) -> None:
        self.images, self.labels, self.transform = images.cpu(), labels.cpu(), transform

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.transform(self.images[index]), self.labels[index]


def baseline_datasets(
    spec: StudySpec, pool: ImagePool, split: Split, channels: int
) -> tuple[Dataset, Dataset]:
    """The usual script's training and validation Datasets: per-image torchvision
    transforms (augmentation, float conversion, resize, normalisation)."""
    from torchvision.transforms import v2

    data = spec.data
    size = data.image_size or pool.images.shape[-1]
    steps: list[Any] = []
    if data.augment.crop_padding:
        steps.append(v2.RandomCrop(pool.images.shape[-1], padding=data.augment.crop_padding))
    if data.augment.flip:
        steps.append(v2.RandomHorizontalFlip())
    tail: list[Any] = [
        v2.ToDtype(torch.float32, scale=True),
        v2.Resize((size, size), antialias=False),
        v2.Normalize(list(pool.mean), list(pool.std)),
    ]
    if pool.images.shape[1] != channels:
        tail.append(_Expand(channels))
    return (
        _Images(split.train_images, split.train_labels, v2.Compose(steps + tail)),
        _Images(split.val_images, split.val_labels, v2.Compose(tail)),
    )


def measure_baseline(
    spec: StudySpec, pool: ImagePool, split: Split, device: torch.device, epochs: int
) -> Speed:
    """The same configuration trained the usual way: per-sample transforms in a Dataset, a
    DataLoader (on CUDA with worker processes and pinned memory), autocast as lsearch's on
    CUDA, model.train() on the whole network (frozen BatchNorm statistics drift, as in such
    scripts), frozen layers only left out of the optimizer, evaluation every epoch."""
    from torch.utils.data import DataLoader

    base = spec.baseline
    net = trial_model(spec, pool, base.trainable_layers)
    trainable = net.trainable_parameters()
    for param in net.model.parameters():
        param.requires_grad_(True)  # the usual script freezes by leaving params out
    model = net.model.to(device)
    optimizer = make_optimizer(trainable, spec.train, base.lr, fused=False)
    precision, scaler = baseline_precision(spec, device)
    train_set, val_set = baseline_datasets(spec, pool, split, net.in_channels)
    options = baseline_loader_options(device)
    train_loader = DataLoader(
        train_set, batch_size=spec.train.batch_size, shuffle=True, drop_last=False, **options
    )
    val_loader = DataLoader(
        val_set, batch_size=spec.train.eval_batch_size, shuffle=False, **options
    )
    criterion = torch.nn.CrossEntropyLoss(label_smoothing=base.label_smoothing)
    # Pinned host memory lets the copies run asynchronously, as such scripts write them.
    copy = {"non_blocking": bool(options["pin_memory"])}

    def autocast() -> contextlib.AbstractContextManager:
        if precision.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device.type, dtype=precision.dtype)

    def train() -> float:
        model.train()
        total = 0.0
        for x, y in train_loader:
            x, y = x.to(device, **copy), y.to(device, **copy)
            if x.shape[0] < 2:
                continue  # BatchNorm cannot train on one image
            optimizer.zero_grad()
            with autocast():
                loss = criterion(model(x), y)
            if scaler is not None:
                scaler.scale(loss).backward()
                scaler.step(optimizer)
                scaler.update()
            else:
                loss.backward()
                optimizer.step()
            total += loss.item()  # the usual per-batch sync
        return total

    def evaluate(_: Any) -> float:
        model.eval()
        correct = 0
        with torch.no_grad(), autocast():
            for x, y in val_loader:
                correct += (model(x.to(device, **copy)).argmax(1) == y.to(device)).sum().item()
        return correct

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    seconds = timed_epochs(epochs, device, train, evaluate)
    return speed_of(split, epochs, seconds, device)
