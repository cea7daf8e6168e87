"""The option reference is derived from the declarations, and the committed page is current."""

import dataclasses
import subprocess
import sys
from pathlib import Path

import pytest
from pyro_sdlgm import SDLGM, SDLGMClassifier
from pyro_sdlgm.app import option_docs
from pyro_sdlgm.app.cli import main
from pyro_sdlgm.exceptions import UnknownComponentError
from pyro_sdlgm.config import ModelOptions, TrainConfig, own_options
from pyro_sdlgm.model.priors import SPARSITY_PRIORS, SparsityPrior

PAGE = Path(__file__).resolve().parents[2] / "docs" / "options.md"


def test_the_committed_page_is_the_generated_one():
    # a fresh process: other tests register components of their own in this one
    generated = subprocess.run([sys.executable, "-m", "pyro_sdlgm.app.option_docs"], capture_output=True, text=True,
                               check=True, timeout=120).stdout
    assert PAGE.read_text(encoding="utf-8") == generated, (
        "docs/options.md is stale: run `python -m pyro_sdlgm.app.option_docs --write docs/options.md`")


@pytest.mark.parametrize("estimator", [SDLGM, SDLGMClassifier])
def test_every_constructor_option_has_its_own_args_entry(estimator):
    entries = option_docs.args_entries(estimator.__doc__)
    assert set(own_options(estimator)) <= set(entries)
    assert len({entries[name] for name in own_options(estimator)}) == len(own_options(estimator)), \
        "two options share one description"


def test_every_option_and_training_field_is_listed_with_its_default():
    page = option_docs.reference()
    for name in own_options(SDLGM):
        default = option_docs._value(SDLGM().get_params()[name])
        assert f"**`{name}`** (" in page and f"default `{default}`" in page
    for field in dataclasses.fields(TrainConfig):
        assert f"**`{field.name}`** (`" in page


def test_a_mode_lists_its_literal_values_and_a_component_option_its_registry():
    items = {item.split("`")[1]: item for item in option_docs.section("model")}
    assert "Values: `'amortized'`, `'refined'`." in items["count_estimate"]
    for component in SPARSITY_PRIORS.names():
        assert f"  - `{component}`" in items["sparsity_prior"]
    assert "`truncated_poisson` (options: rate=3.0)" in items["sparsity_prior"]
    assert set(ModelOptions.registries) < set(items)


def test_a_missing_args_entry_is_an_error_naming_the_option():
    class Undocumented(SDLGM):
        """Args:
            latent_dim: the width.
        """

    with pytest.raises(ValueError, match="no Args entry for 'input_dim'"):
        option_docs.estimator_section(Undocumented, ModelOptions)


def test_args_entries_joins_continuation_lines_and_shared_names():
    doc = """Summary.

    Args:
        a, b: first line
            second line.
        c: other.

    Example::

        d: not an entry
    """
    assert option_docs.args_entries(doc) == {"a": "first line second line.", "b": "first line second line.",
                                             "c": "other."}


def test_sdlgm_options_lists_a_plugins_component(tmp_path, capsys, monkeypatch):
    plugin = tmp_path / "two_point_plugin.py"
    plugin.write_text(
        "from pyro_sdlgm import SparsityPrior, register_sparsity_prior\n"
        "@register_sparsity_prior('two_point_listed')\n"
        "class TwoPoint(SparsityPrior):\n"
        "    '''Mass on the first and the last level.'''\n"
        "    def __init__(self, spec, mass_on_one: float = 0.5):\n"
        "        super().__init__(spec)\n"
        "    def logits(self):\n"
        "        raise NotImplementedError\n")
    monkeypatch.setattr(SPARSITY_PRIORS, "_factories", dict(SPARSITY_PRIORS._factories))  # unregistered after
    assert main(["options", "model", "--plugin", str(plugin)]) == 0
    out = capsys.readouterr().out
    assert "`two_point_listed` (options: mass_on_one=0.5): Mass on the first and the last level." in out
    assert "[training]" not in out and "**`latent_dim`**" in out


def test_a_classifiers_slot_layout_may_be_auto_but_not_an_unknown_name():
    assert SDLGMClassifier(slot_layout="auto").config.slot_layout == "auto"  # the spec resolves it
    with pytest.raises(UnknownComponentError, match="unknown slot layout 'tiled'"):
        SDLGMClassifier(slot_layout="tiled").config
