"""Multi-label data: MULAN ARFF (+ label XML), Extreme Classification Repository text files,
svmlight/libsvm multi-label files, and the Yeast data set shipped in ``river``.

Every loader returns a :class:`MultiLabelData` with ``X`` a scipy CSR ``(N, D)`` float32
matrix and ``Y`` a scipy CSR ``(N, K)`` 0/1 matrix. Rows without labels are kept.
Malformed files raise :class:`~pyro_sdlgm.exceptions.DataFormatError` naming the file
and, where the format has lines, the line.
"""

from __future__ import annotations

import io
import re
import xml.etree.ElementTree as ElementTree
from dataclasses import dataclass
from pathlib import Path

import arff
import numpy as np
import scipy.sparse
from sklearn.datasets import load_svmlight_file
from sklearn.preprocessing import MultiLabelBinarizer

from .exceptions import DataError, DataFormatError


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
    if not path.is_file():
        raise DataError(f"data file {str(path)!r} does not exist")
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise DataFormatError(f"{path}: not UTF-8 text ({err})") from None


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
    their value in the declaration.
    """
    path = Path(path)
    text = _read_text(path)
    data_line = re.search(r"^\s*@data\s*$\n(?:\s*(?:%.*)?\n)*\s*(\S)", text, flags=re.IGNORECASE | re.MULTILINE)
    sparse = bool(data_line) and data_line.group(1) == "{"
    try:
        obj = arff.loads(text, encode_nominal=True, return_type=arff.COO if sparse else arff.DENSE)
    except arff.ArffException as err:
        raise DataFormatError(f"{path}: {err}") from None
    attributes = obj["attributes"]
    names = [name for name, _ in attributes]
    if isinstance(labels, int):
        if not 1 <= labels < len(attributes):
            raise DataFormatError(f"{path}: {labels} label attributes requested but the file has {len(attributes)} attributes")
        label_idx = list(range(len(attributes) - labels, len(attributes)))
    else:
        label_names = read_label_xml(labels)
        missing = [name for name in label_names if name not in names]
        if missing:
            raise DataFormatError(f"{path}: labels {missing[:5]} of {labels} are not attributes of the file")
        label_idx = [names.index(name) for name in label_names]
    if sparse:
        values, rows, cols = (np.asarray(a, dtype=object if i == 0 else None) for i, a in enumerate(obj["data"]))
        missing = [i for i, v in enumerate(values) if v is None]
        if missing:
            raise DataFormatError(f"{path}: missing value in data row {rows[missing[0]]}, "
                                  f"attribute {names[cols[missing[0]]]!r}")
        n = max(int(rows.max()) + 1 if len(values) else 0, _count_data_rows(text))
        full = scipy.sparse.csr_matrix((_as_float(path, values), (rows, cols)), shape=(n, len(attributes)))
    else:
        array = np.array(obj["data"], dtype=object)
        if array.size and any(v is None for v in array.ravel()):
            row, col = next((r, c) for r, c in zip(*np.nonzero(array == None)))  # noqa: E711
            raise DataFormatError(f"{path}: missing value in data row {row}, attribute {names[col]!r}")
        full = scipy.sparse.csr_matrix(_as_float(path, array).reshape(len(array), len(attributes)))
    # map label values through their declarations: a nominal {1,0} must not flip 0 and 1
    label_columns = []
    for index in label_idx:
        declared = attributes[index][1]
        column = full[:, index].toarray().ravel()
        if isinstance(declared, list):
            try:
                lookup = np.array([float(v) for v in declared])
            except ValueError:
                raise DataFormatError(f"{path}: label attribute {names[index]!r} declares values {declared}") from None
            column = lookup[column.astype(int)]
        bad = ~np.isin(column, (0.0, 1.0))
        if bad.any():
            raise DataFormatError(f"{path}: label attribute {names[index]!r} has value {column[bad][0]!r} "
                                  f"in data row {int(np.flatnonzero(bad)[0])}; labels must be 0 or 1")
        label_columns.append(column)
    feature_idx = [i for i in range(len(attributes)) if i not in set(label_idx)]
    Y = scipy.sparse.csr_matrix(np.stack(label_columns, 1).astype(np.int8))
    X = full[:, feature_idx].astype(np.float32).tocsr()
    return MultiLabelData(X, Y, path.stem, tuple(names[i] for i in label_idx))


def _as_float(path: Path, values: np.ndarray) -> np.ndarray:
    try:
        return values.astype(np.float64)
    except (TypeError, ValueError) as err:  # e.g. a STRING attribute
        raise DataFormatError(f"{path}: non-numeric attribute values ({err}); only numeric and nominal "
                              "attributes are supported") from None


def _count_data_rows(text: str) -> int:
    body = re.split(r"^\s*@data\s*$", text, maxsplit=1, flags=re.IGNORECASE | re.MULTILINE)[-1]
    return sum(1 for line in body.splitlines() if line.strip() and not line.lstrip().startswith("%"))


# ----------------------------------------------------------------------------- XMC / svmlight

_LABELS = re.compile(r"^\d+(,\d+)*$")
_FEATURE = re.compile(r"^\d+:\S+$")


def _check_lines(path: Path, lines: list[str], first_line: int) -> None:
    """Report the first malformed line by number (scikit-learn's parser does not)."""
    for number, line in enumerate(lines, start=first_line):
        if not line.strip():
            raise DataFormatError(f"{path}, line {number}: empty line")
        tokens = line.split()
        if line[0].isspace() or ":" in tokens[0]:
            features = tokens  # no labels
        else:
            if not _LABELS.match(tokens[0]):
                raise DataFormatError(f"{path}, line {number}: bad label list {tokens[0]!r}")
            features = tokens[1:]
        for token in features:
            if not _FEATURE.match(token):
                raise DataFormatError(f"{path}, line {number}: bad feature {token!r} (expected index:value)")
            try:
                float(token.split(":", 1)[1])
            except ValueError:
                raise DataFormatError(f"{path}, line {number}: bad feature value in {token!r}") from None


def _parse_svmlight(path: Path, body: str, first_line: int, n_features: int | None, zero_based: bool):
    lines = body.rstrip("\n").splitlines()  # trailing blank lines are fine; blank lines inside are not
    _check_lines(path, lines, first_line)
    # scikit-learn reads a row without labels only with the separating space
    fixed = "\n".join(line if not (line[:1].isspace() or ":" in line.split()[0]) else " " + line.lstrip()
                      for line in lines)
    try:
        X, labels = load_svmlight_file(io.BytesIO(fixed.encode()), multilabel=True, zero_based=zero_based,
                                       n_features=n_features, dtype=np.float32)
    except ValueError as err:
        raise DataFormatError(f"{path}: {err}") from None
    return X.tocsr(), [tuple(int(v) for v in row) for row in labels]


def _labels_to_csr(path: Path, labels: list[tuple[int, ...]], num_labels: int, zero_based: bool):
    offset = 0 if zero_based else 1
    for row, row_labels in enumerate(labels):
        for label in row_labels:
            if not offset <= label < num_labels + offset:
                raise DataFormatError(f"{path}: label {label} in data row {row} is outside "
                                      f"[{offset}, {num_labels + offset - 1}]")
    binarizer = MultiLabelBinarizer(classes=list(range(offset, num_labels + offset)), sparse_output=True)
    return binarizer.fit_transform(labels).astype(np.int8).tocsr()


def load_xmc(path: str | Path) -> MultiLabelData:
    """The Extreme Classification Repository format: a header ``N D K``, then ``l1,l2 f:v f:v`` lines.

    Labels and features are 0-based. The header must agree with the rows.
    """
    path = Path(path)
    text = _read_text(path)
    header, _, body = text.partition("\n")
    try:
        n, d, k = (int(v) for v in header.split())
    except ValueError:
        raise DataFormatError(f"{path}, line 1: header must be 'N D K' (three integers), got {header!r}") from None
    X, labels = _parse_svmlight(path, body, 2, d, zero_based=True)
    if X.shape[0] != n:
        raise DataFormatError(f"{path}: header announces {n} rows but the file has {X.shape[0]}")
    return MultiLabelData(X, _labels_to_csr(path, labels, k, True), path.stem)


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
        num_labels = max((max(row) for row in labels if row), default=-1) + (0 if labels_zero_based else -1) + 1
    return MultiLabelData(X, _labels_to_csr(path, labels, num_labels, labels_zero_based), path.stem)


# ----------------------------------------------------------------------------- Yeast


def load_yeast() -> MultiLabelData:
    """Yeast (2,417 genes, 103 features, 14 labels), as shipped in the ``river`` package, in file order."""
    from river import datasets

    rows = list(datasets.Yeast())
    features = list(rows[0][0])
    labels = list(rows[0][1])
    X = np.array([[x[f] for f in features] for x, _ in rows], dtype=np.float32)
    Y = np.array([[bool(y[name]) for name in labels] for _, y in rows], dtype=np.int8)
    return MultiLabelData(scipy.sparse.csr_matrix(X), scipy.sparse.csr_matrix(Y), "yeast", tuple(labels))
