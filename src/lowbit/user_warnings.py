"""lowbit's own warnings shown as one line, ``lowbit CMD: warning: ...``, where a command runs.

lowbit's warning classes (``RecordsRecovered``, ``SurrogateUnusedWarning``,
``DeadSignWarning``, ...) are messages to the user that already name the problem
and the fix; Python's own and other libraries' warnings (DeprecationWarning,
torch's) are for the developer and keep Python's format with file and line.
The ``lowbit`` command and the sweep's cell workers (whose output goes to the
cell's ``cell.log``) show them this way; from Python the warnings keep their
classes and format (``pytest.warns``, ``warnings.simplefilter`` work as usual).
"""

from __future__ import annotations

import contextlib
import sys
import warnings
from typing import Iterator


def is_lowbit_warning(category: type) -> bool:
    """A warning class defined in one of lowbit's own modules (not in a plugin's package)."""
    return category.__module__.split(".")[0] == "lowbit"


@contextlib.contextmanager
def one_line_warnings(command: str) -> Iterator[None]:
    """Inside: lowbit's own warnings as ``lowbit COMMAND: warning: ...`` lines on stderr; others as Python shows them."""
    previous = warnings.showwarning

    def show(message, category, filename, lineno, file=None, line=None):  # noqa: ANN001 - warnings' signature
        if is_lowbit_warning(category):
            text = " ".join(str(message).split())  # one line, whatever the message holds
            print(f"lowbit {command}: warning: {text}", file=sys.stderr)  # sys.stderr now: a cell log under a sweep
        else:
            previous(message, category, filename, lineno, file, line)

    warnings.showwarning = show
    try:
        yield
    finally:
        warnings.showwarning = previous


__all__ = ["is_lowbit_warning", "one_line_warnings"]
