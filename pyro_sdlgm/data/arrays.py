"""Data matrices from the user: the checks every entry point shares, and batches of their rows."""

from __future__ import annotations

from typing import Any

import numpy as np
import scipy.sparse
import torch

from pyro_sdlgm.exceptions import DataError, DataTypeError


def dense_numeric_2d(X: Any, name: str) -> np.ndarray:
    """``X`` (numpy array, torch tensor or nested lists) as a non-empty numeric 2-D numpy array.

    Raises :class:`DataError` for ragged input, non-numeric or complex dtypes, other
    dimensionalities and empty data.
    """
    if scipy.sparse.issparse(X):
        raise DataError(
            f"{name} is a scipy sparse matrix; SDLGM takes dense (N, D) arrays. "
            "Call X.toarray() if it fits in memory"
        )
    if isinstance(X, torch.Tensor):
        array = X.detach().cpu().numpy()
    else:
        try:
            array = np.asarray(X)
        except ValueError as err:  # ragged nested lists
            raise DataError(f"{name} cannot be read as an (N, D) array: {err}") from None
    if array.dtype == object:  # numbers stored as Python objects are numbers
        try:
            array = array.astype(np.float64)
        except (TypeError, ValueError) as err:
            raise DataTypeError(f"{name} holds values that are not numbers: {err}") from None
    if (array.dtype == object or np.issubdtype(array.dtype, np.complexfloating)
            or not (np.issubdtype(array.dtype, np.number) or array.dtype == bool)):
        kind = "Complex data not supported: " if np.issubdtype(array.dtype, np.complexfloating) else ""
        raise DataError(f"{kind}{name} must be numeric, got dtype {array.dtype}")
    if array.ndim != 2:
        raise DataError(f"{name} must be a 2-D array (N, D), got shape {array.shape}. Reshape your data with "
                        f"{name}.reshape(-1, 1) if it has one feature, or {name}.reshape(1, -1) if it is one row")
    check_not_empty(array.shape, name)
    return array


def check_not_empty(shape: tuple, name: str) -> None:
    """:class:`DataError` for data without a row or without a feature (scikit-learn's wording)."""
    if shape[0] == 0:
        raise DataError(f"{name} is empty (shape {shape})")
    if shape[1] == 0:
        raise DataError(f"{name} has 0 feature(s) (shape={tuple(shape)}) while a minimum of 1 is required.")


def as_dense_tensor(X: Any, width: int, name: str = "X") -> torch.Tensor:
    """``X (N, width)`` as a contiguous float32 CPU tensor, checked for type, shape and finiteness.

    Raises:
        DataError: a scipy sparse matrix (dense input is needed; the message says how to densify),
            anything :func:`dense_numeric_2d` refuses, another width, or a non-finite value (the
            message names the first one's row and column).
    """
    array = dense_numeric_2d(X, name)
    if array.shape[1] != width:
        raise DataError(f"{name} has {array.shape[1]} features but the model has input_dim={width}")
    array = array.astype(np.float32, copy=False)
    finite = np.isfinite(array)
    if not finite.all():
        row, col = np.argwhere(~finite)[0]
        raise DataError(
            f"{name} contains NaN or infinity in {int((~finite).sum())} value(s); first: {array[row, col]} "
            f"at row {row}, column {col}"
        )
    return torch.from_numpy(np.ascontiguousarray(array))


def as_csr(A: Any, name: str) -> scipy.sparse.csr_matrix:
    """Dense or sparse ``(N, M)`` input as float32 CSR, checked for shape, emptiness and finiteness
    (the message names the first non-finite value's row)."""
    if scipy.sparse.issparse(A):
        matrix = scipy.sparse.csr_matrix(A, dtype=np.float32)
        check_not_empty(matrix.shape, name)
    else:
        matrix = scipy.sparse.csr_matrix(dense_numeric_2d(A, name).astype(np.float32))
    if not np.isfinite(matrix.data).all():
        row = int(np.searchsorted(matrix.indptr, np.flatnonzero(~np.isfinite(matrix.data))[0], side="right") - 1)
        raise DataError(f"{name} contains NaN or infinity (first in row {row})")
    return matrix


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
