"""Data loaders: IDX (plain and gzipped), numpy files, the offline built-ins, preprocessing and splits."""

import gzip
import struct

import numpy as np
import pytest
from pyro_sdlgm import DataConfig, DataError, DataFormatError
from pyro_sdlgm.data.unsupervised import load_idx, load_numpy, load_source, prepare_dataset, read_idx, split_dataset


def idx_bytes(array: np.ndarray) -> bytes:
    code = {np.uint8: 0x08, np.int32: 0x0C, np.float32: 0x0D}[array.dtype.type]
    header = bytes([0, 0, code, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.astype(array.dtype.newbyteorder(">")).tobytes()


@pytest.fixture
def idx_dir(tmp_path):
    rng = np.random.default_rng(0)
    train = rng.integers(0, 256, (6, 4, 5), dtype=np.uint8)
    test = rng.integers(0, 256, (3, 4, 5), dtype=np.uint8)
    (tmp_path / "train-images-idx3-ubyte.gz").write_bytes(gzip.compress(idx_bytes(train)))
    (tmp_path / "train-labels-idx1-ubyte.gz").write_bytes(gzip.compress(idx_bytes(np.arange(6, dtype=np.uint8))))
    (tmp_path / "t10k-images-idx3-ubyte").write_bytes(idx_bytes(test))
    (tmp_path / "t10k-labels-idx1-ubyte").write_bytes(idx_bytes(np.arange(3, dtype=np.uint8)))
    return tmp_path, train, test


def test_idx_directory_round_trip(idx_dir):
    path, train, test = idx_dir
    data = load_idx(path)
    assert data.X.shape == (9, 20) and data.image_shape == (4, 5)
    assert np.allclose(data.X[:6], train.reshape(6, -1) / 255.0)  # train files first
    assert np.allclose(data.X[6:], test.reshape(3, -1) / 255.0)
    assert data.y.tolist() == [0, 1, 2, 3, 4, 5, 0, 1, 2]
    single = load_source(str(path / "t10k-images-idx3-ubyte"))
    assert single.X.shape == (3, 20) and single.y.tolist() == [0, 1, 2]


def test_idx_float_and_int_types(tmp_path):
    for array in (np.arange(6, dtype=np.int32).reshape(2, 3), np.linspace(0, 1, 6, dtype=np.float32).reshape(3, 2)):
        (tmp_path / "a-idx").write_bytes(idx_bytes(array))
        assert np.array_equal(read_idx(tmp_path / "a-idx"), array)


@pytest.mark.parametrize(
    "mutate, match",
    [
        (lambda b: b[:3], "too short.*byte offset 0"),
        (lambda b: b"\x01" + b[1:], "bad IDX magic.*byte offset 0"),
        (lambda b: b[:2] + b"\x07" + b[3:], "unknown IDX data type 0x07 at byte offset 2"),
        (lambda b: b[:-5], "header announces shape"),
        (lambda b: b[:10], "truncated IDX header"),
        (lambda b: b"\x1f\x8b" + b"garbage", "corrupt gzip"),
    ],
)
def test_corrupt_idx_files_name_file_and_offset(tmp_path, mutate, match):
    good = idx_bytes(np.zeros((2, 3, 3), np.uint8))
    path = tmp_path / "bad-images-idx3-ubyte"
    path.write_bytes(mutate(good))
    with pytest.raises(DataFormatError, match=match) as info:
        read_idx(path)
    assert str(path) in str(info.value)


def test_numpy_files(tmp_path):
    X = np.random.default_rng(0).random((5, 3, 2)).astype(np.float32)
    np.save(tmp_path / "a.npy", X)
    data = load_numpy(tmp_path / "a.npy")
    assert data.X.shape == (5, 6) and data.image_shape == (3, 2)
    np.savez(tmp_path / "b.npz", X=X[:, :, 0], y=np.arange(5))
    data = load_source(str(tmp_path / "b.npz"))
    assert data.X.shape == (5, 3) and data.y.tolist() == [0, 1, 2, 3, 4]
    np.savez(tmp_path / "c.npz", first=X, second=X)
    with pytest.raises(DataFormatError, match="npz_key"):
        load_numpy(tmp_path / "c.npz")
    assert load_numpy(tmp_path / "c.npz", key="second").X.shape == (5, 6)
    np.save(tmp_path / "d.npy", np.array([{"a": 1}], dtype=object))
    with pytest.raises(DataFormatError, match="d.npy"):
        load_numpy(tmp_path / "d.npy")
    np.save(tmp_path / "e.npy", np.zeros(4))
    with pytest.raises(DataFormatError, match=r"shape \(4,\)"):
        load_numpy(tmp_path / "e.npy")
    with pytest.raises(DataError, match="neither a built-in"):
        load_source(str(tmp_path / "missing.npy"))


def test_builtin_offline_data():
    mnist = load_source("mnist")
    assert mnist.X.shape == (5000, 784) and mnist.image_shape == (28, 28)
    assert 0.0 <= mnist.X.min() and mnist.X.max() <= 1.0
    assert np.bincount(mnist.y).tolist() == [500] * 10
    digits = load_source("digits")
    assert digits.X.shape == (1797, 64) and digits.X.max() == 1.0


def test_preprocessing_and_split():
    binarized = prepare_dataset(DataConfig(source="digits", max_examples=300), "bernoulli")
    assert binarized.X.shape == (300, 64) and set(np.unique(binarized.X)) == {0.0, 1.0}
    raw = prepare_dataset(DataConfig(source="digits", max_examples=300), "normal")
    assert len(np.unique(raw.X)) > 2  # "auto" leaves data as is for non-Bernoulli likelihoods
    forced = prepare_dataset(DataConfig(source="digits", binarize=True, binarize_threshold=0.9), "normal")
    assert set(np.unique(forced.X)) == {0.0, 1.0}
    train, test = split_dataset(raw, 0.2, seed=0)
    assert len(train.X) == 240 and len(test.X) == 60
    rows = {r.tobytes() for r in train.X}
    assert len(train.y) == 240
    again_train, _ = split_dataset(raw, 0.2, seed=0)
    assert np.array_equal(again_train.X, train.X)
    assert split_dataset(raw, 0.0, seed=0)[1] is None
    assert rows  # non-empty


def test_files_are_checked_before_binarizing(tmp_path):
    bad = np.zeros((4, 3), np.float32)
    bad[2, 1] = np.nan
    np.save(tmp_path / "nan.npy", bad)
    with pytest.raises(DataError, match="non-finite.*row 2, column 1"):
        prepare_dataset(DataConfig(source=str(tmp_path / "nan.npy")), "bernoulli")
    np.save(tmp_path / "raw.npy", np.full((4, 3), 200.0, np.float32))
    with pytest.raises(DataError, match=r"\[0, 1\]"):
        prepare_dataset(DataConfig(source=str(tmp_path / "raw.npy")), "bernoulli")
    assert prepare_dataset(DataConfig(source=str(tmp_path / "raw.npy")), "normal").X.max() == 200.0
    (tmp_path / "broken.npz").write_bytes(b"PK\x03\x04 not a zip")
    with pytest.raises(DataFormatError, match="broken.npz"):
        load_source(str(tmp_path / "broken.npz"))
    np.save(tmp_path / "my_idx.npy", np.zeros((2, 2), np.float32))
    assert load_source(str(tmp_path / "my_idx.npy")).X.shape == (2, 2)
