"""C++ extensions compiled on first use, with a pure-PyTorch fallback where none can be built.

lowbit ships C++ sources (``lowbit/quant/csrc``, ``lowbit/deploy/csrc``) rather than
binaries: :class:`NativeExtension` compiles one with ``torch.utils.cpp_extension.load``
(ninja and a C++ compiler) the first time a process needs it, into torch's extension
cache (``TORCH_EXTENSIONS_DIR``, default ``~/.cache/torch_extensions``) under a name
that includes a hash of the sources and flags. Later processes load the cached build in
a fraction of a second, and an edited source builds anew. The compiler reads a copy of
the sources kept in that build's own folder, not the installed files: torch's build
rules name the source paths, so two installs of one lowbit (a checkout and a venv, two
worktrees) would otherwise rebuild the same extension each time the other ran (~30 s);
with the copy they share one build. When the build fails (no
compiler, no ninja) the failure is remembered, one RuntimeWarning says what is lost,
and ``load()`` returns None from then on: every caller keeps a pure-PyTorch path with
the same results.

This module knows nothing of what the extensions compute; it sits below ``lowbit.quant``
and ``lowbit.deploy``, which each own one.
"""

from __future__ import annotations

import hashlib
import os
import sys
import tempfile
import threading
import warnings
from pathlib import Path
from typing import Any, Optional, Sequence


def _short_reason(error: BaseException) -> str:
    text = str(error).strip()
    return f"{type(error).__name__}: {text.splitlines()[-1] if text else repr(error)}"


class NativeExtension:
    """One C++ extension: its sources, its flags, and the once-per-process build or load.

    ``prefix`` names it (``prefix_`` + 12 hex digits of the sources' and flags' hash);
    ``purpose`` and ``fallback`` complete the warning printed when the build fails
    ("the C++ {purpose} could not be built (...); {fallback}").
    """

    def __init__(self, prefix: str, sources: Sequence[Path], cflags: Sequence[str], purpose: str, fallback: str) -> None:
        self.prefix = prefix
        self.sources = [Path(source) for source in sources]
        self.cflags = list(cflags)
        self.purpose = purpose
        self.fallback = fallback
        self._lock = threading.Lock()
        self._module: Any = None
        self._error: Optional[str] = None

    def name(self) -> str:
        """The module name: the prefix and a hash of the sources and flags."""
        digest = hashlib.sha256()
        for source in self.sources:
            digest.update(source.read_bytes())
        digest.update(" ".join(self.cflags).encode())
        return f"{self.prefix}_{digest.hexdigest()[:12]}"

    def is_cached(self) -> bool:
        """Whether a build of these exact sources is already in torch's extension cache."""
        try:
            from torch.utils.cpp_extension import _get_build_directory

            return any(Path(_get_build_directory(self.name(), verbose=False)).glob("*.so"))
        except Exception:  # a private helper of torch's: if it moves, just say "not cached"
            return False

    def staged_sources(self) -> list:
        """The sources as the compiler reads them: copies in the build's folder (same bytes, a path every
        install of this lowbit shares), written atomically if missing; the installed files if that fails."""
        try:
            from torch.utils.cpp_extension import _get_build_directory

            folder = Path(_get_build_directory(self.name(), verbose=False)) / "sources"
            folder.mkdir(parents=True, exist_ok=True)
            staged = []
            for source in self.sources:
                copy, text = folder / source.name, source.read_bytes()
                if not copy.is_file() or copy.read_bytes() != text:
                    handle, temporary = tempfile.mkstemp(dir=folder, prefix=f".{source.name}.")
                    with os.fdopen(handle, "wb") as out:
                        out.write(text)
                    os.replace(temporary, copy)  # another process may stage the same bytes at once: either wins
                staged.append(copy)
            return staged
        except Exception:  # a private helper of torch's, a read-only cache: compile the installed files
            return list(self.sources)

    def load(self) -> Any:
        """The compiled module (built and cached on the first call), or None with the reason in ``build_error()``."""
        with self._lock:
            if self._module is None and self._error is None:
                try:
                    from torch.utils.cpp_extension import load

                    if not self.is_cached():
                        print(f"lowbit: compiling the C++ {self.purpose} (once per machine, ~30 s) ...", file=sys.stderr, flush=True)
                    self._module = load(
                        self.name(), [str(source) for source in self.staged_sources()], extra_cflags=self.cflags, verbose=False
                    )
                except Exception as error:  # no compiler, no ninja, a failed build: fall back
                    self._error = _short_reason(error)
                    warnings.warn(
                        f"lowbit: the C++ {self.purpose} could not be built ({self._error}); {self.fallback} "
                        "Install a C++ compiler and ninja (pip install ninja) for the fast path.",
                        RuntimeWarning,
                        stacklevel=3,
                    )
            return self._module

    def build_error(self) -> Optional[str]:
        """Why the build failed (None if it succeeded or was not tried)."""
        return self._error


__all__ = ["NativeExtension"]
