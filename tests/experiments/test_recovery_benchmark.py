"""Fast checks of experiments/recovery.py: generators, metrics, the oracle, and a tiny end-to-end run."""

import csv
import math

import numpy as np
import pytest


from experiments import recovery
from experiments import recovery_data as data


def read(path):
    with path.open() as handle:
        return list(csv.DictReader(handle))


@pytest.mark.parametrize("kind", ["linear_gaussian", "bernoulli"])
def test_generators_draw_exactly_L_distinct_non_zeros(kind):
    sizes = dict(K=10, D=20, L0=4) | ({"noise": 0.1} if kind == "linear_gaussian" else {})
    X, S, L, params = data.GENERATORS[kind](600, seed=3, **sizes)
    Z = params["Z"]
    assert X.shape == (600, 20) and X.dtype == np.float32 and S.shape == (600, 10) and S.dtype == bool
    assert set(np.unique(L)) == {1, 2, 3, 4}  # every count 1..L0 occurs, nothing outside
    np.testing.assert_array_equal(S.sum(1), L)
    np.testing.assert_array_equal(Z != 0, S)  # exactly the support is non-zero
    magnitude = np.abs(Z[S])
    if kind == "linear_gaussian":
        assert magnitude.min() >= 0.5 and magnitude.max() <= 1.5
        assert 0.3 < (Z[S] > 0).mean() < 0.7  # random signs
    else:
        np.testing.assert_array_equal(magnitude, 1.0)
        assert set(np.unique(X)) == {0.0, 1.0}
    assert 0.2 < S.mean(0).min() * 10 / L.mean()  # every dimension gets used
    X2, S2, _, _ = data.GENERATORS[kind](600, seed=3, **sizes)
    np.testing.assert_array_equal(X, X2)
    np.testing.assert_array_equal(S, S2)
    assert not np.array_equal(S, data.GENERATORS[kind](600, seed=4, **sizes)[1])


def test_splits_share_the_dictionary_and_have_the_requested_sizes():
    splits = data.make_splits(recovery.setting_config("lg_tiny"), data_seed=0)
    assert [len(splits[s][0]) for s in ("train", "val", "test")] == [300, 100, 200]
    assert splits["train"][3]["W"] is splits["test"][3]["W"]
    for X, S, L, params in splits.values():
        assert len(params["Z"]) == len(X) == len(S) == len(L)
    assert recovery.setting_config("lg_k40") == dict(kind="linear_gaussian", K=40, D=100, L0=8, noise=0.1,
                                                     n_train=4000, n_val=500, n_test=1000)


def oracle_row(setting):
    cfg = recovery.setting_config(setting)
    splits = data.make_splits(cfg, data_seed=0)
    return recovery.score(recovery.fit_oracle("oracle", splits, cfg, {}), splits, cfg["kind"])


def test_oracle_explains_the_variance_at_low_noise(monkeypatch):
    row = oracle_row("lg_tiny")
    assert row["explained_variance"] >= 0.99
    assert row["support_f1"] == 1.0 and row["nnz_count_accuracy"] == 1.0
    assert math.isnan(row["spearman_L"]) and math.isnan(row["count_accuracy"])  # it is given the counts
    monkeypatch.setitem(recovery.SETTINGS, "lg_tiny_noisy_test", dict(recovery.SETTINGS["lg_tiny"], noise=1.0))
    assert oracle_row("lg_tiny_noisy_test")["explained_variance"] < 0.95
    bern = oracle_row("bern_tiny")
    assert 0 < bern["recon_nats"] < 12 * math.log(2)  # the true probabilities beat a coin per feature


def test_support_f1_is_one_for_the_true_supports_under_a_permutation():
    rng = np.random.default_rng(0)
    S_train, _ = data.draw_supports(rng, 400, 8, 3)
    S_test, L_test = data.draw_supports(rng, 200, 8, 3)
    perm = rng.permutation(8)  # learned dimension j is true dimension perm[j]
    values = rng.uniform(0.5, 2.0, (400, 8))
    codes_train = S_train[:, perm] * values
    codes_test = S_test[:, perm] * values[:200]
    np.testing.assert_array_equal(data.match_dimensions(codes_train != 0, S_train), perm)
    result = data.code_recovery(codes_train, S_train, codes_test, S_test, L_test)
    assert result["support_f1"] == 1.0 and result["nnz_count_accuracy"] == 1.0
    assert result["max_nnz"] <= 3 and result["mean_nnz"] == pytest.approx(L_test.mean())
    corrupted = codes_test.copy()
    corrupted[:50] = np.roll(corrupted[:50], 1, axis=1)  # a quarter of the rows on the wrong dimensions
    worse = data.code_recovery(codes_train, S_train, corrupted, S_test, L_test)["support_f1"]
    assert 0.5 < worse < 0.9
    # by hand: one hit, two learned and two true non-zeros -> F1 = 2 * 1 / 4
    assert data.support_f1(np.array([[1, 1, 0]]), np.array([[1, 0, 1]], bool), np.arange(3)) == 0.5
    # an unmatched learned dimension (-1) is a false positive
    assert data.support_f1(np.array([[1, 1]]), np.array([[1, 0]], bool), np.array([0, -1])) == pytest.approx(2 / 3)


def test_explained_variance_spearman_and_nats_on_known_inputs():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(50, 4))
    zero = np.zeros(4)
    assert data.explained_variance(x, x, zero) == 1.0
    assert data.explained_variance(x, 0.5 * x, zero) == pytest.approx(0.75)
    assert data.explained_variance(x, np.broadcast_to(x.mean(0), x.shape), x.mean(0)) == pytest.approx(0.0)
    a = np.arange(10.0)
    assert data.spearman(a, a**3) == pytest.approx(1.0)
    assert data.spearman(a, -a) == pytest.approx(-1.0)
    assert math.isnan(data.spearman(a, np.ones(10)))  # constant: NaN, without a warning
    assert math.isnan(data.spearman(a, np.full(10, np.nan)))
    assert data.bernoulli_nats(np.array([[1.0, 0.0]]), np.array([[0.5, 0.5]])) == pytest.approx(2 * math.log(2))
    assert data.bernoulli_nats(np.array([[1.0]]), np.array([[0.0]])) == pytest.approx(-math.log(1e-6))


def test_reconstruct_decodes_the_hard_code():
    import torch

    from pyro_sdlgm import SDLGM

    X = data.make_splits(recovery.setting_config("lg_tiny"), 0)["train"][0]
    model = SDLGM(input_dim=12, latent_dim=6, max_sparsity=3, likelihood="normal")
    model.fit(X, epochs=1, batch_size=128, seed=0, progress=False)
    with torch.no_grad():
        decoded = model.model_.likelihood.mean(model.model_.decoder(torch.from_numpy(model.encode(X)))).numpy()
    np.testing.assert_allclose(model.reconstruct(X), decoded, rtol=0, atol=1e-6)


def test_end_to_end_tiny_run(tmp_path):
    assert recovery.main(["--settings", "lg_tiny", "--methods", "sdlgm_default", "topk_ae_kmatched", "--seeds", "0",
                          "--epochs", "2", "--jobs", "0", "--out", str(tmp_path)]) == 0
    rows = {r["method"]: r for r in read(tmp_path / "recovery_lg_tiny.csv")}
    assert list(rows) == ["sdlgm_default", "topk_ae_kmatched"]
    for method, row in rows.items():
        assert set(recovery.COLUMNS) <= set(row)
        undefined = {"recon_nats"} | ({"spearman_L", "spearman_L_amortized", "count_accuracy_amortized"}
                                      if method.startswith("topk") else set())
        for key in recovery.METRICS:
            assert math.isnan(float(row[key])) == (key in undefined), (method, key, row[key])
        assert 0 <= float(row["support_f1"]) <= 1 and int(row["epochs"]) == 2
    sdlgm, topk = rows["sdlgm_default"], rows["topk_ae_kmatched"]
    assert int(sdlgm["max_nnz"]) <= 3 and 1 <= float(sdlgm["mean_nnz"]) <= 3
    assert int(topk["k"]) == round(float(sdlgm["mean_nnz"])) and topk["form"] in recovery.TOPK_FORMS
    assert int(topk["max_nnz"]) <= int(topk["k"])
    if topk["form"] == "abs":  # signed top-k codes have exactly k non-zeros: both accuracies agree
        assert float(topk["count_accuracy"]) == float(topk["nnz_count_accuracy"])
    summary = read(tmp_path / "recovery_lg_tiny_summary.csv")
    assert [s["method"] for s in summary] == ["sdlgm_default", "topk_ae_kmatched"]
    assert {"explained_variance_mean", "explained_variance_std", "explained_variance_worst"} <= set(summary[0])

    assert recovery.main(["--settings", "bern_tiny", "--methods", "topk_ae_k2_relu", "oracle", "--seeds", "0",
                          "--epochs", "2", "--jobs", "0", "--out", str(tmp_path)]) == 0
    bern = {r["method"]: r for r in read(tmp_path / "recovery_bern_tiny.csv")}
    assert bern["topk_ae_k2_relu"]["form"] == "relu" and int(bern["topk_ae_k2_relu"]["max_nnz"]) <= 2
    assert float(bern["oracle"]["recon_nats"]) < float(bern["topk_ae_k2_relu"]["recon_nats"])


def test_rerun_replaces_its_row_and_keeps_the_others(tmp_path):
    def row(seed, ev, nnz):
        return {"setting": "lg_tiny", "kind": "linear_gaussian", "method": "m", "seed": seed, "data_seed": 0,
                "K": 6, "D": 12, "L0": 3, "k": "", "form": "", "epoch_budget": 2,
                **dict.fromkeys(recovery.METRICS, 0.5), "explained_variance": ev, "mean_nnz": nnz}

    for r in (row(0, 0.9, 2.0), row(1, 0.7, 2.5), row(0, 0.8, 3.0)):
        recovery.record(r, tmp_path, "lg_tiny")
    rows = read(tmp_path / "recovery_lg_tiny.csv")
    assert [(r["seed"], float(r["explained_variance"])) for r in rows] == [("0", 0.8), ("1", 0.7)]
    (summary,) = read(tmp_path / "recovery_lg_tiny_summary.csv")
    assert float(summary["explained_variance_mean"]) == pytest.approx(0.75)
    assert float(summary["explained_variance_worst"]) == pytest.approx(0.7)  # the lowest
    assert float(summary["mean_nnz_worst"]) == pytest.approx(3.0)  # the highest
    assert summary["n_seeds"] == "2"
    assert not list(tmp_path.glob("*.tmp"))


@pytest.mark.parametrize("values", ["gaussian", "laplace"])
def test_values_near_zero_keep_the_support_and_reach_small_magnitudes(values):
    X, S, L, params = data.linear_gaussian(2000, K=10, D=20, L0=4, noise=0.1, seed=0, values=values)
    magnitude = np.abs(params["Z"][S])
    np.testing.assert_array_equal(S.sum(1), L)
    assert (magnitude < 0.1).mean() > 0.05  # mass near zero, unlike the bounded values
    assert 0.8 < (params["Z"][S] ** 2).mean() < 1.2  # variance 1
    with pytest.raises(ValueError, match="unknown values 'uniform'"):
        data.linear_gaussian(10, K=10, D=20, L0=4, noise=0.1, seed=0, values="uniform")


def test_omp_oracle_finds_the_counts_of_bounded_values_at_low_noise():
    cfg = dict(kind="linear_gaussian", K=20, D=60, L0=4, noise=0.05, n_train=200, n_val=200, n_test=300)
    splits = data.make_splits(cfg, data_seed=0)
    row = recovery.score(recovery.fit_omp_oracle("omp_oracle", splits, cfg, {}), splits, cfg["kind"])
    assert row["spearman_L"] > 0.95 and row["support_f1"] > 0.95 and row["explained_variance"] > 0.99
    assert row["max_nnz"] <= 4
    with pytest.raises(ValueError, match="needs a linear_gaussian setting"):
        recovery.fit_omp_oracle("omp_oracle", {}, {"kind": "bernoulli"}, {})


def test_random_mlp_keeps_the_supports_and_is_not_linear_in_the_code():
    X, S, L, params = data.random_mlp(1500, K=10, D=20, L0=4, noise=0.01, seed=0)
    np.testing.assert_array_equal(S.sum(1), L)
    np.testing.assert_array_equal(params["Z"] != 0, S)
    assert "W" not in params  # no dictionary to recover
    np.testing.assert_allclose(X, np.tanh(params["Z"] @ params["A"]) @ params["B"], atol=0.06)
    # the best linear map of the code leaves far more than the noise unexplained
    design = np.c_[params["Z"], np.ones(len(X))]
    residual = X - design @ np.linalg.lstsq(design, X, rcond=None)[0]
    assert (residual ** 2).mean() > 25 * 0.01 ** 2
    np.testing.assert_array_equal(X, data.random_mlp(1500, K=10, D=20, L0=4, noise=0.01, seed=0)[0])


def test_the_bias_sets_the_density_of_bernoulli_data(monkeypatch):
    means = [data.bernoulli(2000, K=10, D=30, L0=4, seed=0, bias=b)[0].mean() for b in (-3.0, -2.0, -1.0)]
    assert means[0] < means[1] < means[2]
    monkeypatch.setitem(recovery.SETTINGS, "bern_bias_test", dict(recovery.SETTINGS["bern_tiny"], bias=-1.0))
    # the setting's bias reaches the generator
    dense = data.make_splits(recovery.setting_config("bern_bias_test"), 0)["train"][0].mean()
    assert dense > data.make_splits(recovery.setting_config("bern_tiny"), 0)["train"][0].mean()


def test_atom_cosine_is_one_for_the_true_atoms_up_to_order_sign_and_scale():
    rng = np.random.default_rng(0)
    W = rng.normal(size=(8, 30))
    learned = -3.0 * W[rng.permutation(8)]
    assert data.atom_cosine(learned, W) == pytest.approx(1.0)
    assert data.atom_cosine(np.vstack([learned, rng.normal(size=(4, 30))]), W) == pytest.approx(1.0)  # extra atoms
    assert data.atom_cosine(rng.normal(size=(8, 30)), W) < 0.6
    with_dead = learned.copy()
    with_dead[0] = 0.0  # a dead dimension matches nothing
    assert data.atom_cosine(with_dead, W) == pytest.approx(7 / 8)


def test_decoder_atoms_of_a_linear_decoder_are_its_weight_columns():
    from pyro_sdlgm import SDLGM

    model = SDLGM(input_dim=12, latent_dim=6, max_sparsity=3, likelihood="normal", decoder_hidden=[], seed=0)
    weight = model.model_.decoder.net[0].weight.detach().double().numpy()  # (D, K)
    np.testing.assert_allclose(recovery.decoder_atoms(model), weight.T, atol=1e-6)


def test_dict_omp_learns_the_dictionary_of_bounded_values_at_low_noise():
    cfg = dict(kind="linear_gaussian", K=10, D=40, L0=3, noise=0.05, n_train=1500, n_val=200, n_test=300)
    splits = data.make_splits(cfg, data_seed=0)
    row = recovery.score(recovery.fit_dict_omp("dict_omp", splits, cfg, {"batch_size": 128, "seed": 0}),
                         splits, cfg["kind"])
    assert row["atom_cosine"] > 0.9 and row["spearman_L"] > 0.8 and row["max_nnz"] <= 3
    with pytest.raises(ValueError, match="dict_omp needs a linear_gaussian setting"):
        recovery.fit_dict_omp("dict_omp", {}, {"kind": "random_mlp"}, {})
