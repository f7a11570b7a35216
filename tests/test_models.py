"""Models: layer groups counted from the head, freezing (parameters and BatchNorm), seeding,
and pretrained weights from a local state-dict file or torchvision (offline here)."""

from __future__ import annotations

import urllib.error
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
import torchvision
from torch import nn

import lsearch.training.models
from lsearch.errors import UserError
from lsearch.spec import Model
from lsearch.training.models import LayeredModel, SmallCNN, build_model, layer_group_count

# The parameter-name prefixes of each group, from the head to the stem, written out here
# independently of lsearch.training.models.
GROUP_PREFIXES = {
    "small_cnn": [("head.",), ("block3.",), ("block2.",), ("block1.",)],
    "resnet18": [
        ("fc.",),
        ("layer4.",),
        ("layer3.",),
        ("layer2.",),
        ("layer1.",),
        ("conv1.", "bn1."),
    ],
}
IN_CHANNELS = {"small_cnn": 1, "resnet18": 3}
CASES = [(name, k) for name, groups in GROUP_PREFIXES.items() for k in range(1, len(groups) + 1)]


@pytest.fixture(autouse=True)
def _fresh_weights_cache() -> Iterator[None]:
    lsearch.training.models.read_state_dict.cache_clear()
    yield
    lsearch.training.models.read_state_dict.cache_clear()


def build(name: str, seed: int = 0, num_classes: int = 10) -> LayeredModel:
    spec = Model(name=name, width=8) if name == "small_cnn" else Model(name=name, weights="none")
    return build_model(spec, IN_CHANNELS[name], num_classes, seed)


def inputs(name: str, count: int = 4, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(count, IN_CHANNELS[name], 32, 32, generator=generator)


def group_of(name: str, param_name: str) -> int:
    """The index of the group a parameter (or buffer) name belongs to."""
    owners = [
        i for i, prefixes in enumerate(GROUP_PREFIXES[name]) if param_name.startswith(prefixes)
    ]
    assert len(owners) == 1, f"{param_name} belongs to groups {owners}"
    return owners[0]


def batchnorms(net: nn.Module) -> dict[str, nn.modules.batchnorm._BatchNorm]:
    return {n: m for n, m in net.named_modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)}


# --- structure -------------------------------------------------------------------------------


def test_small_cnn_has_four_groups_from_the_head() -> None:
    layered = build_model(Model(name="small_cnn", width=8), in_channels=1, num_classes=10, seed=0)
    assert isinstance(layered, LayeredModel) and isinstance(layered.model, SmallCNN)
    net = layered.model
    assert len(layered.groups) == 4
    assert [id(g) for g in layered.groups] == [
        id(net.head),
        id(net.block3),
        id(net.block2),
        id(net.block1),
    ]
    assert layered.in_channels == 1 and layered.trainable_layers == 0
    assert net.head.out_features == 10 and net.head.in_features == 32
    for size in (8, 32):
        out = net.eval()(torch.zeros(3, 1, size, size))
        assert out.shape == (3, 10)


def test_resnet18_has_six_groups_fc_to_stem() -> None:
    layered = build_model(Model(name="resnet18", weights="none"), 3, num_classes=7, seed=0)
    net = layered.model
    assert isinstance(net, torchvision.models.ResNet)
    assert len(layered.groups) == 6
    assert [id(g) for g in layered.groups[:5]] == [
        id(net.fc),
        id(net.layer4),
        id(net.layer3),
        id(net.layer2),
        id(net.layer1),
    ]
    assert {id(m) for m in layered.groups[5].modules()} >= {id(net.conv1), id(net.bn1)}
    assert layered.in_channels == 3
    assert net.fc.out_features == 7
    out = net.eval()(torch.zeros(2, 3, 32, 32))
    assert out.shape == (2, 7)


def test_resnet18_always_takes_three_channels() -> None:
    layered = build_model(Model(name="resnet18"), in_channels=1, num_classes=10, seed=0)
    assert layered.in_channels == 3
    assert layered.model.conv1.in_channels == 3


@pytest.mark.parametrize("name", ["small_cnn", "resnet18"])
def test_every_parameter_belongs_to_exactly_one_group(name: str) -> None:
    layered = build(name)
    for param_name, param in layered.model.named_parameters():
        index = group_of(name, param_name)
        assert any(p is param for p in layered.groups[index].parameters()), param_name


def test_layer_group_count() -> None:
    assert layer_group_count(Model(name="resnet18")) == 6
    assert layer_group_count(Model(name="small_cnn")) == 4
    assert layer_group_count(Model(name="small_cnn", width=4)) == 4


# --- freezing --------------------------------------------------------------------------------


@pytest.mark.parametrize(("name", "k"), CASES)
def test_freeze_trains_exactly_the_first_k_groups(name: str, k: int) -> None:
    layered = build(name)
    layered.freeze(k)
    assert layered.trainable_layers == k
    names = [n for n, _ in layered.model.named_parameters()]
    expected = {n for n in names if n.startswith(sum(GROUP_PREFIXES[name][:k], ()))}
    actual = {n for n, p in layered.model.named_parameters() if p.requires_grad}
    assert actual == expected
    assert expected
    assert (expected == set(names)) == (k == len(GROUP_PREFIXES[name]))
    by_id = {id(p): n for n, p in layered.model.named_parameters()}
    trainable = layered.trainable_parameters()
    assert len(trainable) == len(expected)
    assert {by_id[id(p)] for p in trainable} == expected


@pytest.mark.parametrize("name", ["small_cnn", "resnet18"])
def test_freeze_can_be_changed_both_ways(name: str) -> None:
    layered = build(name)
    layered.freeze(1)
    layered.freeze(3)
    prefixes = sum(GROUP_PREFIXES[name][:3], ())
    for n, p in layered.model.named_parameters():
        assert p.requires_grad == n.startswith(prefixes), n
    layered.freeze(2)
    prefixes = sum(GROUP_PREFIXES[name][:2], ())
    for n, p in layered.model.named_parameters():
        assert p.requires_grad == n.startswith(prefixes), n


@pytest.mark.parametrize(("name", "k"), CASES)
def test_a_training_step_changes_only_trainable_parameters(name: str, k: int) -> None:
    layered = build(name)
    layered.freeze(k)
    layered.train_mode()
    before = {n: p.detach().clone() for n, p in layered.model.named_parameters()}
    optimizer = torch.optim.SGD(layered.trainable_parameters(), lr=0.5)
    logits = layered.model(inputs(name))
    loss = nn.functional.cross_entropy(logits, torch.tensor([0, 1, 2, 3]))
    loss.backward()
    optimizer.step()
    changed_groups = set()
    for n, p in layered.model.named_parameters():
        index = group_of(name, n)
        if index < k:
            assert p.grad is not None, n
            if not torch.equal(p.detach(), before[n]):
                changed_groups.add(index)
        else:
            assert p.grad is None, n
            assert torch.equal(p.detach(), before[n]), f"frozen {n} changed"
    assert changed_groups == set(range(k))


def test_freeze_rejects_counts_outside_the_groups() -> None:
    for name, groups in [("small_cnn", 4), ("resnet18", 6)]:
        layered = build(name)
        for bad in (0, -1, groups + 1, groups + 5):
            with pytest.raises(ValueError, match=f"1..{groups}"):
                layered.freeze(bad)
        assert layered.trainable_layers == 0
        assert all(p.requires_grad for p in layered.model.parameters())


# --- BatchNorm in frozen groups --------------------------------------------------------------


@pytest.mark.parametrize(("name", "k"), CASES)
def test_train_mode_keeps_frozen_batchnorm_in_eval_mode(name: str, k: int) -> None:
    layered = build(name)
    layered.freeze(k)
    layered.model.eval()
    layered.train_mode()
    assert layered.model.training
    norms = batchnorms(layered.model)
    assert norms
    for n, module in norms.items():
        assert module.training == (group_of(name, n + ".") < k), n


@pytest.mark.parametrize("name", ["small_cnn", "resnet18"])
def test_train_mode_without_freeze_trains_everything(name: str) -> None:
    layered = build(name)
    layered.model.eval()
    layered.train_mode()
    assert all(m.training for m in layered.model.modules())


@pytest.mark.parametrize(("name", "k"), CASES)
def test_frozen_batchnorm_statistics_survive_a_training_forward(name: str, k: int) -> None:
    layered = build(name)
    # Start from statistics unlike a fresh BatchNorm's, as pretrained ones would be.
    generator = torch.Generator().manual_seed(1)
    for module in batchnorms(layered.model).values():
        module.running_mean.copy_(torch.randn(module.running_mean.shape, generator=generator))
        module.running_var.uniform_(0.5, 2.0, generator=generator)
    layered.freeze(k)
    layered.train_mode()
    norms = batchnorms(layered.model)
    before = {n: (m.running_mean.clone(), m.running_var.clone()) for n, m in norms.items()}
    with torch.no_grad():
        layered.model(inputs(name, seed=2))
    for n, module in norms.items():
        mean, var = before[n]
        frozen = group_of(name, n + ".") >= k
        assert torch.equal(module.running_mean, mean) == frozen, n
        assert torch.equal(module.running_var, var) == frozen, n


# --- seeding ---------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["small_cnn", "resnet18"])
def test_same_seed_same_weights_different_seed_different(name: str) -> None:
    torch.manual_seed(100)
    a = build(name, seed=5).model.state_dict()
    torch.manual_seed(200)  # the global RNG's state does not matter
    b = build(name, seed=5).model.state_dict()
    c = build(name, seed=6).model.state_dict()
    assert a.keys() == b.keys() == c.keys()
    assert all(torch.equal(a[key], b[key]) for key in a)
    head = "head.weight" if name == "small_cnn" else "fc.weight"
    first_conv = "block1.0.weight" if name == "small_cnn" else "conv1.weight"
    assert not torch.equal(a[head], c[head])
    assert not torch.equal(a[first_conv], c[first_conv])


@pytest.mark.parametrize("name", ["small_cnn", "resnet18"])
def test_building_leaves_the_global_rng_alone(name: str) -> None:
    torch.manual_seed(123)
    first = torch.rand(5)
    build(name, seed=9)
    second = torch.rand(5)
    torch.manual_seed(123)
    expected = torch.rand(10)
    assert torch.equal(torch.cat([first, second]), expected)


# --- pretrained weights from a file ----------------------------------------------------------


def imagenet_like_state(seed: int = 7) -> dict[str, torch.Tensor]:
    """A ResNet-18 state dict with a 1000-class fc, like ImageNet's, with BatchNorm
    statistics unlike a fresh network's."""
    torch.manual_seed(seed)
    source = torchvision.models.resnet18(num_classes=1000)
    for module in source.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.running_mean.normal_()
            module.running_var.uniform_(0.5, 2.0)
            module.num_batches_tracked.fill_(1234)
    return {k: v.clone() for k, v in source.state_dict().items()}


def test_a_local_state_dict_loads_the_backbone_and_a_new_head(tmp_path: Path) -> None:
    state = imagenet_like_state()
    path = tmp_path / "resnet18.pth"
    torch.save(state, path)
    layered = build_model(Model(name="resnet18", weights=str(path)), 3, 10, seed=0)
    loaded = layered.model.state_dict()
    for key in ("conv1.weight", "bn1.running_mean", "bn1.running_var", "layer4.1.conv2.weight"):
        assert torch.equal(loaded[key], state[key]), key
    downsample_var = "layer4.0.downsample.1.running_var"
    assert torch.equal(loaded[downsample_var], state[downsample_var])
    backbone = [key for key in state if not key.startswith("fc.")]
    assert len(backbone) == len(loaded) - 2
    for key in backbone:
        assert torch.equal(loaded[key], state[key]), key
    assert loaded["fc.weight"].shape == (10, 512) and loaded["fc.bias"].shape == (10,)
    # The new head is the seeded fresh one.
    fresh = build_model(Model(name="resnet18"), 3, 10, seed=0).model.state_dict()
    assert torch.equal(loaded["fc.weight"], fresh["fc.weight"])
    assert torch.equal(loaded["fc.bias"], fresh["fc.bias"])
    assert layered.model.eval()(torch.zeros(2, 3, 32, 32)).shape == (2, 10)


def test_a_local_small_cnn_state_dict_loads_all_but_the_head(tmp_path: Path) -> None:
    source = build_model(Model(name="small_cnn", width=8), 1, 5, seed=3).model
    path = tmp_path / "cnn.pt"
    torch.save(source.state_dict(), path)
    layered = build_model(Model(name="small_cnn", width=8, weights=str(path)), 1, 10, seed=0)
    loaded, state = layered.model.state_dict(), source.state_dict()
    for key in state:
        if not key.startswith("head."):
            assert torch.equal(loaded[key], state[key]), key
    assert loaded["head.weight"].shape == (10, 32)


class Sneaky:
    """Unpickling this runs `_record`, as a malicious checkpoint could run anything."""

    ran = False

    def __reduce__(self):
        return (_record, ())


def _record() -> str:
    Sneaky.ran = True
    return "ran"


def test_weights_files_are_loaded_with_weights_only(tmp_path: Path) -> None:
    path = tmp_path / "sneaky.pth"
    torch.save({"conv1.weight": torch.zeros(1), "extra": Sneaky()}, path)
    Sneaky.ran = False
    with pytest.raises(UserError, match="not a loadable state dict") as info:
        build_model(Model(name="resnet18", weights=str(path)), 3, 10, seed=0)
    assert str(path) in str(info.value)
    assert not Sneaky.ran


@pytest.mark.parametrize(
    "content",
    [
        [torch.zeros(2)],
        {"state_dict": {"conv1.weight": torch.zeros(1)}, "epoch": 3},
        {"conv1.weight": torch.zeros(1), "step": 5},
    ],
    ids=["list", "checkpoint", "non-tensor-value"],
)
def test_a_file_without_a_state_dict_of_tensors_is_refused(tmp_path: Path, content) -> None:
    path = tmp_path / "weights.pth"
    torch.save(content, path)
    with pytest.raises(UserError, match="state dict"):
        lsearch.training.models.load_state_dict(str(path))


def test_missing_or_unreadable_weights_files_are_user_errors(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="no file at") as info:
        build_model(Model(name="resnet18", weights=str(tmp_path / "nope.pth")), 3, 10, 0)
    assert "nope.pth" in str(info.value)
    with pytest.raises(UserError, match="no file at"):
        lsearch.training.models.load_state_dict(str(tmp_path))  # a folder
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"definitely not a torch file" * 10)
    with pytest.raises(UserError, match="not a loadable state dict"):
        build_model(Model(name="resnet18", weights=str(garbage)), 3, 10, 0)


def _resnet34_state() -> dict[str, torch.Tensor]:
    return torchvision.models.resnet34(num_classes=1000).state_dict()


def _small_cnn_state() -> dict[str, torch.Tensor]:
    return build_model(Model(name="small_cnn", width=8), 3, 10, seed=0).model.state_dict()


def _data_parallel_state() -> dict[str, torch.Tensor]:
    return {f"module.{k}": v for k, v in imagenet_like_state().items()}


def _grayscale_resnet18_state() -> dict[str, torch.Tensor]:
    state = imagenet_like_state()
    state["conv1.weight"] = state["conv1.weight"][:, :1].clone()
    return state


def _resnet50_state() -> dict[str, torch.Tensor]:
    return torchvision.models.resnet50(num_classes=1000).state_dict()


@pytest.mark.parametrize(
    "make_state",
    [
        _resnet34_state,
        _small_cnn_state,
        _data_parallel_state,
        _grayscale_resnet18_state,
        _resnet50_state,
    ],
)
def test_weights_of_another_architecture_are_a_user_error(tmp_path: Path, make_state) -> None:
    path = tmp_path / "other.pth"
    torch.save(make_state(), path)
    with pytest.raises(UserError, match="same architecture"):
        build_model(Model(name="resnet18", weights=str(path)), 3, 10, seed=0)


def test_small_cnn_weights_of_another_width_are_a_user_error(tmp_path: Path) -> None:
    path = tmp_path / "cnn16.pth"
    torch.save(build_model(Model(name="small_cnn", width=16), 1, 10, 0).model.state_dict(), path)
    with pytest.raises(UserError, match="same architecture"):
        build_model(Model(name="small_cnn", width=8, weights=str(path)), 1, 10, seed=0)


def test_the_weights_file_is_read_once_per_path(tmp_path: Path, monkeypatch) -> None:
    path = tmp_path / "resnet18.pth"
    torch.save(imagenet_like_state(), path)
    reads = []
    real_load = torch.load

    def counting_load(*args, **kwargs):
        reads.append(kwargs.get("weights_only"))
        return real_load(*args, **kwargs)

    monkeypatch.setattr(torch, "load", counting_load)
    spec = Model(name="resnet18", weights=str(path))
    a = build_model(spec, 3, 10, seed=0).model.state_dict()
    b = build_model(spec, 3, 10, seed=1).model.state_dict()
    assert reads == [True]
    assert torch.equal(a["layer1.0.conv1.weight"], b["layer1.0.conv1.weight"])
    assert not torch.equal(a["fc.weight"], b["fc.weight"])


# --- torchvision's ImageNet weights, offline -------------------------------------------------


@pytest.fixture
def offline(monkeypatch) -> list[str]:
    """Every way torchvision fetches weights raises URLError, as without a network."""
    attempts: list[str] = []

    def no_network(url, *args, **kwargs):
        attempts.append(url)
        raise urllib.error.URLError("offline")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", no_network)
    monkeypatch.setattr(torchvision.models._api, "load_state_dict_from_url", no_network)
    monkeypatch.setattr(torch.hub, "download_url_to_file", no_network)
    return attempts


def test_imagenet_weights_offline_suggest_a_local_file(offline: list[str]) -> None:
    with pytest.raises(UserError) as info:
        build_model(Model(name="resnet18", weights="imagenet"), 3, 10, seed=0)
    message = str(info.value)
    assert "local state-dict file" in message and "model.weights" in message
    assert "URLError" in message and "offline" in message
    assert len(offline) == 1 and "resnet18" in offline[0]


def test_imagenet_weights_are_for_resnet18_only(offline: list[str]) -> None:
    with pytest.raises(UserError, match="resnet18 only"):
        build_model(Model(name="small_cnn", weights="imagenet"), 1, 10, seed=0)
    assert offline == []  # nothing worth fetching for a model that cannot use it
