"""Posteriors over sparsity: ArviZ export, draws against q(L|x), summaries, calibration, inspect."""

import json

import numpy as np
import pytest
import scipy.sparse
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from pyro_sdlgm import SDLGM, CheckpointError, DataError, NotFittedError, SDLGMClassifier
from pyro_sdlgm.app.cli import main
from pyro_sdlgm.analysis.inspection import (
    calibration_of,
    count_calibration,
    count_self_check,
    dimension_usage,
    group_difference,
    group_summary,
    level_quantile,
    sparsity_summary,
)
from pyro_sdlgm.analysis.posterior import group, import_arviz, load_inference_data, to_inference_data

from conftest import FAST_FIT, multilabel_run_config
from conftest import count_data
from conftest import TINY


@pytest.fixture(scope="module")
def fitted(tmp_path_factory):
    rng = np.random.default_rng(0)
    X = (rng.random((160, 12)) > 0.5).astype(np.float32)
    model = SDLGM(12, 16, 4, decoder_hidden=[16], guide={"name": "mlp_per_slot", "hidden": [16]})
    model.fit(X, **FAST_FIT)
    return model, X


def test_groups_shapes_and_exact_probabilities(fitted):
    model, X = fitted
    idata = model.posterior(X[:30], num_samples=50)
    post, marginals = group(idata, "posterior"), group(idata, "marginals")
    assert post["sparsity"].dims == ("chain", "draw", "obs") and post["sparsity"].shape == (1, 50, 30)
    assert post["sparsity"].dtype.kind == "i" and post["nnz"].shape == (1, 50, 30)
    probs = marginals["sparsity_probs"]
    assert probs.dims == ("obs", "level") and list(probs["level"].values) == [1, 2, 3, 4]
    np.testing.assert_allclose(probs.values.sum(-1), 1.0, atol=1e-6)
    np.testing.assert_allclose(probs.values, model.sparsity_posterior(X[:30]), atol=1e-6)
    inclusion = marginals["inclusion_probs"]
    assert inclusion.dims == ("obs", "dim") and inclusion.shape == (30, 16)
    assert ((inclusion.values >= 0) & (inclusion.values <= 1)).all()
    # the inclusion probabilities are the draws' average support, so they add up to the mean non-zeros
    np.testing.assert_allclose(inclusion.values.sum(-1), post["nnz"].values.mean(axis=(0, 1)), atol=1e-9)
    assert "posterior_predictive" not in idata.groups()


def assert_draws_follow_q(idata, levels):
    """Each level's draw frequency is within about 4.5 standard errors of q(L = level | x)."""
    draws = group(idata, "posterior")["sparsity"].values[0]  # (S, N)
    probs = group(idata, "marginals")["sparsity_probs"].values
    S = draws.shape[0]
    assert draws.min() >= levels[0] and draws.max() <= levels[-1]
    for i in range(draws.shape[1]):
        frequency = np.array([(draws[:, i] == level).mean() for level in levels])
        bound = 4.5 * np.sqrt(probs[i] * (1 - probs[i]) / S) + 1e-3
        assert (np.abs(frequency - probs[i]) <= bound).all(), (frequency, probs[i])


def test_draws_match_q_within_sampling_error(fitted):
    model, X = fitted
    idata = model.posterior(X[:4], num_samples=4000, seed=3)
    assert_draws_follow_q(idata, [1, 2, 3, 4])
    # slots drawn without replacement: each draw's code has exactly L_i non-zeros
    assert (group(idata, "posterior")["nnz"].values == group(idata, "posterior")["sparsity"].values).all()


@pytest.mark.parametrize("variant", ["enumerate", "include_zero", "posterior_predictive", "classifier", "marginal",
                                     "amortized"])
def test_draws_match_q_in_every_mode(binary_data, variant):
    """Untrained models (seeded): the draw-to-level mapping is what is checked, in each mode."""
    if variant == "classifier":
        model = SDLGMClassifier(6, 3, hidden=[8])
        rng = np.random.default_rng(0)
        Y = (rng.random((40, 6)) > 0.6).astype(np.int8)
        Y[Y.sum(1) == 0, 0] = 1
        Y[Y.sum(1) > 3, 3:] = 0
        model.fit(binary_data[:40], Y, **{**FAST_FIT, "epochs": 1})
        idata, levels = model.posterior(binary_data[:3], num_samples=2000, seed=1), [1, 2, 3]
    else:
        options = {"enumerate": dict(sparsity_inference="enumerate", objective="relaxed"),
                   "include_zero": dict(include_zero=True),
                   "marginal": dict(sparsity_inference="marginal", count_coupling="prefix_mixture"),
                   "amortized": dict(count_estimate="amortized")}.get(variant, {})
        model = SDLGM(12, 6, 3, decoder_hidden=[8], guide={"name": "mlp_per_slot", "hidden": [8]}, **options)
        model.fit(binary_data, **{**FAST_FIT, "epochs": 1})
        idata = model.posterior(binary_data[:3], num_samples=2000, seed=1, batch_size=2,
                                posterior_predictive=variant == "posterior_predictive")
        levels = [0, 1, 2, 3] if variant == "include_zero" else [1, 2, 3]
    assert_draws_follow_q(idata, levels)


def test_independent_slots_can_repeat_so_nnz_is_at_most_L(binary_data):
    model = SDLGM(12, 3, 3, slot_selection="independent", guide={"name": "mlp_shared_slots", "hidden": [8]},
                  decoder_hidden=[8])
    model.fit(binary_data, **FAST_FIT)
    post = group(model.posterior(binary_data[:20], num_samples=200), "posterior")
    nnz, L = post["nnz"].values, post["sparsity"].values
    assert (nnz <= L).all() and (nnz < L).any() and (nnz >= 1).all()


def test_seeded_and_leaves_the_global_rng_alone(fitted):
    model, X = fitted

    def draws(**options):
        return group(model.posterior(X[:10], num_samples=20, **options), "posterior")["sparsity"].values

    torch.manual_seed(5)
    expected_next = torch.rand(3)
    torch.manual_seed(5)
    first = draws(seed=1)
    assert torch.equal(torch.rand(3), expected_next)  # the global RNG was restored
    assert np.array_equal(first, draws(seed=1))
    assert not np.array_equal(first, draws(seed=2))


def test_netcdf_round_trip(fitted, tmp_path):
    model, X = fitted
    idata = model.posterior(X[:8], num_samples=10, posterior_predictive=True, obs_names=[f"r{i}" for i in range(8)])
    path = tmp_path / "posterior.nc"
    idata.to_netcdf(str(path))
    back = load_inference_data(str(path))
    assert set(back.groups()) == set(idata.groups())
    for name, variables in [("posterior", ["sparsity", "nnz"]), ("marginals", ["sparsity_probs", "inclusion_probs"]),
                            ("posterior_predictive", ["x"]), ("observed_data", ["x"])]:
        for var in variables:
            np.testing.assert_array_equal(group(back, name)[var].values, group(idata, name)[var].values)
    assert list(group(back, "marginals")["obs"].values) == [f"r{i}" for i in range(8)]
    assert group(back, "marginals").attrs["num_samples"] == 10


def test_posterior_predictive_draws_are_new_data(fitted):
    model, X = fitted
    idata = model.posterior(X[:6], num_samples=30, posterior_predictive=True)
    draws = group(idata, "posterior_predictive")["x"].values
    assert draws.shape == (1, 30, 6, 12) and set(np.unique(draws)) <= {0.0, 1.0}
    np.testing.assert_array_equal(group(idata, "observed_data")["x"].values, X[:6])
    # real predictive draws, not the data returned back (Predictive's default for observed sites)
    assert (draws[0] != X[:6]).any(axis=(1, 2)).mean() > 0.9


def test_enumerate_mode_posterior(binary_data):
    model = SDLGM(12, 6, 3, sparsity_inference="enumerate", objective="relaxed", decoder_hidden=[8],
                  guide={"name": "mlp_per_slot", "hidden": [8]})
    model.fit(binary_data, **FAST_FIT)
    post = group(model.posterior(binary_data[:5], num_samples=40), "posterior")
    assert post["sparsity"].values.min() >= 1 and post["sparsity"].values.max() <= 3


def test_arviz_imports_without_its_daily_refactor_warning_on_a_fresh_cache(tmp_path):
    """ArviZ 0.23 warns once a day per user cache, with a message that starts with a newline.

    A fresh cache (as on a new CI machine) must not turn that warning into an error, neither
    through the library's import nor under this suite's ``filterwarnings = error``.
    """
    import os
    import subprocess
    import sys

    env = dict(os.environ, XDG_CACHE_HOME=str(tmp_path / "cache"))
    code = "from pyro_sdlgm.analysis.posterior import import_arviz; import_arviz()"
    done = subprocess.run([sys.executable, "-W", "error::FutureWarning", "-c", code], env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]


def test_arviz_stats_summary_works_on_the_result(fitted):
    az = import_arviz()
    model, X = fitted
    idata = model.posterior(X[:3], num_samples=40)
    table = az.summary(idata, var_names=["sparsity"], kind="stats", hdi_prob=0.9)
    draws = group(idata, "posterior")["sparsity"].values[0]
    np.testing.assert_allclose(table["mean"].to_numpy(), draws.mean(0), atol=1e-2)


def test_bad_requests():
    model = SDLGM(12, 16, 4)
    with pytest.raises(NotFittedError, match="posterior"):
        model.posterior(np.zeros((2, 12), np.float32))
    with pytest.raises(NotFittedError, match="posterior"):
        SDLGMClassifier(4, 2).posterior(np.zeros((2, 3)))


@pytest.mark.parametrize("num_samples", [0, -1, True, 2.5, "10"])
def test_bad_num_samples(fitted, num_samples):
    model, X = fitted
    with pytest.raises(DataError, match="num_samples"):
        model.posterior(X[:2], num_samples=num_samples)


def test_bad_obs_names_and_groups(fitted):
    model, X = fitted
    with pytest.raises(DataError, match="obs_names"):
        model.posterior(X[:4], num_samples=2, obs_names=["a"])
    idata = model.posterior(X[:4], num_samples=2)
    with pytest.raises(DataError, match=r"expected one label per observation, \(4,\)"):
        group_summary(idata, [0, 1, 2])
    with pytest.raises(DataError, match="true_counts"):
        count_calibration(idata, [1, 2])
    with pytest.raises(DataError, match="no true counts"):
        count_calibration(idata)


# ----------------------------------------------------------------------------- summaries on known numbers


def synthetic_idata(probs, inclusion, nnz_draws, levels, true_counts=None):
    n = probs.shape[0]
    return to_inference_data(
        {"sparsity": np.ones((1, nnz_draws.shape[0], n), np.int64), "nnz": nnz_draws[None]},
        {"sparsity_probs": probs, "inclusion_probs": inclusion},
        {"sparsity": ["obs"], "nnz": ["obs"], "sparsity_probs": ["obs", "level"], "inclusion_probs": ["obs", "dim"],
         "label_count": ["obs"]},
        {"obs": np.arange(n), "level": np.asarray(levels), "dim": np.arange(inclusion.shape[1])},
        observed_data=None if true_counts is None else {"label_count": np.asarray(true_counts)},
    )


def random_idata(seed, n=40, levels=(1, 2, 3, 4, 5), k=7):
    rng = np.random.default_rng(seed)
    probs = rng.dirichlet(np.ones(len(levels)) * 0.7, size=n)
    inclusion = rng.random((n, k))
    nnz = rng.integers(1, 6, size=(9, n))
    return synthetic_idata(probs, inclusion, nnz, levels), probs, inclusion, nnz


def test_summary_agrees_with_a_direct_computation():
    idata, probs, inclusion, nnz = random_idata(0)
    levels = np.arange(1, 6)
    table = sparsity_summary(idata, top=3)
    np.testing.assert_allclose(table["mean"], probs @ levels)
    np.testing.assert_allclose(table["sd"] ** 2, probs @ levels**2 - (probs @ levels) ** 2, atol=1e-12)
    np.testing.assert_array_equal(table["mode"], levels[probs.argmax(1)])
    np.testing.assert_allclose(table["entropy"], -(probs * np.log(probs)).sum(1))
    np.testing.assert_allclose(table["mean_nnz"], nnz.mean(0))
    for i in range(5):
        best = np.argsort(-inclusion[i])[:3]
        assert [table[f"top{j}_dim"][i] for j in (1, 2, 3)] == list(best)
        np.testing.assert_allclose([table[f"top{j}_prob"][i] for j in (1, 2, 3)], inclusion[i, best])
    usage = dimension_usage(idata)
    np.testing.assert_allclose(usage["mean_inclusion"], inclusion.mean(0))


def test_group_summary_agrees_with_pandas_groupby():
    idata, probs, _, nnz = random_idata(1)
    groups = np.repeat(["a", "b", "c", "d"], 10)
    table = group_summary(idata, groups).set_index("group")
    per_obs = sparsity_summary(idata)
    per_obs["group"] = groups
    direct = per_obs.groupby("group")
    np.testing.assert_allclose(table["mean_L"], direct["mean"].mean())
    np.testing.assert_allclose(table["sd_between"], direct["mean"].std(ddof=0))
    np.testing.assert_allclose(table["mean_mode"], direct["mode"].mean())
    np.testing.assert_allclose(table["mean_nnz"], direct["mean_nnz"].mean())
    assert list(table["count"]) == [10, 10, 10, 10]
    # sd of the group's mixture of posteriors: E[var] + var[E] (law of total variance)
    np.testing.assert_allclose(table["sd_L"] ** 2, (direct["sd"].apply(lambda s: (s**2).mean())
                                                     + direct["mean"].var(ddof=0)))


def test_group_difference_detects_a_real_difference():
    rng = np.random.default_rng(2)
    sparse_rows = rng.dirichlet([8, 2, 1, 1, 1], size=30)
    dense_rows = rng.dirichlet([1, 1, 1, 2, 8], size=30)
    probs = np.vstack([sparse_rows, dense_rows])
    idata = synthetic_idata(probs, rng.random((60, 3)), np.ones((2, 60), np.int64), range(1, 6))
    separated = group_difference(idata, np.repeat([0, 1], 30))
    assert separated["p_value"] < 1e-6 and separated["eta_squared"] > 0.5
    mixed = group_difference(idata, np.tile([0, 1], 30))
    assert mixed["p_value"] > 0.01 and mixed["eta_squared"] < 0.1
    flat = synthetic_idata(np.full((6, 3), 1 / 3), np.zeros((6, 2)), np.ones((1, 6), np.int64), [1, 2, 3])
    same = group_difference(flat, [0, 0, 0, 1, 1, 1])  # nothing to test: NaN, no warning, no error
    assert np.isnan(same["p_value"]) and same["eta_squared"] == 0.0


@settings(max_examples=200, deadline=None, derandomize=True)
@given(st.lists(st.floats(0.0, 1.0), min_size=1, max_size=8).filter(lambda w: sum(w) > 1e-3),
       st.floats(0.01, 0.99))
def test_level_quantile_is_the_smallest_level_with_cdf_at_least_q(weights, q):
    probs = np.asarray(weights) / sum(weights)
    levels = np.arange(len(probs)) + 1
    value = level_quantile(probs[None], levels, q)[0]
    cdf = np.cumsum(probs)
    assert cdf[value - 1] >= q - 1e-9
    assert value == 1 or cdf[value - 2] < q + 1e-9


def test_count_calibration_on_known_numbers():
    # rows: confidence 0.9 (2 rows, 1 right), 0.6 (1 row, right), and one true count over L0
    probs = np.array([[0.9, 0.05, 0.05], [0.9, 0.05, 0.05], [0.2, 0.6, 0.2], [0.1, 0.1, 0.8]])
    truth = [1, 2, 2, 7]
    idata = synthetic_idata(probs, np.zeros((4, 2)), np.ones((1, 4), np.int64), [1, 2, 3], truth)
    metrics, bins = count_calibration(idata, num_bins=10)
    assert metrics["accuracy"] == 0.5 and metrics["out_of_range"] == 1 and metrics["num_examples"] == 4
    # bin (0.5, 0.6]: acc 1, conf 0.6; bin (0.7, 0.8]: acc 0 (count 7 is not a level), conf 0.8;
    # bin (0.8, 0.9]: acc 0.5, conf 0.9
    expected = (1 / 4) * 0.4 + (1 / 4) * 0.8 + (2 / 4) * 0.4
    assert metrics["ece"] == pytest.approx(expected)
    assert list(bins["count"]) == [1, 1, 2]
    assert metrics["nll"] == pytest.approx(-np.mean(np.log([0.9, 0.05, 0.6])))
    # the observed counts are read from the object when not passed
    assert count_calibration(idata)[0] == metrics


def test_count_calibration_of_a_calibrated_predictor_is_small():
    rng = np.random.default_rng(3)
    probs = rng.dirichlet(np.ones(4), size=20000)
    truth = np.array([rng.choice(4, p=p) for p in probs]) + 1  # drawn from the predicted distribution
    idata = synthetic_idata(probs, np.zeros((20000, 1)), np.ones((1, 20000), np.int64), [1, 2, 3, 4], truth)
    assert count_calibration(idata)[0]["ece"] < 0.02
    overconfident = synthetic_idata(probs ** 4 / (probs ** 4).sum(1, keepdims=True), np.zeros((20000, 1)),
                                    np.ones((1, 20000), np.int64), [1, 2, 3, 4], truth)
    assert count_calibration(overconfident)[0]["ece"] > 0.1


# ----------------------------------------------------------------------------- classifier and the CLI


def test_classifier_posterior_with_true_counts():
    rng = np.random.default_rng(1)
    X, Y, counts = count_data(120, rng)
    clf = SDLGMClassifier(8, 4, hidden=[32])
    clf.fit(scipy.sparse.csr_matrix(X), Y, **FAST_FIT)
    idata = clf.posterior(scipy.sparse.csr_matrix(X[:20]), Y[:20], num_samples=30)
    np.testing.assert_allclose(group(idata, "marginals")["sparsity_probs"].values, clf.count_posterior(X[:20]),
                               atol=1e-6)
    np.testing.assert_array_equal(group(idata, "observed_data")["label_count"].values, counts[:20])
    draws = group(idata, "posterior")["sparsity"].values
    assert draws.min() >= 1 and draws.max() <= 4
    assert group(idata, "marginals")["inclusion_probs"].shape == (20, 8)
    metrics, _ = count_calibration(idata)
    assert 0 <= metrics["ece"] <= 1 and metrics["out_of_range"] == 0
    with pytest.raises(DataError, match="Y has shape"):
        clf.posterior(X[:20], Y[:10])


def _png(path):
    data = path.read_bytes()
    return data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 2000


def test_inspect_cli_unsupervised(tmp_path, capsys):
    run_dir = tmp_path / "run"
    assert main(["train", *TINY, "--run-dir", str(run_dir)]) == 0
    capsys.readouterr()
    assert main(["inspect", str(run_dir), "--num-samples", "20"]) == 0
    out, err = capsys.readouterr()
    assert "posterior draws" in err and "plots" in err  # progress on stderr, the summary on stdout
    assert "posterior draws" not in out
    assert "modes of q(L|x)" in out and "per group:" in out and "Kruskal-Wallis" in out
    idata = load_inference_data(str(run_dir / "posterior.nc"))
    assert group(idata, "posterior")["sparsity"].shape == (1, 20, 15)  # the 15 test rows
    summary = np.genfromtxt(run_dir / "sparsity_summary.csv", delimiter=",", names=True)
    assert len(summary) == 15
    np.testing.assert_allclose(summary["mean"], group(idata, "marginals")["sparsity_probs"].values @ [1, 2, 3])
    assert (run_dir / "sparsity_groups.csv").read_text().startswith("group,count,mean_L")
    for name in ["sparsity_examples", "sparsity_by_group", "dimension_usage",
                 "dimension_images"]:
        assert _png(run_dir / "plots" / f"{name}.png"), name
    headline = json.loads((run_dir / "inspection.json").read_text())
    assert sum(headline["mode_histogram"].values()) == 15
    checks = headline["count_self_check"]  # as many of the model's own draws as inspected rows, both sources
    assert set(checks) == {"codes", "prior"} and all(c["num_examples"] == 15 and 0 <= c["ece"] <= 1
                                                     for c in checks.values())
    assert "draws from the codes of these rows" in out and "draws from the prior" in out
    assert _png(run_dir / "plots" / "count_self_check.png") and _png(run_dir / "plots" / "count_self_check_prior.png")
    table = (run_dir / "count_self_check.csv").read_text()
    assert table.startswith("lower,upper,count") and ",codes" in table and ",prior" in table
    # groups from a file: wrong length is an error naming the file
    groups = tmp_path / "groups.txt"
    groups.write_text("a\nb\n")
    assert main(["inspect", str(run_dir), "--groups", str(groups), "--num-samples", "2"]) == 2
    err = capsys.readouterr().err
    assert str(groups) in err and "(15,)" in err
    groups.write_text("\n".join("ab"[i % 2] for i in range(15)))
    assert main(["inspect", str(run_dir), "--groups", str(groups), "--num-samples", "2"]) == 0
    assert "a,8," in (run_dir / "sparsity_groups.csv").read_text()
    assert main(["inspect", str(run_dir), "--num-samples", "0"]) == 2
    assert "num_samples" in capsys.readouterr().err


def test_inspect_cli_multilabel_writes_calibration(tmp_path, capsys):
    config, _, _ = multilabel_run_config(tmp_path, run_dir=tmp_path / "run")
    assert main(["train", "--config", str(config)]) == 0
    capsys.readouterr()
    assert main(["inspect", str(tmp_path / "run"), "--num-samples", "10"]) == 0
    out = capsys.readouterr().out
    assert "count calibration: ECE" in out
    assert _png(tmp_path / "run" / "plots" / "count_calibration.png")
    assert _png(tmp_path / "run" / "plots" / "label_usage.png")
    headline = json.loads((tmp_path / "run" / "inspection.json").read_text())
    assert 0 <= headline["calibration"]["ece"] <= 1 and headline["num_examples"] == 40
    assert (tmp_path / "run" / "count_calibration.csv").read_text().startswith("lower,upper,count")


def test_bad_groups_files_are_data_errors(tmp_path):
    from pyro_sdlgm.app.inspect_command import read_groups

    (tmp_path / "empty.npy").write_bytes(b"")
    with pytest.raises(DataError, match="empty.npy"):
        read_groups(str(tmp_path / "empty.npy"), 3, None)
    (tmp_path / "latin1.txt").write_bytes(b"a\n\xe9\nb\n")
    with pytest.raises(DataError, match="byte offset 2"):
        read_groups(str(tmp_path / "latin1.txt"), 3, None)
    with pytest.raises(DataError, match="no such file"):
        read_groups(str(tmp_path / "missing.txt"), 3, None)


def test_calibration_rejects_counts_that_are_not_whole_numbers():
    idata = synthetic_idata(np.full((2, 3), 1 / 3), np.zeros((2, 2)), np.ones((1, 2), np.int64), [1, 2, 3])
    with pytest.raises(DataError, match="whole numbers, found 1.7"):
        count_calibration(idata, [1.7, 2.0])
    with pytest.raises(DataError, match="whole numbers"):
        count_calibration(idata, [np.nan, 2.0])
    assert count_calibration(idata, [1.0, 2.0])[0]["num_examples"] == 2


def test_inspection_json_has_no_nan():
    from pyro_sdlgm.app.inspect_command import _finite_or_null

    assert _finite_or_null({"a": float("nan"), "b": {"c": float("inf"), "d": 1.5}, "e": 2}) == {
        "a": None, "b": {"c": None, "d": 1.5}, "e": 2}


def test_inspect_needs_a_trained_run(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert main(["inspect", str(tmp_path / "empty")]) == 2
    assert "no config.yaml" in capsys.readouterr().err
    from pyro_sdlgm.app.inspect_command import inspect_run

    with pytest.raises(CheckpointError, match="does not exist"):
        inspect_run(tmp_path / "missing")
    (tmp_path / "no_model").mkdir()
    (tmp_path / "no_model" / "config.yaml").write_text("run_dir: x\n")
    with pytest.raises(CheckpointError, match="no model.pt"):
        inspect_run(tmp_path / "no_model")


@pytest.fixture(scope="module")
def fitted_topk(tmp_path_factory):
    rng = np.random.default_rng(1)
    X = (rng.random((120, 12)) > 0.5).astype(np.float32)
    model = SDLGM(12, 24, 4, decoder_hidden=[16], slot_layout="gumbel_topk",
                  guide={"name": "mlp_magnitude_slots", "hidden": [16]})
    model.fit(X, **FAST_FIT)
    return model, X


def test_ranked_inclusion_holds_the_dense_numbers_without_the_zeros(fitted_topk):
    model, X = fitted_topk
    dense = model.posterior(X[:40], num_samples=30, seed=4, inclusion="dense")
    ranked = model.posterior(X[:40], num_samples=30, seed=4, inclusion="ranked")
    full = group(dense, "marginals")["inclusion_probs"].values
    marginals = group(ranked, "marginals")
    dims, probs = marginals["top_dims"].values, marginals["top_inclusion"].values
    assert "inclusion_probs" not in marginals and marginals["top_dims"].dims == ("obs", "rank")
    assert marginals.attrs["inclusion"] == "ranked" and group(dense, "marginals").attrs["inclusion"] == "dense"
    # the rank width is the largest number of dimensions a row's draws took
    assert dims.shape[1] == (full > 0).sum(-1).max()
    rebuilt = np.zeros_like(full)
    for row in range(full.shape[0]):
        listed = dims[row] >= 0
        assert (probs[row, ~listed] == 0).all() and (probs[row, listed] > 0).all()
        assert (np.diff(probs[row, listed]) <= 0).all()  # decreasing
        rebuilt[row, dims[row, listed]] = probs[row, listed]
    np.testing.assert_array_equal(rebuilt, full)
    # the tables read either form alike
    import pandas as pd
    pd.testing.assert_frame_equal(sparsity_summary(ranked, top=3), sparsity_summary(dense, top=3))
    pd.testing.assert_frame_equal(dimension_usage(ranked), dimension_usage(dense), check_exact=False, rtol=1e-12)
    np.testing.assert_array_equal(group(ranked, "posterior")["nnz"].values, group(dense, "posterior")["nnz"].values)


def test_ranked_inclusion_ties_go_to_the_lower_index_and_round_trips(fitted_topk, tmp_path):
    from pyro_sdlgm.analysis.posterior import ranked_inclusion

    counts = torch.tensor([[0, 3, 0, 3, 1], [0, 0, 0, 0, 2]], dtype=torch.int32)
    dims, probs = ranked_inclusion(counts, 4)
    assert dims.tolist() == [[1, 3, 4], [4, -1, -1]]
    assert probs.tolist() == [[0.75, 0.75, 0.25], [0.5, 0.0, 0.0]]
    model, X = fitted_topk
    idata = model.posterior(X[:6], num_samples=5, inclusion="ranked")
    path = tmp_path / "ranked.nc"
    idata.to_netcdf(str(path))
    back = group(load_inference_data(str(path)), "marginals")
    for var in ("top_dims", "top_inclusion"):
        np.testing.assert_array_equal(back[var].values, group(idata, "marginals")[var].values)
    import pandas as pd
    pd.testing.assert_frame_equal(dimension_usage(load_inference_data(str(path))), dimension_usage(idata))


def test_inclusion_form_auto_follows_the_width_and_bad_forms_are_named(fitted_topk):
    from pyro_sdlgm.analysis.posterior import resolve_inclusion
    from pyro_sdlgm.model.spec import ModelSpec

    assert resolve_inclusion("auto", ModelSpec(5, 1024, 2)) == "dense"
    assert resolve_inclusion("auto", ModelSpec(5, 1025, 2)) == "ranked"
    assert resolve_inclusion("dense", ModelSpec(5, 1025, 2)) == "dense"
    model, X = fitted_topk
    with pytest.raises(DataError, match="inclusion must be one of .*'sparse'"):
        model.posterior(X[:2], num_samples=2, inclusion="sparse")


def test_dimension_effects_from_sparse_codes_equal_the_dense_ones(fitted_topk):
    from pyro_sdlgm.analysis.diagnostics import dimension_effects

    model, X = fitted_topk
    codes = model.encode(X)
    dense = dimension_effects(model.model_, codes, chunk=7)
    sparse = dimension_effects(model.model_, scipy.sparse.csr_matrix(codes), chunk=7)
    for key in ("usage", "value"):
        np.testing.assert_allclose(sparse[key], dense[key], rtol=1e-12)
    np.testing.assert_allclose(sparse["effect"], dense["effect"], rtol=1e-5, atol=1e-7)


@settings(max_examples=50, deadline=None)
@given(st.integers(1, 4), st.integers(1, 5), st.integers(1, 6), st.integers(2, 7), st.integers(0, 2**31 - 1))
def test_support_counts_from_picks_count_a_repeated_pick_once(draws, rows, slots, size, seed):
    from pyro_sdlgm.analysis.posterior import _add_support

    generator = torch.Generator().manual_seed(seed)
    picks = torch.randint(size, (draws, rows, slots), generator=generator)
    used = torch.rand(draws, rows, slots, generator=generator) < 0.7
    counts = torch.zeros(rows, size, dtype=torch.int32)
    nnz = _add_support(counts, picks, used)
    # the direct (S, N, K) construction
    hits = torch.zeros(draws, rows, size, dtype=torch.int32).scatter_add_(-1, picks, used.to(torch.int32)) > 0
    assert torch.equal(nnz, hits.sum(-1)) and torch.equal(counts, hits.sum(0, dtype=torch.int32))


def test_calibration_of_exact_probabilities_and_of_a_confident_mistake():
    levels = np.array([1, 2, 3])
    truth = np.array([1, 2, 3, 3])
    metrics, bins = calibration_of(np.eye(3)[truth - 1], levels, truth)
    assert metrics["ece"] == 0 and metrics["accuracy"] == 1 and metrics["nll"] == pytest.approx(0)
    wrong = np.eye(3)[[1, 1, 2, 2]] * 0.9 + 0.1 / 3  # confidence 0.93, right for 3 of 4 rows
    metrics, bins = calibration_of(wrong, levels, truth)
    assert metrics["accuracy"] == 0.75 and metrics["ece"] == pytest.approx(abs(0.75 - (0.9 + 0.1 / 3)))
    assert list(bins["count"]) == [4]


def test_count_self_check_scores_the_posterior_of_the_models_own_draws(fitted):
    model, X = fitted
    metrics, bins = count_self_check(model, num_rows=400, seed=3)
    draws, _, counts = model.sample(400, seed=3)  # the same draws
    expected, _ = calibration_of(model.sparsity_posterior(draws), model.sparsity_levels, counts)
    for key, value in expected.items():
        assert metrics[key] == pytest.approx(value)
    assert metrics["mean_count"] == pytest.approx(counts.mean()) and 2.0 < metrics["mean_count"] < 3.0  # uniform 1..4
    assert -1 <= metrics["spearman"] <= 1 and bins["count"].sum() == 400
    # from the codes of X: the known counts are the codes' non-zeros, the rows one draw given each code
    metrics, bins = count_self_check(model, X, seed=3)
    codes = model.encode(X)
    redrawn = model.sample_observations(codes, seed=3)
    expected, _ = calibration_of(model.sparsity_posterior(redrawn), model.sparsity_levels, (codes != 0).sum(1))
    for key, value in expected.items():
        assert metrics[key] == pytest.approx(value)
    assert metrics["num_examples"] == len(X) and metrics["mean_count"] == pytest.approx((codes != 0).sum(1).mean())
