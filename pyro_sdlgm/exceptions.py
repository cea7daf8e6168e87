"""Exception types raised by pyro_sdlgm.

Every error the library raises on bad input is one of these, so callers can catch
``SDLGMError`` for all of them or a specific subclass. Each also derives from the
builtin exception a Python user would expect (``ValueError`` for bad values,
``RuntimeError`` for calls in the wrong state).
"""

class SDLGMError(Exception):
    """Base class of all pyro_sdlgm errors."""


class ConfigError(SDLGMError, ValueError):
    """A configuration value or key is invalid; the message names it."""


class UnknownComponentError(ConfigError):
    """A prior, guide or likelihood name is not registered; the message lists the known ones."""


class DataError(SDLGMError, ValueError):
    """Input data is malformed (wrong shape, non-finite, out of the likelihood's support...)."""


class DataTypeError(DataError, TypeError):
    """Input data holds values that cannot be read as numbers (a ``TypeError`` too, as numpy's)."""


class DataFormatError(DataError):
    """A data file cannot be parsed; the message names the file and the offending position."""


class NotFittedError(SDLGMError, ValueError, AttributeError):
    """A method that needs a trained model was called before ``fit`` or ``load``; a ``ValueError``
    and an ``AttributeError``, as scikit-learn's ``NotFittedError``. The estimators raise a subclass
    that is scikit-learn's too (:class:`pyro_sdlgm.estimators.base.EstimatorNotFittedError`; not
    defined here, so that the command line's help does not import scikit-learn)."""


class CheckpointError(SDLGMError, ValueError):
    """A checkpoint file or run folder is missing, incomplete, or cannot be loaded safely."""


class NumericalError(SDLGMError, FloatingPointError):
    """Training produced a non-finite loss or gradient; the message names the epoch and step."""


class ResourceError(SDLGMError, MemoryError):
    """A configuration needs more memory than is available; the message gives the estimate
    and the options that reduce it."""


class MissingDependencyError(SDLGMError, ImportError):
    """A feature needs a package of an optional extra that is not installed; the message names
    the package and the ``pip install "pyro-sdlgm[EXTRA]"`` that brings it."""


class RunFolderBusyError(SDLGMError, RuntimeError):
    """A run folder is in use by another process (training, resuming, overwriting or reading it);
    the message names the process that holds it."""
