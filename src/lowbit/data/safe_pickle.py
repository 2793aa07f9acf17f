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
"""

from __future__ import annotations

import codecs
import io
import pickle
from pathlib import Path
from typing import IO, Any, Callable, Dict, Tuple

import numpy as np

try:  # numpy >= 2
    from numpy._core.multiarray import _reconstruct
except ImportError:  # pragma: no cover - numpy 1.x
    from numpy.core.multiarray import _reconstruct  # type: ignore[no-redef]

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


_ALLOWED: Dict[Tuple[str, str], Callable[..., Any] | type] = {
    ("numpy.core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    ("_codecs", "encode"): _latin1_encode,
}


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


def safe_load(file: IO[bytes] | bytes | str | Path, source: str | None = None) -> Any:
    """Unpickle ``file`` (an open binary file, raw bytes or a path) with :class:`SafeUnpickler`."""
    if isinstance(file, (bytes, bytearray)):
        return SafeUnpickler(io.BytesIO(file), source or "<bytes>").load()
    if isinstance(file, (str, Path)):
        with open(file, "rb") as handle:
            return SafeUnpickler(handle, source or str(file)).load()
    return SafeUnpickler(file, source or getattr(file, "name", "<pickle>")).load()
