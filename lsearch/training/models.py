"""Models and their layer groups, counted from the head.

`trainable_layers = 1` trains the classifier only, 2 adds the last stage, and so on up to
the whole network. ResNet-18 has 6 groups (fc, layer4, layer3, layer2, layer1, stem); the
digits CNN has 4 (head, block3, block2, block1). Frozen groups keep their BatchNorm layers
in eval mode, so their running statistics stay those of the pretrained network.
"""

from __future__ import annotations

import contextlib
import functools
import sys
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from lsearch.errors import UserError
from lsearch.pretrained import file_sha256, missing_message, weights_file
from lsearch.spec import Model

Stage = Callable[[torch.Tensor], torch.Tensor]


@dataclass
class LayeredModel:
    """A model cut into layer groups. `stages` run the model's forward pass group by group,
    from the stem to the head (stages[i] computes groups[-1 - i]), so that the frozen prefix
    can run apart from the trainable suffix: `suffix(prefix(x)) == model(x)`."""

    model: nn.Module
    groups: list[nn.Module]  # groups[0] is the head; the last is the stem
    in_channels: int
    stages: list[Stage]
    trainable_layers: int = 0  # 0 until freeze(): every group trains

    @property
    def frozen_stages(self) -> int:
        return len(self.stages) - self.trainable_layers if self.trainable_layers else 0

    def prefix(self, x: torch.Tensor) -> torch.Tensor:
        """The frozen groups' output: no autograd graph (they never change), eval mode."""
        with torch.no_grad():
            for stage in self.stages[: self.frozen_stages]:
                x = stage(x)
        return x

    def suffix(self, features: torch.Tensor) -> torch.Tensor:
        """The trainable groups, from the frozen prefix's output to the logits."""
        for stage in self.stages[self.frozen_stages :]:
            features = stage(features)
        return features

    def frozen_key(self) -> frozenset[int]:
        """Which tensors the frozen prefix is made of (identity, for checkpoints)."""
        frozen = self.groups[self.trainable_layers :] if self.trainable_layers else []
        return frozenset(id(t) for group in frozen for t in [*group.parameters(), *group.buffers()])

    def trainable_state(self) -> dict[str, torch.Tensor]:
        """The state dict less the frozen groups, which are rebuilt from the weights."""
        frozen = self.frozen_key()
        state = self.model.state_dict(keep_vars=True)
        return {k: v.detach() for k, v in state.items() if id(v) not in frozen}

    def freeze(self, trainable_layers: int) -> None:
        """Let exactly the first `trainable_layers` groups (from the head) train."""
        if not 1 <= trainable_layers <= len(self.groups):
            raise ValueError(f"trainable_layers must be in 1..{len(self.groups)}")
        for index, group in enumerate(self.groups):
            for param in group.parameters():
                param.requires_grad_(index < trainable_layers)
        self.trainable_layers = trainable_layers

    def train_mode(self) -> None:
        """model.train(), but frozen groups stay in eval mode (BatchNorm statistics fixed)."""
        self.model.train()
        if self.trainable_layers:
            for group in self.groups[self.trainable_layers :]:
                group.eval()

    def head_in_float32(self) -> None:
        """Run the classifier head in float32 even under autocast, so logits (and the ECE,
        NLL and temperature computed from them) are not rounded to bfloat16 or float16: ECE
        from bf16 logits moves by about a tenth of a smoothed model's ECE. The head is one
        small matrix product, so this costs nothing measurable."""
        head = self.groups[0]
        plain_forward = head.forward

        def forward(x: torch.Tensor) -> torch.Tensor:
            with torch.autocast(x.device.type, enabled=False):
                return plain_forward(x.to(torch.promote_types(x.dtype, torch.float32)))

        head.forward = forward  # type: ignore[method-assign]

    def trainable_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.model.parameters() if p.requires_grad]


class SmallCNN(nn.Module):
    """A small CNN for 8x8 to 32x32 images: three conv blocks and a linear head."""

    def __init__(self, in_channels: int, num_classes: int, width: int) -> None:
        super().__init__()

        def block(cin: int, cout: int) -> nn.Sequential:
            return nn.Sequential(
                nn.Conv2d(cin, cout, 3, padding=1, bias=False),
                nn.BatchNorm2d(cout),
                nn.ReLU(inplace=True),
            )

        self.block1 = block(in_channels, width)
        self.block2 = nn.Sequential(block(width, 2 * width), nn.MaxPool2d(2))
        self.block3 = nn.Sequential(block(2 * width, 4 * width), nn.AdaptiveAvgPool2d(1))
        self.head = nn.Linear(4 * width, num_classes)

    def stages(self) -> list[Stage]:
        return [self.block1, self.block2, self.block3, lambda h: self.head(h.flatten(1))]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for stage in self.stages():
            x = stage(x)
        return x


def model_stages(model: nn.Module) -> list[Stage]:
    """The stages of a model `build_model` makes (or of a copy of one)."""
    return model.stages() if isinstance(model, SmallCNN) else resnet_stages(model)


def resnet_stages(net: nn.Module) -> list[Stage]:
    """torchvision's ResNet.forward, cut at its layer groups."""

    def stem(x: torch.Tensor) -> torch.Tensor:
        return net.maxpool(net.relu(net.bn1(net.conv1(x))))

    def head(h: torch.Tensor) -> torch.Tensor:
        return net.fc(torch.flatten(net.avgpool(h), 1))

    return [stem, net.layer1, net.layer2, net.layer3, net.layer4, head]


def load_state_dict(weights: str) -> dict[str, torch.Tensor]:
    """Pretrained weights: `imagenet` (torchvision), the name of weights that ship with lsearch
    (`digits-0-4`) or a file path; read once per process and file content (its sha256), so a
    file changed since is read again, as the spec check sees it."""
    return read_state_dict(weights, file_sha256(weights))


@functools.lru_cache(maxsize=4)
def read_state_dict(weights: str, sha256: str | None) -> dict[str, torch.Tensor]:
    """`load_state_dict`'s cache, keyed by the weights' name and the file's sha256."""
    if weights == "imagenet":
        from torchvision.models import ResNet18_Weights

        try:
            # torch.hub announces a download on stdout, where --json output goes.
            with contextlib.redirect_stdout(sys.stderr):
                return ResNet18_Weights.IMAGENET1K_V1.get_state_dict(progress=False)
        except Exception as exc:  # no network: URLError, OSError, ...
            raise UserError(
                f"could not fetch torchvision's ImageNet ResNet-18 weights ({type(exc).__name__}: "
                f"{exc}); set model.weights to a local state-dict file (.pth)"
            ) from None
    path = weights_file(weights)
    if path is None or not path.is_file():
        raise UserError(missing_message(path))
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise UserError(
            f"model.weights: {path} is not a loadable state dict ({exc}); save one with "
            "torch.save(model.state_dict(), path)"
        ) from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise UserError(f"model.weights: {path} holds no state dict of tensors")
    return state


def _load_backbone(model: nn.Module, state: dict[str, torch.Tensor], head: str) -> None:
    """Load everything but the classifier head, which is new for the new classes."""
    backbone = {k: v for k, v in state.items() if not k.startswith(f"{head}.")}
    own = model.state_dict()
    missing = [k for k in own if k not in backbone and not k.startswith(f"{head}.")]
    unexpected = [k for k in backbone if k not in own]
    misshapen = [k for k, v in backbone.items() if k in own and own[k].shape != v.shape]
    if missing or unexpected or misshapen:
        raise UserError(
            f"model.weights do not fit this model (missing {missing[:3]}, unexpected "
            f"{unexpected[:3]}, wrong shape {misshapen[:3]}); give weights saved from the same "
            "architecture"
        )
    model.load_state_dict(backbone, strict=False)


def build_model(spec: Model, in_channels: int, num_classes: int, seed: int) -> LayeredModel:
    """A freshly initialised model (seeded) with pretrained weights where the spec asks."""
    if spec.name == "small_cnn" and spec.weights == "imagenet":
        raise UserError("model.weights = 'imagenet' exists for resnet18 only")
    state = None if spec.weights == "none" else load_state_dict(spec.weights)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        if spec.name == "small_cnn":
            net = SmallCNN(in_channels, num_classes, spec.width)
            groups: list[nn.Module] = [net.head, net.block3, net.block2, net.block1]
            stages = net.stages()
            head = "head"
        else:
            from torchvision.models import resnet18

            net = resnet18(num_classes=num_classes)
            in_channels = 3
            stem = nn.ModuleList([net.conv1, net.bn1])
            groups = [net.fc, net.layer4, net.layer3, net.layer2, net.layer1, stem]
            stages = resnet_stages(net)
            head = "fc"
    if state is not None:
        _load_backbone(net, state, head)
    return LayeredModel(net, groups, in_channels, stages)


def layer_group_count(spec: Model) -> int:
    return len(build_model(spec.model_copy(update={"weights": "none"}), 3, 2, 0).groups)
