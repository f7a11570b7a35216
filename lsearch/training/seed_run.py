"""One seed's training run, an epoch at a time: label-smoothed loss and evaluation.

The hot path keeps every image on the device: a batch is an index slice of one uint8
tensor, augmentation is batched tensor ops, and on CUDA the model runs in channels_last
under autocast (bfloat16 where the GPU has it, float16 with a gradient scaler otherwise).
On the CPU channels_last is left off: it made ResNet-18's evaluation at 64 px 3.4 times
slower there, for at most 5 % faster training of the small CNN.
"""

from __future__ import annotations

import contextlib
import math
import random
from collections.abc import Hashable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from lsearch import interrupts
from lsearch.spec import Data, Train
from lsearch.training import metrics
from lsearch.training.augment import prepare
from lsearch.training.data import ImagePool, Split
from lsearch.training.devices import Precision, autocast_precision, requested_precision
from lsearch.training.features import FeatureCache
from lsearch.training.models import LayeredModel


def channels_last(device: torch.device) -> bool:
    """Whether models and inputs on `device` run channels_last (CUDA only: see above)."""
    return device.type == "cuda"


def in_parameter_layout(param: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
    """A copy of `value` (shaped like `param`) with `param`'s strides and `value`'s dtype."""
    return torch.empty_like(param, dtype=value.dtype).copy_(value)


def match_parameter_layout(optimizer: torch.optim.Optimizer) -> None:
    """Give every optimizer state tensor shaped like its parameter the parameter's strides.

    CUDA's fused Adam and SGD refuse a state whose layout is not its parameter's ("params,
    grads, exp_avgs, and exp_avg_sqs must have same dtype, device, and layout"; the CPU's
    take it), and a state loaded from a checkpoint keeps the layout it was saved in: a CPU
    checkpoint's is contiguous, while on CUDA the parameters are channels_last.

    >>> p = torch.nn.Parameter(torch.zeros(2, 3, 4, 4).to(memory_format=torch.channels_last))
    >>> opt = torch.optim.SGD([p], lr=0.1, momentum=0.9)
    >>> opt.state[p]["momentum_buffer"] = torch.zeros(2, 3, 4, 4)
    >>> match_parameter_layout(opt)
    >>> opt.state[p]["momentum_buffer"].stride() == p.stride()
    True
    """
    for group in optimizer.param_groups:
        for param in group["params"]:
            state = optimizer.state.get(param, {})
            for key, value in state.items():
                if (
                    isinstance(value, torch.Tensor)
                    and value.shape == param.shape
                    and value.stride() != param.stride()
                ):
                    state[key] = in_parameter_layout(param, value)


class NonFiniteLossError(RuntimeError):
    """The training loss became NaN or infinite: the trial fails, the search goes on."""


def smoothed_cross_entropy(
    logits: torch.Tensor, targets: torch.Tensor, epsilon: float, convention: str = "uniform"
) -> torch.Tensor:
    """Cross-entropy against label-smoothed targets, averaged over the batch.

    `uniform` (Szegedy et al., PyTorch's `label_smoothing`): (1 − ε)·onehot + ε/K.
    `others`: 1 − ε on the target class and ε/(K − 1) on each other class.
    """
    if convention == "uniform":
        return F.cross_entropy(logits, targets, label_smoothing=epsilon)
    if convention != "others":
        raise ValueError(f"unknown smoothing convention {convention!r}")
    num_classes = logits.shape[-1]
    log_probs = F.log_softmax(logits, dim=-1)
    smoothed = torch.full_like(log_probs, epsilon / (num_classes - 1))
    smoothed.scatter_(-1, targets[:, None], 1.0 - epsilon)
    return -(smoothed * log_probs).sum(dim=-1).mean()


def resume_seed(seed: int, epoch: int) -> int:
    """The seed of a random stream restarted after `epoch` on another kind of device.

    >>> resume_seed(0, 3) == resume_seed(0, 3) != resume_seed(1, 3)
    True
    """
    return int(np.random.SeedSequence((seed, epoch)).generate_state(1, np.uint64)[0] >> 1)


def snapshot(value: Any) -> Any:
    """A copy of a (nested) state on the devices its tensors live on, sharing no memory with
    the live model, so that training may go on while it waits to be written. On a GPU this is
    a device-to-device copy that the training thread does not wait for; the copy to the host
    happens only when a write starts (`to_host`), in the writer's thread."""
    if isinstance(value, torch.Tensor):
        return value.detach().clone()
    if isinstance(value, dict):
        return {key: snapshot(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(snapshot(item) for item in value)
    return value


def seed_everything(seed: int) -> None:
    """Seed Python's, NumPy's and torch's global generators (model init uses its own)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def batch_starts(count: int, batch: int) -> list[int]:
    """Where an epoch's batches of `count` images start. A last batch of one image would
    break BatchNorm in train mode: it is dropped.

    >>> batch_starts(5, 2), batch_starts(6, 2), batch_starts(1, 4)
    ([0, 2], [0, 2, 4], [0])
    """
    return [s for s in range(0, count, batch) if min(batch, count - s) > 1 or s == 0]


def mean_loss(total: float, count: int, batch: int, seed: int) -> float:
    """An epoch's mean training loss from its summed loss (over the images of
    `batch_starts`); NonFiniteLossError when it is NaN or infinite, which fails the trial."""
    mean = total / sum(min(batch, count - s) for s in batch_starts(count, batch))
    if not math.isfinite(mean):
        raise NonFiniteLossError(f"training loss became {mean} (seed {seed})")
    return mean


@dataclass(frozen=True)
class EpochMetrics:
    train_loss: float
    val_loss: float  # NLL of the validation labels (no smoothing)
    val_acc: float
    val_ece: float


@dataclass
class SeedRun:
    """Everything one seed trains with; `train_epoch` and `evaluate` advance and measure it."""

    seed: int
    net: LayeredModel
    split: Split
    pool: ImagePool
    data: Data
    train: Train
    epsilon: float
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler | None
    generator: torch.Generator
    device: torch.device
    scaler: torch.amp.GradScaler | None = None
    precision: Precision = field(default_factory=lambda: Precision(None, "float32"))
    # Where the validation images' frozen-prefix features are kept, and under which key.
    features: FeatureCache = field(default_factory=FeatureCache)
    features_key: Hashable = "val"
    mean: torch.Tensor = field(init=False)
    std: torch.Tensor = field(init=False)

    def __post_init__(self) -> None:
        self.mean = torch.tensor(self.pool.mean, device=self.device).view(1, -1, 1, 1)
        self.std = torch.tensor(self.pool.std, device=self.device).view(1, -1, 1, 1)

    def _autocast(self) -> contextlib.AbstractContextManager:
        if self.precision.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.precision.dtype)

    def _inputs(self, images: torch.Tensor, augment: bool) -> torch.Tensor:
        x = prepare(
            images,
            self.mean,
            self.std,
            self.data.image_size,
            self.net.in_channels,
            self.data.augment if augment else None,
            self.generator,
        )
        if channels_last(self.device):
            x = x.contiguous(memory_format=torch.channels_last)
        return x

    def epoch_order(self) -> torch.Tensor:
        """The seeded random order of the training images for the next epoch."""
        count = self.split.train_labels.shape[0]
        order = torch.randperm(count, generator=self.generator, device=self.generator.device)
        return order.to(self.device)

    def train_epoch(self) -> float:
        """One pass over the training subset in a seeded random order; the mean loss."""
        images, labels = self.split.train_images, self.split.train_labels
        count = labels.shape[0]
        order = self.epoch_order()
        batch = self.train.batch_size
        stops = batch_starts(count, batch)
        self.net.train_mode()
        total = torch.zeros((), device=self.device)
        for start in stops:
            interrupts.check()  # Ctrl-C, SIGTERM, --timeout: stop between batches
            index = order[start : start + batch]
            x = self._inputs(images[index], augment=True)
            with self._autocast():
                logits = self.net.suffix(self.net.prefix(x))
                loss = smoothed_cross_entropy(
                    logits, labels[index], self.epsilon, self.train.smoothing
                )
            self.optimizer.zero_grad(set_to_none=True)
            if self.scaler is not None:
                self.scaler.scale(loss).backward()
                self.scaler.step(self.optimizer)
                self.scaler.update()
            else:
                loss.backward()
                self.optimizer.step()
            total += loss.detach() * index.shape[0]
        if self.scheduler is not None:
            self.scheduler.step()
        return mean_loss(total.item(), count, batch, self.seed)

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue this run bit for bit after the current epoch."""
        # Frozen groups are left out: they are rebuilt, bit for bit, from the weights.
        return {
            "model": self.net.trainable_state(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": None if self.scheduler is None else self.scheduler.state_dict(),
            "scaler": None if self.scaler is None else self.scaler.state_dict(),
            "generator": self.generator.get_state(),
            "device": self.device.type,
        }

    def load_state_dict(self, state: dict[str, Any], epoch: int) -> bool:
        """Continue from `state`, saved after `epoch`; whether it came from another kind of
        device. Weights, optimizer and scheduler carry over to any device. A random stream
        does not: a CUDA generator's state is 16 bytes and a CPU one's 5,056, and neither
        loads into the other, so after a move the stream restarts from a generator seeded
        from (seed, epoch): deterministic, though not the numbers the first device would
        have drawn. A float16 run's gradient scaler restarts where the new device has none."""
        self._load_trainable(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        match_parameter_layout(self.optimizer)
        if self.scheduler is not None:
            self.scheduler.load_state_dict(state["scheduler"])
        if self.scaler is not None and state["scaler"] is not None:
            self.scaler.load_state_dict(state["scaler"])
        generator = state["generator"].cpu()
        # Checkpoints written before the device was recorded: tell by the state's size.
        same_size = generator.numel() == self.generator.get_state().numel()
        moved = state["device"] != self.device.type if "device" in state else not same_size
        if moved:
            self.generator.manual_seed(resume_seed(self.seed, epoch))
        else:
            self.generator.set_state(generator)
        return moved

    def _chunks(self, count: int) -> list[slice]:
        size = self.train.eval_batch_size
        return [slice(start, start + size) for start in range(0, count, size)]

    def val_features(self) -> torch.Tensor:
        """The frozen prefix's output for the validation images: never augmented, and the
        prefix never changes, so it is computed once (see FeatureCache). Only called with a
        frozen prefix: without one the "features" would be the inputs themselves (at 224 px,
        600 MB in float32 for 1,000 images), which cost a resize to remake and save nothing."""
        found = self.features.get(self.features_key)
        if found is not None:
            return found
        images = self.split.val_images
        chunks = []
        for part in self._chunks(images.shape[0]):
            with self._autocast():
                chunks.append(self.net.prefix(self._inputs(images[part], augment=False)))
        features = torch.cat(chunks)
        self.features.put(self.features_key, features)
        return features

    @torch.inference_mode()
    def predict(self, images: torch.Tensor | None = None) -> torch.Tensor:
        """Logits (float32, on the device) of the validation images (from their cached
        frozen-prefix features), or of `images` (through the whole model)."""
        self.net.model.eval()
        logits = []
        if images is None and self.net.frozen_stages == 0:
            images = self.split.val_images
        if images is None:
            features = self.val_features()
            for part in self._chunks(features.shape[0]):
                with self._autocast():
                    logits.append(self.net.suffix(features[part]).float())
        else:
            for part in self._chunks(images.shape[0]):
                x = self._inputs(images[part], augment=False)
                with self._autocast():
                    logits.append(self.net.suffix(self.net.prefix(x)).float())
        return torch.cat(logits)

    def _load_trainable(self, state: dict[str, torch.Tensor]) -> None:
        result = self.net.model.load_state_dict(state, strict=False)
        frozen = set(self.net.model.state_dict()) - set(self.net.trainable_state())
        if result.unexpected_keys or set(result.missing_keys) - frozen:
            raise ValueError(f"checkpoint does not fit the model: {result}")

    def weights(self) -> dict[str, torch.Tensor]:
        """A copy of the trainable groups' weights as they are now (kept for a later test
        evaluation; the frozen groups never change)."""
        return {k: v.clone() for k, v in self.net.trainable_state().items()}

    def predict_with(self, weights: dict[str, torch.Tensor], images: torch.Tensor) -> torch.Tensor:
        """Logits of `images` under other weights (say, the chosen epoch's); the model's own
        weights are put back afterwards, so training continues undisturbed."""
        current = self.weights()
        self._load_trainable(weights)
        try:
            return self.predict(images)
        finally:
            self._load_trainable(current)

    def evaluate(self, train_loss: float) -> tuple[EpochMetrics, torch.Tensor]:
        logits = self.predict()
        labels = self.split.val_labels
        result = EpochMetrics(
            train_loss=train_loss,
            val_loss=metrics.nll(logits, labels),
            val_acc=metrics.accuracy(logits, labels),
            val_ece=metrics.ece(logits, labels),
        )
        return result, logits


def make_optimizer(
    params: list[torch.nn.Parameter], train: Train, lr: float, fused: bool = True
) -> torch.optim.Optimizer:
    """The study's optimizer. `fused` updates every parameter in one kernel (CPU and CUDA)
    instead of a Python loop of small ops per tensor: for the small CNN on the CPU a step takes
    0.15 ms instead of 0.25 to 0.37 ms. `fused=False` is PyTorch's default, the usual way."""
    options: dict[str, Any] = {"lr": lr, "weight_decay": train.weight_decay}
    if fused:
        options["fused"] = True
    if train.optimizer == "sgd":
        return torch.optim.SGD(params, momentum=train.momentum, **options)
    if train.optimizer == "adamw":
        return torch.optim.AdamW(params, **options)
    return torch.optim.Adam(params, **options)


def start_seed_run(
    seed: int,
    net: LayeredModel,
    split: Split,
    pool: ImagePool,
    data: Data,
    train: Train,
    epsilon: float,
    lr: float,
    epochs: int,
    device: torch.device,
) -> SeedRun:
    """Move a built (and frozen) model to the device and give it its optimizer and RNG."""
    net.model.to(device)
    net.head_in_float32()
    if channels_last(device):
        net.model.to(memory_format=torch.channels_last)
    optimizer = make_optimizer(net.trainable_parameters(), train, lr)
    scheduler = (
        torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=epochs)
        if train.schedule == "cosine"
        else None
    )
    precision = autocast_precision(device, requested_precision(train.precision))
    scaler = torch.amp.GradScaler("cuda") if precision.scales_gradients else None
    generator = torch.Generator(device=device).manual_seed(seed)
    return SeedRun(
        seed,
        net,
        split,
        pool,
        data,
        train,
        epsilon,
        optimizer,
        scheduler,
        generator,
        device,
        scaler,
        precision,
    )
