"""Checkpoint files: written atomically, read only with ``torch.load(weights_only=True)``.

A checkpoint is a dict of plain containers, numbers, strings and tensors (state dicts),
which the weights-only unpickler accepts; nothing in it can run code on load. Two kinds:
a trained model (``SDLGM.save``, ``SDLGMClassifier.save``) and a training checkpoint
(``run_dir/checkpoints/epoch_000012.pt``, written by the trainer, see
:mod:`pyro_sdlgm.inference.trainer`), from which an interrupted run resumes.
"""

from __future__ import annotations

import os
import pickle
import random
import re
import tempfile
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import torch

from pyro_sdlgm.exceptions import CheckpointError


def atomic_write(path: str | Path, write: Callable[[BinaryIO], None]) -> None:
    """Write ``path`` through ``write(handle)`` into a temporary file in the same folder, flush and
    fsync it, rename it over ``path`` and fsync the folder.

    A process killed at any point leaves either the old file or the new one at ``path``
    (and possibly a ``.NAME.*.tmp`` file, which :func:`remove_temporaries` deletes).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        if hasattr(os, "fchmod"):  # mkstemp makes the file 0600; give it the mode open() would (0666 - umask)
            os.fchmod(fd, 0o666 & ~_umask())
        with os.fdopen(fd, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_folder(path.parent)


def _umask() -> int:
    """The process's umask (read by setting it and setting it back: there is no other portable way)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def atomic_save(obj: dict[str, Any], path: str | Path) -> None:
    """``torch.save`` of ``obj`` to ``path`` through :func:`atomic_write`."""
    atomic_write(path, lambda handle: torch.save(obj, handle))


def _fsync_folder(folder: Path) -> None:
    """Make a rename in ``folder`` durable (POSIX; a no-op where folders cannot be opened)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def load_checkpoint(path: str | Path, expected_format: str, required: tuple[str, ...] = (),
                    mmap: bool = False) -> dict[str, Any]:
    """Load a checkpoint safely and check its format tag and keys (``mmap``: map its tensors from
    the file instead of reading them, for a look at its small entries)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {str(path)!r} does not exist")
    try:
        with warnings.catch_warnings():
            # a plain pickle file (not written by torch.save): it is refused or read all the same
            warnings.filterwarnings("ignore", message="Detected pickle protocol", category=UserWarning)
            data = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as err:
        raise CheckpointError(
            f"refusing to load {str(path)!r}: it is not a weights-only checkpoint ({err})"
        ) from None
    except (RuntimeError, EOFError, OSError, ValueError) as err:
        raise CheckpointError(f"cannot read checkpoint {str(path)!r}: {err}") from None
    if not isinstance(data, dict) or data.get("format") != expected_format:
        found = data.get("format") if isinstance(data, dict) else type(data).__name__
        raise CheckpointError(f"{str(path)!r} is not a {expected_format} checkpoint (format: {found!r})")
    missing = [k for k in required if k not in data]
    if missing:
        raise CheckpointError(f"checkpoint {str(path)!r} lacks the entries {missing}")
    return data


# ----------------------------------------------------------------------------- training checkpoints

TRAINING_FORMAT = "pyro_sdlgm.TrainingCheckpoint"
#: the format version of training checkpoints (and of trained models): 2 since pyro_sdlgm 0.2, whose
#: checkpoints hold every option; version 1 (pyro_sdlgm 0.1) is refused, naming it
TRAINING_VERSION = 2
#: the pyro_sdlgm release that writes and reads each older format version
WRITTEN_BY = {1: "0.1.0"}


def check_format_version(data: dict, path, expected: int) -> None:
    """Raise :class:`CheckpointError` unless ``data["format_version"]`` is ``expected``, naming the
    version found and the pyro_sdlgm release that reads it."""
    found = data.get("format_version")
    if found == expected:
        return
    hint = (f"; it was written by pyro_sdlgm {WRITTEN_BY[found]}: retrain, or read it with "
            f"pip install pyro-sdlgm=={WRITTEN_BY[found]}" if found in WRITTEN_BY else "")
    raise CheckpointError(f"checkpoint {str(path)!r} has format version {found!r}; this version of pyro_sdlgm "
                          f"reads version {expected}{hint}")
CHECKPOINT_DIR = "checkpoints"
_CHECKPOINT_NAME = re.compile(r"epoch_(\d+)\.pt")


def checkpoint_path(folder: str | Path, epoch: int) -> Path:
    """``folder/epoch_000012.pt``: the checkpoint after ``epoch`` completed epochs."""
    return Path(folder) / f"epoch_{epoch:06d}.pt"


def list_checkpoints(folder: str | Path) -> list[tuple[int, Path]]:
    """``(completed epochs, path)`` of the training checkpoints in ``folder``, oldest first."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    found = []
    for path in folder.iterdir():
        match = _CHECKPOINT_NAME.fullmatch(path.name)
        if match and path.is_file():
            found.append((int(match.group(1)), path))
    return sorted(found)


def remove_temporaries(folder: str | Path) -> None:
    """Delete temporary files an interrupted :func:`atomic_save` left in ``folder``."""
    folder = Path(folder)
    if folder.is_dir():
        for path in folder.glob(".*.tmp"):
            path.unlink(missing_ok=True)


def prune_checkpoints(folder: str | Path, keep: int) -> None:
    """Keep the newest ``keep`` checkpoints in ``folder`` (``keep=0``: delete them all)."""
    found = list_checkpoints(folder)
    for _, path in found[: max(len(found) - keep, 0)]:
        path.unlink(missing_ok=True)


def rng_state(cuda: bool = False) -> dict[str, Any]:
    """The global RNG states (torch, CUDA, numpy, ``random``) as plain containers and tensors.

    ``numpy``'s state tuple holds an ndarray, which ``torch.load(weights_only=True)``
    refuses, so it is stored as an int64 tensor of the 624 key words plus ints and a float.
    """
    _, keys, pos, has_gauss, cached = np.random.get_state()
    version, words, gauss_next = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "cuda": list(torch.cuda.get_rng_state_all()) if cuda and torch.cuda.is_available() else [],
        "numpy": {"keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos), "has_gauss": int(has_gauss),
                  "cached_gaussian": float(cached)},
        "python": {"version": int(version), "state": list(words), "gauss_next": gauss_next},
    }


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore the global RNG states saved by :func:`rng_state`."""
    torch.set_rng_state(state["torch"])
    if state.get("cuda") and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    numpy_state = state["numpy"]
    np.random.set_state(("MT19937", numpy_state["keys"].numpy().astype(np.uint32), numpy_state["pos"],
                         numpy_state["has_gauss"], numpy_state["cached_gaussian"]))
    python_state = state["python"]
    random.setstate((python_state["version"], tuple(python_state["state"]), python_state["gauss_next"]))


def to_cpu(obj):
    """Tensors in nested dicts/lists/tuples moved to the CPU (copies of CUDA tensors, CPU ones as is)."""
    if isinstance(obj, torch.Tensor):
        return obj.detach().cpu()
    if isinstance(obj, dict):
        return {k: to_cpu(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(to_cpu(v) for v in obj)
    return obj
