"""Config files (TOML, YAML), dotted overrides, and errors that name the key."""

import pytest
from pyro_sdlgm import ConfigError, load_run_config
from pyro_sdlgm.config import TrainConfig, apply_overrides, from_dict, parse_override_value


def write(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text)
    return path


def test_toml_with_component_tables(tmp_path):
    path = write(tmp_path, "c.toml", """
run_dir = "runs/x"
[model]
latent_dim = 50
max_sparsity = 5
sparsity_prior = {name = "truncated_poisson", rate = 3.0}
decoder_hidden = [32, 64]
[training]
epochs = 3
learning_rate = 0.002
""")
    config = load_run_config(path)
    assert config.model.sparsity_prior == {"name": "truncated_poisson", "rate": 3.0}
    assert config.model.decoder_hidden == (32, 64)
    assert config.training.epochs == 3 and config.training.learning_rate == 0.002
    assert config.run_dir == "runs/x"


def test_yaml_equivalent(tmp_path):
    path = write(tmp_path, "c.yaml", "model:\n  latent_dim: 50\n  sparsity_prior: {name: learned}\ntraining:\n  patience: null\n")
    config = load_run_config(path)
    assert config.model.latent_dim == 50 and config.training.patience is None


def test_overrides_are_typed_and_promote_components(tmp_path):
    path = write(tmp_path, "c.toml", "[model]\nsparsity_prior = \"truncated_poisson\"\n")
    config = load_run_config(path, ["model.sparsity_prior.rate=2.5", "training.epochs=4", "data.source=digits",
                                    "training.patience=none", "model.decoder_hidden=[8, 8]"])
    assert config.model.sparsity_prior == {"name": "truncated_poisson", "rate": 2.5}
    assert config.training.epochs == 4 and config.training.patience is None
    assert config.data.source == "digits" and config.model.decoder_hidden == (8, 8)
    assert parse_override_value("true") is True and parse_override_value("mnist") == "mnist"


@pytest.mark.parametrize(
    "text, match",
    [
        ("[training]\nepoch = 3\n", "'training.epoch'.*in .*c.toml"),
        ("[model]\nlatent_dim = \"big\"\n", "model.latent_dim must be an integer"),
        ("[training]\nlearning_rate = -1.0\n", "training.learning_rate must be positive"),
        ("[training]\ntau_support_end = 0.0\n", "training.tau_support_end"),
        ("[model]\nmax_sparsity = 300\nlatent_dim = 200\n", "max_sparsity"),
        ("[model]\nmax_sparsity = 0\n", "max_sparsity"),
        ("[model]\nguide = \"nope\"\n", "unknown guide 'nope'"),
        ("bogus = 1\n", "unknown config key 'bogus'"),
        ("[model\n", "cannot parse TOML.*c.toml"),
        ("[data]\nbinarize = \"maybe\"\n", "data.binarize"),
    ],
)
def test_bad_configs_name_the_key(tmp_path, text, match):
    path = write(tmp_path, "c.toml", text)
    with pytest.raises(ConfigError, match=match):
        load_run_config(path)


def test_bad_override_and_file(tmp_path):
    with pytest.raises(ConfigError, match="dotted.key=value"):
        apply_overrides({}, ["training.epochs"])
    with pytest.raises(ConfigError, match="does not exist"):
        load_run_config(tmp_path / "missing.toml")
    with pytest.raises(ConfigError, match=".toml, .yaml or .yml"):
        load_run_config(write(tmp_path, "c.json", "{}"))
    with pytest.raises(ConfigError, match="cannot parse YAML"):
        load_run_config(write(tmp_path, "c.yaml", "model: [unclosed\n"))


def test_yaml_tags_are_not_executed(tmp_path):
    path = write(tmp_path, "c.yaml", "model: !!python/object/apply:os.system ['echo pwned']\n")
    with pytest.raises(ConfigError, match="cannot parse YAML"):
        load_run_config(path)


def test_from_dict_rejects_unknown_fit_options():
    with pytest.raises(ConfigError, match="'training.epoch'.*fit"):
        from_dict(TrainConfig, {"epoch": 3}, where=" passed to SDLGM.fit()")


def test_option_only_component_tables_keep_the_default_name(tmp_path):
    config = load_run_config(None, ["model.guide.hidden=[64]"])
    assert config.model.guide == {"name": "mlp_magnitude_slots", "hidden": [64]}  # the default guide


@pytest.mark.parametrize("override, match", [
    ("training.seed=-1", "training.seed"), ("data.split_seed=-2", "data.split_seed"),
    ("training.device='cuda:x'", "training.device"),
])
def test_more_bad_values(override, match):
    with pytest.raises(ConfigError, match=match):
        load_run_config(None, [override])


def test_non_string_yaml_key(tmp_path):
    path = write(tmp_path, "c.yaml", "model:\n  1: 2\n")
    with pytest.raises(ConfigError, match="unknown config key 'model.1'"):
        load_run_config(path)


def test_every_config_field_has_a_docstring():
    import ast
    import inspect

    import pyro_sdlgm.config as config

    tree = ast.parse(inspect.getsource(config))
    sections = [node for node in tree.body if isinstance(node, ast.ClassDef)
                and node.name in ("TrainConfig", "DataConfig", "MultiLabelDataConfig")]
    import pyro_sdlgm.app.run_config as run_config

    tree = ast.parse(inspect.getsource(run_config))
    sections += [node for node in tree.body if isinstance(node, ast.ClassDef) and node.name == "RunConfig"]
    assert len(sections) == 4
    missing = []
    for section in sections:
        body = section.body
        for index, node in enumerate(body):
            if isinstance(node, ast.AnnAssign) and "ClassVar" not in ast.unparse(node.annotation):
                following = body[index + 1] if index + 1 < len(body) else None
                if not (isinstance(following, ast.Expr) and isinstance(following.value, ast.Constant)
                        and isinstance(following.value.value, str)):
                    missing.append(f"{section.name}.{node.target.id}")
    assert not missing


@pytest.mark.parametrize("name", ["SDLGM", "SDLGMClassifier"])
def test_every_estimator_option_is_documented_and_is_its_config_field(name):
    import dataclasses
    import re

    import pyro_sdlgm
    from pyro_sdlgm.estimators.base import own_options

    estimator = getattr(pyro_sdlgm, name)
    args = estimator.__doc__.split("Args:")[1]
    documented = {part.strip() for entry in re.findall(r"^ {8}([\w, *]+):", args, re.M) for part in entry.split(",")}
    assert set(own_options(estimator)) <= documented
    assert "**training" in documented
    section = pyro_sdlgm.ModelConfig if name == "SDLGM" else pyro_sdlgm.ClassifierConfig
    defaults = {f.name: f.default for f in dataclasses.fields(section)}
    assert defaults == {p: estimator().get_params()[p] for p in own_options(estimator)}


def test_an_option_outside_its_literal_is_named_with_the_options():
    from pyro_sdlgm import ConfigError, ModelConfig, TrainConfig

    with pytest.raises(ConfigError, match=r"training.nan_policy must be one of \('stop', 'skip_batch'\), got 'retry'"):
        TrainConfig(nan_policy="retry")
    with pytest.raises(ConfigError, match=r"model.count_estimate must be one of \('amortized', 'refined'\), got 3"):
        ModelConfig(count_estimate=3)
