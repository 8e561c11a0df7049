"""The one batch loader: uint8 NCHW images in, normalised float32 batches (optionally augmented)
out, on the CPU.

`load_batches` is the loop every caller shares: it gathers the images of each index batch,
augments them when given a generator (the thesis recipe, `models.augment`) and normalises them
with per-channel mean/std of the *training* images, on the [0, 1] scale (`channel_mean_std`).
Callers differ only in the order of the index batches: `BatchLoader` draws one epoch per pass
from a (seed, epoch) stream (retraining), `search.data.SearchData` its own training and
held-out orders.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence

import numpy as np
import torch

from .augment import random_crop_flip

__all__ = [
    "BatchLoader",
    "channel_mean_std",
    "iterate_batches",
    "load_batches",
    "make_loader",
    "normalize",
]


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


def normalize(x: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """uint8 NCHW -> float32 NCHW, (x/255 - mean) / std per channel."""
    # Out-of-place first op: never mutate the caller's tensor even if it is already float.
    return x.to(torch.float32).div(255.0).sub_(mean.view(1, -1, 1, 1)).div_(std.view(1, -1, 1, 1))


# --------------------------------------------------------------------------- loaders

def _take(data: np.ndarray | torch.Tensor, idx: np.ndarray | torch.Tensor) -> torch.Tensor:
    """The rows `idx` of a tensor, or of an array (a memory map too) as a new tensor."""
    if isinstance(data, torch.Tensor):
        return data[idx]
    return torch.from_numpy(np.ascontiguousarray(data[idx]))


def load_batches(
    images: np.ndarray | torch.Tensor,
    labels: np.ndarray | torch.Tensor,
    index_batches: Iterable[np.ndarray | torch.Tensor],
    mean: torch.Tensor,
    std: torch.Tensor,
    augment: torch.Generator | None = None,
    padding: int = 4,
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """(x float32 NCHW normalised, y) for every index batch, in the order given.

    With `augment`, each batch is cropped and flipped with draws from that generator (after
    whatever the caller drew from it for the order: the batches are produced lazily, so order
    and augmentation draws interleave exactly as the caller's loop makes them).
    """
    for idx in index_batches:
        xb = _take(images, idx)
        if augment is not None:
            xb = random_crop_flip(xb, augment, padding)  # on uint8: 4x less data to move
        yield normalize(xb, mean, std), _take(labels, idx)


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
        index_batches = (order[i * self.batch_size:(i + 1) * self.batch_size] for i in range(len(self)))
        yield from load_batches(self.images, self.labels, index_batches, self.mean, self.std,
                                augment=gen if self.train else None, padding=self.padding)


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
