"""Errors raised by the data loaders."""

from __future__ import annotations

__all__ = ["DataError", "DataFileNotFoundError", "missing_files_error"]


class DataError(ValueError):
    """A data set file that is missing, corrupt, unsafe or not in the expected format.

    The message names the file, what was expected, and how to fix it.
    """


class DataFileNotFoundError(DataError, FileNotFoundError):
    """A data set file that is not where it was looked for (also a ``FileNotFoundError``)."""


def missing_files_error(dataset: str, expected: str, searched: list, how: str) -> DataFileNotFoundError:
    """The error for files not found: names them, the directories searched and how to provide them."""
    where = ", ".join(str(d) for d in searched)
    return DataFileNotFoundError(
        f"{dataset}: could not find {expected} (looked in {where}). {how} "
        "Point lowbit at the directory that holds them with --data-dir DIR or the LOWBIT_DATA "
        "environment variable; nothing is downloaded automatically."
    )
