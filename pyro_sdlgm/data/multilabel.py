"""Multi-label data: MULAN ARFF (+ label XML), Extreme Classification Repository text files,
svmlight/libsvm multi-label files, and the Yeast data set shipped in ``river``.

Every loader returns a :class:`MultiLabelData` with ``X`` a scipy CSR ``(N, D)`` float32
matrix and ``Y`` a scipy CSR ``(N, K)`` 0/1 matrix. Rows without labels are kept.
Malformed files raise :class:`~pyro_sdlgm.exceptions.DataFormatError` naming the file
and, where the format has lines, the line.
"""

from __future__ import annotations

import csv
import io
import re
import xml.etree.ElementTree as ElementTree
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import scipy.sparse

from pyro_sdlgm._optional import optional_import
from pyro_sdlgm.exceptions import ConfigError, DataError, DataFormatError

if TYPE_CHECKING:  # the loaders do not need the config module (nor torch) at run time
    from pyro_sdlgm.config import MultiLabelDataConfig


@dataclass(frozen=True)
class MultiLabelData:
    """Features ``X`` (CSR ``(N, D)``), labels ``Y`` (CSR ``(N, K)``, 0/1), and names."""

    X: scipy.sparse.csr_matrix
    Y: scipy.sparse.csr_matrix
    name: str
    label_names: tuple[str, ...] | None = None

    def rows(self, start: int, stop: int | None = None) -> MultiLabelData:
        """Rows ``start:stop`` (the benchmarks' fixed splits are first/last rows)."""
        return self.take(slice(start, stop))

    def take(self, rows) -> MultiLabelData:
        """The rows ``rows`` (a slice or an index array)."""
        return MultiLabelData(self.X[rows], self.Y[rows], self.name, self.label_names)

    @property
    def label_counts(self) -> np.ndarray:
        return np.asarray(self.Y.sum(1)).ravel().astype(np.int64)


def _read_text(path: Path) -> str:
    """The file as text, with universal newlines (``\\r\\n`` and a lone ``\\r`` end a line, as in
    ``open``), so that the line numbers in messages count lines the way editors do."""
    if not path.is_file():
        raise DataError(f"data file {str(path)!r} does not exist")
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        line = _universal_newlines(raw[: err.start].decode("utf-8")).count("\n") + 1
        raise DataFormatError(f"{path}, line {line}: not UTF-8 text (byte offset {err.start}: {err.reason})") from None
    return _universal_newlines(text.removeprefix("\ufeff"))  # a UTF-8 byte order mark is not content


def _universal_newlines(text: str) -> str:
    return text.replace("\r\n", "\n").replace("\r", "\n")


_FLOAT32_MAX = float(np.finfo(np.float32).max)


# ----------------------------------------------------------------------------- ARFF


def read_label_xml(path: str | Path) -> list[str]:
    """Label names of a MULAN label XML file (every ``<label name=...>``, in document order)."""
    path = Path(path)
    try:
        root = ElementTree.fromstring(_read_text(path))
    except ElementTree.ParseError as err:
        raise DataFormatError(f"{path}: malformed label XML ({err})") from None
    names = [element.get("name") for element in root.iter() if element.tag.split("}")[-1] == "label"]
    if not names or any(name is None for name in names):
        raise DataFormatError(f"{path}: no <label name=...> elements")
    return names


def load_arff(path: str | Path, labels: int | str | Path) -> MultiLabelData:
    """A MULAN ARFF file (dense or sparse), via ``liac-arff``.

    Args:
        path: the ``.arff`` file.
        labels: the number of label attributes (the last ones), or the label XML file.

    Label attributes must hold only 0 and 1. Nominal features are encoded by the index of
    their value in the declaration. Values must be finite and within the float32 range.
    Every error names the file and the line, except a label XML that names attributes the
    file lacks (the message names both files).
    """
    path = Path(path)
    lines = _read_text(path).split("\n")
    data_index = next((i for i, line in enumerate(lines) if line.strip(" \r\n").upper().startswith("@DATA")), None)
    # the lines of the data rows, as liac-arff counts them (it skips blank and comment lines)
    row_lines = [] if data_index is None else [
        i + 1 for i in range(data_index + 1, len(lines)) if lines[i].strip() and not lines[i].strip().startswith("%")]
    sparse = bool(row_lines) and lines[row_lines[0] - 1].strip().startswith("{")
    obj = _decode_arff(path, lines, sparse)
    attributes = obj["attributes"]
    names = [name for name, _ in attributes]
    # liac-arff read every @attribute line before @data in order, so the k-th one declares attribute k
    attribute_lines = [i + 1 for i, line in enumerate(lines[:data_index])
                       if line.strip(" \r\n").upper().startswith("@ATTRIBUTE")]
    if isinstance(labels, int):
        if not 1 <= labels < len(attributes):
            raise DataFormatError(f"{path}, line {data_index + 1}: {labels} label attributes requested but the file "
                                  f"declares {len(attributes)} attributes before @data")
        label_idx = list(range(len(attributes) - labels, len(attributes)))
    else:
        label_names = read_label_xml(labels)
        missing = [name for name in label_names if name not in names]
        if missing:
            raise DataFormatError(f"{path}: labels {missing[:5]} of {labels} are not attributes of the file")
        label_idx = [names.index(name) for name in label_names]
    _check_sparse_keys(path, lines, row_lines)
    if sparse:
        values, rows, cols = obj["data"]
        values, rows, cols = np.asarray(values, dtype=object), np.asarray(rows, np.int64), np.asarray(cols, np.int64)
    else:
        rows, cols = np.divmod(np.arange(len(obj["data"]) * len(attributes)), len(attributes))
        values = np.array([v for row in obj["data"] for v in row], dtype=object)
    numbers = _arff_numbers(path, values, rows, cols, names, row_lines)
    full = scipy.sparse.csr_matrix((numbers, (rows, cols)), shape=(len(row_lines), len(attributes)))
    full.eliminate_zeros()
    # map label values through their declarations: a nominal {1,0} must not flip 0 and 1
    label_columns = []
    for index in label_idx:
        declared = attributes[index][1]
        column = full[:, index].toarray().ravel()
        if isinstance(declared, list):
            try:
                lookup = np.array([float(v) for v in declared])
            except ValueError:
                raise DataFormatError(f"{path}, line {attribute_lines[index]}: label attribute {names[index]!r} "
                                      f"declares values {declared}") from None
            column = lookup[column.astype(int)]
        bad = ~np.isin(column, (0.0, 1.0))
        if bad.any():
            row = int(np.flatnonzero(bad)[0])
            raise DataFormatError(f"{path}, line {row_lines[row]}: label attribute {names[index]!r} has value "
                                  f"{float(column[row])!r} in data row {row}; labels must be 0 or 1")
        label_columns.append(column)
    feature_idx = [i for i in range(len(attributes)) if i not in set(label_idx)]
    Y = scipy.sparse.csr_matrix(np.stack(label_columns, 1).astype(np.int8))
    X = full[:, feature_idx].astype(np.float32).tocsr()
    return MultiLabelData(X, Y, path.stem, tuple(names[i] for i in label_idx))


def _decode_arff(path: Path, lines: list[str], sparse: bool) -> dict:
    """``arff.load`` on the lines, with every error of liac-arff named by file and line.

    liac-arff reports the line of its own errors but lets a few others through (e.g. a
    bare ``@relation`` line, an INTEGER value of ``1e400``, a stray ``\\r`` in a row); the
    line it was reading when they happened is the one the numbered generator below last
    handed out.
    """
    arff = optional_import("arff", "reading ARFF files")
    position = [0]

    def numbered():
        for number, line in enumerate(lines, start=1):
            position[0] = number
            yield line

    try:
        return arff.load(numbered(), encode_nominal=True, return_type=arff.COO if sparse else arff.DENSE)
    except arff.ArffException as err:
        try:
            reason = str(err)
        except (TypeError, ValueError):  # liac-arff formats some messages with '%' and the raw value
            reason = type(err).__name__
        raise DataFormatError(f"{path}, line {position[0]}: {reason}") from None
    except (ValueError, TypeError, OverflowError, IndexError, KeyError, csv.Error) as err:
        raise DataFormatError(f"{path}, line {position[0]}: cannot parse ({type(err).__name__}: {err})") from None


# one cell ``index value`` of a sparse ARFF row (the value as liac-arff's grammar allows it)
_SPARSE_CELL = re.compile(r"""(?:^\s*\{|,)\s*(\d+)\s+(?:"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*'|[^,\s"'{}]+)""")


def _check_sparse_keys(path: Path, lines: list[str], row_lines: list[int]) -> None:
    """liac-arff keeps the last of two cells with one index; a repeated index is an error here."""
    for number in row_lines:
        if not lines[number - 1].strip().startswith("{"):
            continue
        keys = [int(key) for key in _SPARSE_CELL.findall(lines[number - 1])]
        if len(set(keys)) != len(keys):
            repeated = next(key for key in keys if keys.count(key) > 1)
            raise DataFormatError(f"{path}, line {number}: attribute index {repeated} appears twice")


def _arff_numbers(path: Path, values: np.ndarray, rows: np.ndarray, cols: np.ndarray, names: list[str],
                  row_lines: list[int]) -> np.ndarray:
    """The decoded values as float64: all present, numeric, finite and within the float32 range."""

    def fail(i: int, problem: str):
        raise DataFormatError(f"{path}, line {row_lines[rows[i]]}: {problem} in data row {rows[i]}, "
                              f"attribute {names[cols[i]]!r}")

    for i, value in enumerate(values):
        # liac-arff gives numbers for numeric and (encoded) nominal attributes; None is a
        # missing value, a string comes from a STRING attribute or a value it failed to convert
        if value is None:
            fail(i, "missing value")
        if not isinstance(value, (int, float)):
            fail(i, f"non-numeric value {value!r} (only numeric and nominal attributes are supported)")
    numbers = np.array([float(v) for v in values], dtype=np.float64)  # float(): INTEGER values are Python ints
    bad = ~np.isfinite(numbers) | (np.abs(numbers) > _FLOAT32_MAX)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        fail(i, f"value {float(numbers[i])!r} is not finite or is outside the float32 range")
    return numbers


# ----------------------------------------------------------------------------- XMC / svmlight

# scikit-learn's svmlight parser holds a feature index in a C int; a larger index (or
# label, or header count) is reported as an error here instead of an OverflowError there
_MAX_INDEX = 2**31 - 1
_LABELS = re.compile(r"[0-9]+(?:,[0-9]+)*")
_FEATURE = re.compile(r"([0-9]+):(.*)")
_NUMBER = re.compile(r"[+-]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")
_BLANKS = re.compile(r"[ \t]+")


def _check_lines(path: Path, lines: list[str], first_line: int, n_features: int | None,
                 zero_based: bool) -> list[tuple[int, ...]]:
    """Check every line as scikit-learn will read it and return the label lists.

    Written by hand because scikit-learn's parser names no line in its errors, splits on
    more whitespace than a space or tab (so a form feed can hide a row), and lets some
    problems through (values that overflow float32, indices beyond a C int). After this
    check it parses lines of only ASCII digits, signs, ``.eE,:`` and blanks, and cannot fail.
    """
    base = 0 if zero_based else 1
    labels = []
    for number, line in enumerate(lines, start=first_line):
        where = f"{path}, line {number}"
        content = line.strip(" \t")
        if not content:
            raise DataFormatError(f"{where}: empty line")
        tokens = _BLANKS.split(content)
        if line[0] in " \t" or ":" in tokens[0]:
            row_labels, features = (), tokens  # no labels
        else:
            if not _LABELS.fullmatch(tokens[0]):
                raise DataFormatError(f"{where}: bad label list {tokens[0]!r}")
            row_labels, features = tuple(int(v) for v in tokens[0].split(",")), tokens[1:]
            if len(set(row_labels)) != len(row_labels):
                raise DataFormatError(f"{where}: label list {tokens[0]!r} repeats a label")
            if max(row_labels) > _MAX_INDEX:
                raise DataFormatError(f"{where}: label {max(row_labels)} is larger than {_MAX_INDEX}")
        previous = None
        for token in features:
            match = _FEATURE.fullmatch(token)
            if not match:
                raise DataFormatError(f"{where}: bad feature {token!r} (expected index:value)")
            index, value = int(match[1]), match[2]
            if index < base:
                raise DataFormatError(f"{where}: invalid index {index} in {token!r}; feature indices start at {base}")
            if index > _MAX_INDEX or (n_features is not None and index - base >= n_features):
                top = _MAX_INDEX if n_features is None else n_features - 1 + base
                raise DataFormatError(f"{where}: feature index {index} is outside [{base}, {top}]")
            if previous is not None and index <= previous:
                raise DataFormatError(f"{where}: feature indices must increase ({index} after {previous})")
            previous = index
            if not _NUMBER.fullmatch(value):
                raise DataFormatError(f"{where}: bad feature value in {token!r}")
            if abs(float(value)) > _FLOAT32_MAX:
                raise DataFormatError(f"{where}: feature value in {token!r} is outside the float32 range")
        labels.append(row_labels)
    return labels


def _parse_svmlight(path: Path, body: str, first_line: int, n_features: int | None, zero_based: bool):
    """``(X, labels)`` of svmlight lines: checked here, parsed by scikit-learn."""
    lines = body.split("\n")
    while lines and not lines[-1].strip(" \t"):  # trailing blank lines are fine; blank lines inside are not
        lines.pop()
    labels = _check_lines(path, lines, first_line, n_features, zero_based)
    # scikit-learn reads a row without labels only with the separating space
    fixed = "\n".join(" " + line.lstrip(" \t") if not row_labels else line for line, row_labels in zip(lines, labels))
    from sklearn.datasets import load_svmlight_file

    try:
        X, _ = load_svmlight_file(io.BytesIO(fixed.encode()), multilabel=True, zero_based=zero_based,
                                  n_features=n_features, dtype=np.float32)
    except ValueError as err:  # not expected after _check_lines
        raise DataFormatError(f"{path}: {err}") from None
    return X.tocsr(), labels


def _labels_to_csr(path: Path, labels: list[tuple[int, ...]], num_labels: int, zero_based: bool, first_line: int):
    """The 0/1 ``(N, num_labels)`` CSR matrix of the label lists (built directly: no memory per label)."""
    offset = 0 if zero_based else 1
    for row, row_labels in enumerate(labels):
        for label in row_labels:
            if not offset <= label < num_labels + offset:
                raise DataFormatError(f"{path}, line {first_line + row}: label {label} is outside "
                                      f"[{offset}, {num_labels + offset - 1}]")
    indptr = np.cumsum([0] + [len(row) for row in labels], dtype=np.int64)
    indices = np.array([label - offset for row in labels for label in sorted(row)], dtype=np.int64)
    return scipy.sparse.csr_matrix((np.ones(len(indices), np.int8), indices, indptr), shape=(len(labels), num_labels))


_XMC_HEADER = re.compile(r"[ \t]*([0-9]+)[ \t]+([0-9]+)[ \t]+([0-9]+)[ \t]*")


def load_xmc(path: str | Path) -> MultiLabelData:
    """The Extreme Classification Repository format: a header ``N D K``, then ``l1,l2 f:v f:v`` lines.

    Labels and features are 0-based. The header must agree with the rows.
    """
    path = Path(path)
    header, _, body = _read_text(path).partition("\n")
    match = _XMC_HEADER.fullmatch(header)
    if not match:
        raise DataFormatError(f"{path}, line 1: header must be 'N D K' (three integers), got {header!r}")
    n, d, k = (int(v) for v in match.groups())
    if not (1 <= d <= _MAX_INDEX + 1 and 1 <= k <= _MAX_INDEX + 1):
        raise DataFormatError(f"{path}, line 1: header announces {d} features and {k} labels; "
                              f"each must be in [1, {_MAX_INDEX + 1}]")
    X, labels = _parse_svmlight(path, body, 2, d, zero_based=True)
    if X.shape[0] != n:
        raise DataFormatError(f"{path}, line 1: header announces {n} rows but the file has {X.shape[0]} "
                              f"(lines 2 to {X.shape[0] + 1})")
    return MultiLabelData(X, _labels_to_csr(path, labels, k, True, 2), path.stem)


def load_svmlight_multilabel(path: str | Path, *, zero_based: bool, labels_zero_based: bool | None = None,
                             num_features: int | None = None, num_labels: int | None = None) -> MultiLabelData:
    """An svmlight/libsvm multi-label file (``l1,l2 f:v ...``), via scikit-learn.

    ``zero_based`` (of the feature indices) must be given: scikit-learn's ``"auto"``
    silently shifts the features of a file that happens to use no index 0. Labels follow
    the same base unless ``labels_zero_based`` says otherwise (LIBSVM's multi-label files
    number features from 1 and labels from 0).
    """
    for key, value in (("zero_based", zero_based), ("labels_zero_based", labels_zero_based)):
        if not (isinstance(value, bool) or (key == "labels_zero_based" and value is None)):
            raise DataError(f"{key} must be true or false, got {value!r}")
    labels_zero_based = zero_based if labels_zero_based is None else labels_zero_based
    path = Path(path)
    X, labels = _parse_svmlight(path, _read_text(path), 1, num_features, zero_based)
    if num_labels is None:
        largest = max((max(row) for row in labels if row), default=None)
        num_labels = 0 if largest is None else max(largest + (1 if labels_zero_based else 0), 0)
    return MultiLabelData(X, _labels_to_csr(path, labels, num_labels, labels_zero_based, 1), path.stem)


# ----------------------------------------------------------------------------- Yeast


def load_yeast() -> MultiLabelData:
    """Yeast (2,417 genes, 103 features, 14 labels), as shipped in the ``river`` package, in file order."""
    datasets = optional_import("river.datasets", "the Yeast data set")

    rows = list(datasets.Yeast())
    features = list(rows[0][0])
    labels = list(rows[0][1])
    X = np.array([[x[f] for f in features] for x, _ in rows], dtype=np.float32)
    Y = np.array([[bool(y[name]) for name in labels] for _, y in rows], dtype=np.int8)
    return MultiLabelData(scipy.sparse.csr_matrix(X), scipy.sparse.csr_matrix(Y), "yeast", tuple(labels))


# ----------------------------------------------------------------------------- from a run config


def load_configured(data: MultiLabelDataConfig, num_labels: int | None, path: str | None = None,
                    widths: tuple[int, int] | None = None) -> MultiLabelData:
    """The ``[data]`` section's file (or ``path`` in the same format) as :class:`MultiLabelData`.

    ``widths``: ``(features, labels)`` a second svmlight file must be read with (the format
    has no header); default: the config's ``num_features`` and ``num_labels``.
    """
    if data.format == "yeast":
        if path is not None:
            raise ConfigError("data.format='yeast' is the built-in data set: it takes no other file")
        return load_yeast()
    if data.format == "arff":
        return load_arff(path or data.path, data.labels if isinstance(data.labels, int) else Path(data.labels))
    if data.format == "xmc":
        return load_xmc(path or data.train)
    num_features, num_labels = widths or (data.num_features, num_labels)
    return load_svmlight_multilabel(path or data.train, zero_based=data.zero_based,
                                        labels_zero_based=data.labels_zero_based,
                                        num_features=num_features, num_labels=num_labels)


def _widths(data) -> tuple[int, int]:
    return int(data.X.shape[1]), int(data.Y.shape[1])


def _check_widths(expected: tuple[int, int], other, name: str) -> None:
    if _widths(other) != expected:
        raise DataError(f"{name} has {other.X.shape[1]} features and {other.Y.shape[1]} labels; the training "
                        f"data has {expected[0]} and {expected[1]}")


def configured_splits(data: MultiLabelDataConfig, num_labels: int | None, source: str | None = None):
    """``(train, test)``: a separate test file, the first ``train_rows`` rows, or a seeded split.

    With ``source`` (a file in the run's format), all of it is the test part (``train`` is None),
    checked against the widths recorded at training (``data.num_features``, ``num_labels``).
    """
    if source is not None:
        trained = (data.num_features, num_labels)
        other = load_configured(data, num_labels, source, widths=trained if None not in trained else None)
        if None not in trained:
            _check_widths(trained, other, f"data {source!r}")
        return None, other
    full = load_configured(data, num_labels)
    if data.test is not None:
        test = load_configured(data, num_labels, data.test, widths=_widths(full))
        _check_widths(_widths(full), test, f"data.test {data.test!r}")
        return full, test
    if data.train_rows is not None:
        if not 1 <= data.train_rows < full.X.shape[0]:
            raise ConfigError(f"data.train_rows={data.train_rows} must leave test rows out of {full.X.shape[0]}")
        return full.rows(0, data.train_rows), full.rows(data.train_rows)
    order = np.random.default_rng(data.split_seed).permutation(full.X.shape[0])
    n_test = max(1, int(round(data.test_fraction * full.X.shape[0])))
    return full.take(np.sort(order[n_test:])), full.take(np.sort(order[:n_test]))
