"""Data matrices from the user: the checks every entry point shares, and batches of their rows."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from pyro_sdlgm.exceptions import DataError


def dense_numeric_2d(X: Any, name: str) -> np.ndarray:
    """``X`` (numpy array, torch tensor or nested lists) as a non-empty numeric 2-D numpy array.

    Raises :class:`DataError` for ragged input, non-numeric or complex dtypes, other
    dimensionalities and empty data.
    """
    if isinstance(X, torch.Tensor):
        array = X.detach().cpu().numpy()
    else:
        try:
            array = np.asarray(X)
        except ValueError as err:  # ragged nested lists
            raise DataError(f"{name} cannot be read as an (N, D) array: {err}") from None
    if (array.dtype == object or np.issubdtype(array.dtype, np.complexfloating)
            or not (np.issubdtype(array.dtype, np.number) or array.dtype == bool)):
        raise DataError(f"{name} must be numeric, got dtype {array.dtype}")
    if array.ndim != 2:
        raise DataError(f"{name} must be a 2-D array (N, D), got shape {array.shape}")
    if array.shape[0] == 0:
        raise DataError(f"{name} is empty (shape {array.shape})")
    return array


def take_rows(columns: tuple, rows: torch.Tensor, device: torch.device) -> tuple[torch.Tensor, ...]:
    """Rows of each column as dense float32 tensors on ``device``.

    Columns are torch tensors, numpy arrays or scipy sparse matrices; a sparse column is
    densified one batch at a time, never whole.
    """
    batch = []
    index = rows.numpy()
    for column in columns:
        if isinstance(column, torch.Tensor):
            part = column[rows]
        elif hasattr(column, "tocsr"):  # scipy.sparse
            part = torch.from_numpy(column[index].toarray())
        else:
            part = torch.from_numpy(column[index])
        batch.append(part.to(device=device, dtype=torch.float32))
    return tuple(batch)
