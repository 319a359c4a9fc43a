"""The judge's settings (section ``judge``, environment prefix ``DRIFTLABEL_JUDGE_``).

Build them with :func:`load_judge_settings` (or ``driftlabel.config.load_settings(JudgeSettings, ...)``),
never at import time, so a test can override any field without touching the environment.
"""

from __future__ import annotations

import os
from typing import Any, ClassVar, Literal
from urllib.parse import urlsplit, urlunsplit

from pydantic import Field, SecretStr, model_validator
from pydantic_settings import SettingsConfigDict

from driftlabel.config import DriftlabelSettings, load_settings

__all__ = ["AnswerFormat", "JudgeSettings", "load_judge_settings"]

AnswerFormat = Literal["json_schema", "json_object", "text"]


class JudgeSettings(DriftlabelSettings):
    """Where the judge's LLM lives and how hard the judge may lean on it.

    Defaults point at a local simulated expert (``driftlabel judge-sim``), so nothing leaves the machine
    unless ``base_url`` and ``api_key`` are set on purpose.
    """

    model_config = SettingsConfigDict(env_prefix="DRIFTLABEL_JUDGE_", frozen=True, extra="forbid")
    section: ClassVar[str] = "judge"

    # endpoint
    base_url: str = Field("http://127.0.0.1:8089/v1", description="OpenAI-compatible base URL (ends in /v1)")
    model: str = Field("simulated-expert", min_length=1, description="model name sent to the endpoint")
    api_key: SecretStr = Field(SecretStr("not-needed"), description="API key; local servers ignore it")
    answer_format: AnswerFormat = Field(
        "json_schema",
        description="json_schema (structured output), json_object, or text (strict yes/no); "
        "json_* falls back to text once if the endpoint refuses response_format",
    )
    logprobs: bool = Field(False, description="ask for logprobs and report a confidence per verdict")
    temperature: float = Field(0.0, ge=0.0, le=2.0)
    max_answer_tokens: int = Field(16, ge=1, le=4096, description="max_tokens for a yes/no answer")
    max_description_tokens: int = Field(96, ge=8, le=4096, description="max_tokens for a label description")
    max_generation_tokens: int = Field(
        1024, ge=16, le=16384, description="max_tokens for synthetic examples or a class proposal"
    )
    max_generated_examples: int = Field(50, ge=1, description="most examples one generate_examples may ask")

    # judging
    question: Literal["validate", "choose"] = Field(
        "validate",
        description="validate: one yes/no call per candidate, best first, until a yes (PRODUCT.md's "
        "recursion); choose: ONE call showing the max_depth best candidates, the endpoint picks one or none "
        "(the others become hard negatives). Measured with the simulated expert (docs/models.md): at 0.10 "
        "calls per text choose bought ~1.7x the labels, +1.0 points on CLINC150 and +1.9 on BANKING77",
    )
    batch_size: int = Field(
        1,
        ge=1,
        le=32,
        description="up to this many items share ONE call: with question = choose a numbered list of "
        "texts, each with its candidates; with validate a numbered list of yes/no questions (text, proposed "
        "label), a rejected item's next candidate joining a later call; the labels' descriptions and "
        "examples shown once. 1 = one call per question. Cuts calls, not tokens much (docs/judge.md)",
    )
    batch_wait_ms: float = Field(
        300.0,
        ge=0,
        le=60_000,
        description="how long the first item of a batch (of choices or yes/no questions) waits for others "
        "to join it: at R judged texts/s a batch of B fills in about B/R s, a partial one costs a whole "
        "call (BANKING77 through the service at ~15 judged texts/s: 300 ms gave 3.5 texts a call, 2000 ms "
        "4.0; docs/judge.md)",
    )
    verify_below: float = Field(
        0.0,
        ge=0.0,
        le=1.0,
        description="with question = choose: a pick whose probability (the experts') is below this "
        "fraction of their favourite candidate's is asked again as a yes/no question (one more call; with "
        "batch_size > 1 up to batch_size such checks share one); if the two answers disagree only that no "
        "is learned. 0 = off; needs candidates with probabilities",
    )
    max_depth: int = Field(3, ge=1, description="how many ranked candidates to ask about before unresolved")
    n_examples: int = Field(6, ge=0, description="known-good examples shown per label (c)")
    max_text_chars: int = Field(2000, ge=16, description="longer texts are cut (and marked) in the prompt")

    # transport
    timeout_s: float = Field(30.0, gt=0, description="per-call timeout")
    concurrency: int = Field(32, ge=1, description="max calls in flight per Judge")
    max_retries: int = Field(3, ge=0, description="retries after the first attempt on 429/5xx/timeouts")
    backoff_base_s: float = Field(0.5, ge=0, description="first retry waits up to this (doubles each time)")
    backoff_max_s: float = Field(10.0, ge=0, description="cap on one retry wait")

    # circuit breaker
    breaker_failures: int = Field(5, ge=1, description="consecutive failed calls that open the circuit")
    breaker_reset_s: float = Field(
        15.0, gt=0, description="open time before a half-open probe is let through"
    )

    # budget (0 = unlimited)
    max_calls_per_minute: int = Field(0, ge=0, description="calls to the endpoint per rolling minute")
    max_calls_per_item: int = Field(8, ge=0, description="calls (retries included) spent on one item")

    # cache
    cache_size: int = Field(100_000, ge=0, description="verdicts kept in the LRU cache (0 = off)")

    # descriptions
    descriptions_file: str | None = Field(
        None, description="YAML/JSON label descriptions, used for candidates that come without one"
    )

    @property
    def endpoint(self) -> str:
        """``base_url`` safe to log: a password in it (``https://user:pw@host``) and the query are masked."""
        parts = urlsplit(self.base_url)
        netloc = parts.netloc
        if "@" in netloc:
            userinfo, host = netloc.rsplit("@", 1)
            user = userinfo.split(":", 1)[0]
            netloc = f"{user}:***@{host}" if ":" in userinfo else f"***@{host}"
        query = "***" if parts.query else ""
        return urlunsplit((parts.scheme, netloc, parts.path, query, ""))

    @model_validator(mode="after")
    def _check(self) -> JudgeSettings:
        if not self.base_url.startswith(("http://", "https://")):
            raise ValueError(f"base_url must start with http:// or https://, got {self.base_url!r}")
        if self.verify_below > 0 and self.question != "choose":
            raise ValueError(
                "verify_below > 0 needs question = 'choose' (yes/no questions are already one label at a "
                "time); set DRIFTLABEL_JUDGE_QUESTION=choose or verify_below = 0"
            )
        if self.backoff_max_s < self.backoff_base_s:
            raise ValueError("backoff_max_s must be >= backoff_base_s")
        return self


def load_judge_settings(config_file: str | os.PathLike[str] | None = None, **overrides: Any) -> JudgeSettings:
    """Overrides > ``DRIFTLABEL_JUDGE_*`` environment > ``[judge]`` of the config file > defaults."""
    return load_settings(JudgeSettings, config_file, **overrides)
