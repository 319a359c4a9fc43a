"""The LLM judge: validates uncertain predictions, one binary question per candidate (R.E.D. step 3).

``Judge`` talks to any OpenAI-compatible endpoint through the ``openai`` client; ``SimulatedExpert`` is the
offline stand-in for an LLM (an OpenAI-compatible HTTP server answering from a labelled file). No Kafka and
no model code here: the caller passes descriptions and nearest examples in each :class:`Candidate`.
"""

from driftlabel.judge.breaker import BreakerState, CircuitBreaker
from driftlabel.judge.cache import VerdictCache, cache_key, description_version
from driftlabel.judge.data import read_labelled
from driftlabel.judge.descriptions import generate_descriptions, load_descriptions, save_descriptions
from driftlabel.judge.errors import (
    BudgetExceededError,
    JudgeDataError,
    JudgeError,
    JudgeUnavailableError,
    KnownClassProposedError,
    MalformedAnswerError,
)
from driftlabel.judge.judge import Judge, JudgeStats
from driftlabel.judge.local_llm import LocalLlamaServer, find_gguf, llama_cpp_available
from driftlabel.judge.parse import parse_verdict
from driftlabel.judge.prompts import (
    build_describe_messages,
    build_generate_messages,
    build_propose_messages,
    build_validate_messages,
)
from driftlabel.judge.records import Candidate, JudgeOutcome, JudgeRequest, OutcomeStatus, Verdict
from driftlabel.judge.settings import JudgeSettings, load_judge_settings
from driftlabel.judge.simulated import FAILURE_KINDS, SimulatedExpert

__all__ = [
    "FAILURE_KINDS",
    "BreakerState",
    "BudgetExceededError",
    "Candidate",
    "CircuitBreaker",
    "Judge",
    "JudgeDataError",
    "JudgeError",
    "JudgeOutcome",
    "JudgeRequest",
    "JudgeSettings",
    "JudgeStats",
    "JudgeUnavailableError",
    "KnownClassProposedError",
    "LocalLlamaServer",
    "MalformedAnswerError",
    "OutcomeStatus",
    "SimulatedExpert",
    "Verdict",
    "VerdictCache",
    "build_describe_messages",
    "build_generate_messages",
    "build_propose_messages",
    "build_validate_messages",
    "cache_key",
    "description_version",
    "find_gguf",
    "generate_descriptions",
    "llama_cpp_available",
    "load_descriptions",
    "load_judge_settings",
    "parse_verdict",
    "read_labelled",
    "save_descriptions",
]
