"""The ``driftlabel.models`` branch of the exception tree.

::

    DriftlabelError
    └── ModelError                      anything the R.E.D. core refuses or cannot do
        ├── InvalidDataError (ValueError)   bad texts/labels/arrays given to fit/learn/predict
        ├── ModelFileError                  a saved model directory is missing, corrupt or foreign
        ├── UnknownLabelError (KeyError)    a label the model does not know
        └── SolveStopped                    a background re-solve nobody waits for any more was stopped

Every message says what was wrong and what to do next; nothing given to a refused call is half-applied.
"""

from __future__ import annotations

from driftlabel.errors import DriftlabelError

__all__ = ["InvalidDataError", "ModelError", "ModelFileError", "SolveStopped", "UnknownLabelError"]


class ModelError(DriftlabelError):
    """Root of every error raised by :mod:`driftlabel.models`."""


class InvalidDataError(ModelError, ValueError):
    """Input data (texts, labels, embeddings, flags) is malformed; the model is left unchanged."""


class ModelFileError(ModelError):
    """A model directory cannot be loaded: missing file, bad checksum, unknown format or version."""


class SolveStopped(ModelError):
    """A background re-solve was stopped because every model that held it dropped it (a new label
    changed the structure it was solving). Only its abandoned future holds this: no caller sees it."""


class UnknownLabelError(ModelError, KeyError):
    """A label that the model does not know was named (remove/describe/nearest_examples)."""

    def __str__(self) -> str:  # KeyError would repr() the message; show it as written
        return str(self.args[0]) if self.args else ""
