"""Make the weights the offline default study fine-tunes: lsearch's small CNN pretrained on
scikit-learn's digits 0-4 (the source task), which the `digits-transfer` study then fine-tunes
on digits 5-9 (the target task, disjoint classes).

    .venv/bin/python scripts/pretrain_digits.py            # writes lsearch/pretrained/digits-0-4.*

The source task trains on every image of classes 0-4 except 50 per class, which are held
out (the same carving as the target's test set: `data.test_per_class = 50`) and give the
source-task accuracy recorded in the JSON. It uses lsearch's own training code (augmentation,
Adam, cosine schedule, no label smoothing) on the CPU with one thread, so a rerun on the same
machine and torch version gives the same file. The JSON records what was measured, how, and
the input statistics the network expects (the loader of the .pt file accepts tensors only).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from lsearch.checks.machine import cpu_model
from lsearch.pretrained import file_sha256
from lsearch.spec import Augment, Data, Model, Train
from lsearch.training.data import Split, load_pool, load_test_set
from lsearch.training.models import build_model
from lsearch.training.seed_run import seed_everything, start_seed_run

NAME = "digits-0-4"
SOURCE_CLASSES = (0, 1, 2, 3, 4)
WIDTH = 16  # the width of the digits studies' small CNN
HELD_OUT_PER_CLASS = 50
RECIPE = {"epochs": 30, "lr": 3e-3, "batch_size": 64, "seed": 0, "label_smoothing": 0.0}
OUT = Path(__file__).resolve().parent.parent / "lsearch" / "pretrained"


def source_data() -> Data:
    """The source task: digits 0-4 with 50 images per class held out."""
    return Data(
        dataset="digits",
        classes=SOURCE_CLASSES,
        test_per_class=HELD_OUT_PER_CLASS,
        augment=Augment(crop_padding=1, flip=False),
    )


def source_accuracy(state: dict[str, torch.Tensor], mean: list[float], std: list[float]) -> float:
    """The accuracy of weights (head included) on the source task's held-out images."""
    from lsearch.training.augment import prepare

    net = build_model(Model(name="small_cnn", width=WIDTH), 1, len(SOURCE_CLASSES), seed=0)
    net.model.load_state_dict(state)
    net.model.eval()
    test = load_test_set(source_data(), torch.device("cpu"))
    shape = (1, -1, 1, 1)
    x = prepare(test.images, torch.tensor(mean).view(shape), torch.tensor(std).view(shape), None, 1)
    with torch.no_grad():
        predicted = net.model(x).argmax(dim=1)
    return float((predicted == test.labels).double().mean())


def pretrain(epochs: int) -> tuple[dict[str, torch.Tensor], dict[str, object]]:
    """Train on the source task; the state dict and what was measured."""
    torch.set_num_threads(1)  # one thread: the same bits on every rerun of this machine
    cpu = torch.device("cpu")
    data = source_data()
    pool = load_pool(data, cpu)
    test = load_test_set(data, cpu)
    split = Split(pool.images, pool.labels, test.images, test.labels)
    seed = int(RECIPE["seed"])
    seed_everything(seed)
    net = build_model(Model(name="small_cnn", width=WIDTH), 1, len(SOURCE_CLASSES), seed)
    train = Train(batch_size=int(RECIPE["batch_size"]), schedule="cosine", patience=None)
    run = start_seed_run(seed, net, split, pool, data, train, 0.0, float(RECIPE["lr"]), epochs, cpu)
    started = time.perf_counter()
    for _ in range(epochs):
        loss = run.train_epoch()
    seconds = time.perf_counter() - started
    metrics, _ = run.evaluate(loss)
    state = {k: v.detach().clone() for k, v in net.model.state_dict().items()}
    figures: dict[str, object] = {
        "name": NAME,
        "architecture": {"name": "small_cnn", "width": WIDTH, "in_channels": 1},
        "source_classes": list(SOURCE_CLASSES),
        "source_train_images": int(pool.labels.numel()),
        "source_held_out_images": int(test.labels.numel()),
        "recipe": RECIPE
        | {"epochs": epochs, "optimizer": "adam", "schedule": "cosine"}
        | {"augment": data.augment.model_dump()},
        "source_held_out_acc": metrics.val_acc,
        "source_held_out_nll": metrics.val_loss,
        "input_mean": list(pool.mean),
        "input_std": list(pool.std),
        "train_seconds": round(seconds, 2),
        "threads": 1,
        "cpu": cpu_model(),
        "torch": torch.__version__,
        "made": time.strftime("%Y-%m-%d"),
    }
    return state, figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=OUT, help="folder to write NAME.pt/.json")
    parser.add_argument("--epochs", type=int, default=int(RECIPE["epochs"]))
    args = parser.parse_args()
    state, figures = pretrain(args.epochs)
    args.out.mkdir(parents=True, exist_ok=True)
    weights = args.out / f"{NAME}.pt"
    torch.save(state, weights)
    figures["sha256"] = file_sha256(str(weights))  # the digest the spec check compares
    (args.out / f"{NAME}.json").write_text(json.dumps(figures, indent=2) + "\n")
    print(
        f"{weights}: source-task held-out accuracy {100 * figures['source_held_out_acc']:.2f} % "
        f"({figures['source_held_out_images']} images), trained in {figures['train_seconds']} s"
    )


if __name__ == "__main__":
    main()
