"""The documents' figure check (experiments/check_docs.py): each pattern finds its one figure, and
the comparison tells a stale figure from a current one."""

import math

import pytest
from experiments.check_docs import FIGURES, Figure, check, compare


@pytest.mark.parametrize("figure", FIGURES, ids=lambda f: f"{f.doc}:{f.pattern[:40]}")
def test_every_pattern_finds_exactly_one_figure_in_its_document(figure):
    assert len(figure.regex().findall(figure.text())) == 1


def test_compare_within_tolerance_at_the_quoted_precision_and_in_decades():
    figure = Figure("README.md", "{n}", lambda r: 0.0)
    assert compare(figure, "-120.57", -121.0, exact=False) and not compare(figure, "-120.57", -140.0, exact=False)
    assert compare(figure, "97.68", 97.6812, exact=True) and not compare(figure, "97.68", 97.6712, exact=True)
    assert compare(figure, "1,500", 1500.2, exact=True)
    p_value = Figure("README.md", "{n}", lambda r: 0.0, relative=2.0, log10=True)
    assert compare(p_value, "0.00024", 0.019, exact=False) and not compare(p_value, "1e-17", 0.019, exact=False)
    assert compare(p_value, "1.9e-08", 1.94e-8, exact=True)


def test_a_changed_result_is_reported_stale():
    results = {"mnist": {"evaluation": {"elbo": -200.0}}}
    figure = FIGURES[0]
    assert figure.pattern.startswith("ELBO {n}")
    quoted = float(figure.regex().findall(figure.text())[0])
    lines = check({"mnist": {"evaluation": {"elbo": quoted}}}, exact=True, figures=[figure])
    assert lines[0].startswith("ok")
    lines = check(results, exact=False, figures=[figure])
    assert lines[0].startswith("STALE") and not math.isclose(quoted, -200.0)
