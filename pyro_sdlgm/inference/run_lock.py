"""One writer per run folder: an advisory lock on ``run_dir/.lock``.

Training, resuming and overwriting a run folder hold an exclusive lock on it; the commands
that read a finished run (``evaluate``, ``encode``, ``inspect``, ``predict``) hold a shared
one, so that they never read a folder a training is rewriting. A second process is refused
with :class:`RunFolderBusyError`, naming the process that holds the folder (its PID, host and
command, which the holder writes into the lock file).

The lock is ``fcntl.flock`` on the open lock file: the operating system releases it when the
holding process ends, however it ends (``kill -9`` included), so a lock left by a killed
process never blocks. The lock file itself stays in the folder (deleting it would let two
processes lock two different files); ``--overwrite`` keeps it. Within one process the lock
is re-entrant: ``sdlgm train`` holds it, and the trainer it calls takes it again.

Where ``fcntl`` does not exist (Windows), the lock is not taken; a debug message says so.
A folder the process cannot write (a read-only copy of a finished run) is read without a lock.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import sys
from collections.abc import Iterator
from pathlib import Path

from pyro_sdlgm.exceptions import RunFolderBusyError

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None

logger = logging.getLogger(__name__)

LOCK_FILE = ".lock"

# folders this process holds: resolved path -> [open lock file, exclusive?, depth]
_HELD: dict[Path, list] = {}


def _holder(handle) -> str:
    """Who holds the lock: the line an exclusive holder wrote; readers write none."""
    handle.seek(0)
    text = handle.read().strip()
    return text or "a process reading it (sdlgm evaluate, encode, inspect or predict)"


@contextlib.contextmanager
def run_folder_lock(run_dir: str | Path, *, exclusive: bool = True, purpose: str = "training") -> Iterator[None]:
    """Hold ``run_dir``'s lock for the ``with`` block (creating the folder for an exclusive lock).

    Raises :class:`RunFolderBusyError` at once, without waiting, when another process holds
    the folder in a conflicting mode.
    """
    folder = Path(run_dir).resolve()
    held = _HELD.get(folder)
    if held is not None:
        if exclusive and not held[1]:
            raise RunFolderBusyError(f"run folder {str(run_dir)!r} is open for reading in this process; "
                                     f"it cannot be locked for {purpose} inside that")
        held[2] += 1
        try:
            yield
        finally:
            held[2] -= 1
        return
    if fcntl is None:  # pragma: no cover - Windows
        logger.debug("no fcntl: run folder %s is not locked", folder)
        yield
        return
    if exclusive:
        folder.mkdir(parents=True, exist_ok=True)
    try:
        handle = open(folder / LOCK_FILE, "a+", encoding="utf-8")
    except OSError as err:
        if exclusive:
            raise RunFolderBusyError(f"cannot lock run folder {str(run_dir)!r} for {purpose}: {err}") from None
        logger.debug("run folder %s read without a lock: %s", folder, err)
        yield
        return
    try:
        try:
            fcntl.flock(handle.fileno(), (fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH) | fcntl.LOCK_NB)
        except BlockingIOError:
            raise RunFolderBusyError(
                f"run folder {str(run_dir)!r} is in use by {_holder(handle)}; wait for it to finish or stop it "
                f"(a lock left by a process that has ended is released by the system), then retry {purpose}"
            ) from None
        if exclusive:
            handle.seek(0)
            handle.truncate()
            handle.write(f"pid {os.getpid()} on {socket.gethostname()}: {' '.join(sys.argv) or 'python'}\n")
            handle.flush()
        _HELD[folder] = [handle, exclusive, 1]
        try:
            yield
        finally:
            del _HELD[folder]
            if exclusive:
                handle.seek(0)
                handle.truncate()
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)
    finally:
        handle.close()
