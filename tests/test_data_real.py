"""Real-dataset loaders on the real code path: tiny files in each on-disk format, read through load_dataset.

Pixel expectations are computed with torchvision's own ToTensor + Normalize (the paper's pipeline), so the
loaders are checked bit for bit against it. One test reads the real Fashion-MNIST from Debian's package.
"""
from __future__ import annotations

import gzip
import re
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision.transforms.functional as TF

from eeray.config import DataConfig
from eeray.data import DATASETS, load_dataset
from eeray.data import real
from eeray.data.real import CorruptDatasetError, DatasetFilesError

IDX_NAMES = ["train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"]
IDX_DIRS = {"mnist": "MNIST/raw", "kmnist": "KMNIST/raw", "fashion_mnist": "FashionMNIST/raw"}


@pytest.fixture(autouse=True)
def _no_env(monkeypatch):
    # a developer's own data root or download switch must not leak into these tests
    monkeypatch.delenv(real.ROOT_ENV, raising=False)
    monkeypatch.delenv(real.DOWNLOAD_ENV, raising=False)


def expected(u8_nchw: np.ndarray, name: str, normalize: bool = True) -> torch.Tensor:
    """torchvision ToTensor (HWC uint8 -> CHW / 255) then Normalize, one image at a time."""
    out = []
    for img in u8_nchw:
        t = TF.to_tensor(np.ascontiguousarray(img.transpose(1, 2, 0)))
        if normalize and real.NORMALIZATION[name] is not None:
            t = TF.normalize(t, *real.NORMALIZATION[name])
        out.append(t)
    return torch.stack(out)


def write_idx(path: Path, arr: np.ndarray, gz: bool) -> None:
    raw = struct.pack(">BBBB", 0, 0, 8, arr.ndim) + struct.pack(f">{arr.ndim}i", *arr.shape) + arr.tobytes()
    if gz:
        path = path.with_name(path.name + ".gz")
        raw = gzip.compress(raw)
    path.write_bytes(raw)


def make_idx(root: Path, name: str, gz: bool, n: int = 12, n_test: int = 5, seed: int = 0):
    rng = np.random.default_rng(seed)
    d = root / IDX_DIRS[name]
    d.mkdir(parents=True, exist_ok=True)
    arrs = [rng.integers(0, 256, (n, 28, 28), dtype=np.uint8), rng.integers(0, 10, n, dtype=np.uint8),
            rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8), rng.integers(0, 10, n_test, dtype=np.uint8)]
    for fname, a in zip(IDX_NAMES, arrs):
        write_idx(d / fname, a, gz)
    return arrs


@pytest.mark.parametrize("name", ["mnist", "kmnist", "fashion_mnist"])
@pytest.mark.parametrize("gz", [True, False])
def test_idx_formats_exact(tmp_path, name, gz):
    x, y, xt, yt = make_idx(tmp_path, name, gz)
    d = load_dataset(DataConfig(name=name, root=str(tmp_path)))
    assert d.x_train.dtype == torch.float32 and d.x_train.shape == (12, 1, 28, 28)
    assert torch.equal(d.x_train, expected(x[:, None], name)) and torch.equal(d.x_test, expected(xt[:, None], name))
    assert d.y_train.dtype == torch.int64 and d.y_train.tolist() == y.tolist() and d.y_test.tolist() == yt.tolist()
    mean, std = real.NORMALIZATION[name]
    assert d.info["normalization"] == {"mean": list(mean), "std": list(std)}
    assert all(str(tmp_path / IDX_DIRS[name]) in f for f in d.info["files"]) and len(d.info["files"]) == 4


def test_normalize_false_gives_unit_interval(tmp_path):
    x, *_ = make_idx(tmp_path, "mnist", gz=True)
    d = load_dataset(DataConfig(name="mnist", root=str(tmp_path), normalize=False))
    assert torch.equal(d.x_train, expected(x[:, None], "mnist", normalize=False))
    assert d.info["normalization"] is None


def test_root_from_environment_and_subset(tmp_path, monkeypatch):
    make_idx(tmp_path, "kmnist", gz=True)
    monkeypatch.setenv(real.ROOT_ENV, str(tmp_path))
    d = load_dataset(DataConfig(name="kmnist", n_train=7, n_test=3))
    assert d.x_train.shape == (7, 1, 28, 28) and d.x_test.shape == (3, 1, 28, 28)
    with pytest.raises(ValueError, match="n_train"):
        load_dataset(DataConfig(name="kmnist", n_train=13))


def _cifar_pickle(path: Path, data: np.ndarray, labels: np.ndarray, key: bytes) -> None:
    # the real batches were pickled by Python 2: bytes keys once loaded with encoding="bytes"
    entry = {b"batch_label": b"test", key: labels.tolist(), b"data": data, b"filenames": [b"f"] * len(labels)}
    if key == b"fine_labels":
        entry[b"coarse_labels"] = (labels // 5).tolist()
    path.write_bytes(pickle.dumps(entry, protocol=2))


@pytest.mark.parametrize("name", ["cifar10", "cifar100"])
def test_cifar_pickles_exact(tmp_path, name):
    rng = np.random.default_rng(1)
    sub, files, _ = real.LAYOUT[name]
    (tmp_path / sub).mkdir()
    key = b"labels" if name == "cifar10" else b"fine_labels"
    written = {}
    for i, f in enumerate(files):
        n = 3 + i
        data = rng.integers(0, 256, (n, 3072), dtype=np.uint8)  # rows: 1024 R, 1024 G, 1024 B, row-major
        labels = rng.integers(0, DATASETS[name].num_classes, n)
        _cifar_pickle(tmp_path / sub / f, data, labels, key)
        written[f] = (data, labels)
    d = load_dataset(DataConfig(name=name, root=str(tmp_path)))
    train = [written[f] for f in files[:-1]]
    x = np.concatenate([a for a, _ in train]).reshape(-1, 3, 32, 32)
    assert torch.equal(d.x_train, expected(x, name))
    assert d.y_train.tolist() == np.concatenate([b for _, b in train]).tolist()
    data, labels = written[files[-1]]
    assert torch.equal(d.x_test, expected(data.reshape(-1, 3, 32, 32), name)) and d.y_test.tolist() == labels.tolist()
    # one pixel by hand: channel 2 (blue), row 5, column 7 of the first image
    m, sd = real.NORMALIZATION[name]
    assert abs(float(d.x_train[0, 2, 5, 7]) - (written[files[0]][0][0, 2 * 1024 + 5 * 32 + 7] / 255 - m[2]) / sd[2]) < 1e-5


def _svhn(tmp_path: Path, seed: int = 2):
    import scipy.io

    rng = np.random.default_rng(seed)
    out = {}
    for f, n in zip(real.LAYOUT["svhn"][1], (6, 4)):
        X = rng.integers(0, 256, (32, 32, 3, n), dtype=np.uint8)  # the real layout: [h, w, c, n]
        y = rng.integers(1, 11, (n, 1)).astype(np.uint8)  # 1..10, 10 is the digit 0
        y[0, 0] = 10
        scipy.io.savemat(tmp_path / f, {"X": X, "y": y})
        out[f] = (X, y)
    return out


def test_svhn_mat_exact(tmp_path):
    w = _svhn(tmp_path)
    d = load_dataset(DataConfig(name="svhn", root=str(tmp_path)))
    for (X, y), xs, ys in ((w["train_32x32.mat"], d.x_train, d.y_train), (w["test_32x32.mat"], d.x_test, d.y_test)):
        assert torch.equal(xs, expected(X.transpose(3, 2, 0, 1), "svhn"))
        assert ys.tolist() == [0 if v == 10 else int(v) for v in y[:, 0]] and ys[0] == 0
    X = w["train_32x32.mat"][0]
    m, s = real.NORMALIZATION["svhn"]
    assert abs(float(d.x_train[1, 0, 3, 9]) - (X[3, 9, 0, 1] / 255 - m[0]) / s[0]) < 1e-5  # x[n,c,h,w] = X[h,w,c,n]


def _semeion(path: Path, rows: int, seed: int = 3) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    px = rng.integers(0, 2, (rows, 256))
    lab = rng.integers(0, 10, rows)
    with open(path, "w") as f:  # the UCI format: "1.0000 0.0000 ... 0 0 1 0 ..." per row
        for p, l in zip(px, lab):
            f.write(" ".join(f"{v:.4f}" for v in p) + " " + " ".join("1" if k == l else "0" for k in range(10)) + " \n")
    return px, lab


def test_semeion_binary_fixed_split(tmp_path):
    px, lab = _semeion(tmp_path / "semeion.data", 30)
    d = load_dataset(DataConfig(name="semeion", root=str(tmp_path)))
    assert d.x_train.shape == (19, 1, 16, 16) and d.x_test.shape == (11, 1, 16, 16)  # round(30·1000/1593) = 19
    assert d.info["normalization"] is None and set(d.x_train.unique().tolist()) <= {0.0, 1.0}
    perm = np.random.default_rng(0).permutation(30)  # the documented split: default_rng(seed).permutation
    got = torch.cat([d.x_train, d.x_test]).reshape(30, 256)
    assert torch.equal(got, torch.as_tensor(px[perm], dtype=torch.float32))
    assert torch.cat([d.y_train, d.y_test]).tolist() == lab[perm].tolist()
    again = load_dataset(DataConfig(name="semeion", root=str(tmp_path)))
    other = load_dataset(DataConfig(name="semeion", root=str(tmp_path), seed=1))
    assert torch.equal(again.x_train, d.x_train) and not torch.equal(other.x_train, d.x_train)


def test_semeion_full_size_split_is_1000_593(tmp_path):
    _semeion(tmp_path / "semeion.data", 1593)
    d = real.load_semeion(DataConfig(name="semeion", root=str(tmp_path)))
    assert (d.n, len(d.y_test)) == (DATASETS["semeion"].n_train, DATASETS["semeion"].n_test) == (1000, 593)


@pytest.mark.parametrize("name", ["mnist", "kmnist", "fashion_mnist", "cifar10", "cifar100", "svhn", "semeion"])
def test_missing_files_one_clear_error(tmp_path, monkeypatch, name):
    monkeypatch.setattr(real, "DEBIAN_FASHION_MNIST", tmp_path / "no-debian")
    with pytest.raises(DatasetFilesError) as e:
        load_dataset(DataConfig(name=name, root=str(tmp_path)))
    msg = str(e.value)
    sub, files, source = real.LAYOUT[name]
    for f in files:
        assert str(tmp_path / sub / f) in msg  # every file, at its full location
    assert source.split()[0] in msg and "http" in msg
    if name == "fashion_mnist":
        assert "apt-get install dataset-fashion-mnist" in msg


def test_partially_missing_names_only_the_missing_file(tmp_path):
    make_idx(tmp_path, "mnist", gz=True)
    (tmp_path / "MNIST/raw/t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(DatasetFilesError, match=r"missing \S*t10k-labels-idx1-ubyte\[\.gz\]\. ") as e:
        load_dataset(DataConfig(name="mnist", root=str(tmp_path)))
    assert "missing " + str(tmp_path / "MNIST/raw/train-images") not in str(e.value)


def test_no_root_is_a_clear_error():
    with pytest.raises(DatasetFilesError, match=r"data\.root.*EERAY_DATA_ROOT.*cifar-10-batches-py.*toronto"):
        load_dataset(DataConfig(name="cifar10"))


@pytest.mark.parametrize("damage", ["truncated_gzip", "bad_magic", "short_body"])
def test_corrupt_idx(tmp_path, damage):
    make_idx(tmp_path, "mnist", gz=True)
    p = tmp_path / "MNIST/raw/train-images-idx3-ubyte.gz"
    raw = gzip.decompress(p.read_bytes())
    if damage == "truncated_gzip":
        p.write_bytes(p.read_bytes()[:100])
    elif damage == "bad_magic":
        p.write_bytes(gzip.compress(b"\x00\x00\x09\x03" + raw[4:]))
    else:
        p.write_bytes(gzip.compress(raw[:-10]))
    with pytest.raises(CorruptDatasetError, match=f"{p}.*corrupt.*ossci-datasets"):
        load_dataset(DataConfig(name="mnist", root=str(tmp_path)))


def test_corrupt_cifar_svhn_semeion(tmp_path):
    (tmp_path / "cifar-10-batches-py").mkdir()
    for f in real.LAYOUT["cifar10"][1]:
        (tmp_path / "cifar-10-batches-py" / f).write_bytes(b"not a pickle")
    with pytest.raises(CorruptDatasetError, match="data_batch_1 is corrupt"):
        load_dataset(DataConfig(name="cifar10", root=str(tmp_path)))
    _svhn(tmp_path)
    (tmp_path / "test_32x32.mat").write_bytes(b"MATLAB? no")
    with pytest.raises(CorruptDatasetError, match="test_32x32.mat is corrupt"):
        load_dataset(DataConfig(name="svhn", root=str(tmp_path)))
    (tmp_path / "semeion.data").write_text("1 0 1\n0 1 0\n")
    with pytest.raises(CorruptDatasetError, match="semeion.data is corrupt.*266"):
        load_dataset(DataConfig(name="semeion", root=str(tmp_path)))


def test_download_is_opt_in(tmp_path, monkeypatch):
    import torchvision.datasets as tvd

    calls = []
    monkeypatch.setattr(tvd, "SVHN", lambda **kw: calls.append(kw))
    with pytest.raises(DatasetFilesError):
        load_dataset(DataConfig(name="svhn", root=str(tmp_path)))
    assert calls == []  # nothing touches the network unless asked
    monkeypatch.setenv(real.DOWNLOAD_ENV, "1")
    with pytest.raises(DatasetFilesError):  # the stub wrote nothing, so the files are still missing
        load_dataset(DataConfig(name="svhn", root=str(tmp_path)))
    assert calls == [dict(root=str(tmp_path), split=s, download=True) for s in ("train", "test")]
    with pytest.raises(ValueError, match="valid: mnist"):
        real.download("digits", tmp_path)


def test_augment_attached_with_normalised_black_fill(tmp_path):
    make_idx(tmp_path, "mnist", gz=False)
    d = load_dataset(DataConfig(name="mnist", root=str(tmp_path), augment=True))
    assert d.augment is not None and d.augment.fill == pytest.approx((-0.1307 / 0.3081,))
    out = d.augment(d.x_train, torch.Generator().manual_seed(0))
    assert out.shape == d.x_train.shape


def test_real_fashion_mnist_from_debian():
    """CI installs Debian's dataset-fashion-mnist; this must fail (not skip) when it is absent."""
    files = [real.DEBIAN_FASHION_MNIST / (f + ".gz") for f in IDX_NAMES]
    assert all(f.is_file() for f in files), (
        f"Fashion-MNIST is not installed at {real.DEBIAN_FASHION_MNIST}: run `apt-get install -y "
        f"dataset-fashion-mnist` (CI's .ci/run installs it)")
    full = real.load_fashion_mnist(DataConfig(name="fashion_mnist"))  # no root: Debian's copy
    spec = DATASETS["fashion_mnist"]
    assert (full.n, len(full.y_test)) == (spec.n_train, spec.n_test) == (60000, 10000)
    assert full.y_train[:3].tolist() == [9, 0, 0]  # the first training labels: ankle boot, T-shirt, T-shirt
    assert torch.bincount(full.y_train).tolist() == [6000] * 10 and torch.bincount(full.y_test).tolist() == [1000] * 10
    assert abs(float(full.x_train.mean())) < 0.01 and abs(float(full.x_train.std()) - 1) < 0.01  # the constants fit
    d = load_dataset(DataConfig(name="fashion_mnist", n_train=2000))
    assert d.x_train.shape == (2000, 1, 28, 28) and d.x_train.dtype == torch.float32
    assert d.y_train.min() >= 0 and d.y_train.max() <= 9
    counts = torch.bincount(d.y_train, minlength=10)
    assert counts.min() >= 150 and counts.max() <= 250, counts  # ~200 per class in a random subset
    assert d.info["files"][0].startswith(str(real.DEBIAN_FASHION_MNIST))


# --------------------------------------------------------------------------- helpers other test files use
def make_cifar(root: Path, name: str, seed: int = 4) -> None:
    """Tiny batches in the CIFAR-10/100 on-disk layout (3 images per file)."""
    rng = np.random.default_rng(seed)
    sub, files, _ = real.LAYOUT[name]
    (root / sub).mkdir(parents=True, exist_ok=True)
    key = b"labels" if name == "cifar10" else b"fine_labels"
    for f in files:
        _cifar_pickle(root / sub / f, rng.integers(0, 256, (3, 3072), dtype=np.uint8),
                      rng.integers(0, DATASETS[name].num_classes, 3), key)


def make_svhn(root: Path) -> dict:
    return _svhn(root)


def make_semeion(path: Path, rows: int) -> tuple[np.ndarray, np.ndarray]:
    return _semeion(path, rows)


class _WritesAFile:
    """A pickle payload: unpickling it calls exec, which writes ``marker`` (what a crafted batch could do)."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return exec, (f"open({str(self.marker)!r}, 'w').write('ran')",)


def crafted_cifar_batch(marker: Path) -> bytes:
    labels = [0, 1, 2]
    entry = {b"batch_label": b"x", b"labels": labels, b"data": _WritesAFile(marker), b"filenames": [b"f"] * 3}
    return pickle.dumps(entry, protocol=2)


def write_cifar_with_payload(root: Path, marker: Path) -> None:
    """A CIFAR-10 layout whose first batch runs code when plain pickle.load reads it."""
    make_cifar(root, "cifar10")
    (root / "cifar-10-batches-py" / "data_batch_1").write_bytes(crafted_cifar_batch(marker))


# --------------------------------------------------------------------------- the restricted CIFAR unpickler
def test_crafted_cifar_pickle_is_refused_before_running_anything(tmp_path):
    marker = tmp_path / "pwned"
    write_cifar_with_payload(tmp_path, marker)
    batch = tmp_path / "cifar-10-batches-py" / "data_batch_1"
    for check in (lambda: load_dataset(DataConfig(name="cifar10", root=str(tmp_path))),
                  lambda: real.check_data(DataConfig(name="cifar10", root=str(tmp_path)))):
        with pytest.raises(CorruptDatasetError, match=rf"{batch} is corrupt.*UnpicklingError: refused global "
                                                      r"__builtin__\.exec.*cs\.toronto\.edu"):  # protocol 2's name
            check()
        assert not marker.exists()
    pickle.loads(batch.read_bytes())  # the file is a real payload: plain pickle runs it
    assert marker.read_text() == "ran"


@pytest.mark.parametrize("protocol", [0, 1, 2, 3, 4, 5])
def test_cifar_batches_load_at_every_pickle_protocol(tmp_path, protocol):
    data = np.random.default_rng(5).integers(0, 256, (4, 3072), dtype=np.uint8)
    path = tmp_path / "b"
    path.write_bytes(pickle.dumps({b"data": data, b"labels": [1, 2, 3, 4]}, protocol=protocol))
    entry = real.load_cifar_pickle(path)
    assert np.array_equal(entry[b"data"], data) and entry[b"labels"] == [1, 2, 3, 4]


def test_cifar_batch_written_by_python2_numpy(tmp_path):
    """The real batches name numpy.core.multiarray (numpy 1.x, Python 2's cPickle, str as bytes)."""
    data = np.arange(3072 * 2, dtype=np.uint8).reshape(2, 3072) % 251
    raw = pickle.dumps({b"data": data, b"labels": [3, 4]}, protocol=2)
    assert b"numpy._core.multiarray\n_reconstruct" in raw
    path = tmp_path / "b"
    path.write_bytes(raw.replace(b"numpy._core.multiarray\n", b"numpy.core.multiarray\n"))
    assert np.array_equal(real.load_cifar_pickle(path)[b"data"], data)


@pytest.mark.parametrize("bad", ["object_array", "wrong_width", "labels_not_ints", "not_a_dict"])
def test_cifar_batch_contents_checked(tmp_path, bad):
    make_cifar(tmp_path, "cifar10")
    p = tmp_path / "cifar-10-batches-py" / "test_batch"
    entry = {b"data": np.zeros((3, 3072), np.uint8), b"labels": [0, 1, 2]}
    if bad == "object_array":
        entry[b"data"] = np.zeros((3, 3072), np.uint8).astype(object)
    elif bad == "wrong_width":
        entry[b"data"] = np.zeros((3, 3000), np.uint8)
    elif bad == "labels_not_ints":
        entry[b"labels"] = [b"a", b"b", b"c"]
    else:
        entry = [entry]
    p.write_bytes(pickle.dumps(entry, protocol=2))
    with pytest.raises(CorruptDatasetError, match=rf"{p} is corrupt"):
        real.check_data(DataConfig(name="cifar10", root=str(tmp_path)))


# --------------------------------------------------------------------------- formats checked before Ray
def test_check_data_gives_the_sizes_the_files_hold(tmp_path):
    make_idx(tmp_path, "mnist", gz=True)
    make_idx(tmp_path, "kmnist", gz=False, n=7, n_test=2)
    make_cifar(tmp_path, "cifar100")
    make_svhn(tmp_path)
    make_semeion(tmp_path / "semeion.data", 30)
    sizes = {n: real.check_data(DataConfig(name=n, root=str(tmp_path)))
             for n in ("mnist", "kmnist", "cifar100", "svhn", "semeion")}
    assert {n: (s.n_train, s.n_test) for n, s in sizes.items()} == {
        "mnist": (12, 5), "kmnist": (7, 2), "cifar100": (3, 3), "svhn": (6, 4), "semeion": (19, 11)}
    assert sizes["svhn"].files == (tmp_path / "train_32x32.mat", tmp_path / "test_32x32.mat")


@pytest.mark.parametrize("damage", ["bad_magic", "header_larger_than_body", "body_larger_than_header",
                                    "labels_do_not_pair", "not_28x28", "label_above_9"])
@pytest.mark.parametrize("gz", [True, False])
def test_check_data_idx_formats(tmp_path, damage, gz):
    make_idx(tmp_path, "kmnist", gz=gz)
    d = tmp_path / "KMNIST/raw"
    rng = np.random.default_rng(0)
    target, arr = "train-images-idx3-ubyte", rng.integers(0, 256, (12, 28, 28), dtype=np.uint8)
    if damage == "labels_do_not_pair":
        target, arr = "train-labels-idx1-ubyte", rng.integers(0, 10, 11, dtype=np.uint8)
    elif damage == "not_28x28":
        arr = rng.integers(0, 256, (12, 27, 28), dtype=np.uint8)
    elif damage == "label_above_9":
        target, arr = "train-labels-idx1-ubyte", np.full(12, 10, dtype=np.uint8)
    raw = struct.pack(">BBBB", 0, 0, 8, arr.ndim) + struct.pack(f">{arr.ndim}i", *arr.shape) + arr.tobytes()
    if damage == "bad_magic":
        raw = b"\x00\x00\x0d" + raw[3:]  # 0x0d: float32 data, not unsigned bytes
    elif damage == "header_larger_than_body":
        raw = raw[:-28]
    elif damage == "body_larger_than_header":
        raw = raw + b"\x00" * 28
    path = d / (target + (".gz" if gz else ""))
    path.write_bytes(gzip.compress(raw) if gz else raw)
    shown = d / (target + (".gz" if gz else ""))
    pair_error = damage in ("labels_do_not_pair", "not_28x28", "label_above_9")
    where = d / ("train-images-idx3-ubyte" + (".gz" if gz else "")) if pair_error else shown
    with pytest.raises(CorruptDatasetError, match=rf"dataset 'kmnist': file {where} is corrupt.*codh\.rois\.ac\.jp"):
        real.check_data(DataConfig(name="kmnist", root=str(tmp_path)))


@pytest.mark.parametrize("bad", ["not_a_mat", "X_wrong_shape", "labels_outside_1_10", "no_y"])
def test_check_data_svhn_format(tmp_path, bad):
    import scipy.io

    make_svhn(tmp_path)
    p = tmp_path / "train_32x32.mat"
    X, y = np.zeros((32, 32, 3, 4), np.uint8), np.ones((4, 1), np.uint8)
    if bad == "not_a_mat":
        p.write_bytes(b"MATLAB 5.0? no")
    else:
        if bad == "X_wrong_shape":
            X = np.zeros((32, 32, 1, 4), np.uint8)
        elif bad == "labels_outside_1_10":
            y[0, 0] = 11
        scipy.io.savemat(p, {"X": X} if bad == "no_y" else {"X": X, "y": y})
    with pytest.raises(CorruptDatasetError, match=rf"{p} is corrupt.*ufldl\.stanford\.edu"):
        real.check_data(DataConfig(name="svhn", root=str(tmp_path)))


@pytest.mark.parametrize("bad", ["265_columns", "not_binary", "two_labels", "text"])
def test_check_data_semeion_format(tmp_path, bad):
    p = tmp_path / "semeion.data"
    make_semeion(p, 5)
    rows = p.read_text().splitlines()
    if bad == "265_columns":
        rows[2] = rows[2].rsplit(" ", 2)[0]
    elif bad == "not_binary":
        rows[1] = "0.5000" + rows[1][6:]
    elif bad == "two_labels":
        rows[0] = " ".join(rows[0].split()[:-10] + ["1"] * 2 + ["0"] * 8)
    else:
        rows[3] = "a b c"
    p.write_text("\n".join(rows) + "\n")
    with pytest.raises(CorruptDatasetError, match=rf"{p} is corrupt.*archive\.ics\.uci\.edu"):
        real.check_data(DataConfig(name="semeion", root=str(tmp_path)))


def test_validate_study_checks_the_format_before_ray(tmp_path):
    from eeray.config import ModelConfig, TrialConfig
    from eeray.study import Study
    from eeray.study_validation import validate_study

    make_idx(tmp_path, "mnist", gz=True)
    p = tmp_path / "MNIST/raw/t10k-labels-idx1-ubyte.gz"
    p.write_bytes(p.read_bytes()[:20])  # a truncated download
    study = Study("t", TrialConfig(data=DataConfig(name="mnist", root=str(tmp_path)), model=ModelConfig(arch="lenet")))
    with pytest.raises(CorruptDatasetError, match=rf"{p} is corrupt .*cannot decompress"):
        validate_study(study)


# --------------------------------------------------------------------------- absent datasets
def test_absent_datasets_are_skipped_with_why_and_the_refusal_names_them(tmp_path, monkeypatch):
    """select_datasets returns the absent ones with why (the command line refuses such a study unless
    --present-datasets-only: tests/test_study_validation.py); none present is an error at once."""
    from eeray.data import absent_datasets_error, select_datasets

    make_idx(tmp_path, "mnist", gz=True)
    monkeypatch.setenv(real.ROOT_ENV, str(tmp_path))
    sel = select_datasets(("digits16", "mnist", "cifar10"))
    assert sel.present == ["digits16", "mnist"] and list(sel.skipped) == ["cifar10"]
    error = absent_datasets_error(sel.skipped, sel.present)
    assert isinstance(error, DatasetFilesError)
    assert re.fullmatch(rf"datasets not found: cifar10: missing {tmp_path}/cifar-10-batches-py/data_batch_1 and 5 "
                        r"more; get it from https://www\.cs\.toronto\.edu.*--present-datasets-only to run only "
                        r"the datasets present \(digits16, mnist\)", str(error)), str(error)
    with pytest.raises(DatasetFilesError, match="none of the study's datasets"):
        select_datasets(("cifar10",))
    monkeypatch.delenv(real.ROOT_ENV)
    assert select_datasets(("semeion", "digits")).skipped == {"semeion": "no data root set"}
