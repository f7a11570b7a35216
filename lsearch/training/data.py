"""Datasets as uint8 tensors already on the device, and stratified per-class subsets.

Two sources: scikit-learn's digits (ships inside scikit-learn, offline) and CIFAR-10 in
the standard `cifar-10-batches-py` folder (read from `data.root`, or downloaded there by
torchvision where the network allows). Training and validation images are both drawn from
the training pool. The held-out test set is disjoint from every seed's subsets and only
`load_test_set` reads it (`lsearch compare` and `evaluate`; a search never does): CIFAR-10's
official `test_batch`, or for digits `data.test_per_class` images per class carved out of
the pool, the same ones for every seed, before any seed draws its subsets. `data.classes`
keeps a subset of the classes (after the test images are carved out), renumbered 0..K-1.
"""

from __future__ import annotations

import importlib.util
import pickle
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from lsearch.errors import UserError
from lsearch.spec import Data

CIFAR10_FOLDER = "cifar-10-batches-py"
CIFAR10_TRAIN_BATCHES = tuple(f"data_batch_{i}" for i in range(1, 6))
CIFAR10_TEST_BATCH = "test_batch"
# Fixed, so that the digits test images are the same for every seed, study and machine.
TEST_SET_SEED = 7357
# Pretrained torchvision models expect inputs normalised with ImageNet's statistics.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class ImagePool:
    """Every image a study may draw from, on the device."""

    images: torch.Tensor  # uint8, N x C x H x W
    labels: torch.Tensor  # int64, N
    num_classes: int
    mean: tuple[float, ...]  # per channel, for normalising images scaled to [0, 1]
    std: tuple[float, ...]


@dataclass(frozen=True)
class TestSet:
    """The held-out test images (uint8, on the device) and labels, shared by every seed."""

    images: torch.Tensor
    labels: torch.Tensor


@dataclass(frozen=True)
class Split:
    """One seed's disjoint training and validation subsets (uint8 images on the device)."""

    train_images: torch.Tensor
    train_labels: torch.Tensor
    val_images: torch.Tensor
    val_labels: torch.Tensor


def stratified_split(
    labels: np.ndarray, train_per_class: int, val_per_class: int, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Indices of `train_per_class` training and `val_per_class` validation images per class,
    disjoint, chosen at random by `seed` (the same seed always gives the same subsets)."""
    rng = np.random.default_rng(seed)
    train, val = [], []
    for cls in np.unique(labels):
        members = np.flatnonzero(labels == cls)
        if len(members) < train_per_class + val_per_class:
            raise UserError(
                f"class {cls} has {len(members)} images, fewer than train_per_class + "
                f"val_per_class = {train_per_class + val_per_class}; lower data.train_per_class "
                "or data.val_per_class"
            )
        chosen = rng.permutation(members)
        train.append(chosen[:train_per_class])
        val.append(chosen[train_per_class : train_per_class + val_per_class])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(val))


def held_out_indices(labels: np.ndarray, per_class: int) -> np.ndarray:
    """`per_class` indices per class, chosen once by TEST_SET_SEED (sorted)."""
    rng = np.random.default_rng(TEST_SET_SEED)
    chosen = []
    for cls in np.unique(labels):
        members = np.flatnonzero(labels == cls)
        if len(members) < per_class:
            raise UserError(
                f"class {cls} has {len(members)} images, fewer than data.test_per_class = "
                f"{per_class}; lower data.test_per_class"
            )
        chosen.append(rng.permutation(members)[:per_class])
    return np.sort(np.concatenate(chosen))


def split_for_seed(pool: ImagePool, data: Data, seed: int) -> Split:
    split_seed = data.split_seed if data.split_seed is not None else seed
    train_idx, val_idx = stratified_split(
        pool.labels.cpu().numpy(), data.train_per_class, data.val_per_class, split_seed
    )
    device = pool.images.device
    train = torch.as_tensor(train_idx, device=device)
    val = torch.as_tensor(val_idx, device=device)
    return Split(pool.images[train], pool.labels[train], pool.images[val], pool.labels[val])


def _to_device(array: np.ndarray, device: torch.device) -> torch.Tensor:
    """A plain copy: the dataset goes to the device once per process. Staging it through
    pinned memory would be no faster for a one-shot upload, and PyTorch's caching host
    allocator keeps a pinned block, page-locked, for the rest of the worker's life."""
    return torch.from_numpy(np.ascontiguousarray(array)).to(device)


def load_digits_arrays() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's 8x8 digits as uint8 N x 1 x 8 x 8 images (0..16 scaled to 0..255).

    The file that `sklearn.datasets.load_digits` parses is read directly where it is found:
    importing scikit-learn costs most of a second in every worker, for one small CSV."""
    found = importlib.util.find_spec("sklearn")
    csv = None if found is None or found.origin is None else (
        Path(found.origin).parent / "datasets" / "data" / "digits.csv.gz"
    )  # fmt: skip
    if csv is not None and csv.is_file():
        table = np.loadtxt(csv, delimiter=",", dtype=np.float64)
        pixels, target = table[:, :-1].reshape(-1, 8, 8), table[:, -1]
    else:
        from sklearn.datasets import load_digits

        digits = load_digits()
        pixels, target = digits.images, digits.target
    images = np.rint(pixels * (255.0 / 16.0)).astype(np.uint8)[:, None]
    return images, target.astype(np.int64)


def read_cifar10_train(folder: Path) -> tuple[np.ndarray, np.ndarray]:
    """The five training batches of a `cifar-10-batches-py` folder as uint8 N x 3 x 32 x 32."""
    return read_cifar10_batches(folder, CIFAR10_TRAIN_BATCHES)


def read_cifar10_batches(folder: Path, names: tuple[str, ...]) -> tuple[np.ndarray, np.ndarray]:
    """Batches of a `cifar-10-batches-py` folder as uint8 N x 3 x 32 x 32 and int64 labels."""
    images, labels = [], []
    for name in names:
        with open(folder / name, "rb") as handle:
            batch = pickle.load(handle, encoding="latin1")
        if not isinstance(batch, dict):
            raise ValueError(f"{name} holds no batch dict")
        data = np.asarray(batch["data"], dtype=np.uint8).reshape(-1, 3, 32, 32)
        targets = np.asarray(batch["labels"], dtype=np.int64)
        if len(targets) != len(data):
            raise ValueError(f"{name} has {len(data)} images but {len(targets)} labels")
        images.append(data)
        labels.append(targets)
    return np.concatenate(images), np.concatenate(labels)


def _download_cifar10(root: Path, train: bool = True) -> None:
    from torchvision.datasets import CIFAR10

    CIFAR10(root=str(root), train=train, download=True)


def load_cifar10_arrays(
    root: Path, download: bool, batches: tuple[str, ...] = CIFAR10_TRAIN_BATCHES
) -> tuple[np.ndarray, np.ndarray]:
    """The named batches (the training set by default), downloaded first where missing."""
    folder = root / CIFAR10_FOLDER
    missing = [name for name in batches if not (folder / name).is_file()]
    if missing and download:
        try:
            _download_cifar10(root, train=batches == CIFAR10_TRAIN_BATCHES)
        except Exception as exc:  # torchvision raises URLError, OSError, RuntimeError...
            raise UserError(
                f"CIFAR-10 is not in {folder} and could not be downloaded ({type(exc).__name__}: "
                f"{exc}); extract cifar-10-python.tar.gz under {root} or set data.root"
            ) from None
        missing = [name for name in batches if not (folder / name).is_file()]
    if missing:
        fix = "" if download else ", or set data.download = true"
        raise UserError(
            f"CIFAR-10 is not in {folder} (missing {', '.join(missing)}); extract "
            f"cifar-10-python.tar.gz under {root} or set data.root{fix}"
        )
    try:
        return read_cifar10_batches(folder, batches)
    except (OSError, EOFError, pickle.UnpicklingError, KeyError, TypeError, ValueError) as exc:
        raise UserError(
            f"{folder} is not a readable cifar-10-batches-py folder ({exc}); "
            "extract cifar-10-python.tar.gz there again"
        ) from None


def select_classes(
    images: np.ndarray, labels: np.ndarray, classes: tuple[int, ...] | None
) -> tuple[np.ndarray, np.ndarray]:
    """The images of `classes` only, relabelled 0..K-1 in the order `classes` gives them.

    >>> select_classes(np.arange(4), np.array([5, 7, 5, 6]), (7, 5))
    (array([0, 1, 2]), array([1, 0, 1]))
    """
    if classes is None:
        return images, labels
    keep = np.isin(labels, classes)
    renumber = np.full(int(labels.max()) + 1, -1, dtype=np.int64)
    renumber[list(classes)] = np.arange(len(classes))
    return images[keep], renumber[labels[keep]]


def pretrained_statistics(weights: str) -> tuple[tuple[float, ...], tuple[float, ...]] | None:
    """The input mean and std that bundled weights were trained with (their JSON), or None."""
    from lsearch.pretrained import recorded_figures

    figures = recorded_figures(weights)
    if figures is None:
        return None
    return tuple(figures["input_mean"]), tuple(figures["input_std"])


# The side of each dataset's own images (digits are 8x8, CIFAR-10 32x32).
NATIVE_SIDE = {"digits": 8, "cifar10": 32}


def trained_side(data: Data) -> int:
    """The side of the images the model sees: `data.image_size`, or the dataset's own.

    >>> trained_side(Data(dataset="cifar10")), trained_side(Data(image_size=224))
    (32, 224)
    """
    return data.image_size or NATIVE_SIDE[data.dataset]


def load_pool(data: Data, device: torch.device, weights: str = "none") -> ImagePool:
    """Load the study's dataset once per process, straight onto `device`.

    Inputs are normalised as the network's weights expect them: with the statistics that
    lsearch's bundled weights were pretrained with, ImageNet's for CIFAR-10 (torchvision's
    weights), and otherwise those of the digits images the study trains from."""
    if data.dataset == "digits":
        images, labels = load_digits_arrays()
        if data.test_per_class is not None:
            keep = np.setdiff1d(
                np.arange(len(labels)), held_out_indices(labels, data.test_per_class)
            )
            images, labels = images[keep], labels[keep]
        images, labels = select_classes(images, labels, data.classes)
        scaled = images.astype(np.float64) / 255.0
        own = (float(scaled.mean()),), (float(scaled.std()),)
        mean, std = pretrained_statistics(weights) or own
    else:
        images, labels = select_classes(
            *load_cifar10_arrays(Path(data.root), data.download), data.classes
        )
        mean, std = IMAGENET_MEAN, IMAGENET_STD
    return ImagePool(
        images=_to_device(images, device),
        labels=_to_device(labels, device),
        num_classes=len(data.classes) if data.classes else int(labels.max()) + 1,
        mean=mean,
        std=std,
    )


def load_test_set(data: Data, device: torch.device) -> TestSet:
    """The study's held-out test set; only comparisons and evaluations read it."""
    if data.dataset == "digits":
        if data.test_per_class is None:
            raise UserError(
                "this study has no held-out test set (digits has no official one); set "
                "data.test_per_class in the study file, e.g. --set data.test_per_class=40, "
                "and run the search again, since the test images leave its pool"
            )
        images, labels = load_digits_arrays()
        index = held_out_indices(labels, data.test_per_class)
        images, labels = images[index], labels[index]
    else:
        images, labels = load_cifar10_arrays(Path(data.root), data.download, (CIFAR10_TEST_BATCH,))
        if data.test_per_class is not None:
            index = held_out_indices(labels, data.test_per_class)
            images, labels = images[index], labels[index]
    # The test images are carved out of all classes first, so a class keeps the same test
    # images whichever subset of classes a study trains on.
    images, labels = select_classes(images, labels, data.classes)
    return TestSet(images=_to_device(images, device), labels=_to_device(labels, device))
