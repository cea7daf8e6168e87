"""Property-based fuzzing of the data loaders (hypothesis).

Every fuzz property starts from a small valid file written here (its content drawn by
hypothesis), applies one to three generated corruptions, and checks that the loader
either returns consistent data (a corruption may happen to give a valid file) or raises
:class:`DataFormatError` -- no other exception and no warning (pytest runs with
``filterwarnings = error``) -- whose message names the file and the position:

=========================  ==================================================================
loader                     position named in every error message
=========================  ==================================================================
ARFF, XMC, svmlight        ``line N`` (1-based; lines counted after universal-newline reading,
                           so a lone ``\\r`` ends a line). The one ARFF error without a line, a
                           label XML naming attributes the file lacks, names both files and is
                           not fuzzed here (labels are given as a count).
IDX                        ``byte offset N`` into the (decompressed) IDX data, except errors of
                           the gzip layer itself, which say ``gzip stream`` (zlib does not say
                           where a deflate stream breaks)
npz                        ``member 'NAME'`` for a bad array, ``members [...]`` when the wanted
                           array is missing or ambiguous, ``zip archive`` for a bad container
                           (zipfile does not report offsets)
npy                        ``byte offset N``, or ``row R, column C`` for a bad value
=========================  ==================================================================

A loaded file must be consistent: shapes agree with the header or the number of data
lines (nothing silently dropped), values are finite, labels are 0/1; a file the
corruptions left unchanged loads exactly, and the ``*_round_trip`` properties check that
valid generated files load exactly. Each fuzz property runs 1,000 generated cases (500 for
``.npy``; ``derandomize=True``: the same cases on every run) and the wrapping test checks
that count; ``CASES`` holds the counts.
"""

from __future__ import annotations

import collections
import gzip
import io
import math
import re
import struct
import tempfile
import zipfile
from pathlib import Path

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pyro_sdlgm import DataFormatError
from pyro_sdlgm.data.unsupervised import load_idx, load_numpy
from pyro_sdlgm.data.multilabel import load_arff, load_svmlight_multilabel, load_xmc

FUZZ = settings(max_examples=1000, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
ROUND_TRIP = settings(FUZZ, max_examples=150)

CASES: collections.Counter = collections.Counter()  # generated cases run, per loader

POSITION = {
    "arff": re.compile(r"\bline \d+"),
    "xmc": re.compile(r"\bline \d+"),
    "svmlight": re.compile(r"\bline \d+"),
    "idx": re.compile(r"byte offset \d+|gzip stream"),
    "npz": re.compile(r"member '[^']*'|members \[|zip archive"),
    "npy": re.compile(r"byte offset \d+|row \d+, column \d+"),
}


def run_loader(kind: str, load, path: Path, *other_paths: Path):
    """Count the case, run ``load()``; a DataFormatError must name ``path`` (or one of the
    ``other_paths`` the loader reads, e.g. the labels of an IDX image file) and the position."""
    CASES[kind] += 1
    try:
        return load()
    except DataFormatError as err:
        message = str(err)
        assert any(str(p) in message for p in (path, *other_paths)), message
        assert POSITION[kind].search(message), message
        return None


def run_fuzz(kind: str, prop, minimum: int = 1000) -> None:
    """Run the hypothesis property ``prop`` and check that it ran at least ``minimum`` cases."""
    before = CASES[kind]
    prop()
    ran = CASES[kind] - before
    print(f"{kind}: {ran} cases")
    assert ran >= minimum, f"{kind}: only {ran} cases ran"


# ----------------------------------------------------------------------------- corruptions

BAD_TOKENS = [
    "", "abc", "nan", "NaN", "inf", "-inf", "Infinity", "1e400", "-1e400", str(10**30), "1e39", "-3.5e38",
    "1e-400", "-1", "-0", "1.2.3", "0x1F", "1_0", "\uff11", "\u0663", "?", "%", "{", "}", ",", ":", "::", "0:",
    ":1", "@data", "@attribute", "'", '"', "#", "\x00", "\t", "\x0c", "\x85", "\u00e9", "\ufeff",
    "99999999999999999999", "2147483647", "2147483648", "4294967296", "-2147483649", "qid:1", "0,0", "1,,2", "0 0",
    "%d%s", "\\",
]
NUMBERS = st.one_of(
    st.integers(-3, 12),
    st.sampled_from([2**31 - 1, 2**31, 2**32, 2**63, 10**30, -(2**31) - 1]),
    st.integers(-(2**70), 2**70),
).map(str)
FLOATS = st.one_of(st.floats().map(repr), st.sampled_from(["1e400", "-1e400", "nan", "inf", "1e39", str(10**30)]))
REPLACEMENTS = st.one_of(st.sampled_from(BAD_TOKENS), NUMBERS, FLOATS, st.text(max_size=4))


def _spot(data, raw: bytes, end: bool = False) -> int:
    return data.draw(st.integers(0, max(len(raw) - (0 if end else 1), 0)), label="at")


def _replace_match(data, raw: bytes, pattern: bytes, replacement, group: int = 0) -> bytes:
    """Replace one (drawn) match of ``pattern`` (its ``group``) by a drawn string."""
    matches = list(re.finditer(pattern, raw, flags=re.MULTILINE))
    if not matches:
        return raw
    match = matches[data.draw(st.integers(0, len(matches) - 1), label="match")]
    new = data.draw(replacement, label="replacement")
    new = new if isinstance(new, bytes) else new.encode("utf-8")
    return raw[: match.start(group)] + new + raw[match.end(group):]


def truncate(data, raw):
    """Cut the file short (hypothesis favours small draws: cut few bytes, not most of the file)."""
    return raw[: len(raw) - data.draw(st.integers(1, len(raw)), label="cut")] if raw else raw


def empty(data, raw):
    return data.draw(st.sampled_from([b"", b"\n", b" ", b"\x00"]), label="empty")


def flip(data, raw):
    if not raw:
        return raw
    i = _spot(data, raw)
    return raw[:i] + bytes([raw[i] ^ data.draw(st.integers(1, 255), label="mask")]) + raw[i + 1:]


def insert(data, raw):
    i = _spot(data, raw, end=True)
    return raw[:i] + data.draw(st.binary(min_size=1, max_size=8), label="bytes") + raw[i:]


def delete_span(data, raw):
    i = _spot(data, raw)
    return raw[:i] + raw[i + data.draw(st.integers(1, 16), label="length"):]


def duplicate_span(data, raw):
    i = _spot(data, raw)
    return raw[:i] + raw[i: i + data.draw(st.integers(1, 16), label="length")] + raw[i:]


# hypothesis draws the first entry of a list most often: the lists start with the most telling mutations
BYTE_MUTATIONS = [flip, truncate, insert, delete_span, duplicate_span, empty]


def replace_token(data, raw):
    return _replace_match(data, raw, rb"[^\s,:{}]+", REPLACEMENTS)


def replace_number(data, raw):
    return _replace_match(data, raw, rb"-?\d+(?:\.\d*)?(?:[eE][-+]?\d+)?", st.one_of(NUMBERS, FLOATS))


def replace_separator(data, raw):
    choices = st.sampled_from([b",", b" ", b":", b";", b"\t", b"", b"  ", b"{", b"}", b"\x0c", b"|", b"\n"])
    return _replace_match(data, raw, rb"[ ,:{}\t]", choices)


def _lines(raw):
    return raw.split(b"\n")


def line_operation(data, raw):
    lines = _lines(raw)
    i = data.draw(st.integers(0, len(lines) - 1), label="line")
    op = data.draw(st.sampled_from(["duplicate", "delete", "swap", "blank", "garbage"]), label="line op")
    if op == "duplicate":
        lines.insert(i, lines[i])
    elif op == "delete":
        del lines[i]
    elif op == "swap":
        j = data.draw(st.integers(0, len(lines) - 1), label="other line")
        lines[i], lines[j] = lines[j], lines[i]
    elif op == "blank":
        lines.insert(i, data.draw(st.sampled_from([b"", b" ", b"\t", b"  \t"]), label="blank"))
    else:
        lines.insert(i, data.draw(st.text(max_size=12), label="garbage").encode("utf-8"))
    return b"\n".join(lines)


def newlines(data, raw):
    style = data.draw(st.sampled_from([b"\r\n", b"\r", b"\n\n", b"", b"drop-final", b"extra-final"]), label="newlines")
    if style == b"drop-final":
        return raw.rstrip(b"\n")
    if style == b"extra-final":
        return raw + b"\n\n \n"
    return raw.replace(b"\n", style)


def in_body(mutation, marker: bytes):
    """``mutation`` applied after the first match of ``marker`` (the header), or anywhere without one."""

    def mutate(data, raw):
        match = re.search(marker, raw)
        if not match:
            return mutation(data, raw)
        return raw[: match.end()] + mutation(data, raw[match.end():])

    mutate.__name__ = f"{mutation.__name__}_in_body"
    return mutate


TEXT_MUTATIONS = [replace_token, replace_number, line_operation, replace_separator, newlines] + BYTE_MUTATIONS


def corrupt(data, raw: bytes, mutations) -> bytes:
    """Apply one to three drawn mutations; the result differs from ``raw`` unless a mutation was a no-op."""
    for _ in range(data.draw(st.integers(1, 3), label="mutations")):
        raw = data.draw(st.sampled_from(mutations), label="mutation")(data, raw)
    return raw


def write(directory: str, name: str, raw: bytes) -> Path:
    path = Path(directory) / name
    path.write_bytes(raw)
    return path


# ----------------------------------------------------------------------------- multi-label text files

VALUES = [0.0, 0.0, 0.0, 1.0, 0.5, -2.0, 3.25, 1e-3, 12345.0, -7e20]


@st.composite
def multilabel_matrices(draw, min_rows=0):
    """Small ``(X float32 (N, D), Y int8 (N, K))`` pairs."""
    n = draw(st.integers(min_rows, 4), label="N")
    d = draw(st.integers(1, 4), label="D")
    k = draw(st.integers(1, 3), label="K")
    X = np.array(draw(st.lists(st.sampled_from(VALUES), min_size=n * d, max_size=n * d)), np.float32).reshape(n, d)
    Y = np.array(draw(st.lists(st.sampled_from([0, 1]), min_size=n * k, max_size=n * k)), np.int8).reshape(n, k)
    return X, Y


def _num(value) -> str:
    return repr(float(value))


def arff_text(X, Y, sparse: bool, flipped_nominal: bool) -> str:
    d, k = X.shape[1], Y.shape[1]
    lines = ["% fuzz base", "@relation fuzz"]
    lines += [f"@attribute f{j} numeric" for j in range(d)]
    lines += [f"@attribute lab{j} {{1,0}}" if flipped_nominal and not sparse else f"@attribute lab{j} {{0,1}}"
              for j in range(k)]
    lines.append("@data")
    for x, y in zip(X, Y):
        if sparse:
            cells = [f"{j} {_num(v)}" for j, v in enumerate(x) if v] + [f"{d + j} 1" for j in np.flatnonzero(y)]
            lines.append("{" + ",".join(cells) + "}")
        else:
            lines.append(",".join([_num(v) for v in x] + [str(int(v)) for v in y]))
    return "\n".join(lines) + "\n"


def svmlight_lines(X, Y, feature_base: int = 0, label_base: int = 0) -> list[str]:
    lines = []
    for x, y in zip(X, Y):
        features = [f"{j + feature_base}:{_num(v)}" for j, v in enumerate(x) if v]
        if not features and not y.any():
            features = [f"{feature_base}:0.0"]  # a line needs some content
        lines.append(",".join(str(j + label_base) for j in np.flatnonzero(y)) + " " + " ".join(features))
    return lines


def xmc_text(X, Y) -> str:
    return "\n".join([f"{X.shape[0]} {X.shape[1]} {Y.shape[1]}"] + svmlight_lines(X, Y)) + "\n"


def check_multilabel(data, n_rows: int | None = None, shape: tuple | None = None):
    """Invariants of a loaded MultiLabelData: CSR, dtypes, consistent rows, finite X, 0/1 Y."""
    X, Y = data.X, data.Y
    assert X.format == "csr" and Y.format == "csr"
    assert X.dtype == np.float32 and Y.dtype == np.int8
    assert X.shape[0] == Y.shape[0]
    assert np.isfinite(X.data).all()
    assert set(np.unique(Y.data).tolist()) <= {0, 1}
    if n_rows is not None:
        assert X.shape[0] == n_rows, (X.shape, n_rows)
    if shape is not None:
        assert (X.shape[0], X.shape[1], Y.shape[1]) == shape


def _universal_lines(raw: bytes) -> list[str]:
    return raw.decode("utf-8").replace("\r\n", "\n").replace("\r", "\n").split("\n")


def same_matrices(data, X, Y) -> None:
    """A file the corruptions left unchanged loads exactly."""
    assert np.array_equal(data.X.toarray(), X) and np.array_equal(data.Y.toarray(), Y)


def _arff_layout(raw: bytes) -> tuple[int, int]:
    """``(attributes, data rows)`` of a loadable ARFF file, counted as liac-arff counts them:
    ``@attribute`` lines before the ``@data`` line; non-blank, non-comment lines after it."""
    lines = _universal_lines(raw)
    start = next(i for i, line in enumerate(lines) if line.strip(" \r\n").upper().startswith("@DATA"))
    attributes = sum(1 for line in lines[:start] if line.strip(" \r\n").upper().startswith("@ATTRIBUTE"))
    rows = sum(1 for line in lines[start + 1:] if line.strip() and not line.strip().startswith("%"))
    return attributes, rows


# ARFF-specific corruptions

def arff_attribute_type(data, raw):
    types = st.sampled_from(["numeric", "NUMERIC", "integer", "real", "string", "date", "{0,1}", "{1,0}", "{a,b}",
                             "{0,1,2}", "{}", "{0 1}", "relational", "numeric numeric", "{'0','1'}", "{1e400,0}"])
    return _replace_match(data, raw, rb"^@attribute \S+ (.*)$", types, group=1)


def arff_structure(data, raw):
    keyword = data.draw(st.sampled_from([rb"^@relation.*$", rb"^@data$", rb"^@attribute.*$"]), label="keyword")
    new = st.sampled_from(["", "@data", "@dat", "@DATA", "@relation", "@relation x y", "@attribute", "@attribute a",
                           "@attribute lab0 {0,1}", "%@data", "@data {"])
    return _replace_match(data, raw, keyword, new)


def arff_sparse_key(data, raw):
    keys = st.one_of(NUMBERS, st.sampled_from(["0", "1", "2", "-1", "x", ""]))
    return _replace_match(data, raw, rb"[{,]\s*(\d+)\s", keys, group=1)


def arff_duplicate_cell(data, raw):
    """Repeat a sparse cell ``{i v,i v}`` or a dense value (one value too many)."""
    matches = list(re.finditer(rb"(?<=[{,])[^,{}\n]+", raw))
    if not matches:
        return raw
    match = matches[data.draw(st.integers(0, len(matches) - 1), label="cell")]
    return raw[: match.end()] + b"," + match.group() + raw[match.end():]


def arff_data_value(data, raw):
    body = raw.lower().find(b"@data")
    if body < 0:
        return raw
    return raw[:body] + _replace_match(data, raw[body:], rb"(?<=[\s,{])[^\s,{}]+(?=[,}\n])", REPLACEMENTS)


ARFF_BODY = rb"(?im)^@data[ \t]*\n"
ARFF_MUTATIONS = [arff_data_value, arff_sparse_key, arff_duplicate_cell, arff_attribute_type, arff_structure] + \
    [in_body(m, ARFF_BODY) for m in (flip, truncate, line_operation, replace_separator, insert)] + TEXT_MUTATIONS


def _load_arff_case(directory, raw, k):
    path = write(directory, "fuzz.arff", raw)
    data = run_loader("arff", lambda: load_arff(path, k), path)
    if data is not None:
        attributes, rows = _arff_layout(raw)
        check_multilabel(data, shape=(rows, attributes - k, k))
    return data


def test_arff_fuzz():
    """Corrupted ARFF files (dense and sparse) load consistently or raise DataFormatError naming file and line."""

    @FUZZ
    @given(st.data(), multilabel_matrices(min_rows=1), st.booleans(), st.booleans())
    def prop(data, matrices, sparse, flipped):
        X, Y = matrices
        base = arff_text(X, Y, sparse, flipped).encode()
        raw = corrupt(data, base, ARFF_MUTATIONS)
        with tempfile.TemporaryDirectory() as directory:
            loaded = _load_arff_case(directory, raw, Y.shape[1])
        if raw == base:
            same_matrices(loaded, X, Y)

    run_fuzz("arff", prop)


def test_arff_round_trip():
    """Valid generated ARFF files load exactly (the fixes do not reject good files)."""

    @ROUND_TRIP
    @given(multilabel_matrices(), st.booleans(), st.booleans())
    def prop(matrices, sparse, flipped):
        X, Y = matrices
        with tempfile.TemporaryDirectory() as directory:
            data = _load_arff_case(directory, arff_text(X, Y, sparse, flipped).encode(), Y.shape[1])
        same_matrices(data, X, Y)

    prop()


# XMC / svmlight corruptions

def svm_index(data, raw):
    return _replace_match(data, raw, rb"(?:^|[ \t])(\d+):", st.one_of(NUMBERS, st.sampled_from(["-1", "", "x"])), 1)


def svm_duplicate_feature(data, raw):
    """Repeat a feature ``i:v`` right after itself, or give it the previous index."""
    matches = list(re.finditer(rb"\d+:\S+", raw))
    if not matches:
        return raw
    match = matches[data.draw(st.integers(0, len(matches) - 1), label="feature")]
    return raw[: match.end()] + b" " + match.group() + raw[match.end():]


def svm_labels(data, raw):
    label = st.one_of(st.integers(-2, 4), st.sampled_from([2**31 - 1, 2**31, 2**63, 10**30]))
    lists = st.lists(label, max_size=4).map(lambda v: ",".join(map(str, v)))
    return _replace_match(data, raw, rb"^[\d,]+(?= )", st.one_of(lists, st.sampled_from(BAD_TOKENS)))


SVM_MUTATIONS = [svm_index, svm_labels, svm_duplicate_feature] + TEXT_MUTATIONS


def xmc_header(data, raw):
    head, newline, body = raw.partition(b"\n")
    fields = head.split()
    if len(fields) != 3 or not all(field.isdigit() for field in fields):
        return raw
    values = []
    for field in fields:
        true = int(field)
        values.append(data.draw(st.one_of(st.just(true), st.integers(true - 2, true + 2), st.integers(-1, 5),
                                          st.sampled_from([2**31 - 1, 2**31, 2**32, 2**63, 10**30, "3.0", "x"])),
                                label="header field"))
    values = [str(v) for v in values]
    shape = data.draw(st.sampled_from(["ok", "missing", "extra", "commas"]), label="header shape")
    if shape == "missing":
        values.pop()
    elif shape == "extra":
        values.append("1")
    separator = "," if shape == "commas" else " "
    return separator.join(values).encode() + newline + body


XMC_MUTATIONS = [xmc_header] + [in_body(m, rb"\A[^\n]*\n") for m in SVM_MUTATIONS]


def _header_shape(raw: bytes) -> tuple[int, int, int]:
    return tuple(int(v) for v in _universal_lines(raw)[0].split())


def _load_xmc_case(directory, raw):
    path = write(directory, "fuzz.txt", raw)
    data = run_loader("xmc", lambda: load_xmc(path), path)
    if data is not None:
        check_multilabel(data, shape=_header_shape(raw))
    return data


def test_xmc_fuzz():
    """Corrupted XMC files: the header must match the rows; errors name file and line."""

    @FUZZ
    @given(st.data(), multilabel_matrices(min_rows=1))
    def prop(data, matrices):
        X, Y = matrices
        base = xmc_text(X, Y).encode()
        raw = corrupt(data, base, XMC_MUTATIONS)
        with tempfile.TemporaryDirectory() as directory:
            loaded = _load_xmc_case(directory, raw)
        if raw == base:
            same_matrices(loaded, X, Y)

    run_fuzz("xmc", prop)


def test_xmc_round_trip():
    """Valid generated XMC files load exactly."""

    @ROUND_TRIP
    @given(multilabel_matrices())
    def prop(matrices):
        X, Y = matrices
        with tempfile.TemporaryDirectory() as directory:
            data = _load_xmc_case(directory, xmc_text(X, Y).encode())
        same_matrices(data, X, Y)

    prop()


SVM_OPTIONS = st.fixed_dictionaries({
    "zero_based": st.booleans(),
    "labels_zero_based": st.sampled_from([None, True, False]),
    "give_shape": st.booleans(),
})


def _load_svmlight_case(directory, raw, options, shape):
    path = write(directory, "fuzz.svm", raw)
    kwargs = {"zero_based": options["zero_based"], "labels_zero_based": options["labels_zero_based"]}
    if options["give_shape"]:
        kwargs.update(num_features=shape[1], num_labels=shape[2])
    data = run_loader("svmlight", lambda: load_svmlight_multilabel(path, **kwargs), path)
    if data is not None:
        rows = sum(1 for line in _universal_lines(raw) if line.strip(" \t"))
        check_multilabel(data, n_rows=rows)
        if options["give_shape"]:
            assert data.X.shape[1] == shape[1] and data.Y.shape[1] == shape[2]
    return data


def _svmlight_text(X, Y, options):
    label_base = int(not (options["zero_based"] if options["labels_zero_based"] is None
                          else options["labels_zero_based"]))
    return "\n".join(svmlight_lines(X, Y, int(not options["zero_based"]), label_base)) + "\n"


def test_svmlight_fuzz():
    """Corrupted svmlight files (both index bases): rows are never dropped; errors name file and line."""

    @FUZZ
    @given(st.data(), multilabel_matrices(min_rows=1), SVM_OPTIONS)
    def prop(data, matrices, options):
        X, Y = matrices
        base = _svmlight_text(X, Y, options).encode()
        raw = corrupt(data, base, SVM_MUTATIONS)
        with tempfile.TemporaryDirectory() as directory:
            loaded = _load_svmlight_case(directory, raw, options, (X.shape[0], X.shape[1], Y.shape[1]))
        if raw == base and options["give_shape"]:
            same_matrices(loaded, X, Y)

    run_fuzz("svmlight", prop)


def test_svmlight_round_trip():
    """Valid generated svmlight files load exactly (with the shape given)."""

    @ROUND_TRIP
    @given(multilabel_matrices(), SVM_OPTIONS)
    def prop(matrices, options):
        X, Y = matrices
        options = dict(options, give_shape=True)
        with tempfile.TemporaryDirectory() as directory:
            data = _load_svmlight_case(directory, _svmlight_text(X, Y, options).encode(), options,
                                       (X.shape[0], X.shape[1], Y.shape[1]))
        same_matrices(data, X, Y)

    prop()


# ----------------------------------------------------------------------------- IDX

IDX_CODES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def idx_bytes(array: np.ndarray, code: int) -> bytes:
    header = bytes([0, 0, code, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.astype(IDX_CODES[code]).tobytes()


@st.composite
def idx_arrays(draw):
    code = draw(st.sampled_from(sorted(IDX_CODES)), label="type code")
    shape = draw(st.lists(st.integers(1, 3), min_size=2, max_size=3), label="shape")  # 0 and 1-D: by mutation
    dtype = np.dtype(IDX_CODES[code])
    if dtype.kind == "f":
        values = draw(st.lists(st.sampled_from(VALUES[:-1]), min_size=math.prod(shape), max_size=math.prod(shape)))
    else:
        info = np.iinfo(dtype)
        values = draw(st.lists(st.integers(int(info.min), int(info.max)), min_size=math.prod(shape),
                               max_size=math.prod(shape)))
    return np.array(values, dtype).reshape(shape), code


def idx_magic(data, raw):
    i = data.draw(st.integers(0, 1), label="magic byte")
    return raw[:i] + bytes([data.draw(st.integers(1, 255), label="value")]) + raw[i + 1:]


def idx_type_code(data, raw):
    return raw[:2] + bytes([data.draw(st.integers(0, 255), label="code")]) + raw[3:]


def idx_ndim(data, raw):
    return raw[:3] + bytes([data.draw(st.integers(0, 255), label="ndim")]) + raw[4:]


def idx_dim(data, raw):
    ndim = raw[3] if len(raw) > 3 else 0
    if ndim == 0 or len(raw) < 4 + 4 * ndim:
        return raw
    i = data.draw(st.integers(0, ndim - 1), label="dim")
    true = struct.unpack(">I", raw[4 + 4 * i: 8 + 4 * i])[0]
    value = data.draw(st.one_of(st.integers(max(true - 2, 0), true + 2), st.integers(0, 2**32 - 1),
                                st.sampled_from([0, 2**31, 2**32 - 1, 65536])), label="value")
    return raw[: 4 + 4 * i] + struct.pack(">I", value) + raw[8 + 4 * i:]


def idx_trailing(data, raw):
    if data.draw(st.booleans(), label="append"):
        return raw + data.draw(st.binary(min_size=1, max_size=16), label="bytes")
    return raw[: max(len(raw) - data.draw(st.integers(1, 8), label="cut"), 0)]


def idx_special_values(data, raw):
    """Overwrite data bytes with NaN/inf/huge float patterns or extreme integers."""
    pattern = data.draw(st.sampled_from([struct.pack(">d", float("nan")), struct.pack(">d", float("inf")),
                                         struct.pack(">d", 1e300), struct.pack(">f", float("nan")),
                                         struct.pack(">f", float("-inf")), b"\xff" * 8, b"\x7f\xff\xff\xff"]),
                        label="pattern")
    i = data.draw(st.integers(0, len(raw)), label="at")
    return raw[:i] + pattern[: max(len(raw) - i, 0)] + raw[i + len(pattern):]


IDX_MUTATIONS = [idx_dim, idx_special_values, idx_trailing, idx_type_code, idx_ndim, idx_magic] + BYTE_MUTATIONS


def gzip_corruption(data, raw):
    op = data.draw(st.sampled_from(["truncate", "flip", "magic", "garbage", "member", "empty", "method"]), label="gz")
    if op == "truncate":
        return raw[: data.draw(st.integers(0, len(raw) - 1), label="at")]
    if op == "flip":
        return flip(data, raw)
    if op == "magic":
        return raw[:1] + bytes([data.draw(st.integers(0, 255), label="magic")]) + raw[2:]
    if op == "garbage":
        return raw + data.draw(st.binary(min_size=1, max_size=12), label="garbage")
    if op == "member":
        return raw + gzip.compress(data.draw(st.binary(max_size=12), label="member"))
    if op == "method":
        return raw[:2] + bytes([data.draw(st.integers(0, 255), label="method")]) + raw[3:]
    return gzip.compress(b"")


def _idx_shape(raw: bytes):
    ndim = raw[3]
    return struct.unpack(f">{ndim}I", raw[4: 4 + 4 * ndim])


def test_idx_fuzz():
    """Corrupted IDX files (plain or gzipped, with or without a labels file) load consistently or
    raise DataFormatError naming the file and the byte offset (or the gzip stream)."""

    @FUZZ
    @given(st.data(), idx_arrays(), st.booleans(), st.sampled_from(["images", "labels", "none"]))
    def prop(data, array_code, gzipped, labels):
        array, code = array_code
        images = base_images = idx_bytes(array, code)
        label_raw = base_labels = idx_bytes(np.arange(array.shape[0], dtype=np.uint8), 0x08) \
            if labels != "none" else None
        target = data.draw(st.sampled_from(["images", "labels"] if labels != "none" else ["images"]), label="target")
        if target == "images":
            images = corrupt(data, images, IDX_MUTATIONS)
        else:
            label_raw = corrupt(data, label_raw, IDX_MUTATIONS)
        layer_corrupted = gzipped and data.draw(st.booleans(), label="gzip layer")
        suffix = ".gz" if gzipped else ""
        with tempfile.TemporaryDirectory() as directory:
            image_bytes = gzip.compress(images, mtime=0) if gzipped else images
            if layer_corrupted and target == "images":
                image_bytes = gzip_corruption(data, image_bytes)
            path = write(directory, f"fuzz-images-idx3-ubyte{suffix}", image_bytes)
            label_path = write(directory, f"fuzz-labels-idx1-ubyte{suffix}",
                               gzip.compress(label_raw, mtime=0) if gzipped else label_raw) if label_raw else None
            result = run_loader("idx", lambda: load_idx(path), path, *([label_path] if label_path else []))
            if result is None:
                return
            X = result.X
            assert X.dtype == np.float32 and X.ndim == 2 and np.isfinite(X).all()
            assert X.shape[1] == math.prod(result.image_shape)
            if not layer_corrupted:
                shape = _idx_shape(images)
                assert X.shape[0] == shape[0] and result.image_shape == (tuple(shape[1:]) + (1,))[:2]
                if images[2] == 0x08:
                    assert X.min(initial=0) >= 0 and X.max(initial=0) <= 1
            if result.y is not None:
                assert result.y.shape == (X.shape[0],)
            if images == base_images and label_raw == base_labels and not layer_corrupted:
                expected = array.reshape(len(array), -1).astype(np.float32) / (255.0 if code == 0x08 else 1.0)
                assert np.array_equal(X, expected)

    run_fuzz("idx", prop)


# ----------------------------------------------------------------------------- npz / npy

NUMERIC_DTYPES = ["<f4", "<f8", ">f8", "<f2", "<i8", "<u1", "<i4", "|b1", "<u8"]


@st.composite
def numpy_arrays(draw, min_dim=1):
    dtype = np.dtype(draw(st.sampled_from(NUMERIC_DTYPES), label="dtype"))
    shape = tuple(draw(st.lists(st.integers(min_dim, 3), min_size=2, max_size=3), label="shape"))
    values = draw(st.lists(st.sampled_from([0, 1, 2, 5]), min_size=math.prod(shape), max_size=math.prod(shape)))
    return np.array(values).astype(dtype).reshape(shape)


def npy_bytes(array, allow_pickle=False) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=allow_pickle)
    return buffer.getvalue()


def npy_header(data, raw):
    """Edit the header dictionary of a .npy stream (shape, dtype, order), keeping its length field right."""
    if raw[:6] != b"\x93NUMPY" or len(raw) < 12:
        return raw
    width = 2 if raw[6] == 1 else 4
    start = 8 + width
    end = start + int.from_bytes(raw[8:start], "little")
    field = data.draw(st.sampled_from([rb"'shape': \(([^)]*)\)", rb"'descr': '([^']*)'", rb"'fortran_order': (\w+)"]),
                      label="field")
    values = {
        rb"'shape': \(([^)]*)\)": st.sampled_from(["", "1,", "-1, 2", "10000000000000, 3", "2**40,", "3, 3, 3, 3",
                                                   "0, 0", "1, 1", "9223372036854775807, 2", "'a',", "0, 2**70"]),
        rb"'descr': '([^']*)'": st.sampled_from(["|O", "<c16", "<M8[D]", "|V8", "<U2", ">f8", "<f16", "xx", "|S3",
                                                 "<f4", "|u1"]),
        rb"'fortran_order': (\w+)": st.sampled_from(["True", "False", "1", "None"]),
    }[field]
    header = _replace_match(data, raw[start:end], field, values, group=1)
    return raw[:8] + len(header).to_bytes(width, "little") + header + raw[end:]


def npy_preamble(data, raw):
    """Break the magic string, the version or the header-length field."""
    part = data.draw(st.sampled_from(["magic", "version", "length"]), label="part")
    if part == "magic":
        return flip(data, raw[:6]) + raw[6:]
    if part == "version":
        return raw[:6] + bytes(data.draw(st.sampled_from([(3, 0), (2, 0), (0, 0), (9, 9)]), label="v")) + raw[8:]
    return raw[:8] + struct.pack("<H", data.draw(st.integers(0, 2**16 - 1), label="length")) + raw[10:]


def npy_values(data, raw):
    """Overwrite data bytes with NaN/inf/huge patterns."""
    pattern = data.draw(st.sampled_from([struct.pack("<d", float("nan")), struct.pack("<d", 1e300),
                                         struct.pack("<f", float("inf")), b"\xff" * 8, struct.pack(">d", 1e300)]),
                        label="pattern")
    i = data.draw(st.integers(max(len(raw) - 24, 0), len(raw)), label="at")
    return raw[:i] + pattern[: max(len(raw) - i, 0)] + raw[i + len(pattern):]


NPY_MUTATIONS = [npy_header, npy_values, npy_preamble] + BYTE_MUTATIONS

SPECIAL_ARRAYS = [
    lambda: np.array([[{"a": 1}]], dtype=object),
    lambda: np.zeros((2, 2), np.complex128),
    lambda: np.full((2, 2), 1e300),
    lambda: np.full((2, 2), np.nan),
    lambda: np.array([["a", "b"]]),
    lambda: np.zeros((2, 2), "datetime64[s]"),
    lambda: np.zeros(2, [("a", "<f4"), ("b", "<i4")]),
    lambda: np.zeros(3),
    lambda: np.zeros((1, 1, 1, 1)),
    lambda: np.zeros((0, 3)),
    lambda: np.zeros((2, 0, 3)),
    lambda: np.zeros((0, 3, 3), np.uint8),
    lambda: np.array(5.0),
    lambda: np.arange(4, dtype=np.float16).reshape(2, 2),
]


def _zip(members: dict[str, bytes], compression=zipfile.ZIP_STORED) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=compression) as archive:
        for name, content in members.items():
            archive.writestr(name, content)
    return buffer.getvalue()


def zip_field(data, raw):
    """Overwrite a field of a local or central zip header (method, flags, CRC, sizes, name length)."""
    headers = [m.start() for m in re.finditer(rb"PK\x01\x02|PK\x03\x04", raw)]
    if not headers:
        return raw
    start = headers[data.draw(st.integers(0, len(headers) - 1), label="header")]
    central = raw[start + 2: start + 4] == b"\x01\x02"
    fields = {"flags": (8, 2), "method": (10, 2), "crc": (16, 4), "compressed": (20, 4), "size": (24, 4),
              "name length": (28, 2)} if central else \
        {"flags": (6, 2), "method": (8, 2), "crc": (14, 4), "compressed": (18, 4), "size": (22, 4),
         "name length": (26, 2)}
    offset, width = fields[data.draw(st.sampled_from(sorted(fields)), label="field")]
    value = data.draw(st.one_of(st.integers(0, 2 ** (8 * width) - 1), st.sampled_from([0, 1, 8, 12, 14, 99])),
                      label="value")
    return raw[: start + offset] + value.to_bytes(width, "little") + raw[start + offset + width:]


@st.composite
def npz_files(draw):
    """A drawn npz (as bytes) with X, maybe y and another array, whose members may be corrupted."""
    X = draw(numpy_arrays(), label="X")
    members = {"X.npy": npy_bytes(X)}
    if draw(st.booleans(), label="has y"):
        members["y.npy"] = npy_bytes(np.arange(X.shape[0]) % 3)
    if draw(st.booleans(), label="has extra"):
        members["z.npy"] = npy_bytes(np.ones(2))
    data = draw(st.data(), label="data")
    level = data.draw(st.sampled_from(["member", "member", "member", "special", "names", "container", "zip field",
                                       "not a zip"]), label="level")
    if level == "member":
        name = data.draw(st.sampled_from(sorted(members)), label="member")
        members[name] = corrupt(data, members[name], NPY_MUTATIONS)
    elif level == "special":
        name = data.draw(st.sampled_from(["X.npy", "y.npy"]), label="member")
        special = data.draw(st.sampled_from(SPECIAL_ARRAYS), label="array")()
        members[name] = npy_bytes(special, allow_pickle=True)
    elif level == "names":
        op = data.draw(st.sampled_from(["rename", "raw member", "nested", "two candidates", "directory"]), label="op")
        if op == "rename":
            members[data.draw(st.sampled_from(["x.npy", "data.npy", "X", "X.npy.npy", "q.npy"]))] = \
                members.pop("X.npy")
        elif op == "raw member":
            members["X"] = data.draw(st.binary(max_size=40), label="raw")
            del members["X.npy"]
        elif op == "nested":
            members["X.npy"] = _zip(dict(members))
        elif op == "two candidates":
            members["x.npy"] = members["X.npy"]
            del members["X.npy"]
            members["data.npy"] = npy_bytes(np.ones((2, 2)))
        else:
            members["X.npy/"] = b""
    compression = data.draw(st.sampled_from([zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED]), label="compression")
    raw = _zip(members, compression)
    if level == "container":
        raw = corrupt(data, raw, BYTE_MUTATIONS)
    elif level == "zip field":
        raw = zip_field(data, raw)
    elif level == "not a zip":
        raw = data.draw(st.sampled_from([npy_bytes(X), b"", b"PK\x03\x04", gzip.compress(npy_bytes(X))]), label="raw")
    return raw


def check_numpy_dataset(result):
    X = result.X
    assert X.dtype == np.float32 and X.ndim == 2 and np.isfinite(X).all()
    if result.image_shape is not None:
        assert math.prod(result.image_shape) == X.shape[1]
    if result.y is not None:
        assert result.y.shape == (X.shape[0],)


def test_npz_fuzz():
    """Corrupted .npz files (zip container, member .npy streams, names, object/complex/huge arrays) load
    consistently or raise DataFormatError naming the file and the member (or the zip archive)."""

    @FUZZ
    @given(npz_files())
    def prop(raw):
        with tempfile.TemporaryDirectory() as directory:
            path = write(directory, "fuzz.npz", raw)
            result = run_loader("npz", lambda: load_numpy(path), path)
            if result is not None:
                check_numpy_dataset(result)

    run_fuzz("npz", prop)


def test_npy_fuzz():
    """Corrupted .npy files load consistently or raise DataFormatError naming the file and byte offset."""

    @settings(FUZZ, max_examples=500)
    @given(st.data(), st.one_of(numpy_arrays(), st.sampled_from(SPECIAL_ARRAYS).map(lambda make: make())))
    def prop(data, array):
        raw = corrupt(data, npy_bytes(array, allow_pickle=True), NPY_MUTATIONS)
        with tempfile.TemporaryDirectory() as directory:
            path = write(directory, "fuzz.npy", raw)
            result = run_loader("npy", lambda: load_numpy(path), path)
            if result is not None:
                check_numpy_dataset(result)

    run_fuzz("npy", prop, minimum=500)


def test_numpy_round_trip():
    """Valid generated .npy/.npz files load exactly."""

    @ROUND_TRIP
    @given(numpy_arrays(min_dim=0), st.booleans(), st.booleans())
    def prop(array, compressed, with_labels):
        with tempfile.TemporaryDirectory() as directory:
            path = Path(directory) / "ok.npz"
            arrays = {"X": array, **({"y": np.arange(array.shape[0])} if with_labels else {})}
            (np.savez_compressed if compressed else np.savez)(path, **arrays)
            result = load_numpy(path)
            np.save(Path(directory) / "ok.npy", array)
            single = load_numpy(Path(directory) / "ok.npy")
        for loaded in (result, single):
            assert np.array_equal(loaded.X, array.reshape(len(array), math.prod(array.shape[1:])).astype(np.float32))
        assert (result.y is not None) == with_labels

    prop()
