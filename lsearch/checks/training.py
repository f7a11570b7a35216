"""Training here: one synthetic epoch of the study's baseline configuration, as a trial
trains it, with the memory a whole trial needs."""

from __future__ import annotations

from typing import Any

import torch

from lsearch.checks.check import Check, first_line
from lsearch.spec import StudySpec


def check_training(spec: StudySpec, device: torch.device, weights_present: bool = True) -> Check:
    """Train one synthetic epoch of the study's baseline configuration (after a warm-up
    epoch) as a trial does: its speed, and the memory a whole trial needs. Weights that are
    not on disk are replaced by random ones (same speed), so nothing is downloaded."""
    from lsearch.bench import speed as benchmark
    from lsearch.training.devices import set_determinism

    notes = ""
    if spec.model.weights != "none" and not weights_present:
        spec = spec.model_copy(update={"model": spec.model.model_copy(update={"weights": "none"})})
        notes = "; random weights (the study's are not here; the speed is the same)"
    try:
        set_determinism(device, spec.train.deterministic)
        result = benchmark.measure_speed(spec, device, epochs=1, synthetic=True, baseline=False)
    except torch.cuda.OutOfMemoryError:
        detail = f"out of memory on {device}: lower train.batch_size or data.image_size"
        return Check("training", "fail", detail)
    except Exception as exc:
        return Check("training", "fail", f"one synthetic epoch failed ({first_line(exc)})")
    speed = result.lsearch
    # The figure to size workers by (bench.TrialMemory), not one seed's peak.
    per_worker = result.trial_memory.per_worker_mb if result.trial_memory else speed.peak_memory_mb
    figures: dict[str, Any] = {
        "train_images_per_s": speed.train_images_per_s,
        "eval_images_per_s": speed.eval_images_per_s,
        "seconds_per_epoch": speed.seconds_per_epoch,
        "peak_memory_mb": speed.peak_memory_mb,
        "per_worker_mb": per_worker,
        "random_weights": bool(notes),
        "bench": result.to_json(len(spec.seeds), benchmark.mean_epochs(spec)),
    }
    detail = (
        f"{result.model} at {result.image_size} px on {result.device}: "
        f"{speed.train_images_per_s:,.0f} train img/s, {speed.eval_images_per_s:,.0f} eval img/s, "
        f"{speed.seconds_per_epoch:.3f} s/epoch; a whole trial ({len(spec.seeds)} seeds) "
        f"needs {per_worker:,.0f} MB per worker{notes}"
    )
    return Check("training", "ok", detail, figures)
