"""Datasets: CIFAR-10 read from a real-format `cifar-10-batches-py` folder, digits, and the
stratified per-class subsets every seed draws."""

from __future__ import annotations

import pickle
import subprocess
import sys
import urllib.error
from pathlib import Path

import numpy as np
import pytest
import torch

import lsearch.training.data
from lsearch.errors import UserError
from lsearch.spec import Data
from lsearch.training.data import (
    CIFAR10_FOLDER,
    IMAGENET_MEAN,
    IMAGENET_STD,
    NATIVE_SIDE,
    ImagePool,
    load_pool,
    load_test_set,
    read_cifar10_train,
    split_for_seed,
    stratified_split,
)

CPU = torch.device("cpu")
CLASSES = 10
PER_CLASS_PER_BATCH = 6
PER_BATCH = CLASSES * PER_CLASS_PER_BATCH  # 60 images in each of the five batch files
TOTAL = 5 * PER_BATCH


def fake_image(index: int) -> np.ndarray:
    """The 3 x 32 x 32 image the fake dataset stores as image `index`: its first two red
    pixels spell the index in base 256, and every other value encodes the channel and the
    position (so a wrong reshape or channel order shows)."""
    channel, row, col = np.meshgrid(np.arange(3), np.arange(32), np.arange(32), indexing="ij")
    image = ((index * 7 + channel * 85 + row * 32 + col) % 256).astype(np.uint8)
    image[0, 0, 0] = index % 256
    image[0, 0, 1] = index // 256
    return image


def fake_batch(first_index: int, count: int, labels: list[int], name: str) -> dict:
    """One batch dict as in the real files: rows of 3072 bytes, 1024 R then 1024 G then 1024 B,
    each plane row by row."""
    data = np.empty((count, 3072), dtype=np.uint8)
    for i in range(count):
        image = fake_image(first_index + i)
        for channel in range(3):
            for row in range(32):
                start = channel * 1024 + row * 32
                data[i, start : start + 32] = image[channel, row]
    return {
        "batch_label": name,
        "labels": labels,
        "data": data,
        "filenames": [f"image_{first_index + i:05d}.png" for i in range(count)],
    }


def write_cifar(root: Path, test_batch: str = "valid") -> np.ndarray:
    """A small `cifar-10-batches-py` folder under `root` in the real format (pickle protocol 2
    dicts). Returns the labels of the five training batches in order."""
    folder = root / CIFAR10_FOLDER
    folder.mkdir(parents=True)
    rng = np.random.default_rng(1234)
    all_labels = []
    for number in range(1, 6):
        labels = [
            int(v) for v in rng.permutation(np.repeat(np.arange(CLASSES), PER_CLASS_PER_BATCH))
        ]
        all_labels.extend(labels)
        batch = fake_batch((number - 1) * PER_BATCH, PER_BATCH, labels, f"training batch {number}")
        with open(folder / f"data_batch_{number}", "wb") as handle:
            pickle.dump(batch, handle, protocol=2)
    meta = {
        "num_cases_per_batch": PER_BATCH,
        "label_names": [
            "airplane",
            "automobile",
            "bird",
            "cat",
            "deer",
            "dog",
            "frog",
            "horse",
            "ship",
            "truck",
        ],
        "num_vis": 3072,
    }
    with open(folder / "batches.meta", "wb") as handle:
        pickle.dump(meta, handle, protocol=2)
    if test_batch == "valid":
        batch = fake_batch(10_000, 20, [i % CLASSES for i in range(20)], "testing batch 1")
        with open(folder / "test_batch", "wb") as handle:
            pickle.dump(batch, handle, protocol=2)
    elif test_batch == "corrupt":
        (folder / "test_batch").write_bytes(b"\x00this is not a pickle\xff" * 10)
    return np.asarray(all_labels, dtype=np.int64)


def cifar_data(root: Path, **kwargs) -> Data:
    return Data(dataset="cifar10", root=str(root), download=kwargs.pop("download", False), **kwargs)


def expected_images(count: int, first: int = 0) -> np.ndarray:
    return np.stack([fake_image(first + i) for i in range(count)])


# --- CIFAR-10 --------------------------------------------------------------------------------


def test_read_cifar10_train_gives_channel_planes_and_labels_in_batch_order(tmp_path: Path) -> None:
    labels = write_cifar(tmp_path)
    images, read_labels = read_cifar10_train(tmp_path / CIFAR10_FOLDER)
    assert images.shape == (TOTAL, 3, 32, 32) and images.dtype == np.uint8
    assert read_labels.dtype == np.int64
    np.testing.assert_array_equal(read_labels, labels)
    np.testing.assert_array_equal(images, expected_images(TOTAL))
    # Spot checks of the layout, independent of the helper above: the first 1024 bytes of a
    # row are the red plane, row-major, then green, then blue.
    g = 261  # the 22nd image of data_batch_5
    assert images[g, 0, 0, 0] == g % 256 and images[g, 0, 0, 1] == g // 256
    assert images[g, 0, 0, 2] == (g * 7 + 2) % 256
    assert images[g, 0, 1, 0] == (g * 7 + 32) % 256
    assert images[g, 1, 0, 0] == (g * 7 + 85) % 256
    assert images[g, 2, 31, 31] == (g * 7 + 170 + 1023) % 256


def test_load_pool_reads_cifar10_onto_the_device(tmp_path: Path) -> None:
    labels = write_cifar(tmp_path)
    pool = load_pool(cifar_data(tmp_path), CPU)
    assert isinstance(pool, ImagePool)
    assert pool.images.shape == (TOTAL, 3, 32, 32)
    assert pool.images.dtype == torch.uint8 and pool.labels.dtype == torch.int64
    assert pool.images.device == CPU and pool.labels.device == CPU
    assert torch.equal(pool.labels, torch.from_numpy(labels))
    assert torch.equal(pool.images, torch.from_numpy(expected_images(TOTAL)))
    assert pool.num_classes == 10
    assert pool.mean == IMAGENET_MEAN == (0.485, 0.456, 0.406)
    assert pool.std == IMAGENET_STD == (0.229, 0.224, 0.225)
    # The side seeds_together's "auto" reads from the spec alone, before any image is loaded.
    assert NATIVE_SIDE["cifar10"] == pool.images.shape[-1]
    assert NATIVE_SIDE["digits"] == load_pool(Data(), CPU).images.shape[-1]


@pytest.mark.parametrize("test_batch", ["corrupt", "absent"])
def test_the_official_test_batch_is_never_read(tmp_path: Path, test_batch: str) -> None:
    labels = write_cifar(tmp_path, test_batch=test_batch)
    assert (tmp_path / CIFAR10_FOLDER / "test_batch").exists() == (test_batch == "corrupt")
    pool = load_pool(cifar_data(tmp_path), CPU)
    assert len(pool.images) == TOTAL  # the 20 test images are nowhere in the pool
    assert torch.equal(pool.labels, torch.from_numpy(labels))


def test_test_batch_images_do_not_enter_the_pool(tmp_path: Path) -> None:
    write_cifar(tmp_path, test_batch="valid")
    pool = load_pool(cifar_data(tmp_path), CPU)
    test_first = torch.from_numpy(fake_image(10_000))
    assert not any(torch.equal(image, test_first) for image in pool.images)


def test_the_test_set_is_the_official_test_batch_read_only_by_load_test_set(
    tmp_path: Path,
) -> None:
    write_cifar(tmp_path, test_batch="valid")
    test = load_test_set(cifar_data(tmp_path), CPU)
    assert torch.equal(test.images, torch.from_numpy(expected_images(20, first=10_000)))
    assert test.labels.tolist() == [i % CLASSES for i in range(20)]
    # test_per_class: a fixed stratified subset of the official batch.
    subset = load_test_set(cifar_data(tmp_path, test_per_class=1), CPU)
    assert sorted(subset.labels.tolist()) == list(range(CLASSES))
    assert torch.equal(
        subset.images, load_test_set(cifar_data(tmp_path, test_per_class=1), CPU).images
    )


@pytest.mark.parametrize("test_batch", ["corrupt", "absent"])
def test_a_missing_or_corrupt_test_batch_is_a_user_error(tmp_path: Path, test_batch: str) -> None:
    write_cifar(tmp_path, test_batch=test_batch)
    with pytest.raises(UserError, match=r"test_batch|not a readable"):
        load_test_set(cifar_data(tmp_path), CPU)


def test_missing_folder_without_download_names_the_folder_and_the_fix(tmp_path: Path) -> None:
    root = tmp_path / "nowhere"
    with pytest.raises(UserError) as info:
        load_pool(cifar_data(root), CPU)
    message = str(info.value)
    assert str(root / CIFAR10_FOLDER) in message
    assert "cifar-10-python.tar.gz" in message
    assert "data.root" in message and "data.download" in message
    assert "\n" not in message


def test_a_missing_batch_file_is_named(tmp_path: Path) -> None:
    write_cifar(tmp_path)
    (tmp_path / CIFAR10_FOLDER / "data_batch_3").unlink()
    with pytest.raises(UserError, match="missing data_batch_3"):
        load_pool(cifar_data(tmp_path), CPU)


def _garbage(path: Path) -> None:
    path.write_bytes(b"\x89PNG not a pickle at all" * 20)


def _empty(path: Path) -> None:
    path.write_bytes(b"")


def _truncated(path: Path) -> None:
    path.write_bytes(path.read_bytes()[:5000])


def _no_labels(path: Path) -> None:
    path.write_bytes(pickle.dumps({"data": np.zeros((2, 3072), np.uint8)}, protocol=2))


def _wrong_size(path: Path) -> None:
    batch = {"data": np.zeros((2, 1000), np.uint8), "labels": [0, 1]}
    path.write_bytes(pickle.dumps(batch, protocol=2))


def _labels_count_differs(path: Path) -> None:
    batch = {"data": np.zeros((PER_BATCH, 3072), np.uint8), "labels": [0] * (PER_BATCH - 1)}
    path.write_bytes(pickle.dumps(batch, protocol=2))


def _not_a_dict(path: Path) -> None:
    path.write_bytes(pickle.dumps([1, 2, 3], protocol=2))


@pytest.mark.parametrize(
    "corrupt",
    [_garbage, _empty, _truncated, _no_labels, _wrong_size, _labels_count_differs, _not_a_dict],
)
def test_a_corrupt_batch_file_is_a_user_error(tmp_path: Path, corrupt) -> None:
    write_cifar(tmp_path)
    corrupt(tmp_path / CIFAR10_FOLDER / "data_batch_4")
    with pytest.raises(UserError) as info:
        load_pool(cifar_data(tmp_path), CPU)
    message = str(info.value)
    assert str(tmp_path / CIFAR10_FOLDER) in message
    assert "cifar-10-python.tar.gz" in message


def test_download_failure_is_a_user_error_naming_data_root(tmp_path, monkeypatch) -> None:
    calls = []

    def offline(root: Path, train: bool = True) -> None:
        calls.append(root)
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(lsearch.training.data, "_download_cifar10", offline)
    root = tmp_path / "data"
    with pytest.raises(UserError) as info:
        load_pool(cifar_data(root, download=True), CPU)
    message = str(info.value)
    assert "could not be downloaded" in message
    assert "no network" in message and "URLError" in message
    assert "data.root" in message and str(root / CIFAR10_FOLDER) in message
    assert calls == [root]


def test_download_happens_only_when_missing_and_its_result_is_read(tmp_path, monkeypatch) -> None:
    calls = []

    def fake_download(root: Path, train: bool = True) -> None:
        calls.append((root, train))
        write_cifar(root)

    monkeypatch.setattr(lsearch.training.data, "_download_cifar10", fake_download)
    pool = load_pool(cifar_data(tmp_path, download=True), CPU)
    assert calls == [(tmp_path, True)] and len(pool.images) == TOTAL
    # Present now: no second download, for the training batches or the test batch.
    pool = load_pool(cifar_data(tmp_path, download=True), CPU)
    assert len(load_test_set(cifar_data(tmp_path, download=True), CPU).images) == 20
    assert calls == [(tmp_path, True)] and len(pool.images) == TOTAL


def test_a_download_that_leaves_the_folder_incomplete_is_a_user_error(
    tmp_path, monkeypatch
) -> None:
    monkeypatch.setattr(lsearch.training.data, "_download_cifar10", lambda root, train=True: None)
    with pytest.raises(UserError, match="data_batch_1"):
        load_pool(cifar_data(tmp_path, download=True), CPU)


# --- stratified subsets ----------------------------------------------------------------------


def uneven_labels() -> np.ndarray:
    """Classes 0, 3, 7 and 9 with different sizes, shuffled."""
    labels = np.concatenate([np.full(n, cls) for cls, n in [(0, 30), (3, 12), (7, 50), (9, 9)]])
    return np.random.default_rng(5).permutation(labels)


def test_stratified_split_takes_exact_counts_per_class_disjointly() -> None:
    labels = uneven_labels()
    train, val = stratified_split(labels, train_per_class=5, val_per_class=4, seed=0)
    assert train.dtype.kind == "i" and val.dtype.kind == "i"
    for cls in (0, 3, 7, 9):
        assert int(np.sum(labels[train] == cls)) == 5
        assert int(np.sum(labels[val] == cls)) == 4
    assert len(train) == 20 and len(val) == 16
    assert len(set(train.tolist())) == 20 and len(set(val.tolist())) == 16
    assert not set(train.tolist()) & set(val.tolist())
    assert np.all(np.diff(train) > 0) and np.all(np.diff(val) > 0)


def test_stratified_split_can_take_a_whole_class() -> None:
    labels = uneven_labels()
    train, val = stratified_split(labels, train_per_class=5, val_per_class=4, seed=3)
    nine = set(np.flatnonzero(labels == 9).tolist())
    assert nine == {int(i) for i in np.concatenate([train, val]) if labels[i] == 9}


def test_stratified_split_is_a_function_of_the_seed() -> None:
    labels = uneven_labels()
    a = stratified_split(labels, 5, 4, seed=11)
    b = stratified_split(labels.copy(), 5, 4, seed=11)
    c = stratified_split(labels, 5, 4, seed=12)
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])
    assert not np.array_equal(a[0], c[0])
    assert not np.array_equal(a[1], c[1])


def test_stratified_split_with_too_few_images_names_the_setting() -> None:
    labels = uneven_labels()  # class 9 has 9 images
    with pytest.raises(UserError, match="train_per_class") as info:
        stratified_split(labels, train_per_class=5, val_per_class=5, seed=0)
    assert "class 9" in str(info.value)


@pytest.fixture(scope="module")
def digits_pool() -> ImagePool:
    return load_pool(Data(dataset="digits"), CPU)


def test_split_for_seed_uses_split_seed_whatever_the_seed(digits_pool: ImagePool) -> None:
    data = Data(dataset="digits", train_per_class=7, val_per_class=3, split_seed=42)
    train_idx, val_idx = stratified_split(digits_pool.labels.numpy(), 7, 3, seed=42)
    for seed in (0, 1, 42, 999):
        split = split_for_seed(digits_pool, data, seed)
        assert torch.equal(split.train_images, digits_pool.images[train_idx])
        assert torch.equal(split.train_labels, digits_pool.labels[train_idx])
        assert torch.equal(split.val_images, digits_pool.images[val_idx])
        assert torch.equal(split.val_labels, digits_pool.labels[val_idx])


def test_split_for_seed_without_split_seed_follows_the_seed(digits_pool: ImagePool) -> None:
    data = Data(dataset="digits", train_per_class=7, val_per_class=3)
    labels = digits_pool.labels.numpy()
    splits = {seed: split_for_seed(digits_pool, data, seed) for seed in (0, 1)}
    for seed, split in splits.items():
        train_idx, val_idx = stratified_split(labels, 7, 3, seed=seed)
        assert torch.equal(split.train_images, digits_pool.images[train_idx])
        assert torch.equal(split.train_labels, digits_pool.labels[train_idx])
        assert torch.equal(split.val_images, digits_pool.images[val_idx])
        assert torch.equal(split.val_labels, digits_pool.labels[val_idx])
        assert split.train_images.shape == (70, 1, 8, 8) and split.val_images.shape == (30, 1, 8, 8)
        assert torch.bincount(split.train_labels).tolist() == [7] * 10
        assert torch.bincount(split.val_labels).tolist() == [3] * 10
    assert not torch.equal(splits[0].train_images, splits[1].train_images)
    again = split_for_seed(digits_pool, data, 0)
    assert torch.equal(again.train_images, splits[0].train_images)
    assert torch.equal(again.val_labels, splits[0].val_labels)


def test_split_for_seed_on_cifar_pool(tmp_path: Path) -> None:
    write_cifar(tmp_path)
    data = cifar_data(tmp_path, train_per_class=20, val_per_class=10)
    pool = load_pool(data, CPU)
    split = split_for_seed(pool, data, seed=3)
    assert split.train_images.shape == (200, 3, 32, 32) and split.val_images.shape == (
        100,
        3,
        32,
        32,
    )
    assert split.train_images.dtype == torch.uint8
    # Every image is identified by its first two red pixels: train and validation share none.
    train_keys = {tuple(img[0, 0, :2].tolist()) for img in split.train_images}
    val_keys = {tuple(img[0, 0, :2].tolist()) for img in split.val_images}
    assert len(train_keys) == 200 and len(val_keys) == 100 and not train_keys & val_keys
    with pytest.raises(UserError, match="train_per_class"):
        split_for_seed(pool, cifar_data(tmp_path, train_per_class=25, val_per_class=10), 0)


# --- digits ----------------------------------------------------------------------------------


def test_digits_pool_is_uint8_8x8_with_its_own_statistics(digits_pool: ImagePool) -> None:
    from sklearn.datasets import load_digits

    digits = load_digits()
    pool = digits_pool
    assert pool.images.shape == (1797, 1, 8, 8) and pool.images.dtype == torch.uint8
    assert pool.labels.dtype == torch.int64
    assert int(pool.images.min()) == 0 and int(pool.images.max()) == 255
    assert pool.num_classes == 10
    np.testing.assert_array_equal(pool.labels.numpy(), digits.target)
    # 0..16 scaled to 0..255: 0 -> 0, 16 -> 255, and the ordering of values is kept.
    raw = digits.images
    images = pool.images.numpy()[:, 0]
    assert np.all(images[raw == 0] == 0) and np.all(images[raw == 16] == 255)
    np.testing.assert_array_equal(images, np.rint(raw * 255.0 / 16.0).astype(np.uint8))
    scaled = np.rint(raw * 255.0 / 16.0) / 255.0
    assert len(pool.mean) == 1 and len(pool.std) == 1
    assert pool.mean[0] == pytest.approx(scaled.mean(), rel=1e-9)
    assert pool.std[0] == pytest.approx(scaled.std(), rel=1e-9)
    assert 0.2 < pool.mean[0] < 0.4 and 0.3 < pool.std[0] < 0.45
    assert pool.mean != IMAGENET_MEAN[:1]


def test_digits_read_from_scikit_learn_s_file_equal_load_digits(monkeypatch) -> None:
    """The CSV inside scikit-learn is parsed without importing it; where the file is not
    found (another layout), load_digits itself is used. Both give load_digits' images."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    expected = np.rint(digits.images * (255.0 / 16.0)).astype(np.uint8)[:, None]
    direct_images, direct_labels = lsearch.training.data.load_digits_arrays()
    monkeypatch.setattr(lsearch.training.data.importlib.util, "find_spec", lambda name: None)
    fallback_images, fallback_labels = lsearch.training.data.load_digits_arrays()
    for images, labels in ((direct_images, direct_labels), (fallback_images, fallback_labels)):
        assert images.dtype == np.uint8 and images.shape == (1797, 1, 8, 8)
        assert np.array_equal(images, expected) and np.array_equal(labels, digits.target)
    assert direct_images.max() == 255 and direct_labels.dtype == np.int64


def test_loading_digits_does_not_import_scikit_learn() -> None:
    code = (
        "import sys; from lsearch.training.data import load_digits_arrays; load_digits_arrays(); "
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('sklearn', 'scipy')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
