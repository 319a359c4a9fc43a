"""The judge's branch of the exception tree.

::

    DriftlabelError
    └── JudgeError
        ├── JudgeUnavailableError   endpoint down / circuit open / retries spent: keep the item, retry later
        ├── BudgetExceededError     per-minute call budget spent: keep the item, retry after ``retry_after_s``
        ├── MalformedAnswerError    the endpoint answered, but not with a usable yes/no (or examples, name)
        │   └── KnownClassProposedError  asked to name a new class, it named one that exists already
        └── JudgeDataError          a bad request, data file or descriptions file (also a ``ValueError``)

The two "retry later" errors carry ``retry_after_s`` so a caller can schedule the retry instead of spinning.
"""

from __future__ import annotations

from driftlabel.errors import DriftlabelError

__all__ = [
    "BudgetExceededError",
    "JudgeDataError",
    "JudgeError",
    "JudgeUnavailableError",
    "KnownClassProposedError",
    "MalformedAnswerError",
]


class JudgeError(DriftlabelError):
    """Base of every error raised by :mod:`driftlabel.judge`."""


class JudgeUnavailableError(JudgeError):
    """The endpoint cannot answer now (circuit open, connection refused, 5xx/429/timeouts after retries).

    Nothing was accepted for the item: keep it and ask again after ``retry_after_s`` seconds.
    """

    def __init__(self, message: str, *, retry_after_s: float = 0.0) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class BudgetExceededError(JudgeError):
    """The per-minute call budget is spent; keep the item and ask again after ``retry_after_s`` seconds."""

    def __init__(self, message: str, *, retry_after_s: float = 0.0) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class MalformedAnswerError(JudgeError):
    """The endpoint answered with something that is not a clear yes/no; it is never read as a yes."""

    def __init__(self, message: str, *, raw: str | None = None) -> None:
        super().__init__(message)
        self.raw = raw


class KnownClassProposedError(MalformedAnswerError):
    """Asked to name a group of texts no known class covers, the endpoint named a known class (``label``).

    Not a new class: the group is more likely drifted wording of ``label`` (teach it those texts instead).
    """

    def __init__(self, message: str, *, label: str, raw: str | None = None) -> None:
        super().__init__(message, raw=raw)
        self.label = label


class JudgeDataError(JudgeError, ValueError):
    """A request, labelled data file or descriptions file is malformed; the message says what and where."""
