"""Short fine-tuning, held-out evaluation and Fisher probing of a candidate network."""
from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F

from models.torch_builder import ArchNet
from .data import SearchData
from .fisher import FisherAccumulator


@dataclass(frozen=True)
class FinetuneSettings:
    """Fine-tuning of one candidate: a fresh SGD optimiser for `batches` batches."""

    batches: int = 100
    batch_size: int = 128
    lr: float = 8e-4
    momentum: float = 0.9
    weight_decay: float = 5e-4
    eval_batch_size: int = 500

    def __post_init__(self) -> None:
        if self.batches < 0 or self.batch_size < 1 or self.eval_batch_size < 1:
            raise ValueError("fine-tune batches must be >= 0 and batch sizes >= 1")
        if self.lr < 0 or self.momentum < 0 or self.weight_decay < 0:
            raise ValueError("learning rate, momentum and weight decay must be >= 0")

    def as_dict(self) -> dict:
        return asdict(self)


def finetune(net: ArchNet, data: SearchData, settings: FinetuneSettings, seed: int,
             fisher: FisherAccumulator | None = None) -> None:
    """Trains `net` in place on `settings.batches` training batches (order from `seed`);
    with `fisher`, its hooks accumulate the signal of every batch on the way."""
    if settings.batches == 0:
        return
    torch.manual_seed(seed)  # dropout
    net.train()
    opt = torch.optim.SGD(net.parameters(), lr=settings.lr, momentum=settings.momentum,
                          weight_decay=settings.weight_decay)
    for x, y in data.train_batches(settings.batches, settings.batch_size, seed):
        loss = F.cross_entropy(net(x), y)
        opt.zero_grad(set_to_none=True)
        if fisher is not None:
            fisher.grad_scale = float(x.shape[0])  # mean loss -> per-sample gradients
        loss.backward()
        if fisher is not None:
            fisher.count_batch(x.shape[0])
        opt.step()


@torch.no_grad()
def holdout_error(net: ArchNet, data: SearchData, batch_size: int = 500) -> float:
    """Top-1 error on the held-out part, in eval mode."""
    was_training = net.training
    net.eval()
    wrong = total = 0
    for x, y in data.holdout_batches(batch_size):
        wrong += int((net(x).argmax(1) != y).sum())
        total += int(y.numel())
    net.train(was_training)
    return wrong / total


def probe_fisher(net: ArchNet, data: SearchData, batches: int, batch_size: int, seed: int) -> dict[str, torch.Tensor]:
    """The Fisher signal of every group on `batches` training batches, without changing the
    network: no optimiser step, and the batch-norm running statistics are restored."""
    buffers = {k: v.clone() for k, v in net.named_buffers()}
    torch.manual_seed(seed)
    net.train()
    with FisherAccumulator(net) as acc:
        for x, y in data.train_batches(batches, batch_size, seed, kind="fisher"):
            net.zero_grad(set_to_none=True)
            acc.grad_scale = float(x.shape[0])
            F.cross_entropy(net(x), y).backward()
            acc.count_batch(x.shape[0])
        signals = acc.signals()
    net.zero_grad(set_to_none=True)
    with torch.no_grad():
        for k, v in net.named_buffers():
            v.copy_(buffers[k])
    return signals
