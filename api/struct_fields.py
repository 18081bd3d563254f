"""Number fields of decoded msgspec structs read into one float matrix in a single native pass.

A batch body is decoded by msgspec into one small struct per customer (``api/schemas.py``,
``RequestSchemas.decode_batch``); the engine wants the numeric inputs as an (n, inputs) float
matrix. Gathering them in Python, one ``attrgetter`` pass per input, cost 0.40 ms per 1,000
customers and 12 inputs, about as much as msgspec's whole decode (bench/RESULTS.md, "Batch I/O").
Here one numba loop reads each struct's field slots and each float's value straight from the
objects' memory: 0.05 ms.

Written here rather than taken from a library: neither msgspec nor numpy reads struct fields into
an array. It relies on two layouts, both checked when a reader is built, never assumed: a msgspec
struct keeps each field as an object pointer at a fixed offset in the instance (found by building
one instance with known values and looking for them), and a Python float keeps its type pointer
and its double at offsets 8 and 16 (checked on a probe float). If either check fails, or numba is
missing, :meth:`FieldReader.read` answers None and the caller gathers the fields in Python, as
before. A field holding anything but a float or None (never, for fields msgspec decoded as
``float``) also makes it answer None. The structs must stay alive while they are read: the caller
holds them.
"""

from __future__ import annotations

import ctypes
from collections.abc import Sequence
from typing import Any

import numpy as np

try:  # numba is a service requirement (scoring/attribution_walk.py); without it, None
    import numba
    from llvmlite import ir
    from numba.extending import intrinsic
except ImportError:  # pragma: no cover - exercised only where numba is missing
    numba = None

#: where CPython keeps an object's type pointer, and a float's value
_TYPE_AT = 8
_FLOAT_AT = 16


def _float_layout_holds() -> bool:
    """Whether floats here keep their type and value at ``_TYPE_AT`` and ``_FLOAT_AT``."""
    probe = float.fromhex("0x1.123456789abcdp+3")
    ok = (
        ctypes.c_ssize_t.from_address(id(probe) + _TYPE_AT).value == id(float)
        and ctypes.c_double.from_address(id(probe) + _FLOAT_AT).value == probe
    )
    return ok and float.__basicsize__ == _FLOAT_AT + 8


if numba is not None:

    @intrinsic
    def _word(typingctx: Any, address: Any) -> Any:
        """The 8-byte integer at ``address``."""

        def codegen(context: Any, builder: Any, signature: Any, args: Any) -> Any:
            return builder.load(builder.inttoptr(args[0], ir.IntType(64).as_pointer()))

        return numba.types.int64(numba.types.intp), codegen

    @intrinsic
    def _double(typingctx: Any, address: Any) -> Any:
        """The double at ``address``."""

        def codegen(context: Any, builder: Any, signature: Any, args: Any) -> Any:
            return builder.load(builder.inttoptr(args[0], ir.DoubleType().as_pointer()))

        return numba.types.float64(numba.types.intp), codegen

    def _gather_fields(
        addresses: np.ndarray,
        struct_type: int,
        offsets: np.ndarray,
        float_type: int,
        none: int,
        out: np.ndarray,
    ) -> bool:
        """``out[i, j]`` = the float in field ``j`` (at ``offsets[j]``) of struct ``i`` (at
        ``addresses[i]``), NaN for None; False at the first object not of ``struct_type`` or
        field holding anything else."""
        for i in range(addresses.shape[0]):
            base = addresses[i]
            if _word(base + _TYPE_AT) != struct_type:
                return False
            for j in range(offsets.shape[0]):
                value = _word(base + offsets[j])
                if value == none:
                    out[i, j] = np.nan
                elif _word(value + _TYPE_AT) == float_type:
                    out[i, j] = _double(value + _FLOAT_AT)
                else:
                    return False
        return True

    try:  # cached on disk like the answer writer (NUMBA_CACHE_DIR), else compiled per process
        _gather = numba.njit(cache=True, boundscheck=False)(_gather_fields)
    except RuntimeError:  # "cannot cache function ...: no locator available"
        _gather = numba.njit(boundscheck=False)(_gather_fields)
else:  # pragma: no cover - exercised only where numba is missing
    _gather = None


class FieldReader:
    """Reads the number fields ``names`` of structs of one msgspec type into a float matrix."""

    def __init__(self, struct_type: type, names: Sequence[str]) -> None:
        self.struct_type = struct_type
        self.names = tuple(names)
        #: each field's offset in an instance (None: the layouts did not check out)
        self.offsets = self._offsets() if _gather is not None else None
        if (
            self.offsets is not None
        ):  # compiled (or loaded from numba's cache) now, not in a request
            self.read([self.struct_type(**self._probe_values())])

    def _probe_values(self) -> dict[str, Any]:
        # distinct float objects (their addresses are what is looked for), None elsewhere
        values: dict[str, Any] = dict.fromkeys(self.struct_type.__struct_fields__)
        values.update({name: float(j) + 0.25 for j, name in enumerate(self.names)})
        return values

    def _offsets(self) -> np.ndarray | None:
        """Each field's offset, found in one instance holding known floats; None unless every
        field is found exactly once past the object's header and floats lay out as expected."""
        if not _float_layout_holds():
            return None
        values = self._probe_values()
        probe = self.struct_type(**values)
        size = type(probe).__basicsize__
        words = np.frombuffer(ctypes.string_at(id(probe), size), dtype=np.int64)
        offsets = []
        for name in self.names:
            hits = np.flatnonzero(words == id(values[name]))
            if hits.shape[0] != 1 or hits[0] < 2:  # words 0 and 1: reference count and type
                return None
            offsets.append(int(hits[0]) * 8)
        if any(getattr(probe, name) is not values[name] for name in self.names):
            return None
        return np.array(offsets, dtype=np.intp)

    def read(self, structs: Sequence[Any]) -> np.ndarray | None:
        """The fields of ``structs`` (alive while this runs) as an (n, fields) float64 matrix,
        NaN for None; None when this reader cannot read them (one is not of the type, or a
        field holds neither a float nor None)."""
        offsets = self.offsets
        if offsets is None:
            return None
        n = len(structs)
        addresses = np.fromiter(map(id, structs), dtype=np.intp, count=n)
        out = np.empty((n, offsets.shape[0]), dtype=np.float64)
        ok = _gather(addresses, id(self.struct_type), offsets, id(float), id(None), out)
        return out if ok else None
