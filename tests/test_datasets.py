"""Tests for the data modules of models/: CIFAR-10 format I/O (datasets), the synthetic stand-in
(synthetic_data), splits, normalisation and loaders (batches), augmentation (augment)."""

from __future__ import annotations

import datetime
import itertools
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from models.augment import crop_flip, random_crop_flip
from models.batches import channel_mean_std, iterate_batches, make_loader, normalize
from models.datasets import (
    CIFAR10_DIRNAME,
    CIFAR10_URL,
    DATASETS,
    DatasetError,
    load_cifar10,
    open_dataset,
    train_holdout_split,
)
from models.synthetic_data import write_synthetic_cifar10

N_TRAIN, N_TEST = 500, 100
BATCH_FILES = [f"data_batch_{i}" for i in range(1, 6)]


@pytest.fixture(autouse=True)
def _one_torch_thread():  # noqa: ANN202 - fixture
    # The ops here are small; with 2 cores shared by other jobs, intra-op threading only adds
    # contention. Restored afterwards so other test modules are unaffected.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def synth_parent(tmp_path_factory: pytest.TempPathFactory) -> Path:
    parent = tmp_path_factory.mktemp("synth")
    write_synthetic_cifar10(parent, n_train=N_TRAIN, n_test=N_TEST, seed=0)
    return parent


@pytest.fixture()
def synth_copy(synth_parent: Path, tmp_path: Path) -> Path:
    """A private, writable copy of the batches directory for tests that damage it."""
    dst = tmp_path / CIFAR10_DIRNAME
    shutil.copytree(synth_parent / CIFAR10_DIRNAME, dst)
    return dst


def _read(path: Path) -> dict:
    with path.open("rb") as f:
        return pickle.load(f, encoding="bytes")


def _write(path: Path, obj: object) -> None:
    with path.open("wb") as f:
        pickle.dump(obj, f, protocol=2)


# --------------------------------------------------------------------------- round trip / layout

def test_round_trip(synth_parent: Path) -> None:
    data = load_cifar10(synth_parent)
    assert data.train_images.shape == (N_TRAIN, 3, 32, 32)
    assert data.test_images.shape == (N_TEST, 3, 32, 32)
    assert data.train_images.dtype == np.uint8 and data.test_images.dtype == np.uint8
    assert data.train_labels.dtype == np.int64 and data.test_labels.dtype == np.int64
    assert data.train_labels.shape == (N_TRAIN,) and data.test_labels.shape == (N_TEST,)
    assert set(np.unique(data.train_labels)) == set(range(10))
    assert data.test_labels.min() >= 0 and data.test_labels.max() <= 9
    assert np.bincount(data.train_labels).tolist() == [N_TRAIN // 10] * 10  # balanced
    assert data.synthetic is True
    assert data.num_classes == 10
    assert all(n.startswith("synthetic-") for n in data.class_names)
    assert data.root == synth_parent / CIFAR10_DIRNAME

    # The batches directory itself is accepted too, with identical contents.
    direct = load_cifar10(synth_parent / CIFAR10_DIRNAME)
    np.testing.assert_array_equal(direct.train_images, data.train_images)
    np.testing.assert_array_equal(direct.test_labels, data.test_labels)


def test_synthetic_is_deterministic(tmp_path: Path, synth_parent: Path) -> None:
    write_synthetic_cifar10(tmp_path, n_train=N_TRAIN, n_test=N_TEST, seed=0)
    for name in [*BATCH_FILES, "test_batch", "batches.meta"]:
        a = (tmp_path / CIFAR10_DIRNAME / name).read_bytes()
        assert a == (synth_parent / CIFAR10_DIRNAME / name).read_bytes(), name


def test_official_layout_on_disk(synth_parent: Path) -> None:
    root = synth_parent / CIFAR10_DIRNAME
    assert sorted(p.name for p in root.iterdir()) == sorted(
        [*BATCH_FILES, "test_batch", "batches.meta"]
    )
    data = load_cifar10(root)
    total = 0
    for name in [*BATCH_FILES, "test_batch"]:
        raw = (root / name).read_bytes()
        assert raw[:2] == b"\x80\x02"  # pickle protocol 2, as the official files
        d = _read(root / name)
        assert set(d) == {b"batch_label", b"labels", b"data", b"filenames"}
        x = d[b"data"]
        assert isinstance(x, np.ndarray) and x.dtype == np.uint8 and x.ndim == 2
        assert x.shape[1] == 3072 and x.flags["C_CONTIGUOUS"]
        n = x.shape[0]
        assert isinstance(d[b"labels"], list) and len(d[b"labels"]) == n
        assert all(type(v) is int and 0 <= v < 10 for v in d[b"labels"])
        assert isinstance(d[b"filenames"], list) and len(d[b"filenames"]) == n
        assert all(isinstance(f, bytes) for f in d[b"filenames"])
        assert isinstance(d[b"batch_label"], bytes) and b"synthetic" in d[b"batch_label"]
        if name != "test_batch":
            assert n == N_TRAIN // 5
            # Rows are channel-major RGB: first 1024 values are the red plane.
            first = data.train_images[total]
            np.testing.assert_array_equal(x[0, :1024], first[0].ravel())
            np.testing.assert_array_equal(x[0, 1024:2048], first[1].ravel())
            np.testing.assert_array_equal(x[0, 2048:], first[2].ravel())
            total += n
        else:
            assert n == N_TEST
    meta = _read(root / "batches.meta")
    assert set(meta) == {b"num_cases_per_batch", b"label_names", b"num_vis"}
    assert meta[b"num_vis"] == 3072 and meta[b"num_cases_per_batch"] == N_TRAIN // 5
    assert len(meta[b"label_names"]) == 10
    assert all(isinstance(n, bytes) and n.startswith(b"synthetic-") for n in meta[b"label_names"])


def test_synthetic_argument_checks(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        write_synthetic_cifar10(tmp_path, n_train=4)
    with pytest.raises(ValueError):
        write_synthetic_cifar10(tmp_path, n_test=0)


def test_refuses_to_overwrite_real_dataset(synth_copy: Path) -> None:
    meta = _read(synth_copy / "batches.meta")
    meta[b"label_names"] = [n.replace(b"synthetic-", b"") for n in meta[b"label_names"]]
    _write(synth_copy / "batches.meta", meta)
    with pytest.raises(DatasetError, match="refusing to overwrite"):
        write_synthetic_cifar10(synth_copy.parent, n_train=50, n_test=10)


# --------------------------------------------------------------------------- open_dataset

def test_open_dataset_names(synth_parent: Path) -> None:
    assert set(DATASETS) == {"cifar10", "synthetic"}
    assert open_dataset("synthetic", synth_parent).synthetic
    assert open_dataset(" Synthetic ", synth_parent).synthetic
    with pytest.raises(DatasetError, match="holds 'synthetic'"):
        open_dataset("cifar10", synth_parent)
    with pytest.raises(DatasetError, match="cifar10, synthetic") as ei:
        open_dataset("imagenet", synth_parent)
    assert isinstance(ei.value, ValueError)


# --------------------------------------------------------------------------- errors

def _assert_helpful(msg: str) -> None:
    assert CIFAR10_URL in msg and "tar xzf" in msg and "10000" in msg, msg


def test_missing_directory(tmp_path: Path) -> None:
    missing = tmp_path / "nope"
    with pytest.raises(DatasetError) as ei:
        load_cifar10(missing)
    assert str(missing) in str(ei.value)
    _assert_helpful(str(ei.value))
    # An existing directory without the layout is also reported clearly.
    with pytest.raises(DatasetError, match=CIFAR10_DIRNAME) as ei:
        load_cifar10(tmp_path)
    _assert_helpful(str(ei.value))


def test_archive_instead_of_directory(tmp_path: Path) -> None:
    tar = tmp_path / "cifar-10-python.tar.gz"
    tar.write_bytes(b"\x1f\x8b")
    with pytest.raises(DatasetError, match="archive"):
        load_cifar10(tar)


@pytest.mark.parametrize("name", ["data_batch_3", "test_batch", "batches.meta"])
def test_missing_file(synth_copy: Path, name: str) -> None:
    (synth_copy / name).unlink()
    with pytest.raises(DatasetError, match=f"missing file .*{name}") as ei:
        load_cifar10(synth_copy)
    _assert_helpful(str(ei.value))


def test_truncated_file(synth_copy: Path) -> None:
    path = synth_copy / "data_batch_2"
    path.write_bytes(path.read_bytes()[:5000])
    with pytest.raises(DatasetError, match="corrupt file .*data_batch_2") as ei:
        load_cifar10(synth_copy)
    _assert_helpful(str(ei.value))


def test_garbage_file(synth_copy: Path) -> None:
    (synth_copy / "test_batch").write_bytes(b"this is not a pickle")
    with pytest.raises(DatasetError, match="corrupt file .*test_batch"):
        load_cifar10(synth_copy)


def _damage(synth_copy: Path, name: str, change) -> None:  # noqa: ANN001 - test helper
    d = _read(synth_copy / name)
    change(d)
    _write(synth_copy / name, d)


@pytest.mark.parametrize(
    ("change", "pattern"),
    [
        (lambda d: d.pop(b"data"), "missing key b'data'"),
        (lambda d: d.pop(b"labels"), "missing key b'labels'"),
        (lambda d: d.update({b"data": d[b"data"][:, :3000]}), r"shape \(100, 3000\)"),
        (lambda d: d.update({b"data": d[b"data"].astype(np.float32)}), "float32"),
        (lambda d: d.update({b"data": d[b"data"].reshape(-1, 3, 32, 32)}), "shape"),
        (lambda d: d.update({b"data": d[b"data"].tolist()}), "b'data' is list"),
        (lambda d: d.update({b"labels": d[b"labels"][:-1]}), "99 labels for 100 images"),
        (lambda d: d.update({b"labels": [10] * len(d[b"labels"])}), r"outside \[0, 10\)"),
        (lambda d: d.update({b"labels": [1.5] * len(d[b"labels"])}), "list of ints"),
        (lambda d: d.update({b"filenames": [b"x"]}), "filenames"),
    ],
)
def test_wrong_structure(synth_copy: Path, change, pattern: str) -> None:  # noqa: ANN001
    _damage(synth_copy, "data_batch_4", change)
    with pytest.raises(DatasetError, match=f"corrupt file .*data_batch_4: .*{pattern}") as ei:
        load_cifar10(synth_copy)
    _assert_helpful(str(ei.value))


def test_not_a_dict(synth_copy: Path) -> None:
    _write(synth_copy / "data_batch_1", [1, 2, 3])
    with pytest.raises(DatasetError, match="data_batch_1: top level is list"):
        load_cifar10(synth_copy)


def test_foreign_objects_are_not_unpickled(synth_copy: Path) -> None:
    # Any global outside the numpy-array whitelist is refused, not constructed.
    _write(synth_copy / "data_batch_5", {b"data": datetime.date(2020, 1, 1), b"labels": []})
    with pytest.raises(DatasetError, match="data_batch_5.*disallowed global datetime.date"):
        load_cifar10(synth_copy)


def test_bad_meta(synth_copy: Path) -> None:
    _damage(synth_copy, "batches.meta", lambda d: d.update({b"label_names": [b"a", b"b"]}))
    with pytest.raises(DatasetError, match="batches.meta: b'label_names'"):
        load_cifar10(synth_copy)


def test_real_dataset_must_have_official_sizes(synth_copy: Path) -> None:
    # Without the synthetic marker, small batches mean a damaged CIFAR-10 download.
    _damage(synth_copy, "batches.meta", lambda d: d.update(
        {b"label_names": [n.replace(b"synthetic-", b"") for n in d[b"label_names"]]}))
    with pytest.raises(DatasetError, match="data_batch_1: 100 images, expected 10000"):
        load_cifar10(synth_copy)


# --------------------------------------------------------------------------- split

def test_stratified_split() -> None:
    counts = [100 + 37 * c for c in range(10)] + [1]  # imbalanced, plus a singleton class
    labels = np.repeat(np.arange(11), counts)
    np.random.default_rng(1).shuffle(labels)
    tr, ho = train_holdout_split(labels, holdout_fraction=0.1, seed=3)
    assert tr.dtype == np.int64 and ho.dtype == np.int64
    assert np.intersect1d(tr, ho).size == 0
    np.testing.assert_array_equal(np.sort(np.concatenate([tr, ho])), np.arange(labels.size))
    for c, n in enumerate(counts):
        n_ho = int((labels[ho] == c).sum())
        assert n_ho == min(round(0.1 * n), n - 1), c
        assert (labels[tr] == c).sum() == n - n_ho
    # Deterministic per seed, different across seeds.
    tr2, ho2 = train_holdout_split(labels, holdout_fraction=0.1, seed=3)
    np.testing.assert_array_equal(ho, ho2)
    np.testing.assert_array_equal(tr, tr2)
    _, ho3 = train_holdout_split(labels, holdout_fraction=0.1, seed=4)
    assert not np.array_equal(ho, ho3)


def test_split_argument_checks() -> None:
    with pytest.raises(ValueError):
        train_holdout_split(np.zeros(10, np.int64), holdout_fraction=1.0)
    with pytest.raises(ValueError):
        train_holdout_split(np.zeros((2, 5), np.int64))
    tr, ho = train_holdout_split(np.arange(20) % 2, holdout_fraction=0.0)
    assert ho.size == 0 and tr.size == 20


# --------------------------------------------------------------------------- normalisation

def test_channel_stats_match_numpy(synth_parent: Path) -> None:
    images = load_cifar10(synth_parent).train_images
    mean, std = channel_mean_std(images, chunk=37)  # odd chunk exercises the accumulation
    ref = images.astype(np.float64) / 255.0
    np.testing.assert_allclose(mean, ref.mean(axis=(0, 2, 3)), rtol=0, atol=1e-6)
    np.testing.assert_allclose(std, ref.std(axis=(0, 2, 3)), rtol=0, atol=1e-6)
    assert mean.shape == (3,) and std.dtype == np.float32


def test_normalize_does_not_touch_input() -> None:
    x = torch.full((2, 3, 4, 4), 0.5)
    out = normalize(x, torch.zeros(3), torch.ones(3))
    assert torch.equal(x, torch.full((2, 3, 4, 4), 0.5))
    assert torch.allclose(out, x / 255.0)


# --------------------------------------------------------------------------- augmentation

def _reference_crop_flip(x: torch.Tensor, top: int, left: int, flip: bool) -> torch.Tensor:
    padded = F.pad(x.float().unsqueeze(0), (4, 4, 4, 4), mode="reflect")[0]
    out = padded[:, top:top + 32, left:left + 32]
    return out.flip(-1) if flip else out


def test_crop_flip_matches_reflect_pad() -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (40, 3, 32, 32), dtype=torch.uint8, generator=g)
    top = torch.randint(0, 9, (40,), generator=g)
    left = torch.randint(0, 9, (40,), generator=g)
    flip = torch.rand(40, generator=g) < 0.5
    top[:2], left[:2] = torch.tensor([0, 8]), torch.tensor([8, 0])  # extreme corners
    out = crop_flip(x, top, left, flip)
    assert out.shape == x.shape and out.dtype == torch.uint8
    for i in range(40):
        ref = _reference_crop_flip(x[i], int(top[i]), int(left[i]), bool(flip[i]))
        assert torch.equal(out[i].float(), ref), i
    # Centre crop without flip is the identity.
    ident = crop_flip(x, torch.full((40,), 4), torch.full((40,), 4), torch.zeros(40, dtype=torch.bool))
    assert torch.equal(ident, x)


def _recover_crop_params(orig: torch.Tensor, aug: torch.Tensor) -> list[tuple[int, int, bool]]:
    """For each sample, the unique (top, left, flip) whose reference crop equals `aug`.

    All 162 reference crops of F.pad(reflect) are taken at once with unfold.
    """
    n = orig.shape[0]
    padded = F.pad(orig.float(), (4, 4, 4, 4), mode="reflect")          # (n, 3, 40, 40)
    windows = padded.unfold(2, 32, 1).unfold(3, 32, 1)                  # (n, 3, 9, 9, 32, 32)
    found = []
    for i in range(n):
        o = aug[i].float().view(3, 1, 1, 32, 32)
        plain = (windows[i] == o).flatten(3).all(3).all(0)              # (9, 9)
        flipped = (windows[i] == o.flip(-1)).flatten(3).all(3).all(0)
        hits = [(int(t), int(l), False) for t, l in plain.nonzero()]
        hits += [(int(t), int(l), True) for t, l in flipped.nonzero()]
        assert len(hits) == 1, (i, hits)
        found.append(hits[0])
    return found


def test_random_augmentation_crops_and_flips_across_batch() -> None:
    g = torch.Generator().manual_seed(1)
    x = torch.randint(0, 256, (64, 3, 32, 32), dtype=torch.uint8, generator=g)
    out = random_crop_flip(x, torch.Generator().manual_seed(2))
    assert out.shape == (64, 3, 32, 32)
    found = _recover_crop_params(x, out)
    flips = {f for _, _, f in found}
    offsets = {(t, l) for t, l, _ in found}
    assert flips == {False, True}
    assert len(offsets) > 10  # many distinct crop positions, not just the centre
    assert sum(not torch.equal(out[i], x[i]) for i in range(64)) > 50


# --------------------------------------------------------------------------- loaders

@pytest.fixture(scope="module")
def loader_data(synth_parent: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    data = load_cifar10(synth_parent)
    mean, std = channel_mean_std(data.train_images)
    return data.train_images, mean, std


def test_eval_loader_is_plain_normalisation(loader_data) -> None:  # noqa: ANN001
    images, mean, std = loader_data
    ids = np.arange(len(images), dtype=np.int64)  # labels = sample ids to identify rows
    loader = make_loader(images, ids, batch_size=64, train=False, mean=mean, std=std, seed=0)
    assert len(loader) == -(-len(images) // 64)  # last partial batch kept
    seen = []
    for x, y in loader:
        assert x.dtype == torch.float32 and y.dtype == torch.int64
        ref = (torch.from_numpy(images[y.numpy()]).double() / 255.0
               - torch.from_numpy(mean).double().view(1, 3, 1, 1)) \
            / torch.from_numpy(std).double().view(1, 3, 1, 1)
        torch.testing.assert_close(x.double(), ref, rtol=0, atol=1e-5)
        seen.append(y)
    np.testing.assert_array_equal(torch.cat(seen).numpy(), ids)  # in order, no shuffling
    # Normalised with training statistics: ~zero mean, unit std per channel.
    allx = torch.cat([x for x, _ in loader])
    torch.testing.assert_close(allx.mean(dim=(0, 2, 3)), torch.zeros(3), atol=1e-4, rtol=0)
    torch.testing.assert_close(allx.std(dim=(0, 2, 3)), torch.ones(3), atol=1e-3, rtol=0)


def test_train_loader_augments_and_shuffles(loader_data) -> None:  # noqa: ANN001
    images, mean, std = loader_data
    ids = np.arange(len(images), dtype=np.int64)
    loader = make_loader(images, ids, batch_size=64, train=True, mean=mean, std=std, seed=0)
    assert len(loader) == len(images) // 64  # drop_last defaults to True for training
    batches = list(loader)
    ys = torch.cat([y for _, y in batches])
    assert ys.unique().numel() == ys.numel()  # no repeats within an epoch
    assert not torch.equal(ys, torch.arange(ys.numel()))  # shuffled
    x, y = batches[0]
    assert x.shape == (64, 3, 32, 32) and x.dtype == torch.float32
    plain = normalize(torch.from_numpy(images[y.numpy()]), torch.from_numpy(mean),
                      torch.from_numpy(std))
    changed = [not torch.equal(x[i], plain[i]) for i in range(64)]
    assert sum(changed) > 40
    # Every sample is exactly one reflect-pad crop (+ optional flip) of its un-augmented self
    # (normalisation is per-channel, so it commutes with crop and flip bit-exactly).
    used = _recover_crop_params(plain, x)
    assert {f for _, _, f in used} == {False, True}
    assert len({(t, l) for t, l, _ in used}) > 10


def test_loader_determinism(loader_data) -> None:  # noqa: ANN001
    images, mean, std = loader_data
    labels = np.zeros(len(images), np.int64)

    def run(seed: int) -> list[torch.Tensor]:
        loader = make_loader(images, labels, 100, True, mean, std, seed=seed)
        return [x for _ in range(2) for x, _ in loader]  # two epochs

    a, b, c = run(7), run(7), run(8)
    assert all(torch.equal(p, q) for p, q in zip(a, b, strict=True))
    assert not torch.equal(a[0], c[0])
    assert not torch.equal(a[0], a[len(a) // 2])  # epoch 2 is a fresh shuffle/augmentation


def test_loader_argument_checks(loader_data) -> None:  # noqa: ANN001
    images, mean, std = loader_data
    labels = np.zeros(len(images), np.int64)
    with pytest.raises(ValueError, match="uint8"):
        make_loader(images.astype(np.float32), labels, 8, True, mean, std, 0)
    with pytest.raises(ValueError, match="labels"):
        make_loader(images, labels[:-1], 8, True, mean, std, 0)
    with pytest.raises(ValueError, match="one per channel"):
        make_loader(images, labels, 8, True, mean[:2], std, 0)
    with pytest.raises(ValueError, match="positive"):
        make_loader(images, labels, 8, True, mean, np.zeros(3), 0)


def test_iterate_batches(loader_data) -> None:  # noqa: ANN001
    images, mean, std = loader_data
    small, labels = images[:200], np.arange(200, dtype=np.int64)
    loader = make_loader(small, labels, 64, True, mean, std, seed=0)
    assert len(loader) == 3
    got = list(iterate_batches(loader, 7))  # cycles over three epochs
    assert len(got) == 7 and all(x.shape[0] == 64 for x, _ in got)
    assert loader.epoch == 3  # no extra epoch started after the last batch
    assert list(iterate_batches(loader, 0)) == []
    assert len(list(itertools.islice(iterate_batches(loader, None), 10))) == 10
    tiny = make_loader(small[:10], labels[:10], 64, True, mean, std, seed=0)
    with pytest.raises(ValueError, match="no batches"):
        next(iterate_batches(tiny, 5))


def test_synthetic_data_is_learnable(synth_parent: Path) -> None:
    torch.manual_seed(0)
    data = load_cifar10(synth_parent)
    mean, std = channel_mean_std(data.train_images)
    model = torch.nn.Sequential(
        torch.nn.Conv2d(3, 16, 3, stride=2, padding=1), torch.nn.ReLU(),
        torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(16, 10),
    )
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    loader = make_loader(data.train_images, data.train_labels, 50, True, mean, std, seed=0)
    losses = []
    for x, y in iterate_batches(loader, 80):
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert np.mean(losses[-10:]) < 0.75 * np.mean(losses[:10]), losses
    test = make_loader(data.test_images, data.test_labels, 100, False, mean, std, seed=0)
    with torch.no_grad():
        acc = np.mean([(model(x).argmax(1) == y).float().mean().item() for x, y in test])
    assert acc > 0.3  # chance is 0.1
