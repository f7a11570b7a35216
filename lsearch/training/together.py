"""Seeds trained together: the S seed-runs of one configuration as one computation.

`torch.func.stack_module_state` stacks the S seeds' parameters and buffers along a new first
dimension and `vmap(functional_call)` runs their S forward passes as one. BatchNorm's running
statistics are buffers vmapped with the rest, so each seed's update lands in its own slice:
every seed keeps its own initialisation, data subset, batch order, augmentation (its own
generator, drawn in the order it would draw alone), optimizer state and BatchNorm statistics.
Each seed's loss is the mean over its own batch; the gradient of their sum with respect to a
seed's slice is that seed's gradient, and the optimizers lsearch uses (SGD with momentum,
Adam, AdamW) update elementwise, so one step of the stacked tensors is every seed's own step,
up to the summation order of floating point.

The seeds' batches line up because every seed draws the same number of training images
(`data.train_per_class` per class) and batches them at the same size.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn
from torch.func import functional_call, stack_module_state, vmap

from lsearch import interrupts
from lsearch.training.seed_run import NonFiniteLossError, SeedRun, smoothed_cross_entropy


def _plain_copy(model: nn.Module) -> nn.Module:
    """A parameterless copy of `model` (on the meta device) that runs its class's own
    forward: an instance's patched forward (the float32 head) would call the original
    module's parameters, not the stacked ones."""
    template = copy.deepcopy(model).to("meta")
    for module in template.modules():
        module.__dict__.pop("forward", None)
    return template


class StackedSeeds:
    """The models of S seed-runs of one configuration, stacked: one forward for all, their
    trainable tensors for one optimizer, and `write_back` into each seed's own model."""

    def __init__(self, runs: Sequence[SeedRun]) -> None:
        nets = [run.net for run in runs]
        self.nets = nets
        self.template = _plain_copy(nets[0].model)
        params, buffers = stack_module_state([net.model for net in nets])
        trainable = {n for n, p in nets[0].model.named_parameters() if p.requires_grad}
        self.params = {n: p.detach().requires_grad_(n in trainable) for n, p in params.items()}
        self.buffers = buffers
        names = {id(module): name for name, module in nets[0].model.named_modules()}
        frozen = nets[0].groups[nets[0].trainable_layers :] if nets[0].trainable_layers else []
        # A group may be a container outside the model (ResNet's stem): its parts are in it.
        self.frozen_modules = [
            self.template.get_submodule(names[id(module)])
            for group in frozen
            for module in group.modules()
            if id(module) in names
        ]
        self._head_in_float32(self.template.get_submodule(names[id(nets[0].groups[0])]))

    @staticmethod
    def _head_in_float32(head: nn.Module) -> None:
        """The head in float32 under autocast, as `LayeredModel.head_in_float32` does alone
        (functional_call swaps the stacked slices into `head` itself, so it reads them)."""
        plain_forward = type(head).forward

        def forward(x: torch.Tensor) -> torch.Tensor:
            with torch.autocast(x.device.type, enabled=False):
                return plain_forward(head, x.float())

        head.forward = forward  # type: ignore[method-assign]

    def trainable(self) -> list[torch.Tensor]:
        """The stacked tensors an optimizer steps (those of the trainable groups)."""
        return [p for p in self.params.values() if p.requires_grad]

    def train_mode(self) -> None:
        """Train mode, frozen groups in eval mode (their BatchNorm statistics fixed)."""
        self.template.train()
        for module in self.frozen_modules:
            module.eval()

    def _one(self, params: dict[str, Any], buffers: dict[str, Any], x: torch.Tensor) -> Any:
        return functional_call(self.template, (params, buffers), (x,))

    def __call__(self, inputs: torch.Tensor) -> torch.Tensor:
        """Logits of shape (S, batch, classes) for inputs of shape (S, batch, ...)."""
        return vmap(self._one)(self.params, self.buffers, inputs)

    @torch.no_grad()
    def write_back(self) -> None:
        """Copy each seed's slice into its own model, which evaluates and checkpoints it."""
        for index, net in enumerate(self.nets):
            for name, tensor in net.model.named_parameters():
                tensor.copy_(self.params[name][index])
            for name, tensor in net.model.named_buffers():
                tensor.copy_(self.buffers[name][index])


def train_epoch_together(
    runs: Sequence[SeedRun],
    stacked: StackedSeeds,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler | None = None,
) -> list[float]:
    """One epoch of every seed-run at once (see `SeedRun.train_epoch`, which each seed would
    run alone): each seed's mean training loss. The seeds' models hold the new weights after
    it (`StackedSeeds.write_back`).

    >>> import torch
    >>> from lsearch.spec import StudySpec
    >>> from lsearch.training.data import load_pool, split_for_seed
    >>> from lsearch.training.models import build_model
    >>> from lsearch.training.seed_run import make_optimizer, start_seed_run
    >>> spec = StudySpec.model_validate({"name": "s", "model": {"width": 8},
    ...     "data": {"train_per_class": 4, "val_per_class": 2}, "train": {"batch_size": 16}})
    >>> pool, cpu = load_pool(spec.data, torch.device("cpu")), torch.device("cpu")
    >>> runs = []
    >>> for seed in (0, 1):
    ...     net = build_model(spec.model, 1, pool.num_classes, seed)
    ...     net.freeze(2)
    ...     runs.append(start_seed_run(seed, net, split_for_seed(pool, spec.data, seed), pool,
    ...                                spec.data, spec.train, 0.1, 3e-3, 1, cpu))
    >>> stacked = StackedSeeds(runs)
    >>> optimizer = make_optimizer(stacked.trainable(), spec.train, 3e-3)
    >>> losses = train_epoch_together(runs, stacked, optimizer)
    >>> len(losses), losses[0] != losses[1]
    (2, True)
    """
    first = runs[0]
    count = first.split.train_labels.shape[0]
    if any(run.split.train_labels.shape[0] != count for run in runs):
        raise ValueError("seeds trained together need training subsets of one size")
    orders = [
        torch.randperm(count, generator=run.generator, device=run.generator.device).to(run.device)
        for run in runs
    ]
    batch = first.train.batch_size
    stops = [s for s in range(0, count, batch) if min(batch, count - s) > 1 or s == 0]
    stacked.train_mode()
    totals = torch.zeros(len(runs), device=first.device)
    for start in stops:
        interrupts.check()
        indices = [order[start : start + batch] for order in orders]
        inputs = torch.stack(
            [
                run._inputs(run.split.train_images[index], augment=True)
                for run, index in zip(runs, indices, strict=True)
            ]
        )
        with first._autocast():
            logits = stacked(inputs)
            losses = torch.stack(
                [
                    smoothed_cross_entropy(
                        logits[s], run.split.train_labels[index], run.epsilon, run.train.smoothing
                    )
                    for s, (run, index) in enumerate(zip(runs, indices, strict=True))
                ]
            )
        optimizer.zero_grad(set_to_none=True)
        losses.sum().backward()
        optimizer.step()
        totals += losses.detach() * indices[0].shape[0]
    if scheduler is not None:
        scheduler.step()
    stacked.write_back()
    seen = sum(min(batch, count - s) for s in stops)
    means = [float(total) / seen for total in totals.tolist()]
    for run, mean in zip(runs, means, strict=True):
        if not math.isfinite(mean):
            raise NonFiniteLossError(f"training loss became {mean} (seed {run.seed})")
    return means
