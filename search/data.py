"""The data a search sees: the training set split into a training part and a held-out part.

Only the training part feeds fine-tuning and Fisher accumulation; only the held-out part
measures a candidate. Every batch iterator reports the training-set indices it draws to an
optional observer, so that separation can be checked rather than assumed. The images stay
uint8 and are normalised per batch; the per-channel statistics come from the training part.

For worker processes the arrays can live in `.npy` files opened as memory maps
(`shared_in`): a pickled `SearchData` then carries the file paths, not the data.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import torch

from models.batches import channel_mean_std, load_batches
from models.datasets import CifarData, train_holdout_split

Observer = Callable[[str, np.ndarray], None]  # (kind: "train" | "fisher" | "holdout", indices)


def derive_seed(*parts: int | str) -> int:
    """A 63-bit seed from (run seed, iteration, group, purpose...): every random choice of a
    search derives from such a tuple, so a resumed run repeats an uninterrupted one."""
    words = []
    for p in parts:
        if isinstance(p, str):
            words.extend(p.encode())
            words.append(256)  # separator: ("ab", "c") != ("a", "bc")
        else:
            words.extend(divmod(int(p) % 2**64, 2**32))  # any int, negative seeds included
    return int(np.random.SeedSequence(words).generate_state(1, dtype=np.uint64)[0] >> 1)


@dataclass
class SearchData:
    images: np.ndarray  # uint8 (N, 3, 32, 32): the whole training set
    labels: np.ndarray  # int64 (N,)
    train_idx: np.ndarray  # indices into images: fine-tuning and Fisher only
    holdout_idx: np.ndarray  # indices into images: candidate evaluation only
    mean: np.ndarray  # per channel, [0, 1] scale, of the training part
    std: np.ndarray
    observer: Observer | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        if np.intersect1d(self.train_idx, self.holdout_idx).size:
            raise ValueError("the training and held-out indices overlap")
        if self.train_idx.size == 0 or self.holdout_idx.size == 0:
            raise ValueError("the training and held-out parts must both be non-empty")

    @classmethod
    def split(cls, images: np.ndarray, labels: np.ndarray, holdout_fraction: float = 0.1,
              seed: int = 0) -> "SearchData":
        """A stratified held-out split of a training set (the test set is never used)."""
        labels = np.asarray(labels, dtype=np.int64)
        train_idx, holdout_idx = train_holdout_split(labels, holdout_fraction, seed)
        mean, std = channel_mean_std(np.asarray(images[train_idx]))
        return cls(images, labels, train_idx, holdout_idx, mean, std)

    @classmethod
    def from_cifar(cls, data: CifarData, holdout_fraction: float = 0.1, seed: int = 0) -> "SearchData":
        return cls.split(data.train_images, data.train_labels, holdout_fraction, seed)

    # -- batches -------------------------------------------------------------------------------
    def _emit(self, kind: str, idx: np.ndarray) -> None:
        if self.observer is not None:
            self.observer(kind, idx)

    def train_batches(self, n_batches: int, batch_size: int, seed: int, kind: str = "train"
                      ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """`n_batches` augmented batches of the training part, reshuffled each epoch; the
        order and augmentation depend on `seed` only."""
        if kind not in ("train", "fisher"):
            raise ValueError(f"training batches are for 'train' or 'fisher', not {kind!r}")
        n = self.train_idx.size
        batch_size = min(batch_size, n)
        gen = torch.Generator().manual_seed(seed)  # one stream: the epochs' orders and the augmentation

        def index_batches() -> Iterator[np.ndarray]:
            done = 0
            while done < n_batches:
                order = self.train_idx[torch.randperm(n, generator=gen).numpy()]
                for start in range(0, n - batch_size + 1, batch_size):  # full batches only
                    if done >= n_batches:
                        break
                    idx = np.sort(order[start:start + batch_size])
                    self._emit(kind, idx)
                    yield idx
                    done += 1

        yield from load_batches(self.images, self.labels, index_batches(), *self._stats(), augment=gen)

    def holdout_batches(self, batch_size: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        def index_batches() -> Iterator[np.ndarray]:
            for start in range(0, self.holdout_idx.size, batch_size):
                idx = self.holdout_idx[start:start + batch_size]
                self._emit("holdout", idx)
                yield idx

        yield from load_batches(self.images, self.labels, index_batches(), *self._stats())

    def _stats(self) -> tuple[torch.Tensor, torch.Tensor]:
        return torch.tensor(self.mean), torch.tensor(self.std)  # copies: a worker may get read-only arrays

    # -- sharing with worker processes ---------------------------------------------------------
    def shared_in(self, directory: str | Path) -> "SearchData":
        """A copy whose images and labels are memory-mapped `.npy` files in `directory`, so
        pickling it for a worker ships two paths instead of the data."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        arrays = {}
        for name in ("images", "labels"):
            path = directory / f"{name}.npy"
            np.save(path, np.asarray(getattr(self, name)))
            arrays[name] = np.load(path, mmap_mode="r")
        return replace(self, images=arrays["images"], labels=arrays["labels"], observer=None)

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["observer"] = None  # callbacks stay in the process that set them
        for name in ("images", "labels"):
            arr = state[name]
            if isinstance(arr, np.memmap) and arr.filename:
                state[name] = ("npy-file", str(arr.filename))
        return state

    def __setstate__(self, state: dict) -> None:
        for name in ("images", "labels"):
            if isinstance(state[name], tuple) and state[name][0] == "npy-file":
                state[name] = np.load(state[name][1], mmap_mode="r")
        self.__dict__.update(state)
