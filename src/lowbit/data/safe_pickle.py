"""A restricted unpickler for the CIFAR python batches.

The CIFAR "python version" archives store each batch as a pickle (written by
Python 2's cPickle, protocol 2). A pickle can name any importable callable and
call it while loading, so ``pickle.load`` on a file from the internet runs
whatever the file says (``os.system("...")`` included). The batches only ever
hold a dict of bytes keys -> numpy uint8 array / list of ints / list of bytes,
so :class:`SafeUnpickler` resolves exactly the globals needed to rebuild a
numpy array and refuses every other one *before* anything is called:

===========================================  ===================================
global                                        why it is needed
===========================================  ===================================
``numpy.core.multiarray._reconstruct``        ndarray reconstruction (numpy 1.x
                                              names, as in the real files)
``numpy._core.multiarray._reconstruct``       the same, as numpy >= 2 writes it
``numpy.ndarray``, ``numpy.dtype``            arguments of ``_reconstruct``
``_codecs.encode`` (``latin1`` only)          how Python 3 writes ``bytes`` at
                                              protocol <= 2 (re-pickled batches)
===========================================  ===================================

dict, list, str, bytes and int need no global at all: they have their own
opcodes. Globals are mapped to the objects imported here, never imported by
name, so no module is imported on the file's behalf.

Arrays are built by this module, not by numpy's pickle support: ``numpy.ndarray``
and ``_reconstruct`` resolve to stand-ins that only accept the one shape of an
array pickle (``_reconstruct(ndarray, (0,), b"b")`` then its state ``(version,
shape, dtype, fortran, raw bytes)``). The state is checked *before* an array
exists: a plain numeric dtype, a shape of non-negative ints, and exactly
``prod(shape) * itemsize`` bytes of data, so the array's memory is the file's
own bytes. Calling ``numpy.ndarray(shape, dtype, buffer, offset, strides)``
directly (which can make a 1-byte buffer look like gigabytes with zero
strides), object dtypes and inconsistent shapes are refused.
"""

from __future__ import annotations

import codecs
import io
import math
import pickle
from pathlib import Path
from typing import IO, Any, Callable, Dict, Optional, Tuple

import numpy as np

from lowbit.data.errors import DataError

__all__ = ["UnsafePickleError", "SafeUnpickler", "safe_load"]


class UnsafePickleError(DataError, pickle.UnpicklingError):
    """A pickle named a global that a CIFAR batch never needs; nothing was called."""


def _latin1_encode(text: str, encoding: str = "latin1") -> bytes:
    """``_codecs.encode`` restricted to the one use pickle makes of it (bytes at protocol <= 2)."""
    if codecs.lookup(encoding).name != "iso8859-1" or not isinstance(text, str):
        raise UnsafePickleError(
            f"refusing _codecs.encode({type(text).__name__}, {encoding!r}): pickles of bytes only use latin1"
        )
    return text.encode("latin1")


# plain numeric dtypes an image batch can hold (no objects, records, strings or sub-arrays)
ALLOWED_DTYPES = frozenset(np.dtype(c) for c in ("u1", "i1", "u2", "i2", "u4", "i4", "u8", "i8", "f2", "f4", "f8", "?"))


class _NDArrayType:
    """What the pickle's ``numpy.ndarray`` resolves to: usable only as ``_reconstruct``'s first argument."""

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        raise UnsafePickleError(
            "refusing to call numpy.ndarray(...) from a pickle (it can view a tiny buffer as a huge array with "
            "zero strides); genuine array pickles use numpy.core.multiarray._reconstruct"
        )


_NDARRAY = _NDArrayType()


class _Dtype:
    """A dtype named by the pickle, checked; its ``__setstate__`` accepts only a plain dtype's state."""

    def __init__(self, code: Any, align: bool = False, copy: bool = True):
        try:
            dtype = np.dtype(code) if isinstance(code, (str, bytes)) else None
        except TypeError:
            dtype = None
        if dtype is None or dtype.newbyteorder("=") not in ALLOWED_DTYPES:
            raise UnsafePickleError(f"refusing dtype {code!r}: only plain numeric dtypes are accepted")
        self.dtype = dtype

    def __setstate__(self, state: Any) -> None:
        if not (isinstance(state, tuple) and len(state) == 8 and state[1] in ("|", "<", ">", "=")
                and state[2:5] == (None, None, None)):
            raise UnsafePickleError(f"refusing dtype state {state!r}: not that of a plain numeric dtype")
        if state[1] in ("<", ">"):
            self.dtype = self.dtype.newbyteorder(state[1])


class _PendingArray:
    """An array pickle's placeholder; ``__setstate__`` checks the state and builds the array from its bytes."""

    array: Optional[np.ndarray] = None

    def __setstate__(self, state: Any) -> None:
        if not (isinstance(state, tuple) and len(state) == 5):
            raise UnsafePickleError(f"refusing ndarray state of {type(state).__name__}: not an array pickle")
        _, shape, dtype, fortran, raw = state
        if not isinstance(dtype, _Dtype):
            raise UnsafePickleError("refusing ndarray state: its dtype is not a plain numeric dtype")
        if not (isinstance(shape, tuple) and all(type(n) is int and n >= 0 for n in shape) and len(shape) <= 8):
            raise UnsafePickleError(f"refusing ndarray shape {shape!r}: not a tuple of at most 8 ints >= 0")
        if not isinstance(raw, (bytes, bytearray)):
            raise UnsafePickleError(f"refusing ndarray data of type {type(raw).__name__}: raw bytes expected")
        expected = math.prod(shape) * dtype.dtype.itemsize
        if len(raw) != expected:
            raise UnsafePickleError(
                f"refusing an ndarray of shape {shape} {dtype.dtype}: it needs {expected:,} bytes of data, "
                f"the file holds {len(raw):,} (an inconsistent or forged array)"
            )
        array = np.frombuffer(bytes(raw), dtype=dtype.dtype)
        self.array = array.reshape(shape, order="F" if fortran else "C")


def _reconstruct_checked(cls: Any, shape: Any, code: Any) -> _PendingArray:
    """``_reconstruct`` as array pickles call it, and nothing else."""
    if cls is not _NDARRAY or shape != (0,) or code not in (b"b", "b"):
        raise UnsafePickleError(f"refusing _reconstruct({cls!r}, {shape!r}, {code!r}): not an array pickle")
    return _PendingArray()


_ALLOWED: Dict[Tuple[str, str], Callable[..., Any] | type] = {
    ("numpy.core.multiarray", "_reconstruct"): _reconstruct_checked,
    ("numpy._core.multiarray", "_reconstruct"): _reconstruct_checked,
    ("numpy", "ndarray"): _NDARRAY,
    ("numpy", "dtype"): _Dtype,
    ("_codecs", "encode"): _latin1_encode,
}


def _resolve(value: Any, seen: Dict[int, Any]) -> Any:
    """Replace the placeholders by their arrays in dicts, lists and tuples (shared and cyclic parts once)."""
    if isinstance(value, _PendingArray):
        if value.array is None:
            raise UnsafePickleError("refusing an ndarray pickle without its data (no state was given)")
        return value.array
    if isinstance(value, _Dtype):
        return value.dtype
    if not isinstance(value, (dict, list, tuple)):
        return value
    key = id(value)
    if key in seen:
        return seen[key]
    if isinstance(value, tuple):
        seen[key] = value  # a cycle through a tuple keeps the tuple (pickle cannot build one that matters here)
        result = tuple(_resolve(v, seen) for v in value)
        seen[key] = result
        return result
    seen[key] = value
    if isinstance(value, dict):
        for k in list(value):
            value[k] = _resolve(value[k], seen)
    else:
        for i, v in enumerate(value):
            value[i] = _resolve(v, seen)
    return value


class SafeUnpickler(pickle.Unpickler):
    """``pickle.Unpickler`` whose ``find_class`` accepts only the globals in ``_ALLOWED``.

    ``source`` names the file in error messages. ``encoding="bytes"`` (the
    default) decodes Python 2 ``str`` as ``bytes``, as the CIFAR README says.
    """

    def __init__(self, file: IO[bytes], source: str = "<pickle>", encoding: str = "bytes"):
        super().__init__(file, encoding=encoding)
        self.source = source

    def find_class(self, module: str, name: str) -> Any:
        try:
            return _ALLOWED[(module, name)]
        except KeyError:
            allowed = ", ".join(f"{m}.{n}" for m, n in _ALLOWED)
            raise UnsafePickleError(
                f"refusing to unpickle {module}.{name} from {self.source}: CIFAR batches hold only "
                f"dicts of numpy uint8 arrays, lists of ints and bytes (allowed globals: {allowed}). "
                "The file is not a genuine CIFAR batch; delete it and download the archive again."
            ) from None

    def persistent_load(self, pid: Any) -> Any:
        raise UnsafePickleError(f"refusing persistent id {pid!r} in {self.source}: CIFAR batches use none")

    def load(self) -> Any:
        try:
            result = super().load()
        except UnsafePickleError as error:
            if self.source not in str(error):
                raise UnsafePickleError(f"{error} (in {self.source})") from None
            raise
        return _resolve(result, {})


def safe_load(file: IO[bytes] | bytes | str | Path, source: str | None = None) -> Any:
    """Unpickle ``file`` (an open binary file, raw bytes or a path) with :class:`SafeUnpickler`."""
    if isinstance(file, (bytes, bytearray)):
        return SafeUnpickler(io.BytesIO(file), source or "<bytes>").load()
    if isinstance(file, (str, Path)):
        with open(file, "rb") as handle:
            return SafeUnpickler(handle, source or str(file)).load()
    return SafeUnpickler(file, source or getattr(file, "name", "<pickle>")).load()
