"""One step of the thesis's training recipe, and the evaluation of a trained network.

SGD with Nesterov momentum and weight decay, a cosine learning rate updated after every batch,
cross-entropy; on CUDA the forward pass runs under float16 autocast with a GradScaler and
channels-last tensors, on CPU in float32.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from models.batches import make_loader
from models.torch_builder import ArchNet
from .retrain_config import RetrainConfig

LR_SCHEDULE = "cosine decay to 0, updated every iteration"
AUGMENTATION = "reflect-pad 4, random 32x32 crop, horizontal flip p=0.5"
EVAL_BATCH = 500

# scaler.step skips the optimiser step when float16 gradients overflow (the first steps of a
# run, while the loss scale settles); the scheduler's "step order" warning that follows is expected
warnings.filterwarnings("ignore", message="Detected call of `lr_scheduler.step\\(\\)` before")


@dataclass
class TrainSetup:
    net: ArchNet
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    scaler: torch.amp.GradScaler
    device: torch.device
    amp: bool  # float16 autocast + loss scaling (CUDA only)

    @property
    def memory_format(self) -> torch.memory_format:
        # channels-last lets cuDNN use tensor-core kernels under float16
        return torch.channels_last if self.device.type == "cuda" else torch.contiguous_format


def make_setup(net: ArchNet, cfg: RetrainConfig, steps_per_epoch: int, device: torch.device) -> TrainSetup:
    amp = device.type == "cuda"
    fmt = torch.channels_last if amp else torch.contiguous_format
    net.to(device=device, memory_format=fmt)
    opt = torch.optim.SGD(net.parameters(), lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov,
                          weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=cfg.epochs * steps_per_epoch, eta_min=0.0)
    scaler = torch.amp.GradScaler(device.type, enabled=amp)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    return TrainSetup(net, opt, sched, scaler, device, amp)


def train_step(s: TrainSetup, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """One SGD step on a batch; returns (mean loss, number correct) as device tensors (no
    host synchronisation: the caller reads them when it prints)."""
    x = x.to(s.device, non_blocking=True, memory_format=s.memory_format)
    y = y.to(s.device, non_blocking=True)
    with torch.autocast(s.device.type, dtype=torch.float16, enabled=s.amp):
        out = s.net(x)
        loss = F.cross_entropy(out, y)
    s.optimizer.zero_grad(set_to_none=True)
    s.scaler.scale(loss).backward()
    s.scaler.step(s.optimizer)
    s.scaler.update()
    s.scheduler.step()
    return loss.detach(), (out.detach().argmax(1) == y).sum()


@torch.no_grad()
def evaluate(net: ArchNet, images: np.ndarray, labels: np.ndarray, mean: np.ndarray, std: np.ndarray,
             device: torch.device | None = None, batch_size: int = EVAL_BATCH) -> tuple[float, float]:
    """(top-1 error, mean cross-entropy) in eval mode, without augmentation."""
    device = device or next(net.parameters()).device
    amp = device.type == "cuda"
    fmt = torch.channels_last if amp else torch.contiguous_format
    was_training = net.training
    net.eval()
    wrong = torch.zeros((), dtype=torch.int64, device=device)
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    for x, y in make_loader(images, labels, batch_size, False, mean, std):
        x = x.to(device, memory_format=fmt)
        y = y.to(device)
        with torch.autocast(device.type, dtype=torch.float16, enabled=amp):
            out = net(x)
        loss_sum += F.cross_entropy(out.float(), y, reduction="sum").double()
        wrong += (out.argmax(1) != y).sum()
    net.train(was_training)
    n = int(labels.shape[0])
    return int(wrong) / n, float(loss_sum) / n
