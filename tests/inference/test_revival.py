"""Dead-dimension revival (``pyro_sdlgm.inference.revival``, ``TrainConfig.revive_every``)."""

import numpy as np
import pytest
import torch

from pyro_sdlgm import SDLGM, CheckpointError, ConfigError
from pyro_sdlgm import ModelConfig
from pyro_sdlgm.config import TrainConfig
from pyro_sdlgm.inference import revival
from pyro_sdlgm.inference.revival import (
    DEAD_FRACTION,
    OVERLOADED_FRACTION,
    _copy,
    _split,
    _slices,
    check_revivable,
    dimension_usage,
    duplicate_dimensions,
    revive_dead_dimensions,
    split_pairs,
)
from pyro_sdlgm.estimators.sdlgm import build_model_and_guide


def test_split_pairs_match_the_least_used_with_the_most_used():
    usage = torch.tensor([0.10, 0.01, 0.30, 0.00, 0.12, 0.25, 0.02, 0.10])  # mean 0.1125
    # dead: below 0.25 * mean = 0.028 -> 3 (0.00), 1 (0.01), 6 (0.02); overloaded: above 1.5 * mean -> 2, 5
    assert split_pairs(usage) == [(3, 2), (1, 5)]
    assert DEAD_FRACTION == 0.25 and OVERLOADED_FRACTION == 1.5


def test_no_pairs_when_usage_is_even():
    assert split_pairs(torch.full((10,), 0.2)) == []


@pytest.mark.parametrize("guide,binary,skip", [("mlp_magnitude_slots", False, False), ("mlp_per_slot", False, False),
                                               ("mlp_shared_slots", True, False), ("mlp_magnitude_slots", True, False),
                                               ("mlp_magnitude_slots", False, True)])
def test_copy_gives_the_dead_dimension_the_donor_parameters_and_moments(guide, binary, skip):
    torch.manual_seed(0)
    model, g = build_model_and_guide(ModelConfig(input_dim=5, latent_dim=6, max_sparsity=2, guide=guide, binary=binary,
                                                 likelihood="normal", decoder_skip=skip))
    assert len(model.decoder.code_weights()) == 1 + skip
    assert {id(p) for p, _ in _slices(model, g, 2)} >= {id(w) for w in model.decoder.code_weights()}
    params = list(model.parameters()) + list(g.parameters())
    optimizer = torch.optim.Adam(params, lr=1e-3)
    sum(p.sum() for p in params).backward()
    optimizer.step()
    for p in params:  # distinct values and moments per entry
        p.data.normal_()
        for moment in ("exp_avg", "exp_avg_sq"):
            optimizer.state[p][moment].copy_(torch.rand(p.shape))
    untouched = [(param, index, param[index].detach().clone()) for param, index in _slices(model, g, 2)]
    _copy(model, g, dead=4, donor=1, optimizer=optimizer, generator=torch.Generator().manual_seed(0))
    for (param, dst), (_, src) in zip(_slices(model, g, 4), _slices(model, g, 1)):
        if any(param is weight for weight in model.decoder.code_weights()):
            torch.testing.assert_close(param[dst], param[src])
        else:  # noisy copies: close, not equal
            assert not torch.equal(param[dst], param[src])
            assert (param[dst] - param[src]).abs().max() < 0.5 * param.std()
        for moment in ("exp_avg", "exp_avg_sq"):
            torch.testing.assert_close(optimizer.state[param][moment][dst], optimizer.state[param][moment][src])
    for param, index, value in untouched:  # another dimension keeps its parameters
        torch.testing.assert_close(param[index], value)


def test_revival_is_seeded_and_returns_the_number_of_pairs():
    def run(seed, strategy="copy"):
        torch.manual_seed(0)
        # decoder_skip=False: the initialization this scenario was written for (7 the only unused dimension)
        model, guide = build_model_and_guide(ModelConfig(input_dim=5, latent_dim=8, max_sparsity=3,
                                                         likelihood="normal", binary=False, decoder_skip=False))
        with torch.no_grad():  # dimension 0 always chosen, dimension 7 never
            guide.offset[0] = 50.0
            guide.offset[7] = -50.0
        optimizer = torch.optim.Adam(list(model.parameters()) + list(guide.parameters()))
        x = torch.randn(300, 5, generator=torch.Generator().manual_seed(1))
        usage = dimension_usage(guide, x)
        count = revive_dead_dimensions(model, guide, x, optimizer, seed=seed, strategy=strategy)
        return usage, count, guide.offset.detach().clone()

    usage, count, offset = run(3)
    assert usage[0] == 1.0 and usage[7] == 0.0
    assert count >= 1
    assert offset[7] > 40  # dimension 7 took the donor's (dimension 0's) offset
    torch.testing.assert_close(run(3)[2], offset)
    assert not torch.equal(run(4)[2], offset)  # the copies' noise follows the seed
    torch.testing.assert_close(run(3, "split")[2], run(4, "split")[2])  # no noise: the split is the data's


def test_check_revivable_names_the_networks():
    class Other(torch.nn.Module):
        pass

    with pytest.raises(ConfigError, match="revive_every is for the unsupervised SDLGM.*Other"):
        check_revivable(Other(), Other())


@pytest.mark.parametrize("value", [-1, 1.5, True, "10"])
def test_revive_every_must_be_auto_or_a_non_negative_integer(value):
    with pytest.raises(ConfigError, match="training.revive_every"):
        TrainConfig(revive_every=value).validate()


def test_fit_revives_only_while_the_schedules_run():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(400, 10)).astype("float32")
    model = SDLGM(input_dim=10, latent_dim=16, max_sparsity=3, likelihood="normal", decoder_hidden=[])
    history = model.fit(x, epochs=10, batch_size=100, seed=0, progress=False, revive_every=2, patience=None).history_
    # the schedules end after half of the steps (anneal_fraction 0.5): epochs 2 and 4 (1-based) are inside
    revived = [i for i, r in enumerate(history) if "revived_dims" in r]
    assert revived == [1, 3]
    assert all(isinstance(history[i]["revived_dims"], int) for i in revived)
    assert all(np.isfinite(r["train_loss"]) for r in history)


def test_the_classifier_refuses_revival():
    from pyro_sdlgm import SDLGMClassifier

    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(60, 4)).astype("float32"), (rng.random((60, 3)) > 0.6).astype("float32")
    with pytest.raises(ConfigError, match="revive_every is for the unsupervised SDLGM.*ObservedSupportGuide"):
        SDLGMClassifier(num_labels=3, max_labels=3).fit(x, y, epochs=1, revive_every=1, progress=False)


@pytest.mark.parametrize("strategy", ["split", "copy"])
def test_split_shares_the_donor_rows_between_the_two_copies(strategy):
    """One slot (L0 = 1), dimension 0 in every code, the others in none: after the split the rows are
    divided between dimension 0 and its copy along their principal trunk direction; noisy copies
    leave nearly all rows to one of the two."""
    torch.manual_seed(0)
    model, guide = build_model_and_guide(ModelConfig(input_dim=6, latent_dim=6, max_sparsity=1,
                                                     guide="mlp_shared_slots", binary=True))
    with torch.no_grad():
        guide.encoder.slot_head.bias[0] = 8.0
        guide.encoder.slot_head.bias[5] = -8.0
    x = (torch.rand(500, 6, generator=torch.Generator().manual_seed(2)) > 0.5).float()
    optimizer = torch.optim.Adam(list(model.parameters()) + list(guide.parameters()))
    assert revive_dead_dimensions(model, guide, x, optimizer, seed=0, strategy=strategy) >= 1
    usage = dimension_usage(guide, x)
    copy = usage[1:].max()
    if strategy == "split":
        assert usage[0] > 0.2 and copy > 0.2, usage
    else:
        assert max(usage[0], copy) > 0.9, usage


def test_unknown_revival_strategy_is_refused():
    with pytest.raises(ConfigError, match="training.revive must be one of .*'split'.*got 'clone'"):
        TrainConfig(revive="clone").validate()


SMALL = dict(latent_dim=8, max_sparsity=3, decoder_hidden=(16,), guide={"name": "mlp_per_slot", "hidden": [16]})
QUICK = dict(batch_size=32, learning_rate=1e-2, progress=False, seed=0, patience=None)


def test_auto_revives_every_ten_epochs_while_the_schedules_run(binary_data):
    history = SDLGM(input_dim=12, **SMALL).fit(binary_data, epochs=44, **QUICK).history_
    # the schedules end at half of the steps (22 epochs): epochs 10 and 20 (1-based) are inside
    assert [i for i, r in enumerate(history) if "revived_dims" in r] == [9, 19]
    assert all("revived_dims" not in r for r in SDLGM(input_dim=12, **SMALL).fit(
        binary_data, epochs=44, revive_every=0, **QUICK).history_)


def test_a_checkpoint_from_before_revival_is_refused_naming_its_format_version(binary_data, tmp_path):
    """pyro_sdlgm 0.1 wrote training checkpoints without the revival options (format version 1)."""
    from pyro_sdlgm.inference.checkpoint import list_checkpoints

    options = dict(epochs=6, checkpoint_every=3, **QUICK)
    SDLGM(input_dim=12, **SMALL).fit(binary_data, run_dir=tmp_path, revive_every=0, **options)
    for _, path in list_checkpoints(tmp_path / "checkpoints"):
        data = torch.load(path, weights_only=True)
        for key in ("revive_every", "revive"):
            data["train_config"].pop(key)
        data.pop("revive_every_resolved")
        data["format_version"] = 1
        torch.save(data, path)
    with pytest.raises(CheckpointError, match=r"format version 1; this version of pyro_sdlgm reads version 2; "
                                              r"it was written by pyro_sdlgm 0\.1\.0"):
        SDLGM(input_dim=12, **SMALL).fit(binary_data, run_dir=tmp_path, resume=True, **options)


def test_a_resumed_run_revives_as_the_uninterrupted_one(binary_data, tmp_path):
    from pyro_sdlgm.inference.checkpoint import list_checkpoints

    options = dict(epochs=24, checkpoint_every=3, keep_checkpoints=20, revive_every=2, **QUICK)
    full = SDLGM(input_dim=12, **SMALL).fit(binary_data, run_dir=tmp_path, **options).history_
    assert sum(r.get("revived_dims", 0) for r in full) > 0
    for epoch, path in list_checkpoints(tmp_path / "checkpoints"):
        if epoch > 5:
            path.unlink()
    resumed = SDLGM(input_dim=12, **SMALL).fit(binary_data, run_dir=tmp_path, resume=True, **options).history_
    assert [r["train_loss"] for r in resumed] == [r["train_loss"] for r in full]
    assert [r.get("revived_dims") for r in resumed] == [r.get("revived_dims") for r in full]


def test_a_learned_support_prior_follows_the_copy():
    model, guide = build_model_and_guide(ModelConfig(input_dim=5, latent_dim=6, max_sparsity=2, likelihood="normal",
                                                     support_prior="learned", binary=False))
    with torch.no_grad():
        model.support_prior.prior_logits.copy_(torch.arange(6.0))
    _copy(model, guide, dead=4, donor=1, optimizer=torch.optim.Adam(guide.parameters()), generator=None)
    assert model.support_prior.prior_logits[4] == 1.0


def test_split_leaves_alike_rows_alone_and_moves_only_what_selects():
    torch.manual_seed(0)
    model, guide = build_model_and_guide(ModelConfig(input_dim=5, latent_dim=6, max_sparsity=2, likelihood="normal",
                                                     guide="mlp_per_slot", binary=False))
    before = {name: p.detach().clone() for name, p in guide.named_parameters()}
    _split(model, guide, dead=4, donor=1, x_donor=torch.ones(50, 5))  # identical rows: no direction to split along
    assert all(torch.equal(p, before[name]) for name, p in guide.named_parameters())
    _split(model, guide, dead=4, donor=1, x_donor=torch.randn(50, 5))
    value_head = guide.encoder.value_head
    assert torch.equal(value_head.weight, before["encoder.value_head.weight"])  # per-slot: the slot head selects
    assert not torch.equal(guide.encoder.slot_head.weight, before["encoder.slot_head.weight"])


def test_revival_takes_numpy_rows():
    torch.manual_seed(0)
    model, guide = build_model_and_guide(ModelConfig(input_dim=5, latent_dim=8, max_sparsity=3, likelihood="normal",
                                                     binary=False))
    with torch.no_grad():
        guide.offset[0], guide.offset[7] = 50.0, -50.0
    x = np.random.default_rng(0).normal(size=(200, 5))  # float64 numpy, as Trainer.fit takes them
    assert revive_dead_dimensions(model, guide, x, torch.optim.Adam(guide.parameters()), seed=0) >= 1


def test_a_run_resumed_twice_equals_the_uninterrupted_one(binary_data, tmp_path):
    from pyro_sdlgm.inference.checkpoint import list_checkpoints

    options = dict(epochs=24, checkpoint_every=3, keep_checkpoints=20, revive_every="auto", **QUICK)
    full = SDLGM(input_dim=12, **SMALL).fit(binary_data, run_dir=tmp_path, **options).history_
    for epoch, path in list_checkpoints(tmp_path / "checkpoints"):
        if epoch > 3:  # interrupted after epoch 3
            path.unlink()
    SDLGM(input_dim=12, **SMALL).fit(binary_data, run_dir=tmp_path, resume=True, **options)
    for epoch, path in list_checkpoints(tmp_path / "checkpoints"):
        if epoch > 9:  # interrupted again after epoch 9, from a checkpoint the resumed run wrote
            path.unlink()
    again = SDLGM(input_dim=12, **SMALL).fit(binary_data, run_dir=tmp_path, resume=True, **options).history_
    assert [r["train_loss"] for r in again] == [r["train_loss"] for r in full]


def test_duplicates_are_the_less_used_of_dimensions_the_decoder_reads_alike(monkeypatch):
    torch.manual_seed(0)
    model, _ = build_model_and_guide(ModelConfig(input_dim=30, latent_dim=6, max_sparsity=2, likelihood="normal",
                                                 decoder_hidden=(), decoder_skip=False))
    weight = model.decoder.code_weights()[0]
    with torch.no_grad():
        weight[:, 4] = -2.0 * weight[:, 1]  # the same direction, another sign and scale
        weight[:, 5] = weight[:, 2] + 0.01 * torch.randn(30)  # nearly the same
    usage = torch.tensor([0.10, 0.05, 0.20, 0.10, 0.08, 0.20])
    assert duplicate_dimensions(model, usage) == {1, 5}  # 1 is less used than 4; 5 ties with 2, higher index
    # duplicates join the dead dimensions, least used first; the donors are above 1.5 times the
    # mean usage (0.1217): 2 and 5, most used first (a tie: the lower index)
    assert split_pairs(usage, {1}) == [(1, 2)]
    assert split_pairs(usage, {1, 5}) == [(1, 2)]  # a dead dimension never donates
    assert split_pairs(usage) == []  # no dimension is below a quarter of the mean
    monkeypatch.setattr(revival, "DUPLICATE_CHUNK", 4)  # chunks that split the pairs: the same answer
    assert duplicate_dimensions(model, usage) == {1, 5}
