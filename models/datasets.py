"""CIFAR-10 loading, a synthetic stand-in in the same on-disk format, and CPU batch loaders.

Image layout everywhere in this module is **NCHW uint8** (N, 3, 32, 32): the official
files store each row channel-major (1024 R, then 1024 G, then 1024 B values), so NCHW is a
free reshape and is what torch convolutions consume.

Augmentation follows the thesis recipe: reflect-pad 4, random 32x32 crop, random horizontal
flip (p = 0.5). It is implemented as one vectorised gather per batch in plain torch (no
torchvision). Normalisation uses per-channel mean/std of the *training* images, on the
[0, 1] scale.
"""

from __future__ import annotations

import pickle
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

__all__ = [
    "CIFAR10_URL",
    "CIFAR10_DIRNAME",
    "IMAGE_SHAPE",
    "LAYOUT",
    "DATASETS",
    "BatchLoader",
    "CifarData",
    "DatasetError",
    "DatasetSpec",
    "channel_mean_std",
    "crop_flip",
    "iterate_batches",
    "load_cifar10",
    "make_loader",
    "normalize",
    "open_dataset",
    "random_crop_flip",
    "train_holdout_split",
    "write_synthetic_cifar10",
]

CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
CIFAR10_DIRNAME = "cifar-10-batches-py"
IMAGE_SHAPE = (3, 32, 32)
LAYOUT = "NCHW"
NUM_CLASSES = 10
TRAIN_BATCH_FILES = tuple(f"data_batch_{i}" for i in range(1, 6))
TEST_BATCH_FILE = "test_batch"
META_FILE = "batches.meta"
OFFICIAL_BATCH_SIZE = 10000
SYNTHETIC_PREFIX = "synthetic-"

_ROW_LEN = IMAGE_SHAPE[0] * IMAGE_SHAPE[1] * IMAGE_SHAPE[2]  # 3072
_CIFAR10_NAMES = (
    "airplane", "automobile", "bird", "cat", "deer",
    "dog", "frog", "horse", "ship", "truck",
)
_EXPECTED = (
    f"expected the standard '{CIFAR10_DIRNAME}' layout: data_batch_1..data_batch_5 "
    f"({OFFICIAL_BATCH_SIZE} images each), test_batch ({OFFICIAL_BATCH_SIZE} images) and "
    f"batches.meta; download {CIFAR10_URL} and extract it with "
    f"'tar xzf cifar-10-python.tar.gz'"
)


class DatasetError(ValueError):
    """A dataset directory or file is missing, corrupt, or not what was asked for."""


@dataclass(frozen=True)
class CifarData:
    """A loaded CIFAR-10-format dataset. Images are uint8 NCHW (N, 3, 32, 32); labels int64."""

    train_images: np.ndarray
    train_labels: np.ndarray
    test_images: np.ndarray
    test_labels: np.ndarray
    class_names: tuple[str, ...]
    synthetic: bool
    root: Path

    @property
    def num_classes(self) -> int:
        return len(self.class_names)


# --------------------------------------------------------------------------- loading

# Only what the official files (old numpy, Python 2 cPickle) and our protocol-2 writer
# need; anything else in a pickle is refused instead of executed.
_ALLOWED_GLOBALS = frozenset({
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("_codecs", "encode"),
})


class _CifarUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> object:
        if (module, name) not in _ALLOWED_GLOBALS:
            raise pickle.UnpicklingError(f"disallowed global {module}.{name}")
        return super().find_class(module, name)


def _unpickle(path: Path) -> dict:
    """The one place that unpickles: the official CIFAR format is a pickle."""
    if not path.is_file():
        raise DatasetError(f"missing file {path}; {_EXPECTED}")
    try:
        with path.open("rb") as f:
            obj = _CifarUnpickler(f, encoding="bytes").load()
    except Exception as exc:  # a damaged pickle can fail in many ways; all mean "corrupt"
        raise DatasetError(
            f"corrupt file {path} (truncated or not a CIFAR pickle: {exc}); {_EXPECTED}"
        ) from exc
    if not isinstance(obj, dict):
        raise DatasetError(
            f"corrupt file {path}: top level is {type(obj).__name__}, expected a dict; {_EXPECTED}"
        )
    return obj


def _check_batch(path: Path, raw: dict, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    for key in (b"data", b"labels"):
        if key not in raw:
            raise DatasetError(
                f"corrupt file {path}: missing key {key!r} (has {sorted(map(repr, raw))}); "
                f"{_EXPECTED}"
            )
    data = raw[b"data"]
    if not (isinstance(data, np.ndarray) and data.dtype == np.uint8 and data.ndim == 2
            and data.shape[1] == _ROW_LEN and data.shape[0] > 0):
        desc = (f"{data.dtype} array of shape {data.shape}" if isinstance(data, np.ndarray)
                else type(data).__name__)
        raise DatasetError(
            f"corrupt file {path}: b'data' is {desc}, expected a uint8 array of shape "
            f"(N, {_ROW_LEN}); {_EXPECTED}"
        )
    labels_raw = raw[b"labels"]
    if not isinstance(labels_raw, (list, tuple, np.ndarray)) or not all(
        isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in labels_raw
    ):
        raise DatasetError(f"corrupt file {path}: b'labels' must be a list of ints; {_EXPECTED}")
    labels = np.asarray(labels_raw, dtype=np.int64).reshape(-1)
    if labels.shape[0] != data.shape[0]:
        raise DatasetError(
            f"corrupt file {path}: {labels.shape[0]} labels for {data.shape[0]} images; "
            f"{_EXPECTED}"
        )
    if labels.min() < 0 or labels.max() >= num_classes:
        raise DatasetError(
            f"corrupt file {path}: labels outside [0, {num_classes}); {_EXPECTED}"
        )
    names = raw.get(b"filenames")
    if names is not None and (not isinstance(names, list) or len(names) != data.shape[0]):
        raise DatasetError(
            f"corrupt file {path}: b'filenames' must be a list with one entry per image; "
            f"{_EXPECTED}"
        )
    images = np.ascontiguousarray(data.reshape((-1, *IMAGE_SHAPE)))
    return images, labels


def _read_meta(path: Path) -> tuple[tuple[str, ...], bool]:
    raw = _unpickle(path)
    names = raw.get(b"label_names")
    if not (isinstance(names, list) and len(names) == NUM_CLASSES
            and all(isinstance(n, (bytes, str)) for n in names)):
        raise DatasetError(
            f"corrupt file {path}: b'label_names' must be a list of {NUM_CLASSES} names; "
            f"{_EXPECTED}"
        )
    num_vis = raw.get(b"num_vis")
    if num_vis is not None and num_vis != _ROW_LEN:
        raise DatasetError(f"corrupt file {path}: num_vis={num_vis!r}, expected {_ROW_LEN}")
    decoded = tuple(n.decode("utf-8") if isinstance(n, bytes) else n for n in names)
    synthetic = all(n.startswith(SYNTHETIC_PREFIX) for n in decoded)
    return decoded, synthetic


def _resolve_root(data_dir: str | Path) -> Path:
    d = Path(data_dir).expanduser()
    if d.is_file() and d.name.endswith((".tar.gz", ".tgz")):
        raise DatasetError(f"{d} is the archive, not the extracted directory; {_EXPECTED}")
    if not d.is_dir():
        raise DatasetError(f"dataset directory {d} does not exist; {_EXPECTED}")
    if (d / META_FILE).exists() or (d / TEST_BATCH_FILE).exists():
        return d
    if (d / CIFAR10_DIRNAME).is_dir():
        return d / CIFAR10_DIRNAME
    raise DatasetError(
        f"{d} holds neither {META_FILE} nor a '{CIFAR10_DIRNAME}' subdirectory; {_EXPECTED}"
    )


def load_cifar10(data_dir: str | Path) -> CifarData:
    """Load the python-pickle CIFAR-10 layout from `data_dir` or `data_dir/cifar-10-batches-py`.

    Returns uint8 NCHW images and int64 labels. Real (non-synthetic) data must have the
    official sizes; a synthetic directory (label names prefixed 'synthetic-') may be smaller.
    """
    root = _resolve_root(data_dir)
    class_names, synthetic = _read_meta(root / META_FILE)

    def load(name: str) -> tuple[np.ndarray, np.ndarray]:
        path = root / name
        images, labels = _check_batch(path, _unpickle(path), len(class_names))
        if not synthetic and images.shape[0] != OFFICIAL_BATCH_SIZE:
            raise DatasetError(
                f"corrupt file {path}: {images.shape[0]} images, expected "
                f"{OFFICIAL_BATCH_SIZE}; {_EXPECTED}"
            )
        return images, labels

    parts = [load(n) for n in TRAIN_BATCH_FILES]
    test_images, test_labels = load(TEST_BATCH_FILE)
    return CifarData(
        train_images=np.concatenate([p[0] for p in parts]),
        train_labels=np.concatenate([p[1] for p in parts]),
        test_images=test_images,
        test_labels=test_labels,
        class_names=class_names,
        synthetic=synthetic,
        root=root,
    )


@dataclass(frozen=True)
class DatasetSpec:
    """A dataset name accepted on the command line and what it must resolve to."""

    name: str
    description: str
    synthetic: bool


DATASETS: dict[str, DatasetSpec] = {
    "cifar10": DatasetSpec("cifar10", f"official CIFAR-10 ({CIFAR10_URL})", synthetic=False),
    "synthetic": DatasetSpec(
        "synthetic", "generated CIFAR-10-format data from write_synthetic_cifar10", synthetic=True
    ),
}


def open_dataset(name: str, data_dir: str | Path) -> CifarData:
    """Load dataset `name` ('cifar10' or 'synthetic') from `data_dir`.

    The name must match what is on disk, so synthetic numbers are never reported as CIFAR-10.
    """
    spec = DATASETS.get(name.strip().lower())
    if spec is None:
        raise DatasetError(f"unknown dataset {name!r}; known names: {', '.join(sorted(DATASETS))}")
    data = load_cifar10(data_dir)
    if data.synthetic != spec.synthetic:
        found = "synthetic" if data.synthetic else "cifar10"
        raise DatasetError(
            f"dataset {spec.name!r} requested but {data.root} holds {found!r} data "
            f"(decided by the label names in {data.root / META_FILE}); use name {found!r} "
            f"or point at the right directory"
        )
    return data


# --------------------------------------------------------------------------- synthetic data

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
    # Protocol 2 is what the official (Python 2 cPickle) files use; write then rename so a
    # crash never leaves a half-written batch that looks valid by name.
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("wb") as f:
        pickle.dump(obj, f, protocol=2)
    tmp.replace(path)


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
        _, synthetic = _read_meta(root / META_FILE)
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
            b"data": _synthetic_images(train_labels[chunk], rng).reshape(len(chunk), _ROW_LEN),
            b"filenames": [f"synthetic_train_{start + j:05d}.png".encode()
                           for j in range(len(chunk))],
        })
        start += len(chunk)
    _dump(root / TEST_BATCH_FILE, {
        b"batch_label": b"synthetic testing batch 1 of 1",
        b"labels": [int(v) for v in test_labels],
        b"data": _synthetic_images(test_labels, rng).reshape(n_test, _ROW_LEN),
        b"filenames": [f"synthetic_test_{j:05d}.png".encode() for j in range(n_test)],
    })
    _dump(root / META_FILE, {
        b"num_cases_per_batch": int(np.ceil(n_train / len(TRAIN_BATCH_FILES))),
        b"label_names": [(SYNTHETIC_PREFIX + n).encode() for n in _CIFAR10_NAMES],
        b"num_vis": _ROW_LEN,
    })
    return root


# --------------------------------------------------------------------------- splits and stats

def train_holdout_split(
    labels: np.ndarray | Sequence[int], holdout_fraction: float = 0.1, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Stratified split into sorted, disjoint (train_idx, holdout_idx) int64 index arrays.

    Each class contributes round(fraction * count) samples to the holdout, capped so every
    class keeps at least one training sample. Deterministic for a given seed.
    """
    y = np.asarray(labels)
    if y.ndim != 1 or not np.issubdtype(y.dtype, np.integer):
        raise ValueError(f"labels must be a 1-D integer array, got {y.dtype} shape {y.shape}")
    if not 0.0 <= holdout_fraction < 1.0:
        raise ValueError(f"holdout_fraction must be in [0, 1), got {holdout_fraction}")
    rng = np.random.default_rng(seed)
    hold: list[np.ndarray] = []
    for c in np.unique(y):
        idx = np.flatnonzero(y == c)
        k = min(int(round(holdout_fraction * idx.size)), idx.size - 1)
        hold.append(rng.permutation(idx)[:k])
    holdout = np.sort(np.concatenate(hold)).astype(np.int64) if hold else np.empty(0, np.int64)
    mask = np.ones(y.size, dtype=bool)
    mask[holdout] = False
    return np.flatnonzero(mask).astype(np.int64), holdout


def channel_mean_std(images: np.ndarray, chunk: int = 4096) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel mean and (population) std of uint8 NCHW images, on the [0, 1] scale.

    Accumulates exact int64 sums in chunks so the full training set is never copied to float.
    """
    if images.ndim != 4 or images.dtype != np.uint8 or images.shape[0] == 0:
        raise ValueError(f"expected non-empty uint8 NCHW images, got {images.dtype} {images.shape}")
    c = images.shape[1]
    s = np.zeros(c, dtype=np.int64)
    sq = np.zeros(c, dtype=np.int64)
    for i in range(0, images.shape[0], chunk):
        block = images[i:i + chunk].astype(np.int64)
        s += block.sum(axis=(0, 2, 3))
        sq += np.einsum("nchw,nchw->c", block, block)
    count = images.shape[0] * images.shape[2] * images.shape[3]
    mean = s / count
    var = np.maximum(sq / count - mean**2, 0.0)
    return (mean / 255.0).astype(np.float32), (np.sqrt(var) / 255.0).astype(np.float32)


# --------------------------------------------------------------------------- transforms

def normalize(x: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """uint8 NCHW -> float32 NCHW, (x/255 - mean) / std per channel."""
    # Out-of-place first op: never mutate the caller's tensor even if it is already float.
    return x.to(torch.float32).div(255.0).sub_(mean.view(1, -1, 1, 1)).div_(std.view(1, -1, 1, 1))


def _reflect(i: torch.Tensor, size: int) -> torch.Tensor:
    # Same convention as F.pad(mode="reflect"): the edge pixel is not repeated.
    i = i.abs()
    return torch.where(i > size - 1, 2 * (size - 1) - i, i)


def crop_flip(
    x: torch.Tensor, top: torch.Tensor, left: torch.Tensor, flip: torch.Tensor, padding: int = 4
) -> torch.Tensor:
    """Reflect-pad by `padding`, crop H x W at (top, left) of the padded image, flip where set.

    One gather for the whole batch; `top`/`left` are in [0, 2*padding], `flip` is bool (N,).
    """
    n, c, h, w = x.shape
    if padding >= min(h, w):
        raise ValueError(f"reflect padding {padding} needs images larger than {padding}")
    ar_h = torch.arange(h)
    ar_w = torch.arange(w)
    rows = _reflect(top.view(-1, 1) - padding + ar_h, h)                      # (N, H)
    cols_fwd = left.view(-1, 1) - padding + ar_w
    cols = _reflect(torch.where(flip.view(-1, 1), cols_fwd.flip(1), cols_fwd), w)  # (N, W)
    # Flat indices into the contiguous batch: ~2x faster than 4-way advanced indexing.
    plane = torch.arange(n * c).view(n, c, 1, 1) * (h * w)
    flat = plane + rows.view(n, 1, h, 1) * w + cols.view(n, 1, 1, w)
    return x.contiguous().view(-1)[flat]


def random_crop_flip(x: torch.Tensor, generator: torch.Generator, padding: int = 4) -> torch.Tensor:
    """Thesis augmentation: reflect-pad, random crop back to the input size, flip with p=0.5."""
    n = x.shape[0]
    top = torch.randint(0, 2 * padding + 1, (n,), generator=generator)
    left = torch.randint(0, 2 * padding + 1, (n,), generator=generator)
    flip = torch.rand(n, generator=generator) < 0.5
    return crop_flip(x, top, left, flip, padding)


# --------------------------------------------------------------------------- loaders

def _seed_for(seed: int, epoch: int) -> int:
    # Independent, reproducible stream per (seed, epoch) without epochs sharing prefixes.
    return int(np.random.SeedSequence([seed, epoch]).generate_state(1, dtype=np.uint64)[0] >> 1)


class BatchLoader:
    """Re-iterable loader; each pass is one epoch, reshuffled (train) with a per-epoch seed.

    Yields (x float32 NCHW normalised, y int64). Deterministic: the k-th pass over two loaders
    built with the same arguments yields identical batches.
    """

    def __init__(
        self,
        images: np.ndarray | torch.Tensor,
        labels: np.ndarray | torch.Tensor,
        batch_size: int,
        train: bool,
        mean: Sequence[float] | np.ndarray | torch.Tensor,
        std: Sequence[float] | np.ndarray | torch.Tensor,
        seed: int = 0,
        drop_last: bool | None = None,
        padding: int = 4,
    ) -> None:
        x = torch.as_tensor(images)
        y = torch.as_tensor(labels).to(torch.int64)
        if x.dim() != 4 or x.dtype != torch.uint8:
            raise ValueError(f"images must be uint8 NCHW, got {x.dtype} {tuple(x.shape)}")
        if y.dim() != 1 or y.shape[0] != x.shape[0]:
            raise ValueError(f"labels must be 1-D with {x.shape[0]} entries, got {tuple(y.shape)}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.mean = torch.as_tensor(np.asarray(mean, dtype=np.float32)).reshape(-1)
        self.std = torch.as_tensor(np.asarray(std, dtype=np.float32)).reshape(-1)
        if self.mean.numel() != x.shape[1] or self.std.numel() != x.shape[1]:
            raise ValueError(f"mean/std need {x.shape[1]} entries (one per channel)")
        if not bool((self.std > 0).all()):
            raise ValueError(f"std must be positive, got {self.std.tolist()}")
        self.images, self.labels = x, y
        self.batch_size = batch_size
        self.train = train
        self.seed = seed
        self.drop_last = train if drop_last is None else drop_last
        self.padding = padding
        self.epoch = 0

    def __len__(self) -> int:
        n = self.images.shape[0]
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        gen = torch.Generator().manual_seed(_seed_for(self.seed, self.epoch))
        self.epoch += 1
        n = self.images.shape[0]
        order = torch.randperm(n, generator=gen) if self.train else torch.arange(n)
        for i in range(len(self)):
            idx = order[i * self.batch_size:(i + 1) * self.batch_size]
            xb = self.images[idx]
            if self.train:
                xb = random_crop_flip(xb, gen, self.padding)  # on uint8: 4x less data to move
            yield normalize(xb, self.mean, self.std), self.labels[idx]


def make_loader(
    images: np.ndarray | torch.Tensor,
    labels: np.ndarray | torch.Tensor,
    batch_size: int,
    train: bool,
    mean: Sequence[float] | np.ndarray | torch.Tensor,
    std: Sequence[float] | np.ndarray | torch.Tensor,
    seed: int = 0,
    drop_last: bool | None = None,
) -> BatchLoader:
    """Batch loader over uint8 NCHW images: train=True shuffles and augments, False does neither.

    `mean`/`std` are per-channel on the [0, 1] scale (see channel_mean_std). drop_last
    defaults to `train`.
    """
    return BatchLoader(images, labels, batch_size, train, mean, std, seed, drop_last)


def iterate_batches(
    loader: BatchLoader, n_batches: int | None
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Yield exactly `n_batches` batches (None: forever), starting new epochs as needed."""
    if len(loader) == 0:
        raise ValueError("loader yields no batches (dataset smaller than batch_size with drop_last)")
    if n_batches is not None and n_batches < 0:
        raise ValueError(f"n_batches must be >= 0, got {n_batches}")
    if n_batches == 0:
        return
    done = 0
    while True:
        for batch in loader:
            yield batch
            done += 1
            # Stop right after the last one so no extra batch is drawn from the loader.
            if n_batches is not None and done >= n_batches:
                return
