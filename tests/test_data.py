"""sigprop.data: every data set loads with the right shapes, labels, splits and normalization.

File-based data sets are exercised on tiny files written in their real formats (IDX .gz,
CIFAR python pickles, a Tiny-ImageNet folder of JPEGs); digits and MNIST-1D are the real,
embedded/generated data.
"""

from __future__ import annotations

import gzip
import os
import pickle
import random
import struct
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from sigprop.data import (  # noqa: E402
    DATASETS,
    DatasetSplits,
    clear_cache,
    load_dataset,
    make_gaussian,
    make_loaders,
    read_idx,
)

IDX_NAMES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")


# --------------------------------------------------------------------------------------------
# writers of tiny files in the real formats
# --------------------------------------------------------------------------------------------


def idx_bytes(arr: np.ndarray) -> bytes:
    assert arr.dtype == np.uint8
    return bytes([0, 0, 0x08, arr.ndim]) + struct.pack(f">{arr.ndim}I", *arr.shape) + arr.tobytes()


def write_mnist(folder: Path, n_train: int = 20, n_test: int = 8, seed: int = 0, compress: bool = True):
    """Write the four IDX files; return (x_train, y_train, x_test, y_test) as uint8 arrays."""
    rng = np.random.default_rng(seed)
    arrays = (
        rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
        rng.integers(0, 10, n_train).astype(np.uint8),
        rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
        rng.integers(0, 10, n_test).astype(np.uint8),
    )
    folder.mkdir(parents=True, exist_ok=True)
    for stem, arr in zip(IDX_NAMES, arrays, strict=True):
        data = idx_bytes(arr)
        if compress:
            (folder / (stem + ".gz")).write_bytes(gzip.compress(data))
        else:
            (folder / stem).write_bytes(data)
    return arrays


def write_cifar10(root: Path, per_batch: int = 4, n_test: int = 6, seed: int = 0):
    rng = np.random.default_rng(seed)
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    xs, ys = [], []
    for i in range(1, 6):
        x = rng.integers(0, 256, (per_batch, 3072), dtype=np.uint8)
        y = [int(v) for v in rng.integers(0, 10, per_batch)]
        batch = {b"batch_label": b"training batch", b"data": x, b"labels": y, b"filenames": [b"f.png"] * per_batch}
        (folder / f"data_batch_{i}").write_bytes(pickle.dumps(batch, protocol=2))
        xs.append(x)
        ys += y
    xt = rng.integers(0, 256, (n_test, 3072), dtype=np.uint8)
    yt = [int(v) for v in rng.integers(0, 10, n_test)]
    (folder / "test_batch").write_bytes(pickle.dumps({b"data": xt, b"labels": yt}, protocol=2))
    return np.concatenate(xs), np.array(ys), xt, np.array(yt)


def write_cifar100(root: Path, n_train: int = 12, n_test: int = 5, seed: int = 0):
    rng = np.random.default_rng(seed)
    folder = root / "cifar-100-python"
    folder.mkdir(parents=True)
    out = []
    for name, n in (("train", n_train), ("test", n_test)):
        x = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
        fine = [int(v) for v in rng.integers(0, 100, n)]
        coarse = [int(v) for v in rng.integers(0, 20, n)]
        d = {b"data": x, b"fine_labels": fine, b"coarse_labels": coarse}
        (folder / name).write_bytes(pickle.dumps(d, protocol=4))
        out += [x, np.array(fine)]
    return out


def write_tiny_imagenet(root: Path, n_per_class: int = 5, n_val: int = 4):
    """Two classes of 64x64 constant-colour JPEGs (one greyscale, to test conversion to RGB)."""
    from PIL import Image

    base = root / "tiny-imagenet-200"
    wnids = ["n01443537", "n01629819"]
    colors = {wnids[0]: (200, 30, 30), wnids[1]: (20, 40, 220)}
    (base / "val" / "images").mkdir(parents=True)
    (base / "wnids.txt").write_text("\n".join(wnids) + "\n")
    for w in wnids:
        d = base / "train" / w / "images"
        d.mkdir(parents=True)
        for i in range(n_per_class):
            Image.new("RGB", (64, 64), colors[w]).save(d / f"{w}_{i}.JPEG", quality=95)
        (base / "train" / w / f"{w}_boxes.txt").write_text("")
    Image.new("L", (64, 64), 128).save(base / "train" / wnids[0] / "images" / f"{wnids[0]}_grey.JPEG")
    lines, labels = [], []
    for i in range(n_val):
        w = wnids[i % 2]
        Image.new("RGB", (64, 64), colors[w]).save(base / "val" / "images" / f"val_{i}.JPEG", quality=95)
        lines.append(f"val_{i}.JPEG\t{w}\t0\t0\t63\t63")
        labels.append(i % 2)
    (base / "val" / "val_annotations.txt").write_text("\n".join(lines) + "\n")
    return wnids, colors, labels


def arrays(ds) -> tuple[np.ndarray, np.ndarray]:
    x, y = ds.tensors
    return x.numpy(), y.numpy()


def check_split(s: DatasetSplits, in_shape, num_classes, n_train_total, n_test, val_fraction=0.1):
    n_val = round(val_fraction * n_train_total)
    assert (len(s.train), len(s.val), len(s.test)) == (n_train_total - n_val, n_val, n_test)
    assert s.in_shape == in_shape and s.num_classes == num_classes
    for ds in (s.train, s.val, s.test):
        x, y = ds.tensors
        assert x.dtype == torch.float32 and y.dtype == torch.int64
        assert tuple(x.shape[1:]) == in_shape and y.shape == (x.shape[0],)
        assert y.numel() == 0 or (0 <= int(y.min()) and int(y.max()) < num_classes)
        assert torch.isfinite(x).all()


def check_standardized(s: DatasetSplits, atol=1e-4):
    """Training split: mean 0 and std 1 per channel (axis 1; a flat input is one channel)."""
    x = s.train.tensors[0].double()
    v = x.reshape(x.shape[0], 1, -1) if x.ndim == 2 else x.reshape(x.shape[0], x.shape[1], -1)
    mean = v.mean(dim=(0, 2))
    std = v.transpose(0, 1).reshape(v.shape[1], -1).std(dim=1, unbiased=False)
    np.testing.assert_allclose(mean.numpy(), 0.0, atol=atol)
    np.testing.assert_allclose(std.numpy(), 1.0, atol=atol)
    assert s.mean is not None and len(s.mean) == v.shape[1] and len(s.std) == v.shape[1]


# --------------------------------------------------------------------------------------------
# embedded and synthetic data
# --------------------------------------------------------------------------------------------


def test_registry_names():
    assert DATASETS == (
        "digits",
        "mnist1d",
        "mnist",
        "fashion-mnist",
        "cifar10",
        "cifar100",
        "tiny-imagenet",
        "gaussian",
    )


def test_digits_real_data():
    s = load_dataset("digits")
    check_split(s, (1, 8, 8), 10, 1437, 360)
    assert len(s.train) + len(s.val) + len(s.test) == 1797
    assert s.name == "digits" and s.in_features == 64
    check_standardized(s)
    assert set(s.test.tensors[1].tolist()) == set(range(10))
    # raw pixels scaled to [0, 1] (digits are 0..16)
    raw = load_dataset("digits", normalize=False)
    x = raw.train.tensors[0]
    assert float(x.min()) == 0.0 and float(x.max()) == 1.0
    assert raw.mean is None and raw.std is None
    # the test split does not depend on the seed; the validation split does
    other = load_dataset("digits", seed=1, normalize=False)
    assert torch.equal(raw.test.tensors[0], other.test.tensors[0])
    assert not torch.equal(raw.val.tensors[0], other.val.tensors[0])


def test_mnist1d_generated_offline_fast_and_without_side_effects():
    clear_cache()
    random.seed(123)
    np.random.seed(123)  # noqa: NPY002 - checking that the legacy global state is left alone
    expect_py, expect_np = random.random(), np.random.random()  # noqa: NPY002
    random.seed(123)
    np.random.seed(123)  # noqa: NPY002
    s = load_dataset("mnist1d")
    assert (random.random(), np.random.random()) == (expect_py, expect_np)  # noqa: NPY002
    check_split(s, (1, 40), 10, 4000, 1000)
    check_standardized(s)
    assert set(s.train.tensors[1].tolist()) == set(range(10))
    # cached: the second call gives the same data (no wall-clock bound: CI machines are noisy)
    again = load_dataset("mnist1d")
    assert torch.equal(s.test.tensors[0], again.test.tensors[0])


def test_gaussian_synthetic():
    s = load_dataset("gaussian", normalize=False)
    check_split(s, (100,), 10, 5000, 1000)
    x = s.train.tensors[0]
    assert abs(float(x.mean())) < 0.01 and abs(float(x.var()) - 1.0) < 0.02
    counts = np.bincount(s.train.tensors[1].numpy(), minlength=10)
    assert counts.min() > 100  # every class present
    check_standardized(load_dataset("gaussian"))
    same = load_dataset("gaussian", normalize=False)
    assert torch.equal(s.train.tensors[0], same.train.tensors[0])
    other = load_dataset("gaussian", seed=1, normalize=False)
    assert not torch.equal(s.test.tensors[0], other.test.tensors[0])

    xtr, ytr, xte, yte = make_gaussian(50, 20, dim=7, num_classes=3, seed=5)
    assert xtr.shape == (50, 7) and ytr.shape == (50,) and xte.shape == (20, 7) and yte.shape == (20,)
    assert set(ytr.tolist()) <= {0, 1, 2}
    with pytest.raises(ValueError, match="num_classes"):
        make_gaussian(num_classes=1)


# --------------------------------------------------------------------------------------------
# MNIST / Fashion-MNIST (IDX)
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("layout", ["subdir", "direct", "torchvision", "uncompressed"])
def test_mnist_idx(tmp_path, layout):
    folder = {
        "subdir": tmp_path / "mnist",
        "direct": tmp_path,
        "torchvision": tmp_path / "MNIST" / "raw",
        "uncompressed": tmp_path,
    }[layout]
    xtr, ytr, xte, yte = write_mnist(folder, compress=layout != "uncompressed")

    raw = load_dataset("mnist", data_dir=tmp_path, val_fraction=0.0, normalize=False)
    check_split(raw, (1, 28, 28), 10, 20, 8, val_fraction=0.0)
    np.testing.assert_array_equal(raw.train.tensors[0].numpy(), xtr[:, None].astype(np.float32) / 255)
    np.testing.assert_array_equal(raw.train.tensors[1].numpy(), ytr)
    np.testing.assert_array_equal(raw.test.tensors[0].numpy(), xte[:, None].astype(np.float32) / 255)
    np.testing.assert_array_equal(raw.test.tensors[1].numpy(), yte)

    s = load_dataset("mnist", data_dir=str(tmp_path))
    check_split(s, (1, 28, 28), 10, 20, 8)
    check_standardized(s)


def test_normalization_uses_training_split_only(tmp_path):
    xtr, ytr, _, _ = write_mnist(tmp_path / "mnist", n_train=30)
    raw = load_dataset("mnist", data_dir=tmp_path, seed=3, normalize=False)
    s = load_dataset("mnist", data_dir=tmp_path, seed=3)
    xt = raw.train.tensors[0].double()
    mean, std = float(xt.mean()), float(xt.std(unbiased=False))
    assert s.mean == pytest.approx((mean,)) and s.std == pytest.approx((std,))
    for a, b in ((raw.val, s.val), (raw.test, s.test)):
        np.testing.assert_allclose(b.tensors[0].numpy(), (a.tensors[0].numpy() - mean) / std, rtol=1e-5, atol=1e-5)
        assert torch.equal(a.tensors[1], b.tensors[1])
    # the validation examples are real training examples with their labels
    xv, yv = arrays(raw.val)
    for x, y in zip(xv, yv, strict=True):
        (i,) = np.flatnonzero((xtr[:, None].astype(np.float32) / 255 == x).all(axis=(1, 2, 3)))
        assert ytr[i] == y


def test_fashion_mnist_prefers_its_subfolder(tmp_path):
    write_mnist(tmp_path, seed=1)  # MNIST directly in data_dir
    _, ytr, _, _ = write_mnist(tmp_path / "fashion-mnist", n_train=10, seed=2)
    s = load_dataset("fashion-mnist", data_dir=tmp_path, val_fraction=0.0, normalize=False)
    assert s.name == "fashion-mnist" and s.num_classes == 10 and len(s.train) == 10
    np.testing.assert_array_equal(s.train.tensors[1].numpy(), ytr)
    # and the MNIST files directly in data_dir are found for "mnist"
    assert len(load_dataset("mnist", data_dir=tmp_path).test) == 8


def test_read_idx_validates(tmp_path):
    good = np.arange(24, dtype=np.uint8).reshape(2, 3, 4)
    (tmp_path / "ok").write_bytes(idx_bytes(good))
    np.testing.assert_array_equal(read_idx(tmp_path / "ok"), good)
    (tmp_path / "ok.gz").write_bytes(gzip.compress(idx_bytes(good)))
    np.testing.assert_array_equal(read_idx(tmp_path / "ok.gz"), good)
    be = bytes([0, 0, 0x0C, 1]) + struct.pack(">I", 3) + np.array([1, -2, 70000], ">i4").tobytes()
    (tmp_path / "int32").write_bytes(be)
    np.testing.assert_array_equal(read_idx(tmp_path / "int32"), [1, -2, 70000])

    (tmp_path / "magic").write_bytes(b"\x08\x03" + idx_bytes(good)[2:])
    with pytest.raises(ValueError, match="magic: not an IDX file"):
        read_idx(tmp_path / "magic")
    (tmp_path / "short").write_bytes(idx_bytes(good)[:-1])
    with pytest.raises(ValueError, match=r"short.*24 bytes of data, the file holds 23"):
        read_idx(tmp_path / "short")
    (tmp_path / "bad.gz").write_bytes(gzip.compress(idx_bytes(good))[:-6])
    with pytest.raises(ValueError, match=r"bad\.gz"):
        read_idx(tmp_path / "bad.gz")


def test_mnist_inconsistent_files(tmp_path):
    write_mnist(tmp_path / "mnist")
    labels = np.zeros(5, dtype=np.uint8)  # 5 labels for 20 images
    (tmp_path / "mnist" / "train-labels-idx1-ubyte.gz").write_bytes(gzip.compress(idx_bytes(labels)))
    with pytest.raises(ValueError, match=r"train-labels-idx1-ubyte\.gz: expected 20 labels"):
        load_dataset("mnist", data_dir=tmp_path)
    (tmp_path / "mnist" / "train-labels-idx1-ubyte.gz").write_bytes(gzip.compress(idx_bytes(np.full(20, 12, np.uint8))))
    with pytest.raises(ValueError, match=r"labels must be integers in \[0, 10\)"):
        load_dataset("mnist", data_dir=tmp_path)


def test_changed_files_are_reread(tmp_path):
    write_mnist(tmp_path, n_train=20)
    assert len(load_dataset("mnist", data_dir=tmp_path, val_fraction=0).train) == 20
    write_mnist(tmp_path, n_train=25)
    assert len(load_dataset("mnist", data_dir=tmp_path, val_fraction=0).train) == 25


# --------------------------------------------------------------------------------------------
# CIFAR
# --------------------------------------------------------------------------------------------


def test_cifar10_batches(tmp_path):
    xtr, ytr, xte, yte = write_cifar10(tmp_path)
    raw = load_dataset("cifar10", data_dir=tmp_path, val_fraction=0.0, normalize=False)
    check_split(raw, (3, 32, 32), 10, 20, 6, val_fraction=0.0)
    x = raw.train.tensors[0].numpy()
    # channel-first: row i holds 1024 red, 1024 green, 1024 blue values, each image row-major
    np.testing.assert_array_equal(x[3, 0, 0, :], xtr[3, :32] / np.float32(255))
    np.testing.assert_array_equal(x[3, 1, 2, 5], xtr[3, 1024 + 2 * 32 + 5] / np.float32(255))
    np.testing.assert_array_equal(x[7, 2, 31, 31], xtr[7, 3071] / np.float32(255))
    np.testing.assert_array_equal(raw.train.tensors[1].numpy(), ytr)
    np.testing.assert_array_equal(raw.test.tensors[1].numpy(), yte)
    np.testing.assert_array_equal(raw.test.tensors[0].numpy(), xte.reshape(-1, 3, 32, 32) / np.float32(255))

    s = load_dataset("cifar10", data_dir=tmp_path)
    check_split(s, (3, 32, 32), 10, 20, 6)
    check_standardized(s)
    assert len(s.mean) == 3 and len(set(s.mean)) == 3


def test_cifar100_fine_labels(tmp_path):
    _, ytr, _, yte = write_cifar100(tmp_path)
    s = load_dataset("cifar100", data_dir=tmp_path, val_fraction=0.25)
    check_split(s, (3, 32, 32), 100, 12, 5, val_fraction=0.25)
    check_standardized(s)
    np.testing.assert_array_equal(s.test.tensors[1].numpy(), yte)
    got = np.sort(np.concatenate([s.train.tensors[1].numpy(), s.val.tensors[1].numpy()]))
    np.testing.assert_array_equal(got, np.sort(ytr))


def test_cifar_pickle_cannot_run_code(tmp_path):
    write_cifar10(tmp_path)

    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned > " + str(tmp_path / "pwned"),))

    (tmp_path / "cifar-10-batches-py" / "test_batch").write_bytes(pickle.dumps({b"data": Evil(), b"labels": []}))
    with pytest.raises(ValueError, match=r"test_batch.*only NumPy arrays are allowed"):
        load_dataset("cifar10", data_dir=tmp_path)
    assert not (tmp_path / "pwned").exists()


def test_cifar_malformed_batch(tmp_path):
    write_cifar10(tmp_path)
    bad = {b"data": np.zeros((2, 100), np.uint8), b"labels": [0, 1]}
    (tmp_path / "cifar-10-batches-py" / "data_batch_3").write_bytes(pickle.dumps(bad))
    with pytest.raises(ValueError, match=r"data_batch_3: b'data' must be uint8 of shape \(N, 3072\)"):
        load_dataset("cifar10", data_dir=tmp_path)


# --------------------------------------------------------------------------------------------
# Tiny-ImageNet
# --------------------------------------------------------------------------------------------


def test_tiny_imagenet_folder(tmp_path):
    wnids, colors, val_labels = write_tiny_imagenet(tmp_path)
    raw = load_dataset("tiny-imagenet", data_dir=tmp_path, val_fraction=0.0, normalize=False)
    check_split(raw, (3, 64, 64), 2, 11, 4, val_fraction=0.0)
    x, y = arrays(raw.train)
    assert np.bincount(y).tolist() == [6, 5]
    for img, label in zip(x, y, strict=True):
        if np.ptp(img.reshape(3, -1).mean(axis=1)) < 1e-3:  # the greyscale image, copied to 3 channels
            np.testing.assert_allclose(img, 128 / 255, atol=3 / 255)
        else:
            want = np.array(colors[wnids[label]], np.float32)[:, None, None] / 255
            np.testing.assert_allclose(img, np.broadcast_to(want, img.shape), atol=6 / 255)
    np.testing.assert_array_equal(raw.test.tensors[1].numpy(), val_labels)  # official val = test

    s = load_dataset("tiny-imagenet", data_dir=tmp_path / "tiny-imagenet-200", val_fraction=0.2)
    check_split(s, (3, 64, 64), 2, 11, 4, val_fraction=0.2)
    check_standardized(s)


def test_tiny_imagenet_missing_class_folder(tmp_path):
    wnids, _, _ = write_tiny_imagenet(tmp_path)
    images = tmp_path / "tiny-imagenet-200" / "train" / wnids[1] / "images"
    for p in images.iterdir():
        p.unlink()
    images.rmdir()
    with pytest.raises(FileNotFoundError, match=str(images)):
        load_dataset("tiny-imagenet", data_dir=tmp_path)


# --------------------------------------------------------------------------------------------
# errors
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("mnist", "mnist/train-images-idx3-ubyte.gz"),
        ("fashion-mnist", "fashion-mnist/t10k-labels-idx1-ubyte.gz"),
        ("cifar10", "cifar-10-batches-py/data_batch_1"),
        ("cifar100", "cifar-100-python/train"),
        ("tiny-imagenet", "tiny-imagenet-200/wnids.txt"),
    ],
)
def test_missing_files_name_the_expected_paths(tmp_path, name, expected):
    with pytest.raises(FileNotFoundError) as info:
        load_dataset(name, data_dir=tmp_path)
    msg = str(info.value)
    assert str(tmp_path / expected) in msg
    assert "not found" in msg and ("put them in" in msg or "extract it in" in msg)
    fmt = {"mnist": "IDX", "fashion-mnist": "IDX", "cifar10": "pickle", "cifar100": "pickle"}.get(name, "JPEG")
    assert fmt in msg

    with pytest.raises(ValueError, match=r"pass data_dir \(CLI: --data-dir DIR\)"):
        load_dataset(name)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_dataset(name, data_dir=tmp_path / "nope")


def test_partial_mnist_names_only_the_missing_file(tmp_path):
    write_mnist(tmp_path / "mnist")
    (tmp_path / "mnist" / "t10k-images-idx3-ubyte.gz").unlink()
    with pytest.raises(FileNotFoundError) as info:
        load_dataset("mnist", data_dir=tmp_path)
    msg = str(info.value)
    assert str(tmp_path / "mnist" / "t10k-images-idx3-ubyte.gz") in msg
    assert "train-images-idx3-ubyte.gz," not in msg.split("looked in")[0]


def test_bad_arguments():
    with pytest.raises(ValueError, match="unknown data set 'svhn'; known data sets: digits, mnist1d, mnist"):
        load_dataset("svhn")
    for frac in (-0.1, 1.0, 1.5):
        with pytest.raises(ValueError, match=r"val_fraction must be in \[0, 1\)"):
            load_dataset("digits", val_fraction=frac)
    with pytest.raises(TypeError, match="val_fraction"):
        load_dataset("digits", val_fraction="0.1")
    with pytest.raises(ValueError, match="seed must be a non-negative int"):
        load_dataset("digits", seed=-1)


# --------------------------------------------------------------------------------------------
# determinism and loaders
# --------------------------------------------------------------------------------------------


def test_splits_are_deterministic(tmp_path):
    write_mnist(tmp_path, n_train=40)
    a = load_dataset("mnist", data_dir=tmp_path, seed=7)
    b = load_dataset("mnist", data_dir=tmp_path, seed=7)
    c = load_dataset("mnist", data_dir=tmp_path, seed=8)
    for split in ("train", "val", "test"):
        for ta, tb in zip(getattr(a, split).tensors, getattr(b, split).tensors, strict=True):
            assert torch.equal(ta, tb)
    assert not torch.equal(a.val.tensors[0], c.val.tensors[0])
    assert torch.equal(a.test.tensors[1], c.test.tensors[1])  # same test examples (normalized differently)
    # train and val partition the training set
    raw = load_dataset("mnist", data_dir=tmp_path, seed=7, val_fraction=0.0, normalize=False)
    a_raw = load_dataset("mnist", data_dir=tmp_path, seed=7, normalize=False)
    both = torch.cat([a_raw.train.tensors[0], a_raw.val.tensors[0]]).flatten(1)
    assert sorted(map(tuple, both.tolist())) == sorted(map(tuple, raw.train.tensors[0].flatten(1).tolist()))


def epoch(loader):
    batches = list(loader)
    return torch.cat([b[0] for b in batches]), torch.cat([b[1] for b in batches])


def test_make_loaders():
    s = load_dataset("digits")
    torch.manual_seed(0)
    expected_global = torch.rand(1)
    torch.manual_seed(0)

    train, val, test = make_loaders(s, 100, seed=3)
    assert len(train) == 13 and len(val) == 2 and len(test) == 4
    x1, y1 = epoch(train)
    assert x1.shape == (1293, 1, 8, 8) and y1.dtype == torch.int64
    assert [len(y) for _, y in make_loaders(s, 100)[0]] == [100] * 12 + [93]
    # every example exactly once per epoch, shuffled, and differently in the next epoch
    v = torch.randn(64, generator=torch.Generator().manual_seed(1))
    got, want = (x1.flatten(1) @ v).sort().values, (s.train.tensors[0].flatten(1) @ v).sort().values
    torch.testing.assert_close(got, want)
    assert not torch.equal(x1, s.train.tensors[0])
    x2, _ = epoch(train)
    assert not torch.equal(x1, x2)
    # val / test unshuffled
    assert torch.equal(epoch(val)[0], s.val.tensors[0]) and torch.equal(epoch(test)[1], s.test.tensors[1])
    # deterministic from the seed, different across seeds
    again = make_loaders(s, 100, seed=3)[0]
    assert torch.equal(epoch(again)[0], x1) and torch.equal(epoch(again)[0], x2)
    assert not torch.equal(epoch(make_loaders(s, 100, seed=4)[0])[0], x1)
    # the global torch RNG is left alone
    assert torch.equal(torch.rand(1), expected_global)


def test_make_loaders_arguments():
    s = load_dataset("gaussian")
    for bad in (0, -1, 2.5, True):
        with pytest.raises(ValueError, match="batch_size"):
            make_loaders(s, bad)
    with pytest.raises(ValueError, match="device"):
        make_loaders(s, 10, device="tpu9")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA is not available"):
            make_loaders(s, 10, device="cuda")
    train, _, _ = make_loaders(s, 64, device="auto")
    x, _ = next(iter(train))
    assert x.device.type == ("cuda" if torch.cuda.is_available() else "cpu")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_make_loaders_cuda():
    s = load_dataset("digits")
    train, val, _ = make_loaders(s, 256, seed=0, device="cuda")
    cpu_train, _, _ = make_loaders(s, 256, seed=0)
    x, y = next(iter(train))
    assert x.is_cuda and y.is_cuda
    assert torch.equal(x.cpu(), next(iter(cpu_train))[0])
    assert torch.equal(epoch(val)[0].cpu(), s.val.tensors[0])


def test_empty_validation_split():
    s = load_dataset("digits", val_fraction=0.0)
    assert len(s.val) == 0 and s.val.tensors[0].shape == (0, 1, 8, 8)
    _, val, _ = make_loaders(s, 32)
    assert len(val) == 0 and list(val) == []
