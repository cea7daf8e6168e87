"""Multi-label loaders: round trips of small files in each format, and errors naming file and line."""

from pathlib import Path

import numpy as np
import pytest
from pyro_sdlgm import DataError, DataFormatError
from pyro_sdlgm.data.multilabel import load_arff, load_svmlight_multilabel, load_xmc, load_yeast, read_label_xml

BIBTEX = Path(__file__).resolve().parents[3] / "shared" / "data" / "bibtex"

X = np.array([[0.5, 0.0, 2.0], [0.0, 0.0, 0.0], [1.0, 3.0, 0.0]], np.float32)
Y = np.array([[1, 0], [0, 0], [1, 1]], np.int8)  # row 1 has no labels

DENSE_ARFF = """% a comment
@relation toy
@attribute f0 numeric
@attribute f1 numeric
@attribute f2 numeric
@attribute lab_a {0,1}
@attribute lab_b {1,0}
@data
0.5,0,2,1,0
0,0,0,0,0
1,3,0,1,1
"""
# in sparse ARFF an omitted value is the first declared one, so both labels declare {0,1} here
SPARSE_ARFF = (DENSE_ARFF.split("@data")[0].replace("lab_b {1,0}", "lab_b {0,1}")
               + "@data\n{0 0.5,2 2,3 1}\n{}\n{0 1,1 3,3 1,4 1}\n")
LABEL_XML = """<?xml version="1.0" encoding="utf-8"?>
<labels xmlns="http://mulan.sourceforge.net/labels"><label name="lab_a"></label><label name="lab_b"></label></labels>
"""


def write(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text)
    return path


@pytest.mark.parametrize("text", [DENSE_ARFF, SPARSE_ARFF], ids=["dense", "sparse"])
def test_arff_round_trip(tmp_path, text):
    path = write(tmp_path, "toy.arff", text)
    for labels in (2, write(tmp_path, "toy.xml", LABEL_XML)):
        data = load_arff(path, labels)
        assert np.array_equal(data.X.toarray(), X)
        assert np.array_equal(data.Y.toarray(), Y)  # dense: the {1,0} declaration does not flip lab_b
        assert data.label_names == ("lab_a", "lab_b")


def test_arff_errors(tmp_path):
    bad_label = DENSE_ARFF.replace("@attribute lab_a {0,1}", "@attribute lab_a numeric").replace("1,3,0,1,1", "1,3,0,2,1")
    with pytest.raises(DataFormatError, match="lab_a.*2.0.*row 2"):
        load_arff(write(tmp_path, "a.arff", bad_label), 2)
    with pytest.raises(DataFormatError, match="b.arff.*line"):
        load_arff(write(tmp_path, "b.arff", DENSE_ARFF.replace("0,0,0,0,0", "0,zero,0,0,0")), 2)
    with pytest.raises(DataFormatError, match="not attributes"):
        load_arff(write(tmp_path, "c.arff", DENSE_ARFF), write(tmp_path, "x.xml", LABEL_XML.replace("lab_b", "nope")))
    with pytest.raises(DataFormatError, match="malformed label XML"):
        read_label_xml(write(tmp_path, "y.xml", "<labels><label"))
    with pytest.raises(DataError, match="does not exist"):
        load_arff(tmp_path / "missing.arff", 2)


XMC = "3 3 2\n0 0:0.5 2:2\n 0:0 \n0,1 0:1 1:3\n"


def test_xmc_round_trip_with_an_empty_label_list(tmp_path):
    data = load_xmc(write(tmp_path, "toy.txt", XMC.replace(" 0:0 \n", " 1:0\n")))
    assert data.X.shape == (3, 3) and np.array_equal(data.Y.toarray(), Y)
    assert np.allclose(data.X.toarray()[[0, 2]], X[[0, 2]])


@pytest.mark.parametrize("text, match", [
    ("3 3\n0 0:1\n", "line 1: header"),
    ("4 3 2\n0 0:0.5\n 1:1\n0,1 0:1\n", "announces 4 rows"),
    ("3 3 2\n0 0:0.5\n 1:1\n0,5 0:1\n", "label 5 .* outside"),
    ("3 3 2\n0 0:0.5\nx 1:1\n0 0:1\n", "line 3: bad label list 'x'"),
    ("3 3 2\n0 0:0.5\n0 1:abc\n0 0:1\n", "line 3: bad feature value in '1:abc'"),
    ("3 3 2\n0 0:0.5\n0 1:1.2.3\n0 0:1\n", "line 3: bad feature value in '1:1.2.3'"),
    ("3 3 2\n0 0:0.5\n\n0 0:1\n", "line 3: empty line"),
    ("3 3 2\n0 0:0.5\n0 7:1\n0 0:1\n", "toy.txt"),
])
def test_xmc_errors_name_file_and_line(tmp_path, text, match):
    with pytest.raises(DataFormatError, match=match):
        load_xmc(write(tmp_path, "toy.txt", text))


def test_trailing_blank_lines_are_fine_and_label_base_can_differ(tmp_path):
    assert load_xmc(write(tmp_path, "t.txt", XMC.replace(" 0:0 \n", " 1:0\n") + "\n\n")).X.shape == (3, 3)
    libsvm = "0 1:0.5 3:2\n 1:0\n0,1 1:1 2:3\n"  # features from 1, labels from 0
    data = load_svmlight_multilabel(write(tmp_path, "l.svm", libsvm), zero_based=False, labels_zero_based=True,
                                    num_features=3)
    assert np.array_equal(data.Y.toarray(), Y) and data.X.shape == (3, 3)
    with pytest.raises(DataError, match="zero_based must be true or false"):
        load_svmlight_multilabel(write(tmp_path, "m.svm", libsvm), zero_based="auto")


def test_arff_missing_and_string_values(tmp_path):
    sparse_missing = SPARSE_ARFF.replace("{0 0.5,2 2,3 1}", "{0 0.5,2 2,3 ?}")
    with pytest.raises(DataFormatError, match="missing value in data row 0, attribute 'lab_a'"):
        load_arff(write(tmp_path, "m.arff", sparse_missing), 2)
    strings = DENSE_ARFF.replace("@attribute f1 numeric", "@attribute f1 string").replace("0.5,0,2", "0.5,hello,2")
    with pytest.raises(DataFormatError, match="non-numeric"):
        load_arff(write(tmp_path, "s.arff", strings), 2)


def test_svmlight_bases_are_explicit(tmp_path):
    one_based = "1 1:0.5 3:2\n 1:0\n1,2 1:1 2:3\n"
    data = load_svmlight_multilabel(write(tmp_path, "a.svm", one_based), zero_based=False, num_features=3, num_labels=2)
    assert np.array_equal(data.Y.toarray(), Y)
    assert np.allclose(data.X.toarray()[[0, 2]], X[[0, 2]])  # no silent shift
    zero_based = "0 0:0.5 2:2\n 0:0\n0,1 0:1 1:3\n"
    data = load_svmlight_multilabel(write(tmp_path, "b.svm", zero_based), zero_based=True)
    assert np.array_equal(data.Y.toarray(), Y) and data.X.shape == (3, 3)
    with pytest.raises(DataFormatError, match="c.svm.*[Ii]nvalid index 0"):
        load_svmlight_multilabel(write(tmp_path, "c.svm", zero_based), zero_based=False, num_labels=2)
    with pytest.raises(DataFormatError, match="label 0 .* outside"):
        load_svmlight_multilabel(write(tmp_path, "d.svm", "0 1:1\n"), zero_based=False, num_labels=2)


def test_yeast_from_river():
    data = load_yeast()
    assert data.X.shape == (2417, 103) and data.Y.shape == (2417, 14)
    assert 4.0 < data.label_counts.mean() < 4.5


@pytest.mark.skipif(not (BIBTEX / "bibtex.arff").exists(), reason="the Bibtex benchmark is not in ../shared/data")
def test_bibtex_benchmark_file():
    data = load_arff(BIBTEX / "bibtex.arff", BIBTEX / "bibtex.xml")
    assert data.X.shape == (7395, 1836) and data.Y.shape == (7395, 159)
    assert data.label_counts.max() == 28 and data.label_counts.min() == 1
    assert abs(data.label_counts.mean() - 2.40) < 0.01
