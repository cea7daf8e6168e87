"""Configuration: typed dataclasses, strict parsing of TOML/YAML files and dotted overrides.

The sections of a run config (``[model]`` and ``[classifier]`` are derived from the estimators'
constructors, see :func:`options_dataclass`; the whole file is read by
:func:`pyro_sdlgm.app.run_config.load_run_config`)::

    run_dir = "runs/mnist"
    plugins = ["my_priors"]   # optional: modules that register components (pyro_sdlgm.plugins)
    [model]      # ModelConfig: sizes, likelihood, priors, guide, inference mode
    [training]   # TrainConfig: epochs, batch size, schedules, early stopping, device
    [data]       # DataConfig: which data set, preprocessing, test split

Files are read with safe parsers only (``tomllib``, ``yaml.safe_load``). Every key is
checked: an unknown key or a value of the wrong type raises :class:`ConfigError` naming
the key (and the file).
"""

from __future__ import annotations

import dataclasses
import importlib
import inspect
import math
import numbers
import re
import tomllib
import types
import typing
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal, Union, get_args

import yaml

from pyro_sdlgm.model.distributions import check_temperature
from pyro_sdlgm.exceptions import ConfigError
from pyro_sdlgm.model.registry import ComponentSpec, component_name

# the options of the config's string fields; each Literal is its field's type
NanPolicy = Literal["stop", "skip_batch"]
RevivalStrategy = Literal["split", "copy"]  # see pyro_sdlgm.inference.revival
PyroValidation = Literal["epoch_start", "always"]
MemoryCheck = Literal["available", "off"]
MultiLabelFormat = Literal["yeast", "arff", "xmc", "svmlight"]

# ----------------------------------------------------------------------------- typing helpers


def _coerce(hint: Any, value: Any, key: str) -> Any:
    """Check ``value`` against the type ``hint`` and normalize it (lists to tuples, ints to floats)."""
    origin = typing.get_origin(hint)
    if origin in (Union, types.UnionType):
        errors = []
        members = typing.get_args(hint)
        # try exact matches first so that e.g. True stays a bool in `bool | str`
        for member in members:
            try:
                return _coerce(member, value, key)
            except ConfigError as err:
                errors.append(str(err))
        expected = " or ".join(_type_name(m) for m in members)
        raise ConfigError(f"{key} must be {expected}, got {value!r}")
    if origin is Literal:
        options = typing.get_args(hint)
        if isinstance(value, str) and value in options:
            return value
        raise ConfigError(f"{key} must be one of {options}, got {value!r}")
    if hint is type(None):
        if value is None:
            return None
        raise ConfigError(f"{key} must be None, got {value!r}")
    if hint is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{key} must be true or false, got {value!r}")
    if hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ConfigError(f"{key} must be an integer, got {value!r}")
    if hint is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            if not math.isfinite(value):
                raise ConfigError(f"{key} must be finite, got {value!r}")
            return float(value)
        raise ConfigError(f"{key} must be a number, got {value!r}")
    if hint is str:
        if isinstance(value, str):
            return value
        raise ConfigError(f"{key} must be a string, got {value!r}")
    if origin is tuple:
        (item,) = [a for a in typing.get_args(hint) if a is not Ellipsis]
        if isinstance(value, Sequence) and not isinstance(value, str):
            return tuple(_coerce(item, v, f"{key}[{i}]") for i, v in enumerate(value))
        raise ConfigError(f"{key} must be a list, got {value!r}")
    if origin in (Mapping, dict) or hint in (Mapping, dict):
        if isinstance(value, Mapping):
            return dict(value)
        raise ConfigError(f"{key} must be a table, got {value!r}")
    raise TypeError(f"unsupported config type {hint!r} for {key}")  # a bug in this module


def _type_name(hint: Any) -> str:
    if hint is type(None):
        return "none"
    origin = typing.get_origin(hint)
    if origin is tuple:
        return "a list"
    if origin in (Mapping, dict):
        return "a table"
    if origin is Literal:
        return "one of " + ", ".join(repr(option) for option in typing.get_args(hint))
    return getattr(hint, "__name__", str(hint))


class _Section:
    """Mixin for config dataclasses: type-checks every field, then calls :meth:`validate`."""

    section: typing.ClassVar[str] = ""

    def __post_init__(self):
        hints = typing.get_type_hints(type(self))
        for field in dataclasses.fields(self):
            key = f"{self.section}.{field.name}" if self.section else field.name
            setattr(self, field.name, _coerce(hints[field.name], getattr(self, field.name), key))
        self.validate()

    def validate(self) -> None:
        """Check value ranges; raise :class:`ConfigError` naming the key."""

    def to_dict(self) -> dict[str, Any]:
        return _plain(dataclasses.asdict(self))


def _plain(value):
    """Tuples to lists, recursively (for TOML/YAML/JSON and ``torch.save``)."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def from_dict(cls, data: Mapping[str, Any] | None, where: str = ""):
    """Build the dataclass ``cls`` from a mapping, rejecting unknown keys by name."""
    data = dict(data or {})
    names = [f.name for f in dataclasses.fields(cls)]
    for field in dataclasses.fields(cls):
        value = data.get(field.name)
        # a component table holding only options (e.g. from model.guide.hidden=[64]) keeps the default name
        if isinstance(value, Mapping) and "name" not in value and isinstance(field.default, str):
            data[field.name] = {"name": field.default, **value}
    unknown = [k for k in data if k not in names]
    if unknown:
        prefix = f"{cls.section}." if cls.section else ""
        raise ConfigError(
            f"unknown config key {f'{prefix}{unknown[0]}'!r}{where}; known keys"
            f"{' in [' + cls.section + ']' if cls.section else ''}: {', '.join(names)}"
        )
    return cls(**data)


# ----------------------------------------------------------------------------- sections


class ModelOptions(_Section):
    """What :data:`ModelConfig` (the ``[model]`` section) does with its fields; the fields
    themselves are the parameters of :class:`pyro_sdlgm.SDLGM` (see :func:`options_dataclass`)."""

    section: typing.ClassVar[str] = "model"

    #: the registry of each option that names a component (its ``module.NAME``): read by
    #: :meth:`validate` and by the option reference (:mod:`pyro_sdlgm.app.option_docs`)
    registries: typing.ClassVar[dict[str, str]] = {
        "likelihood": "pyro_sdlgm.model.likelihoods.LIKELIHOODS",
        "sparsity_prior": "pyro_sdlgm.model.priors.SPARSITY_PRIORS",
        "support_prior": "pyro_sdlgm.model.priors.SUPPORT_PRIORS",
        "value_prior": "pyro_sdlgm.model.priors.VALUE_PRIORS",
        "guide": "pyro_sdlgm.model.guides.GUIDES",
        "slot_layout": "pyro_sdlgm.model.support_steps.SUPPORT_STEPS",
        "slot_estimator": "pyro_sdlgm.model.slot_estimators.SLOT_ESTIMATORS",
    }

    def validate(self):
        check_components(self)
        if self.input_dim is not None and self.input_dim < 1:
            raise ConfigError(f"model.input_dim must be a positive integer or none, got {self.input_dim}")
        self._spec(1 if self.input_dim is None else self.input_dim)  # checks sizes and modes

    def binary_codes(self) -> bool:
        """Whether codes are binary: ``binary``, or with ``"auto"`` whether the likelihood is
        Bernoulli (measured on MNIST-5k and digits: experiments/NOTES.md)."""
        if self.binary == "auto":
            return component_name(self.likelihood, "likelihood")[0] == "bernoulli"
        return self.binary

    def decoder_linear_part(self) -> bool:
        """Whether the decoder has an explicit linear part: ``decoder_skip``, or with ``"auto"``
        whether it has hidden layers and at most ``WIDE_LATENT_DIM`` dimensions (measured on the
        recovery benchmark, MNIST-5k and digits: experiments/NOTES.md)."""
        from pyro_sdlgm.model.spec import WIDE_LATENT_DIM

        if self.decoder_skip == "auto":
            return len(self.decoder_hidden) > 0 and self.latent_dim <= WIDE_LATENT_DIM
        return self.decoder_skip

    def spec(self):
        """The :class:`~pyro_sdlgm.model.spec.ModelSpec` of this config (``input_dim`` must be set)."""
        if self.input_dim is None:
            raise ConfigError("model.input_dim is not set")
        return self._spec(self.input_dim)

    def _spec(self, input_dim: int):
        from pyro_sdlgm.model.spec import ModelSpec

        return ModelSpec.from_options(input_dim, self.latent_dim, self.max_sparsity, include_zero=self.include_zero,
                                      binary=self.binary_codes(), options=dataclasses.asdict(self))


@dataclasses.dataclass
class TrainConfig(_Section):
    """Options of :meth:`pyro_sdlgm.SDLGM.fit` and of the ``[training]`` config section.

    Temperatures anneal exponentially from ``*_start`` to ``*_end`` over the first
    ``anneal_fraction`` of the training steps, then stay at ``*_end``. The KL weight
    rises linearly from 0 to 1 over the first ``kl_warmup_fraction`` of the steps
    (0 disables the warm-up). The validation ELBO, used for early stopping, is always
    computed at the final temperatures with KL weight 1, so it is one fixed objective
    across epochs; early stopping (and the choice of the best epoch) only starts once
    annealing and warm-up are over, since before that the trained objective differs.

    With a run folder, a checkpoint is written every ``checkpoint_every`` epochs and at
    the end (the newest ``keep_checkpoints`` are kept), from which ``resume`` continues.
    ``nan_policy="stop"`` ends training with :class:`NumericalError` at the first
    non-finite loss or gradient; ``"skip_batch"`` skips that batch's update and counts it
    (``skipped_batches`` in the history), stopping only when a whole epoch is skipped.

    ``num_threads`` sets torch's CPU threads for the fit (then restores them); on a busy
    machine 1 can be several times faster than torch's default of one per core.

    ``pyro_validation="epoch_start"`` (the default) lets Pyro's validation (on unless
    ``pyro.enable_validation(False)``) check the first training step of each epoch and
    the validation passes; the other steps run without it. The trainer checks every
    step's loss and gradients and every epoch's parameters itself, and ``fit`` checks all
    the data against the likelihood's support before training (``Likelihood.check_data``),
    so what Pyro would check again is mostly the distributions' parameters. A custom
    likelihood without its own ``check_data``, or a :class:`~pyro_sdlgm.inference.trainer.Trainer`
    used directly on unchecked data, has its observed values checked in each epoch's
    first batch only: use ``"always"`` there. It changes no number (the draws and the
    losses are bit-identical) and makes a default step about 10% faster. ``"always"``
    validates every step.

    ``revive_every = N > 0`` splits overloaded dimensions into dead ones after every ``N``-th
    epoch while the temperatures anneal and the KL weight warms up
    (:mod:`pyro_sdlgm.inference.revival`; unsupervised SDLGM with an MLP guide, one process); the epochs'
    records then carry ``revived_dims``. ``"auto"`` (the default, chosen by measurement:
    ``experiments/NOTES.md``) is every 10 epochs where revival applies and never elsewhere (the
    multi-label classifier, other guides, data-parallel runs). ``revive="split"`` moves the two copies' guide rows
    apart along the principal direction of the donor's rows; ``"copy"`` only adds noise.
    """

    section: typing.ClassVar[str] = "training"

    epochs: int = 100
    """The most passes over the training rows (early stopping usually ends sooner)."""
    batch_size: int = 128
    """Rows per training step."""
    learning_rate: float = 1e-3
    """Adam's learning rate."""
    seed: int = 0
    """Seeds the initialization, the draws, the batch order and the validation hold-out."""
    device: str = "auto"
    """``"auto"`` (CUDA when available), ``"cpu"``, ``"cuda"`` or ``"cuda:N"``."""
    tau_sparsity_start: float = 1.0
    """The count's Concrete temperature at the first step."""
    tau_sparsity_end: float = 0.5
    """The count's temperature after annealing (and for validation)."""
    tau_support_start: float = 1.0
    """The slots' Concrete temperature at the first step."""
    tau_support_end: float = 0.5
    """The slots' temperature after annealing (and for validation)."""
    anneal_fraction: float = 0.5
    """The fraction of the steps over which the temperatures anneal exponentially."""
    kl_warmup_fraction: float = 0.3
    """The fraction of the steps over which the KL weight rises from 0 to 1 (0: no warm-up)."""
    num_particles: int = 1
    """Monte-Carlo samples of the ELBO per step."""
    validation_fraction: float = 0.1
    """The seeded fraction of the rows held out when no validation data is given; 0 disables."""
    patience: int | None = 10
    """Epochs without validation improvement before stopping; None disables early stopping."""
    grad_clip_norm: float | None = None
    """Clip the gradient to this norm; None: no clipping."""
    eval_batch_size: int = 1024
    """Rows per batch of the validation passes."""
    progress: bool = True
    """A progress bar over the epochs."""
    checkpoint_every: int = 1
    """Epochs between checkpoints in ``run_dir/checkpoints``; 0: only at the end."""
    keep_checkpoints: int = 3
    """The newest checkpoints kept on disk."""
    nan_policy: NanPolicy = "stop"
    """What a non-finite loss or gradient does: stop with ``NumericalError``, or skip the batch."""
    memory_limit_gb: float | MemoryCheck = "available"
    """Refuse a configuration whose estimated memory exceeds this limit: a number of GiB,
    ``"available"`` (the memory the device reports free) or ``"off"`` (no check)."""
    pyro_validation: PyroValidation = "epoch_start"
    """Which training steps Pyro validates: each epoch's first, or all."""
    num_threads: int | None = None
    """torch's CPU threads while training; None: torch's default (one per core)."""
    revive_every: int | str = "auto"
    """Epochs between dead-dimension revivals while the schedules run; 0: never; ``"auto"``: as the class says."""
    revive: RevivalStrategy = "split"
    """How a dead dimension takes over half of an overloaded one (``"split"`` or ``"copy"``)."""
    revive_duplicates: bool = False
    """Whether revival also takes the less used of two dimensions the decoder reads alike (``|cos|``
    of their decoder columns at least 0.9) as dead."""

    def validate(self):
        for key in ("epochs", "batch_size", "num_particles", "eval_batch_size"):
            if getattr(self, key) < 1:
                raise ConfigError(f"training.{key} must be >= 1, got {getattr(self, key)}")
        if self.learning_rate <= 0:
            raise ConfigError(f"training.learning_rate must be positive, got {self.learning_rate}")
        for key in ("tau_sparsity_start", "tau_sparsity_end", "tau_support_start", "tau_support_end"):
            check_temperature(getattr(self, key), f"training.{key}")
        for key in ("anneal_fraction", "kl_warmup_fraction"):
            if not 0.0 <= getattr(self, key) <= 1.0:
                raise ConfigError(f"training.{key} must lie in [0, 1], got {getattr(self, key)}")
        if not 0.0 <= self.validation_fraction < 1.0:
            raise ConfigError(f"training.validation_fraction must lie in [0, 1), got {self.validation_fraction}")
        if self.patience is not None and self.patience < 1:
            raise ConfigError(f"training.patience must be >= 1 or none, got {self.patience}")
        if self.grad_clip_norm is not None and self.grad_clip_norm <= 0:
            raise ConfigError(f"training.grad_clip_norm must be positive or none, got {self.grad_clip_norm}")
        if not 0 <= self.seed < 2**32:
            raise ConfigError(f"training.seed must lie in [0, 2**32), got {self.seed}")
        if self.checkpoint_every < 0:
            raise ConfigError(f"training.checkpoint_every must be >= 0 (0: only at the end), got {self.checkpoint_every}")
        if self.keep_checkpoints < 1:
            raise ConfigError(f"training.keep_checkpoints must be >= 1, got {self.keep_checkpoints}")
        if self.num_threads is not None and self.num_threads < 1:
            raise ConfigError(f"training.num_threads must be >= 1 or none, got {self.num_threads}")
        if self.revive_every != "auto" and (isinstance(self.revive_every, bool) or not isinstance(self.revive_every, int)
                                            or self.revive_every < 0):
            raise ConfigError("training.revive_every must be 'auto' or an integer >= 0 (0: never), "
                              f"got {self.revive_every!r}")
        if isinstance(self.memory_limit_gb, float) and not self.memory_limit_gb > 0:
            raise ConfigError("training.memory_limit_gb must be positive, 'available' or 'off', "
                              f"got {self.memory_limit_gb}")
        if not (self.device in ("auto", "cpu", "cuda") or re.fullmatch(r"cuda:\d+", self.device)):
            raise ConfigError(f"training.device must be 'auto', 'cpu', 'cuda' or 'cuda:N', got {self.device!r}")


#: the training options every estimator's constructor takes (the fields of TrainConfig)
TRAINING_OPTIONS: tuple[str, ...] = tuple(field.name for field in dataclasses.fields(TrainConfig))


def own_options(estimator: type) -> tuple[str, ...]:
    """The options ``estimator``'s constructor declares itself (its parameters but the training options)."""
    return tuple(name for name in inspect.signature(estimator.__init__).parameters
                 if name != "self" and name not in TRAINING_OPTIONS)


@dataclasses.dataclass
class DataConfig(_Section):
    """Which data set to train on, and how to preprocess and split it (see :mod:`pyro_sdlgm.data.unsupervised`)."""

    section: typing.ClassVar[str] = "data"

    source: str = "mnist"
    """``"mnist"`` (MNIST-5k), ``"digits"`` or the path of a ``.npy``/``.npz`` file or an IDX folder."""
    npz_key: str | None = None
    """The array inside a ``.npz`` file (default: ``"X"``, ``"x"``, ``"data"`` or the only array)."""
    binarize: bool | str = "auto"
    """Binarize the data; ``"auto"``: for the Bernoulli likelihood only."""
    binarize_threshold: float = 0.5
    """Values above it become 1."""
    test_fraction: float = 0.1
    """The seeded fraction of the rows kept for testing; 0: no test split."""
    split_seed: int = 0
    """Seeds the test split and the subsample."""
    max_examples: int | None = None
    """A seeded subsample of this many rows, for quick runs; None: all."""

    def validate(self):
        if isinstance(self.binarize, str) and self.binarize != "auto":
            raise ConfigError(f"data.binarize must be true, false or 'auto', got {self.binarize!r}")
        if not 0.0 <= self.test_fraction < 1.0:
            raise ConfigError(f"data.test_fraction must lie in [0, 1), got {self.test_fraction}")
        if not 0 <= self.split_seed < 2**32:
            raise ConfigError(f"data.split_seed must lie in [0, 2**32), got {self.split_seed}")
        if self.max_examples is not None and self.max_examples < 2:
            raise ConfigError(f"data.max_examples must be >= 2 or none, got {self.max_examples}")


class ClassifierOptions(_Section):
    """What :data:`ClassifierConfig` (the ``[classifier]`` section) does with its fields; the fields
    are the parameters of :class:`pyro_sdlgm.SDLGMClassifier` (see :func:`options_dataclass`)."""

    section: typing.ClassVar[str] = "classifier"
    registries: typing.ClassVar[dict[str, str]] = {"slot_layout": ModelOptions.registries["slot_layout"]}

    def validate(self):
        for key in ("num_labels", "max_labels", "input_dim"):
            value = getattr(self, key)
            if value is not None and value < 1:
                raise ConfigError(f"classifier.{key} must be a positive integer or none, got {value}")
        if self.num_labels is not None and self.max_labels is not None and self.max_labels > self.num_labels:
            raise ConfigError(f"classifier.max_labels={self.max_labels} exceeds num_labels={self.num_labels}")
        check_components(self, build=("slot_layout",))  # its options too, before any data is read
        if self.num_candidates == "all":  # the same as None: every label
            self.num_candidates = None
        if isinstance(self.num_candidates, int) and self.num_labels is not None:
            check_candidates(self.num_candidates, self.num_labels, self.max_labels or 1, self.per_slot)


def registry_of(options: type | object, option: str):
    """The :class:`~pyro_sdlgm.model.registry.Registry` of the components ``option`` of an options
    class (:class:`ModelOptions`, :class:`ClassifierOptions`) names; imported when asked, since the
    registries' modules import this module's neighbours."""
    module, _, name = options.registries[option].rpartition(".")
    return getattr(importlib.import_module(module), name)


def check_components(options, *, build: tuple[str, ...] = ()) -> None:
    """Check that each component option of ``options`` names a registered component
    (``slot_layout="auto"`` is resolved by the spec); the options in ``build``, whose factories
    take no spec, are built, so that their own options are checked too."""
    for key in options.registries:
        spec = getattr(options, key)
        name = component_name(spec, key)[0]
        if key == "slot_layout" and name == "auto":
            continue
        if key in build:
            registry_of(options, key).build(spec)
        else:
            registry_of(options, key).get(name)


def check_candidates(num_candidates, num_labels: int, max_labels: int, per_slot: bool) -> int:
    """A shortlist size ``C`` with ``max_labels <= C <= num_labels`` and shared slots; :class:`ConfigError` otherwise."""
    if isinstance(num_candidates, bool) or not isinstance(num_candidates, numbers.Integral):
        raise ConfigError(f"num_candidates must be an integer, 'auto', 'all' or None, got {num_candidates!r}")
    num_candidates = int(num_candidates)
    if not max_labels <= num_candidates <= num_labels:
        raise ConfigError(f"num_candidates={num_candidates} must lie between max_labels={max_labels} and "
                          f"num_labels={num_labels} (every row's true labels must fit in its shortlist)")
    if per_slot:
        raise ConfigError(f"num_candidates={num_candidates} (shortlist mode) needs per_slot=False: per-slot "
                          f"heads cost max_labels x num_labels x the last hidden size parameters "
                          f"({max_labels} x {num_labels} x hidden), which the shortlist cannot reduce")
    return num_candidates


def options_dataclass(name: str, estimator: type, base: type) -> type:
    """A config dataclass whose fields are the own parameters of ``estimator``'s constructor (their
    names, types and defaults; not the training options, which :class:`TrainConfig` declares),
    with ``base``'s checks: the estimator's constructor is the one declaration of its options, and
    the config section, the file parsing, the dotted overrides and the checkpoint read this copy."""
    hints = typing.get_type_hints(estimator.__init__)
    parameters = inspect.signature(estimator.__init__).parameters
    fields = [(option, hints[option], dataclasses.field(default=parameters[option].default))
              for option in own_options(estimator)]
    cls = dataclasses.make_dataclass(name, fields, bases=(base,))
    cls.__module__, cls.__qualname__ = estimator.__module__, name  # pickled by reference, as a module global
    cls.__doc__ = (f"The options of :class:`~pyro_sdlgm.{estimator.__name__}` as the ``[{base.section}]`` "
                   "config section (its fields, types and defaults are the constructor's).")
    return cls


@dataclasses.dataclass
class MultiLabelDataConfig(_Section):
    """Multi-label data (the ``[data]`` section of a ``task = "multilabel"`` run).

    ``format = "yeast"`` needs nothing else; ``"arff"`` needs ``path`` and ``labels`` (a
    count or the label XML file); ``"xmc"`` needs ``train`` (and optionally ``test``);
    ``"svmlight"`` needs ``train`` and ``zero_based``. Without a test file, the first
    ``train_rows`` rows train and the rest test, or else a seeded ``test_fraction``.
    """

    section: typing.ClassVar[str] = "data"

    format: MultiLabelFormat = "yeast"
    """The file format (``"yeast"``: the data set shipped in river)."""
    path: str | None = None
    """The ARFF file."""
    labels: int | str | None = None
    """ARFF: the number of label attributes, or the label XML file."""
    train: str | None = None
    """The training file (XMC, svmlight)."""
    test: str | None = None
    """A separate test file in the same format."""
    zero_based: bool | None = None
    """svmlight: the feature index base (required)."""
    labels_zero_based: bool | None = None
    """svmlight: the label index base (default: ``zero_based``)."""
    num_features: int | None = None
    """svmlight files have no header: the feature count, recorded by training."""
    train_rows: int | None = None
    """Without a test file: the first ``train_rows`` rows train and the rest test."""
    test_fraction: float = 0.2
    """Without a test file or ``train_rows``: the seeded fraction of the rows kept for testing."""
    split_seed: int = 0
    """Seeds that split."""

    def validate(self):
        needs = {"arff": ("path", "labels"), "xmc": ("train",), "svmlight": ("train", "zero_based")}
        for key in needs.get(self.format, ()):
            if getattr(self, key) is None:
                raise ConfigError(f"data.format={self.format!r} needs data.{key}")
        if not 0.0 < self.test_fraction < 1.0:
            raise ConfigError(f"data.test_fraction must lie in (0, 1), got {self.test_fraction}")


# ----------------------------------------------------------------------------- files and overrides


def read_config_file(path: str | Path) -> dict[str, Any]:
    """Parse a TOML (``.toml``) or YAML (``.yaml``/``.yml``) file into a dict, safely."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {str(path)!r} does not exist")
    suffix = path.suffix.lower()
    try:
        if suffix == ".toml":
            with path.open("rb") as handle:
                data = tomllib.load(handle)
        elif suffix in (".yaml", ".yml"):
            with path.open("r", encoding="utf-8") as handle:
                data = yaml.safe_load(handle)
            data = {} if data is None else data
        else:
            raise ConfigError(f"config file {str(path)!r} must end in .toml, .yaml or .yml")
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(f"cannot parse TOML file {str(path)!r}: {err}") from None
    except yaml.YAMLError as err:
        raise ConfigError(f"cannot parse YAML file {str(path)!r}: {err}") from None
    except UnicodeDecodeError as err:
        raise ConfigError(f"config file {str(path)!r} is not UTF-8 text: {err}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"config file {str(path)!r} must hold a table at the top level, got {type(data).__name__}")
    return data


def parse_override_value(raw: str) -> Any:
    """Parse the value of a ``key=value`` override as a TOML value; bare words stay strings.

    ``none``/``null`` give None (TOML has no null).
    """
    if raw.strip().lower() in ("none", "null"):
        return None
    try:
        return tomllib.loads(f"value = {raw}")["value"]
    except tomllib.TOMLDecodeError:
        return raw


def apply_overrides(data: dict[str, Any], overrides: Sequence[str]) -> dict[str, Any]:
    """Apply ``dotted.key=value`` overrides to a nested config dict (returns a new dict).

    A component given by name (``sparsity_prior = "uniform"``) becomes a table when an
    override sets one of its options (``model.sparsity_prior.rate=2``).
    """
    import copy

    data = copy.deepcopy(data)
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} must have the form dotted.key=value")
        key, raw = item.split("=", 1)
        parts = key.strip().split(".")
        if not all(parts):
            raise ConfigError(f"override {item!r} has an empty key component")
        node = data
        for depth, part in enumerate(parts[:-1]):
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            elif isinstance(child, str):  # a component name gaining options
                child = node[part] = {"name": child}
            elif not isinstance(child, dict):
                raise ConfigError(f"override {item!r}: {'.'.join(parts[: depth + 1])} is not a table")
            node = child
        node[parts[-1]] = parse_override_value(raw)
    return data


def write_yaml(data: Mapping[str, Any], path: str | Path) -> None:
    with Path(path).open("w", encoding="utf-8") as handle:
        yaml.safe_dump(dict(data), handle, sort_keys=False)
