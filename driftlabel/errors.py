"""The root of driftlabel's exception tree.

Every error driftlabel raises on purpose derives from :class:`DriftlabelError`, so a caller can catch
everything of ours in one clause and still tell the kinds apart. Each subpackage defines its own branch
(``driftlabel.models.errors``, ``driftlabel.judge.errors``, ``driftlabel.streams.errors``); the tree is
drawn in ``docs/errors.md``.
"""

from __future__ import annotations

__all__ = ["DriftlabelError"]


class DriftlabelError(Exception):
    """Base class of every error raised by driftlabel.

    Messages say what went wrong *and what to do next*, because they are read by people running a service.
    """
