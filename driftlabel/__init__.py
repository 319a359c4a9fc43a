"""driftlabel: streaming text classification for drifting data.

Online per-subset experts label every text at once, an LLM judge checks only the uncertain ones, and
what the judge accepts flows back into incremental training (R.E.D., Recursive Expert Delegation).

The code lives in three subpackages, one per concern:

- :mod:`driftlabel.models`: embeddings, label subsets, experts, uncertainty, drift.
- :mod:`driftlabel.judge`: LLM validation of uncertain predictions.
- :mod:`driftlabel.streams`: Kafka topics, the faust service, the CLI.
"""

from driftlabel.config import ConfigError, DriftlabelSettings, load_settings
from driftlabel.errors import DriftlabelError

__version__ = "0.1.0"

__all__ = ["ConfigError", "DriftlabelError", "DriftlabelSettings", "__version__", "load_settings"]
