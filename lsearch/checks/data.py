"""The study's inputs: its dataset and its pretrained weights on disk (nothing is
downloaded)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import torch

from lsearch.checks.check import Check
from lsearch.pretrained import missing_message, weights_file
from lsearch.spec import StudySpec


def check_data(spec: StudySpec) -> Check:
    """Whether the study's dataset is on disk (nothing is downloaded).

    >>> from lsearch.spec import load_spec
    >>> check_data(load_spec("digits")).detail
    'digits ships with scikit-learn'
    """
    from lsearch.training.data import CIFAR10_FOLDER, CIFAR10_TEST_BATCH, CIFAR10_TRAIN_BATCHES

    dataset = spec.data.dataset
    if dataset == "digits":
        return Check("data", "ok", "digits ships with scikit-learn", {"dataset": dataset})
    folder = Path(spec.data.root) / CIFAR10_FOLDER
    needed = (*CIFAR10_TRAIN_BATCHES, CIFAR10_TEST_BATCH)
    missing = [name for name in needed if not (folder / name).is_file()]
    figures = {"dataset": dataset, "folder": str(folder), "present": not missing}
    figures["missing"] = missing
    if not missing:
        return Check("data", "ok", f"{dataset}: all {len(needed)} batches in {folder}", figures)
    what = "missing" if len(missing) == len(needed) else f"incomplete (no {', '.join(missing)})"
    get = f"or extract cifar-10-python.tar.gz under {spec.data.root}"
    if spec.data.download:
        detail = (
            f"{dataset}: {folder} {what}; lsearch run downloads it there on its first run where "
            f"the network allows (data.download = true), {get}"
        )
        return Check("data", "warn", detail, figures)
    detail = f"{dataset}: {folder} {what} and data.download = false: lsearch run will stop; {get}"
    return Check("data", "fail", detail, figures)


def imagenet_weights_file() -> Path:
    """Where torchvision caches ResNet-18's ImageNet weights (torch hub's checkpoints)."""
    from torchvision.models import ResNet18_Weights

    name = os.path.basename(urlparse(ResNet18_Weights.IMAGENET1K_V1.url).path)
    return Path(torch.hub.get_dir()) / "checkpoints" / name


def check_weights(spec: StudySpec) -> Check:
    """Whether the study's pretrained weights are on disk (nothing is downloaded):
    figures["present"] says whether training may use them.

    >>> from lsearch.spec import load_spec
    >>> check_weights(load_spec("digits")).detail
    'n/a: model.weights = none (trained from scratch)'
    """
    weights = spec.model.weights
    figures: dict[str, Any] = {"weights": weights}
    if weights == "none":
        detail = "n/a: model.weights = none (trained from scratch)"
        return Check("weights", "ok", detail, figures | {"present": True})
    if weights == "imagenet":
        if spec.model.name != "resnet18":
            detail = f"model.weights = 'imagenet' exists for resnet18 only, not {spec.model.name}"
            return Check("weights", "fail", detail, figures | {"present": False})
        path = imagenet_weights_file()
        figures.update(file=str(path))
        if path.is_file():
            detail = f"imagenet: torchvision's ResNet-18 weights cached at {path}"
            return Check("weights", "ok", detail, figures | {"present": True})
        detail = (
            f"imagenet: not in torch's cache ({path}); downloaded on first use where the "
            "network allows, or set model.weights to a local state-dict file"
        )
        return Check("weights", "warn", detail, figures | {"present": False})
    path = weights_file(weights) or Path(weights)
    figures.update(file=str(path))
    if path.is_file():
        size = path.stat().st_size / 2**20
        return Check("weights", "ok", f"{path} ({size:.1f} MB)", figures | {"present": True})
    detail = missing_message(path)
    return Check("weights", "fail", detail, figures | {"present": False})
