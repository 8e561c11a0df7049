"""A learnable synthetic dataset in the exact CIFAR-10 python layout (`models.datasets` reads
it): tests, demos and benchmarks run the whole pipeline without downloading CIFAR-10. Its label
names carry a prefix, so it is never mistaken for, or reported as, CIFAR-10.
"""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np

from .atomic_write import atomic_path
from .datasets import (
    CIFAR10_DIRNAME,
    CIFAR10_NAMES,
    META_FILE,
    NUM_CLASSES,
    ROW_LEN,
    SYNTHETIC_PREFIX,
    TEST_BATCH_FILE,
    TRAIN_BATCH_FILES,
    DatasetError,
    read_meta,
)

__all__ = ["write_synthetic_cifar10"]

def _synthetic_images(labels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Class = stripe orientation/frequency + a partly mixed-in class colour, with noise.

    Colour alone is only a partial cue (mixed with a random colour), so a tiny model trained
    briefly lands well above chance but far from 100%, while a small CNN that learns the
    stripes gets close to 100%: room for pruning to show an accuracy cost.
    """
    n = labels.shape[0]
    hue = np.arange(NUM_CLASSES) / NUM_CLASSES
    palette = np.stack([
        0.5 + 0.45 * np.cos(2 * np.pi * (hue + k / 3)) for k in range(3)
    ], axis=1) * 255.0  # (10, 3): evenly spaced hues
    angle = np.pi * np.arange(NUM_CLASSES) / NUM_CLASSES
    freq = 2.0 + (np.arange(NUM_CLASSES) % 3)
    yy, xx = np.mgrid[0:32, 0:32].astype(np.float32) / np.float32(32.0)
    # float32 throughout: several times faster than float64 for the 50k-image case.
    a = angle[labels][:, None, None].astype(np.float32)
    f = freq[labels][:, None, None].astype(np.float32)
    phase = rng.uniform(0, 2 * np.pi, size=(n, 1, 1)).astype(np.float32)
    stripes = np.sin(np.float32(2 * np.pi) * f * (xx * np.cos(a) + yy * np.sin(a)) + phase)
    w = rng.uniform(0.3, 0.8, size=(n, 1))
    colour = w * palette[labels] + (1 - w) * rng.uniform(0.05, 0.95, size=(n, 3)) * 255.0
    img = colour.astype(np.float32)[:, :, None, None] * (
        np.float32(0.65) + np.float32(0.35) * stripes[:, None])  # (n, 3, 32, 32)
    img += np.float32(40.0) * rng.standard_normal(size=img.shape, dtype=np.float32)
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)


def _dump(path: Path, obj: dict) -> None:
    # Protocol 2 is what the official (Python 2 cPickle) files use; written atomically so a
    # crash never leaves a half-written batch that looks valid by name.
    with atomic_path(path, hint="choose a writable --data-dir") as tmp, open(tmp, "wb") as f:
        pickle.dump(obj, f, protocol=2)


def write_synthetic_cifar10(
    out_dir: str | Path, n_train: int = 2500, n_test: int = 500, seed: int = 0
) -> Path:
    """Write a learnable synthetic dataset in the exact CIFAR-10 python layout.

    Files go to `out_dir/cifar-10-batches-py/` (as `tar xzf` of the official archive would
    produce); that directory is returned. Training images are split over the five batches.
    """
    if n_train < len(TRAIN_BATCH_FILES) or n_test < 1:
        raise ValueError(f"need n_train >= {len(TRAIN_BATCH_FILES)} and n_test >= 1, "
                         f"got {n_train}, {n_test}")
    root = Path(out_dir) / CIFAR10_DIRNAME
    if (root / META_FILE).is_file():
        _, synthetic = read_meta(root / META_FILE)
        if not synthetic:
            raise DatasetError(f"refusing to overwrite non-synthetic dataset at {root}")
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)

    def balanced_labels(n: int) -> np.ndarray:
        return rng.permutation(np.arange(n) % NUM_CLASSES).astype(np.int64)

    train_labels = balanced_labels(n_train)
    test_labels = balanced_labels(n_test)

    start = 0
    for i, (name, chunk) in enumerate(
        zip(TRAIN_BATCH_FILES, np.array_split(np.arange(n_train), len(TRAIN_BATCH_FILES))), 1
    ):
        _dump(root / name, {
            b"batch_label": f"synthetic training batch {i} of 5".encode(),
            b"labels": [int(v) for v in train_labels[chunk]],
            # Generated per batch file so peak memory stays at one batch.
            b"data": _synthetic_images(train_labels[chunk], rng).reshape(len(chunk), ROW_LEN),
            b"filenames": [f"synthetic_train_{start + j:05d}.png".encode()
                           for j in range(len(chunk))],
        })
        start += len(chunk)
    _dump(root / TEST_BATCH_FILE, {
        b"batch_label": b"synthetic testing batch 1 of 1",
        b"labels": [int(v) for v in test_labels],
        b"data": _synthetic_images(test_labels, rng).reshape(n_test, ROW_LEN),
        b"filenames": [f"synthetic_test_{j:05d}.png".encode() for j in range(n_test)],
    })
    _dump(root / META_FILE, {
        b"num_cases_per_batch": int(np.ceil(n_train / len(TRAIN_BATCH_FILES))),
        b"label_names": [(SYNTHETIC_PREFIX + n).encode() for n in CIFAR10_NAMES],
        b"num_vis": ROW_LEN,
    })
    return root

