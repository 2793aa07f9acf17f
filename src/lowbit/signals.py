"""Process signals: SIGTERM handled like Ctrl-C, so a graceful stop keeps what was computed."""

from __future__ import annotations

import signal
import threading


class sigterm_as_interrupt:
    """Within the block, SIGTERM raises KeyboardInterrupt (main thread only, where signals are handled).

    ``kill PID`` (and a cluster scheduler's stop) then ends a run the way
    Ctrl-C does: the command saves what it has and says how to resume.
    """

    def __enter__(self) -> "sigterm_as_interrupt":
        self.previous = None
        if threading.current_thread() is threading.main_thread():
            self.previous = signal.signal(signal.SIGTERM, _raise_keyboard_interrupt)
        return self

    def __exit__(self, *exc) -> bool:
        if self.previous is not None:
            signal.signal(signal.SIGTERM, self.previous)
        return False


def _raise_keyboard_interrupt(signum, frame):
    raise KeyboardInterrupt
