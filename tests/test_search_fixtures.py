"""Shared pieces of the search tests: small synthetic data and briefly trained tiny networks.

Test modules import the fixtures from here (pytest collects this module too; it holds one
sanity test of the fixtures themselves)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from models.datasets import load_cifar10
from models.families import get_arch
from models.synthetic_data import write_synthetic_cifar10
from models.torch_builder import ArchNet, build_torch
from search.data import SearchData
from search.finetune import FinetuneSettings, finetune, holdout_error

N_TRAIN, N_TEST = 800, 50
TINY_FT = FinetuneSettings(batches=2, batch_size=16, lr=0.01, eval_batch_size=200)


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny networks run faster on one thread, and far faster on a busy machine (torch's
    threads spin-wait for each other); restored afterwards for other tests."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def synthetic_dir(tmp_path_factory) -> Path:
    return write_synthetic_cifar10(tmp_path_factory.mktemp("data"), N_TRAIN, N_TEST, seed=0)


@pytest.fixture(scope="session")
def search_data(synthetic_dir) -> SearchData:
    d = load_cifar10(synthetic_dir)
    return SearchData.split(d.train_images, d.train_labels, 0.1, seed=0)


def train_tiny(arch_name: str, data: SearchData, batches: int = 40) -> ArchNet:
    torch.manual_seed(0)
    net = build_torch(get_arch(arch_name))
    finetune(net, data, FinetuneSettings(batches=batches, batch_size=32, lr=0.05), seed=123)
    return net


@pytest.fixture(scope="session")
def trained(search_data):
    """`trained("wrn-10-1")` -> a copy of a briefly trained network (cached per session)."""
    cache: dict[str, dict] = {}

    def get(arch_name: str) -> ArchNet:
        if arch_name not in cache:
            cache[arch_name] = {k: v.clone() for k, v in train_tiny(arch_name, search_data).state_dict().items()}
        net = build_torch(get_arch(arch_name))
        net.load_state_dict(cache[arch_name])
        return net

    return get


def test_fixture_network_learns_something(search_data, trained):
    # the searches compare held-out errors: the base network must be better than chance
    net = trained("wrn-10-1")
    assert holdout_error(net, search_data) < 0.8
    assert search_data.holdout_idx.size == 80 and np.bincount(search_data.labels[search_data.holdout_idx]).min() == 8
