"""CIFAR-10 in its python-pickle layout: reading and checking it, the dataset names the commands
accept, and the stratified training / held-out split.

Image layout everywhere is **NCHW uint8** (N, 3, 32, 32): the official files store each row
channel-major (1024 R, then 1024 G, then 1024 B values), so NCHW is a free reshape and is what
torch convolutions consume. A synthetic stand-in in the same layout is written by
`models.synthetic_data`; batches (normalised, augmented) come from `models.batches`.
"""

from __future__ import annotations

import pickle
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

__all__ = [
    "CIFAR10_URL",
    "CIFAR10_DIRNAME",
    "IMAGE_SHAPE",
    "LAYOUT",
    "DATASETS",
    "CifarData",
    "DatasetError",
    "DatasetSpec",
    "load_cifar10",
    "open_dataset",
    "read_meta",
    "train_holdout_split",
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

ROW_LEN = IMAGE_SHAPE[0] * IMAGE_SHAPE[1] * IMAGE_SHAPE[2]  # 3072
CIFAR10_NAMES = (
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
            and data.shape[1] == ROW_LEN and data.shape[0] > 0):
        desc = (f"{data.dtype} array of shape {data.shape}" if isinstance(data, np.ndarray)
                else type(data).__name__)
        raise DatasetError(
            f"corrupt file {path}: b'data' is {desc}, expected a uint8 array of shape "
            f"(N, {ROW_LEN}); {_EXPECTED}"
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


def read_meta(path: Path) -> tuple[tuple[str, ...], bool]:
    raw = _unpickle(path)
    names = raw.get(b"label_names")
    if not (isinstance(names, list) and len(names) == NUM_CLASSES
            and all(isinstance(n, (bytes, str)) for n in names)):
        raise DatasetError(
            f"corrupt file {path}: b'label_names' must be a list of {NUM_CLASSES} names; "
            f"{_EXPECTED}"
        )
    num_vis = raw.get(b"num_vis")
    if num_vis is not None and num_vis != ROW_LEN:
        raise DatasetError(f"corrupt file {path}: num_vis={num_vis!r}, expected {ROW_LEN}")
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
    class_names, synthetic = read_meta(root / META_FILE)

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
    d = Path(data_dir).expanduser()
    if spec.synthetic and not ((d / META_FILE).exists() or (d / CIFAR10_DIRNAME / META_FILE).exists()):
        where = "does not exist" if not d.exists() else f"holds no {META_FILE} (nor {CIFAR10_DIRNAME}/{META_FILE})"
        raise DatasetError(  # no download advice: synthetic data are generated
            f"synthetic dataset directory {d} {where}: synthetic data are generated, not downloaded: "
            f"prune-search --data synthetic writes them into its --data-dir, or run python -c \"from "
            f"models.synthetic_data import write_synthetic_cifar10; write_synthetic_cifar10('{d}')\"")
    data = load_cifar10(data_dir)
    if data.synthetic != spec.synthetic:
        found = "synthetic" if data.synthetic else "cifar10"
        raise DatasetError(
            f"dataset {spec.name!r} requested but {data.root} holds {found!r} data "
            f"(decided by the label names in {data.root / META_FILE}); use name {found!r} "
            f"or point at the right directory"
        )
    return data


# --------------------------------------------------------------------------- held-out split

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

