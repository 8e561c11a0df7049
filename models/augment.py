"""CIFAR-10 augmentation of the thesis: reflect-pad 4, random 32x32 crop, random horizontal flip
(p = 0.5), as one vectorised gather per batch in plain torch (no torchvision), on uint8 NCHW.
"""

from __future__ import annotations

import torch

__all__ = ["crop_flip", "random_crop_flip"]


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
