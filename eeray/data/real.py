"""Real image datasets from local files in torchvision's on-disk layouts (no network needed, none used).

Data root: ``DataConfig.root``, else ``$EERAY_DATA_ROOT``. Under it, per dataset:

    mnist          MNIST/raw/{train,t10k}-{images-idx3,labels-idx1}-ubyte[.gz]
    kmnist         KMNIST/raw/...            (same names)
    fashion_mnist  FashionMNIST/raw/...      (same names); fallback: /usr/share/datasets/fashion-mnist
                   (Debian package dataset-fashion-mnist), also used when no root is set
    cifar10        cifar-10-batches-py/{data_batch_1..5,test_batch}   (python pickles)
    cifar100       cifar-100-python/{train,test}                      (python pickles, fine labels)
    svhn           {train,test}_32x32.mat                             (label 10 means digit 0; no 'extra')
    semeion        semeion.data   (UCI; 1593 rows: 256 binary pixels + 10 one-hot label columns)

Semeion has no official split: the paper used 1000 random training points and the other 593 for testing. We
take a seeded permutation (numpy default_rng(DataConfig.seed), seed 0 by default and fixed across trials,
docs/paper-choices.md (C20)) and put its first round(1000/1593 · rows) rows (1000 for the real file) in training.

Pixels follow torchvision's ToTensor + Normalize exactly: uint8 / 255, then (x − mean) / std per channel in
float32 with the standard per-dataset constants below (docs/paper-choices.md (C21)); Semeion stays binary 0/1.
"""
from __future__ import annotations

import gzip
import os
import pickle
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from eeray.data.training_data import TrainingData
from eeray.datasets import DATASETS

ROOT_ENV = "EERAY_DATA_ROOT"
DOWNLOAD_ENV = "EERAY_DATA_DOWNLOAD"  # "1": loaders download missing files with torchvision (needs a network)
DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")

# (mean, std) per channel, on [0, 1] pixels. CIFAR-10's std is the dataset's pixel std (the popular
# (0.2023, 0.1994, 0.2010) is a per-image average and slightly off); all are computed on the training sets.
NORMALIZATION: dict[str, tuple[tuple[float, ...], tuple[float, ...]] | None] = {
    "mnist": ((0.1307,), (0.3081,)),
    "kmnist": ((0.1918,), (0.3483,)),
    "fashion_mnist": ((0.2860,), (0.3530,)),
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
    "svhn": ((0.4377, 0.4438, 0.4728), (0.1980, 0.2010, 0.1970)),
    "semeion": None,  # binary 0/1 inputs, as in the paper's Semeion experiments
}

_IDX = ["train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"]
# name -> (sub-directory under the root, expected files, where to get them)
LAYOUT: dict[str, tuple[str, list[str], str]] = {
    "mnist": ("MNIST/raw", [f + "[.gz]" for f in _IDX], "https://ossci-datasets.s3.amazonaws.com/mnist/ "
              "(mirror of http://yann.lecun.com/exdb/mnist/)"),
    "kmnist": ("KMNIST/raw", [f + "[.gz]" for f in _IDX], "http://codh.rois.ac.jp/kmnist/dataset/kmnist/"),
    "fashion_mnist": ("FashionMNIST/raw", [f + "[.gz]" for f in _IDX],
                      "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/ , or offline: "
                      "`apt-get install dataset-fashion-mnist` (files in /usr/share/datasets/fashion-mnist)"),
    "cifar10": ("cifar-10-batches-py", [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"],
                "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz (extract it in the root)"),
    "cifar100": ("cifar-100-python", ["train", "test"],
                 "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz (extract it in the root)"),
    "svhn": ("", ["train_32x32.mat", "test_32x32.mat"], "http://ufldl.stanford.edu/housenumbers/ (format 2)"),
    "semeion": ("", ["semeion.data"],
                "http://archive.ics.uci.edu/ml/machine-learning-databases/semeion/semeion.data"),
}


class DatasetFilesError(FileNotFoundError):
    """Files of a real dataset are missing (or no data root is configured)."""


class CorruptDatasetError(ValueError):
    """A dataset file exists but cannot be parsed as its format."""


def _help(name: str, where: list[Path]) -> str:
    sub, files, source = LAYOUT[name]
    locs = "; ".join(str(w) for w in where)
    return (f"expected files: {', '.join(files)} in {locs}. Get them from {source}; or, on a machine with a "
            f"network, eeray.data.real.download('{name}', root) or {DOWNLOAD_ENV}=1")


def data_root(cfg, required: bool = True) -> Path | None:
    """cfg.root, else $EERAY_DATA_ROOT, else an error (None when not ``required``)."""
    root = cfg.root or os.environ.get(ROOT_ENV)
    if root:
        return Path(root).expanduser()
    if not required:
        return None
    sub, files, source = LAYOUT[cfg.name]
    raise DatasetFilesError(f"dataset '{cfg.name}' is read from local files but no data root is set: set config "
                            f"field 'data.root' (or --data-root) or the environment variable {ROOT_ENV} to the "
                            f"directory holding {sub + '/' if sub else ''}{{{', '.join(files)}}}. "
                            f"Get them from {source}")


def _dir(cfg) -> Path:
    """The dataset's directory; downloads into it first when opted in and files are missing."""
    root = data_root(cfg)
    d = root / LAYOUT[cfg.name][0]
    if os.environ.get(DOWNLOAD_ENV) == "1" and _missing(cfg.name, d):
        download(cfg.name, root)
    return d


def _find(d: Path, name: str) -> Path | None:
    """``name`` or ``name.gz`` (uncompressed first: faster, and what torchvision leaves after extraction)."""
    for p in (d / name, d / (name + ".gz")):
        if p.is_file():
            return p
    return None


def _missing(name: str, d: Path) -> list[str]:
    """Expected files absent from ``d`` (a "[.gz]" suffix: either form will do)."""
    out = []
    for f in LAYOUT[name][1]:
        base = f.removesuffix("[.gz]")
        found = _find(d, base) is not None if f.endswith("[.gz]") else (d / base).is_file()
        if not found:
            out.append(f)
    return out


def _check(name: str, dirs: list[Path]) -> Path:
    """The first directory holding all the files, else ONE error naming every missing file and where."""
    for d in dirs:
        if not _missing(name, d):
            return d
    missing = [str(d / f) for d in dirs for f in _missing(name, d)]
    raise DatasetFilesError(f"dataset '{name}': missing {', '.join(missing)}. " + _help(name, dirs))


def _corrupt(name: str, path: Path, why: str, d: Path) -> CorruptDatasetError:
    return CorruptDatasetError(f"dataset '{name}': file {path} is corrupt or not in the expected format ({why}). "
                               f"Replace it. " + _help(name, [d]))


def _to_float(u8: np.ndarray, name: str, normalize: bool) -> tuple[torch.Tensor, dict | None]:
    """(n, C, H, W) uint8 -> float32 in place of torchvision's ToTensor + Normalize (same ops, same order)."""
    x = torch.from_numpy(np.ascontiguousarray(u8, dtype=np.float32)).div_(255.0)  # one allocation, then in place
    stats = NORMALIZATION[name]
    if not normalize or stats is None:
        return x, None
    mean, std = (torch.tensor(v, dtype=torch.float32).view(1, -1, 1, 1) for v in stats)
    x.sub_(mean).div_(std)
    return x, {"mean": list(stats[0]), "std": list(stats[1])}


def _result(cfg, x: np.ndarray, y: np.ndarray, xt: np.ndarray, yt: np.ndarray, files: list[Path],
            **info) -> TrainingData:
    # train and test converted separately: a view into one shared tensor would keep all of it alive after
    # load_dataset keeps only a subset of one part
    xs, norm = _to_float(x, cfg.name, cfg.normalize)
    xts, _ = _to_float(xt, cfg.name, cfg.normalize)
    meta = {"files": [str(f) for f in files], "normalization": norm, "source": LAYOUT[cfg.name][2],
            "n_files": {"train": len(x), "test": len(xt)}, **info}
    return TrainingData(DATASETS[cfg.name], xs, torch.from_numpy(y.astype(np.int64)), xts,
                        torch.from_numpy(yt.astype(np.int64)), info=meta)


# ---- idx (MNIST, KMNIST, Fashion-MNIST) ----

def _read_idx(path: Path, name: str, d: Path, ndim: int) -> np.ndarray:
    """An idx file: magic 0x0000 08 ndim (unsigned bytes), big-endian int32 dims, then the data."""
    try:
        raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    except (OSError, EOFError, zlib.error) as e:
        raise _corrupt(name, path, f"cannot decompress: {e}", d) from None
    if len(raw) < 4 + 4 * ndim or raw[:3] != b"\x00\x00\x08" or raw[3] != ndim:
        raise _corrupt(name, path, f"bad idx header {raw[:4].hex()}, expected 000008{ndim:02x}", d)
    dims = np.frombuffer(raw, ">i4", ndim, 4).astype(np.int64)
    body = np.frombuffer(raw, np.uint8, offset=4 + 4 * ndim)
    if body.size != int(np.prod(dims)):
        shape = tuple(int(v) for v in dims)
        raise _corrupt(name, path, f"header says {shape} = {int(np.prod(dims))} bytes, found {body.size}", d)
    return body.reshape(tuple(dims))


def _idx_arrays(cfg, dirs: list[Path]) -> tuple[list[np.ndarray], list[Path]]:
    """(x, y, x_test, y_test) as uint8 arrays straight from the files, every header, size and pairing checked."""
    d = _check(cfg.name, dirs)
    paths = [_find(d, f) for f in _IDX]
    arrays = [_read_idx(p, cfg.name, d, 3 if "images" in p.name else 1) for p in paths]
    x, y, xt, yt = arrays
    for img, lab, p in ((x, y, paths[0]), (xt, yt, paths[2])):
        if len(img) != len(lab) or img.shape[1:] != (28, 28) or (lab.size and lab.max() > 9):
            raise _corrupt(cfg.name, p, f"images {img.shape} do not pair with {lab.shape} labels 0..9", d)
    return arrays, paths


def _load_idx(cfg, dirs: list[Path]) -> TrainingData:
    (x, y, xt, yt), paths = _idx_arrays(cfg, dirs)
    return _result(cfg, x[:, None], y, xt[:, None], yt, paths)


def _idx_dirs(cfg) -> list[Path]:
    if cfg.name != "fashion_mnist":
        return [_dir(cfg)]
    root = data_root(cfg, required=False)  # <root>/FashionMNIST/raw if a root is set and holds the files,
    return ([_dir(cfg)] if root is not None else []) + [DEBIAN_FASHION_MNIST]  # else Debian's copy


def load_mnist(cfg) -> TrainingData:
    return _load_idx(cfg, _idx_dirs(cfg))


def load_kmnist(cfg) -> TrainingData:
    return _load_idx(cfg, _idx_dirs(cfg))


def load_fashion_mnist(cfg) -> TrainingData:
    """<root>/FashionMNIST/raw if a root is set and holds the files, else Debian's copy."""
    return _load_idx(cfg, _idx_dirs(cfg))


# ---- CIFAR (python pickles) ----

def _numpy_core(module: str, attr: str) -> Any:
    import importlib

    try:  # numpy >= 2 moved numpy.core to numpy._core (numpy.core is a shim that warns)
        return getattr(importlib.import_module(module.replace("numpy.core", "numpy._core", 1)), attr)
    except (ImportError, AttributeError):
        return getattr(importlib.import_module(module), attr)


# Everything a CIFAR batch holds: a dict of bytes/str keys -> lists of ints and bytes, and one uint8 ndarray.
# An ndarray pickles as _reconstruct(ndarray, shape, dtype-char) + state (protocols 0-4) or _frombuffer(buffer,
# dtype, shape, order) (protocol 5), its dtype as numpy.dtype('u1', ...); Python 3 pickles bytes at protocol < 3
# as _codecs.encode(str, 'latin1'). Nothing else is needed, so nothing else is resolved.
_CIFAR_GLOBALS: dict[tuple[str, str], Callable[[], Any]] = {
    ("numpy", "ndarray"): lambda: np.ndarray,
    ("numpy", "dtype"): lambda: np.dtype,
    **{(m, "_reconstruct"): (lambda m=m: _numpy_core(m, "_reconstruct"))
       for m in ("numpy.core.multiarray", "numpy._core.multiarray")},
    **{(m, "_frombuffer"): (lambda m=m: _numpy_core(m, "_frombuffer"))
       for m in ("numpy.core.numeric", "numpy._core.numeric")},
    ("_codecs", "encode"): lambda: __import__("_codecs").encode,
}


class _CifarUnpickler(pickle.Unpickler):
    """Resolves only the globals a CIFAR batch needs: a crafted file cannot name os.system, builtins.exec or any
    other callable, so unpickling it runs no code of its author's (plain pickle.load would, before any check)."""

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in _CIFAR_GLOBALS:
            raise pickle.UnpicklingError(f"refused global {module}.{name}: a CIFAR batch holds only dicts, lists, "
                                         "bytes, str, ints and numpy uint8 arrays")
        return _CIFAR_GLOBALS[(module, name)]()

    def persistent_load(self, pid: Any) -> Any:
        raise pickle.UnpicklingError("refused a persistent id: a CIFAR batch has none")


def load_cifar_pickle(path: Path) -> dict:
    """One CIFAR batch through the restricted unpickler (bytes keys, as the Python 2 files hold them)."""
    with open(path, "rb") as f:
        return _CifarUnpickler(f, encoding="bytes").load()


def _read_pickle(path: Path, label_key: str, name: str, d: Path) -> tuple[np.ndarray, np.ndarray]:
    try:
        entry = load_cifar_pickle(path)
        if not isinstance(entry, dict):
            raise TypeError(f"a batch is a dict, found {type(entry).__name__}")
        entry = {k.decode() if isinstance(k, bytes) else k: v for k, v in entry.items()}
        data, labels = entry["data"], entry[label_key]
        if not (isinstance(data, np.ndarray) and data.dtype == np.uint8 and data.ndim == 2 and data.shape[1] == 3072):
            raise TypeError(f"'data' must be an (N, 3072) uint8 array, found {type(data).__name__} "
                            f"{getattr(data, 'dtype', '')} {getattr(data, 'shape', '')}")
        data = data.reshape(-1, 3, 32, 32)  # rows are R(1024) G B, row-major
        if not (isinstance(labels, (list, np.ndarray)) and all(isinstance(v, (int, np.integer)) for v in labels)):
            raise TypeError(f"'{label_key}' must be a list of integers")
        labels = np.asarray(labels, dtype=np.int64)
    except Exception as e:  # noqa: BLE001 -- any unpickling/shape failure means the same thing: a bad file
        raise _corrupt(name, path, f"{type(e).__name__}: {e}", d) from None
    if len(labels) != len(data):
        raise _corrupt(name, path, f"{len(data)} images but {len(labels)} labels", d)
    return data, labels


def _cifar_arrays(cfg, train: list[str], test: list[str], label_key: str):
    d = _check(cfg.name, [_dir(cfg)])
    parts = [[_read_pickle(d / f, label_key, cfg.name, d) for f in files] for files in (train, test)]
    (x, y), (xt, yt) = ((np.concatenate([a for a, _ in p]), np.concatenate([b for _, b in p])) for p in parts)
    k = DATASETS[cfg.name].num_classes
    if max(y.max(initial=0), yt.max(initial=0)) >= k or min(y.min(initial=0), yt.min(initial=0)) < 0:
        raise _corrupt(cfg.name, d, f"labels outside 0..{k - 1}", d)
    return (x, y, xt, yt), [d / f for f in train + test]


_CIFAR = {"cifar10": ([f"data_batch_{i}" for i in range(1, 6)], ["test_batch"], "labels"),
          "cifar100": (["train"], ["test"], "fine_labels")}


def _load_cifar(cfg) -> TrainingData:
    (x, y, xt, yt), files = _cifar_arrays(cfg, *_CIFAR[cfg.name])
    return _result(cfg, x, y, xt, yt, files)


def load_cifar10(cfg) -> TrainingData:
    return _load_cifar(cfg)


def load_cifar100(cfg) -> TrainingData:
    return _load_cifar(cfg)


# ---- SVHN (.mat) ----

def _read_svhn(path: Path, d: Path) -> tuple[np.ndarray, np.ndarray]:
    import scipy.io

    try:
        m = scipy.io.loadmat(str(path))
        x, y = m["X"], m["y"].astype(np.int64).reshape(-1)
    except Exception as e:  # noqa: BLE001 -- not a readable .mat with X and y
        raise _corrupt("svhn", path, f"{type(e).__name__}: {e}", d) from None
    if x.ndim != 4 or x.shape[:3] != (32, 32, 3) or x.shape[3] != len(y) or y.min(initial=1) < 1 or y.max(initial=1) > 10:
        raise _corrupt("svhn", path, f"X {x.shape} / y {y.shape} not (32, 32, 3, N) / (N, 1) with labels 1..10", d)
    np.place(y, y == 10, 0)  # SVHN stores digit 0 as label 10
    return x.transpose(3, 2, 0, 1), y  # (N, 3, 32, 32): X is indexed [h, w, c, n]


def _svhn_arrays(cfg):
    d = _check("svhn", [_dir(cfg)])
    (x, y), (xt, yt) = (_read_svhn(d / f, d) for f in LAYOUT["svhn"][1])
    return (x, y, xt, yt), [d / f for f in LAYOUT["svhn"][1]]


def load_svhn(cfg) -> TrainingData:
    (x, y, xt, yt), files = _svhn_arrays(cfg)
    return _result(cfg, x, y, xt, yt, files, split="train/test (no 'extra')")


# ---- Semeion (UCI text) ----

def _semeion_rows(cfg) -> tuple[np.ndarray, Path]:
    """The (rows, 266) table, every row 256 binary pixels + a one-hot label."""
    d = _check("semeion", [_dir(cfg)])
    path = d / "semeion.data"
    try:
        a = np.loadtxt(path, dtype=np.float64, ndmin=2)  # (rows, 266)
    except ValueError as e:
        raise _corrupt("semeion", path, str(e), d) from None
    onehot = a[:, 256:] if a.shape[1] == 266 else None
    if onehot is None or not np.isin(a, (0.0, 1.0)).all() or not (onehot.sum(1) == 1).all():
        raise _corrupt("semeion", path, f"shape {a.shape}: expected 266 binary columns, the last 10 one-hot", d)
    return a, path


def _semeion_split(rows: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    perm = np.random.default_rng(seed).permutation(rows)
    n_tr = round(rows * 1000 / 1593)  # the paper's 1000/593 for the real 1593 rows
    return perm[:n_tr], perm[n_tr:]


def load_semeion(cfg) -> TrainingData:
    a, path = _semeion_rows(cfg)
    onehot = a[:, 256:]
    x = a[:, :256].astype(np.uint8).reshape(-1, 1, 16, 16) * 255  # torchvision's uint8 view; /255 gives 0/1
    y = onehot.argmax(1)
    tr, te = _semeion_split(len(a), cfg.seed)
    return _result(cfg, x[tr], y[tr], x[te], y[te], [path],
                   split=f"{len(tr)}/{len(te)}, numpy default_rng({cfg.seed}).permutation")


# ---- opt-in download (machines with a network) ----

_TV: dict[str, tuple[str, Callable[[str, bool], list[dict]]]] = {
    "mnist": ("MNIST", lambda r, d: [dict(root=r, train=t, download=d) for t in (True, False)]),
    "kmnist": ("KMNIST", lambda r, d: [dict(root=r, train=t, download=d) for t in (True, False)]),
    "fashion_mnist": ("FashionMNIST", lambda r, d: [dict(root=r, train=t, download=d) for t in (True, False)]),
    "cifar10": ("CIFAR10", lambda r, d: [dict(root=r, train=t, download=d) for t in (True, False)]),
    "cifar100": ("CIFAR100", lambda r, d: [dict(root=r, train=t, download=d) for t in (True, False)]),
    "svhn": ("SVHN", lambda r, d: [dict(root=r, split=s, download=d) for s in ("train", "test")]),
    "semeion": ("SEMEION", lambda r, d: [dict(root=r, download=d)]),
}


def download(name: str, root: str | os.PathLike) -> Path:
    """Fetch ``name`` into ``root`` in the layout above with torchvision (download=True). Needs a network;
    never called implicitly unless $EERAY_DATA_DOWNLOAD=1."""
    if name not in _TV:
        raise ValueError(f"download: dataset '{name}' is not a real dataset; valid: {', '.join(_TV)}")
    import torchvision.datasets as tvd

    cls, kwargs = _TV[name]
    for kw in kwargs(str(root), True):
        getattr(tvd, cls)(**kw)
    return Path(root)


def check_files(cfg) -> Path:
    """The directory a loader would read, or the loader's own DatasetFilesError — without reading any data
    (which datasets are present; :func:`check_data` also checks what the files hold)."""
    if cfg.name == "fashion_mnist":
        root = data_root(cfg, required=False)
        return _check(cfg.name, ([root / LAYOUT[cfg.name][0]] if root is not None else []) + [DEBIAN_FASHION_MNIST])
    root = data_root(cfg)
    return _check(cfg.name, [root / LAYOUT[cfg.name][0]])


@dataclass(frozen=True)
class DatasetFiles:
    """What the files of a real dataset hold, checked: the sizes the study validation needs."""

    name: str
    files: tuple[Path, ...]
    n_train: int  # training samples in the files (before data.n_train's subset and data.val_fraction's split)
    n_test: int


def check_data(cfg) -> DatasetFiles:
    """Every file a loader would read, checked for its format as the loader checks it — idx magic numbers,
    header dimensions against the body size, image/label pairing and label ranges; CIFAR batches through the
    restricted unpickler with their (N, 3072) uint8 data and labels; SVHN's X (32, 32, 3, N) and y 1..10;
    Semeion's 266 binary columns — without converting any pixel. Raises the loader's own DatasetFilesError or
    CorruptDatasetError (file, location, source). Studies call it for every dataset before Ray starts."""
    if cfg.name in ("mnist", "kmnist", "fashion_mnist"):
        (x, _, xt, _), files = _idx_arrays(cfg, _idx_dirs(cfg))
        n, n_test = len(x), len(xt)
    elif cfg.name in _CIFAR:
        (x, _, xt, _), files = _cifar_arrays(cfg, *_CIFAR[cfg.name])
        n, n_test = len(x), len(xt)
    elif cfg.name == "svhn":
        (x, _, xt, _), files = _svhn_arrays(cfg)
        n, n_test = len(x), len(xt)
    elif cfg.name == "semeion":
        a, path = _semeion_rows(cfg)
        tr, te = _semeion_split(len(a), cfg.seed)
        files, n, n_test = [path], len(tr), len(te)
    else:
        raise ValueError(f"check_data: dataset '{cfg.name}' is not a real dataset; valid: {', '.join(LAYOUT)}")
    return DatasetFiles(cfg.name, tuple(files), int(n), int(n_test))
