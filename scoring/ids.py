"""Customer ids: always text, the one normalisation training, batch scoring and serving share.

An id is a label, not a number: ``"007"`` stays ``"007"``, and ``" 42 "`` and ``"42"`` are one
customer. Files are read with the id column as text (:func:`read_options`), and what is already
loaded goes through :func:`ids_as_text`.
"""

from __future__ import annotations

from typing import Any

import pandas as pd


def ids_as_text(values: pd.Series) -> pd.Series:
    """Ids as text without surrounding whitespace (pandas ``string`` dtype, missing kept).

    Integer columns (Parquet) become their digits; a float column whose values are all whole
    (an integer column that once held a missing value) reads 42.0 -> "42"; text such as
    ``"007"`` is kept as written.
    """
    if pd.api.types.is_float_dtype(values) and bool((values.isna() | (values % 1 == 0)).all()):
        return values.astype("Int64").astype("string")
    return values.astype("string").str.strip()


def read_options(id_column: str | None) -> dict[str, Any]:
    """``pandas.read_csv`` keyword arguments that read ``id_column`` as text."""
    return {} if id_column is None else {"dtype": {id_column: str}}
