"""Checks shared by every entry point that takes a data matrix from the user."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from .exceptions import DataError


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
