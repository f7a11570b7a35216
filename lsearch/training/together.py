"""Seeds trained together: the S seed-runs of one configuration as one model of S groups.

Every convolution becomes one convolution with `groups = S` (seed s owns channels
s·C .. (s+1)·C - 1 of every layer), every BatchNorm one BatchNorm over S·C channels (its
statistics are per channel, so per seed), and the head S matrix products in one `baddbmm`.
Seed s's images fill its own channels, so each seed keeps everything that makes it a seed:
its own initialisation, data subset, batch order, augmentation (its own generator, drawn in
the order it would draw alone), optimizer state and BatchNorm statistics. Each seed's loss
is the mean over its own batch; the gradient of their sum with respect to a seed's slice is
that seed's gradient, and the optimizers lsearch uses (SGD with momentum, Adam, AdamW)
update elementwise, so one step of the grouped tensors is every seed's own step, up to the
summation order of floating point. This is exact only while the seeds' batches have one
size, which holds because every seed draws `data.train_per_class` images per class.

Where the frozen prefix is the same network for every seed (pretrained weights), it runs
once, as one model, over the seeds' batches put together; where each seed has its own
initialisation (from scratch) the grouped copy's frozen groups run instead.

Grouped convolutions were measured against `torch.func`'s `vmap` over `functional_call` on
the small CNN (3 seeds, digits, this project's 2-core CPU, 2026-12-03): 1.04 to 1.19 times
the speed of one seed at a time grouped, 0.81 to 0.90 times with vmap (docs/speed.md).

Each seed's own model (`SeedRun.net`) stays the one that evaluates, checkpoints and resumes:
`SeedGroup` copies the weights back after every epoch and the optimizer state on request
(`sync_optimizers`), so a checkpoint is the same per seed either way.
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Sequence

import torch
from torch import nn

from lsearch import interrupts
from lsearch.training.data import trained_side
from lsearch.training.models import LayeredModel, model_stages
from lsearch.training.seed_run import (
    NonFiniteLossError,
    SeedRun,
    batch_starts,
    channels_last,
    in_parameter_layout,
    make_optimizer,
    match_parameter_layout,
    mean_loss,
    smoothed_cross_entropy,
)

# The largest side (px) at which "auto" groups seeds on CUDA. Measured with the GPU check on
# an NVIDIA H200 (docs/gpu.md, 2026-12-04): three ResNet-18 seeds together trained 1.87x the
# seed-epochs per second of one at a time at 32 px and 1.57x at 64 px, but 0.93x at 224 px.
# torch.profiler there (scripts/profile_together.py, one epoch of three seeds): at 64 px the
# GPU is idle most of the time (22 ms of kernels, 131 ms of launching them one seed at a time,
# 73 ms grouped), so fewer launches win; at 224 px it is busy (98 ms of kernels alone), and
# grouped convolutions add work: 110 ms, of it +6 ms in the backward pass and +7 ms slicing
# channels for the groups (cuDNN's nhwcSliceC).
AUTO_LARGEST_SIDE = 64


def trains_together(setting: str | bool, device: torch.device, runs: Sequence[SeedRun]) -> bool:
    """Whether `runs` (a trial's seed-runs) train as one `SeedGroup` under the study's
    `train.seeds_together` (see together_on for "auto"); never for one seed, nor under
    float16's gradient scaler (one scaler would skip every seed's step when one seed
    overflows).

    >>> trains_together("auto", torch.device("cpu"), [])
    False
    """
    if len(runs) < 2 or any(run.scaler is not None for run in runs):
        return False
    return together_on(setting, device, trained_side(runs[0].data))


def together_on(setting: str | bool, device: torch.device, side: int) -> bool:
    """Whether `train.seeds_together` groups seeds on `device` for images of `side` px:
    "auto" is on on CUDA up to AUTO_LARGEST_SIDE px (measured faster there, slower at 224 px)
    and off on the CPU, where grouping was measured no faster (docs/speed.md).

    >>> cuda, cpu = torch.device("cuda"), torch.device("cpu")
    >>> together_on("auto", cuda, 32), together_on("auto", cuda, 224), together_on(True, cpu, 8)
    (True, False, True)
    """
    if setting == "auto":
        return device.type == "cuda" and side <= AUTO_LARGEST_SIDE
    return bool(setting)


class GroupedLinear(nn.Module):
    """S linear layers as one: (batch, S·in) -> (batch, S, out), seed s reading its own
    `in` features. The weight is (S, out, in), so seed s's slice is its Linear's weight."""

    def __init__(self, layers: Sequence[nn.Linear]) -> None:
        super().__init__()
        self.seeds = len(layers)
        self.weight = nn.Parameter(torch.stack([layer.weight.detach() for layer in layers]))
        self.bias = nn.Parameter(torch.stack([layer.bias.detach() for layer in layers]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        per_seed = x.reshape(x.shape[0], self.seeds, -1).transpose(0, 1)  # S x batch x in
        out = torch.baddbmm(self.bias[:, None, :], per_seed, self.weight.transpose(1, 2))
        return out.transpose(0, 1)


def _grouped(layers: Sequence[nn.Module]) -> nn.Module | None:
    """The S seeds' versions of one layer as one grouped layer; None for a layer without
    tensors of its own (ReLU, pooling, containers), which works on S·C channels as on C."""
    first, seeds = layers[0], len(layers)
    if isinstance(first, nn.Linear):
        return GroupedLinear(layers)  # type: ignore[arg-type]
    if isinstance(first, nn.Conv2d):
        grouped: nn.Module = nn.Conv2d(
            first.in_channels * seeds, first.out_channels * seeds, first.kernel_size,
            first.stride, first.padding, first.dilation, first.groups * seeds,
            first.bias is not None, first.padding_mode, device="meta",
        )  # fmt: skip
    elif isinstance(first, nn.BatchNorm2d):
        grouped = nn.BatchNorm2d(
            first.num_features * seeds, first.eps, first.momentum, first.affine,
            first.track_running_stats, device="meta",
        )  # fmt: skip
        grouped.running_mean = torch.cat([layer.running_mean for layer in layers])
        grouped.running_var = torch.cat([layer.running_var for layer in layers])
        grouped.num_batches_tracked = first.num_batches_tracked.clone()
    elif next(first.parameters(recurse=False), None) is not None:
        raise ValueError(f"seeds cannot train together through a {type(first).__name__}")
    else:
        return None
    for name, param in first.named_parameters(recurse=False):
        stacked = torch.cat([getattr(layer, name).detach() for layer in layers])
        setattr(grouped, name, nn.Parameter(stacked, requires_grad=param.requires_grad))
    return grouped  # every tensor replaced: none is left on the meta device


def group_models(nets: Sequence[LayeredModel]) -> LayeredModel:
    """One LayeredModel computing all of `nets` (the same architecture, frozen alike) on
    channel-stacked inputs: its logits are (batch, S, classes)."""
    first = nets[0]
    model = copy.deepcopy(first.model)
    for module in model.modules():
        module.__dict__.pop("forward", None)  # the float32 head is patched in again below
    own = [dict(net.model.named_modules()) for net in nets]
    for name, _ in list(model.named_modules()):
        grouped = _grouped([modules[name] for modules in own])
        if grouped is not None:
            parent, _, attr = name.rpartition(".")
            setattr(model.get_submodule(parent), attr, grouped)
    names = {id(module): name for name, module in first.model.named_modules()}

    def same_place(group: nn.Module) -> nn.Module:
        if id(group) in names:
            return model.get_submodule(names[id(group)])
        return nn.ModuleList([same_place(child) for child in group.children()])  # ResNet's stem

    if first.model.training:
        model.train()
    grouped = LayeredModel(
        model, [same_place(group) for group in first.groups], first.in_channels, model_stages(model)
    )
    grouped.freeze(first.trainable_layers or len(first.groups))
    grouped.head_in_float32()
    return grouped


def seed_slice(tensor: torch.Tensor, seeds: int, index: int, shape: torch.Size) -> torch.Tensor:
    """Seed `index`'s part of a grouped tensor (a view): every grouped tensor holds the seeds'
    tensors one after another, so it is the index-th of S equal chunks.

    >>> seed_slice(torch.arange(6.0), 3, 1, torch.Size([2]))
    tensor([2., 3.])
    """
    return tensor.reshape(seeds, -1)[index].view(shape)


def frozen_prefix(nets: Sequence[LayeredModel]) -> str:
    """How the seeds' frozen prefix runs: "shared" where it is the same network for every
    seed (pretrained, frozen), once over all the seeds' images; "per seed" where each seed
    initialised its own; "none" where every layer trains."""
    if nets[0].frozen_stages == 0:
        return "none"

    def tensors(net: LayeredModel) -> list[torch.Tensor]:
        groups = net.groups[net.trainable_layers :]
        return [t for group in groups for t in (*group.parameters(), *group.buffers())]

    mine = tensors(nets[0])
    same = all(
        all(torch.equal(a, b) for a, b in zip(mine, tensors(net), strict=True)) for net in nets[1:]
    )
    return "shared" if same else "per seed"


def channel_stack(per_seed: torch.Tensor) -> torch.Tensor:
    """(S, batch, C, ...) -> (batch, S·C, ...): seed s's tensors in its own channels.

    >>> channel_stack(torch.zeros(3, 4, 2, 5, 5)).shape
    torch.Size([4, 6, 5, 5])
    """
    seeds, batch, channels, *rest = per_seed.shape
    return per_seed.transpose(0, 1).reshape(batch, seeds * channels, *rest)


def _like(stacked: torch.Tensor, alone: torch.Tensor) -> torch.Tensor:
    """`stacked` in the memory format a seed's own tensor has: channels_last on CUDA, and on
    the CPU wherever random cropping left a batch channels_last (measured on the CPU: max
    pooling 128 x 96 x 8 x 8 channels took 2.4 ms contiguous, 0.1 ms channels_last)."""
    if stacked.dim() != 4 or alone.dim() != 4:
        return stacked
    # Channels innermost (stride 1) is how convolutions read channels_last, one channel too.
    if alone.device.type == "cuda" or alone.stride(1) == 1:
        return stacked.contiguous(memory_format=torch.channels_last)
    return stacked


class SeedGroup:
    """The seed-runs of one configuration trained as one model (see the module's docstring):
    `train_epoch` trains every seed an epoch, each seed's own model then holds its weights.

    >>> import torch
    >>> from lsearch.spec import StudySpec
    >>> from lsearch.training.data import load_pool, split_for_seed
    >>> from lsearch.training.models import build_model
    >>> from lsearch.training.seed_run import start_seed_run
    >>> spec = StudySpec.model_validate({"name": "s", "model": {"width": 8},
    ...     "data": {"train_per_class": 4, "val_per_class": 2}, "train": {"batch_size": 16}})
    >>> pool, cpu = load_pool(spec.data, torch.device("cpu")), torch.device("cpu")
    >>> runs = []
    >>> for seed in (0, 1):
    ...     net = build_model(spec.model, 1, pool.num_classes, seed)
    ...     net.freeze(2)
    ...     runs.append(start_seed_run(seed, net, split_for_seed(pool, spec.data, seed), pool,
    ...                                spec.data, spec.train, 0.1, 3e-3, 1, cpu))
    >>> losses = SeedGroup(runs).train_epoch()
    >>> len(losses), losses[0] != losses[1]
    (2, True)
    """

    def __init__(self, runs: Sequence[SeedRun]) -> None:
        if any(run.scaler is not None for run in runs):
            raise ValueError("seeds cannot train together with a float16 gradient scaler")
        self.runs = list(runs)
        nets = [run.net for run in self.runs]
        self.net = group_models(nets)
        self.frozen_prefix = frozen_prefix(nets)
        if channels_last(runs[0].device):
            self.net.model.to(memory_format=torch.channels_last)
        first = self.runs[0]
        lr = first.optimizer.param_groups[0]["lr"]
        self.optimizer = make_optimizer(self.net.trainable_parameters(), first.train, lr)
        self._pairs = [
            (grouped, [run.net.trainable_parameters()[i] for run in self.runs])
            for i, grouped in enumerate(self.net.trainable_parameters())
        ]
        self._load_optimizer_states()

    @property
    def seeds(self) -> int:
        return len(self.runs)

    def _load_optimizer_states(self) -> None:
        """Stack the seeds' optimizer states (a resumed run's) into the group's optimizer."""
        for grouped, params in self._pairs:
            states = [run.optimizer.state.get(p) for run, p in zip(self.runs, params, strict=True)]
            if not all(states):
                continue
            self.optimizer.state[grouped] = {
                key: torch.cat([s[key].reshape(-1) for s in states]).view(grouped.shape)
                if value.shape == params[0].shape
                else value.clone()  # Adam's step: one for all seeds, as they step together
                for key, value in states[0].items()
            }
        match_parameter_layout(self.optimizer)  # the stacking made them contiguous

    def sync_optimizers(self) -> None:
        """Copy the group's optimizer state into each seed's optimizer, whose `state_dict`
        a checkpoint stores (the same as a seed trained alone writes)."""
        for grouped, params in self._pairs:
            state = self.optimizer.state.get(grouped)
            if not state:
                continue
            for index, (run, param) in enumerate(zip(self.runs, params, strict=True)):
                # In the seed's parameter's layout (channels_last on CUDA), which the slice
                # (contiguous) lost: the seed's own optimizer may step again (see `without`).
                run.optimizer.state[param] = {
                    key: in_parameter_layout(
                        param, seed_slice(value, self.seeds, index, param.shape)
                    )
                    if value.shape == grouped.shape
                    else value.clone()
                    for key, value in state.items()
                }

    def without(self, leaving: Sequence[SeedRun]) -> SeedGroup | None:
        """The group the other seeds go on in when `leaving` stop (a comparison's seed-run
        that chose its epoch or ran out of patience): each seed's optimizer state is synced
        first, so the new group, or a last seed alone (None), continues as before."""
        self.sync_optimizers()
        staying = [run for run in self.runs if all(run is not gone for gone in leaving)]
        return SeedGroup(staying) if len(staying) > 1 else None

    @torch.no_grad()
    def _write_back(self) -> None:
        """Each seed's slice of the trainable tensors into its own model."""
        grouped = self.net.trainable_state()
        for index, run in enumerate(self.runs):
            for name, tensor in run.net.trainable_state().items():
                if tensor.dim() == 0:  # BatchNorm's num_batches_tracked: one count for all
                    tensor.copy_(grouped[name])
                else:
                    tensor.copy_(seed_slice(grouped[name], self.seeds, index, tensor.shape))

    def _features(self, inputs: list[torch.Tensor]) -> torch.Tensor:
        """The frozen prefix's output for each seed's batch, channel-stacked."""
        if self.frozen_prefix != "per seed":
            features = self.runs[0].net.prefix(torch.cat(inputs))
            return _like(
                channel_stack(features.view(self.seeds, -1, *features.shape[1:])), features
            )
        return self.net.prefix(_like(channel_stack(torch.stack(inputs)), inputs[0]))

    def train_epoch(self) -> list[float]:
        """One epoch of every seed at once (what `SeedRun.train_epoch` does for one): each
        seed's mean training loss. NonFiniteLossError names the first seed whose loss is not
        finite."""
        losses = self.train_epoch_each()
        for loss in losses:
            if isinstance(loss, NonFiniteLossError):
                raise loss
        return [float(loss) for loss in losses]

    def train_epoch_each(self) -> list[float | NonFiniteLossError]:
        """One epoch of every seed at once: each seed's mean training loss, or the
        NonFiniteLossError of a seed whose loss is not finite (the others' numbers do not
        depend on it: no tensor of the group mixes seeds)."""
        first = self.runs[0]
        count = first.split.train_labels.shape[0]
        if any(run.split.train_labels.shape[0] != count for run in self.runs):
            raise ValueError("seeds trained together need training subsets of one size")
        orders = [run.epoch_order() for run in self.runs]
        batch = first.train.batch_size
        stops = batch_starts(count, batch)
        self.net.train_mode()
        if self.frozen_prefix != "per seed":
            # The shared prefix is the first seed's own: its frozen BatchNorm must run in
            # eval mode too (a fresh model is in train mode, and would normalise each batch
            # by its own statistics and move the frozen running statistics).
            first.net.train_mode()
        totals = torch.zeros(self.seeds, device=first.device)
        for start in stops:
            interrupts.check()
            indices = [order[start : start + batch] for order in orders]
            inputs = [
                run._inputs(run.split.train_images[index], augment=True)
                for run, index in zip(self.runs, indices, strict=True)
            ]
            with first._autocast():
                logits = self.net.suffix(self._features(inputs))
                losses = torch.stack(
                    [
                        smoothed_cross_entropy(
                            logits[:, s],
                            run.split.train_labels[index],
                            run.epsilon,
                            run.train.smoothing,
                        )
                        for s, (run, index) in enumerate(zip(self.runs, indices, strict=True))
                    ]
                )
            self.optimizer.zero_grad(set_to_none=True)
            losses.sum().backward()
            self.optimizer.step()
            totals += losses.detach() * indices[0].shape[0]
        self._end_epoch()
        losses: list[float | NonFiniteLossError] = []
        for run, total in zip(self.runs, totals.tolist(), strict=True):
            try:
                losses.append(mean_loss(total, count, batch, run.seed))
            except NonFiniteLossError as exc:
                losses.append(exc)
        return losses

    def _end_epoch(self) -> None:
        """Each seed's schedule steps as it would alone; the group takes its learning rate."""
        for run in self.runs:
            if run.scheduler is not None:
                with warnings.catch_warnings():
                    # The seed's own optimizer never steps (the group's does): PyTorch would
                    # warn that the schedule steps first, but the seed's schedule is right.
                    warnings.filterwarnings(
                        "ignore", "Detected call of `lr_scheduler.step", UserWarning
                    )
                    run.scheduler.step()
        for group in self.optimizer.param_groups:
            group["lr"] = self.runs[0].optimizer.param_groups[0]["lr"]
        self._write_back()
