"""Settings of the streaming service: one frozen class per concern (Kafka, stream, metrics).

Built with :func:`driftlabel.config.load_settings`, so values come from keyword overrides, the
environment (``DRIFTLABEL_KAFKA_*``, ``DRIFTLABEL_STREAM_*``, ``DRIFTLABEL_METRICS_*``) and the
``[kafka]`` / ``[stream]`` / ``[metrics]`` sections of the config file. The SASL password is a
``SecretStr``: it never shows in a repr, a log line or ``--print-config``.
"""

from __future__ import annotations

import ssl
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, SecretStr, model_validator
from pydantic_settings import SettingsConfigDict

from driftlabel.config import DriftlabelSettings

__all__ = ["KafkaSettings", "MetricsSettings", "StreamSettings"]

#: glibc's mmap threshold the worker sets unless told otherwise (docs/reliability.md, Memory)
DEFAULT_MMAP_THRESHOLD = 131072


class KafkaSettings(DriftlabelSettings):
    """Where the cluster is, how to authenticate, how topics are named and created."""

    section = "kafka"
    model_config = SettingsConfigDict(env_prefix="DRIFTLABEL_KAFKA_", frozen=True, extra="forbid")

    bootstrap_servers: str = Field("127.0.0.1:9092", description="comma-separated host:port list")
    topic_prefix: str = Field("driftlabel.", description="prefix of every topic name")
    partitions: int = Field(4, ge=1, description="partitions of topics the service creates")
    replication_factor: int = Field(1, ge=1)
    group_id: str = Field("driftlabel", description="consumer group (faust app id) of the workers")
    client_id: str = "driftlabel"
    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] | None = None
    sasl_username: str | None = None
    sasl_password: SecretStr | None = None
    ssl_cafile: Path | None = None
    ssl_certfile: Path | None = None
    ssl_keyfile: Path | None = None
    # Group join waits half the session timeout on some brokers: keep it short but safe.
    session_timeout_ms: int = Field(6000, ge=1000)
    heartbeat_interval_ms: int = Field(1500, ge=100)
    request_timeout_ms: int = Field(30000, ge=1000)
    fetch_max_wait_ms: int = Field(
        20, ge=1, description="longest a fetch waits for data (a latency bound on brokers that hold fetches)"
    )
    linger_ms: int = Field(
        1, ge=0, description="producer linger: how long a send waits to share a request (latency vs requests)"
    )
    create_topics: bool = Field(True, description="create missing topics at start (explicitly, never auto)")
    transactions: bool = Field(
        False,
        description="use Kafka transactions (faust exactly_once) where the broker has them (Kafka, "
        "Redpanda); the worker's own dedupe holds without them",
    )

    @model_validator(mode="after")
    def _check_security(self) -> KafkaSettings:
        if self.security_protocol.startswith("SASL") and not (self.sasl_mechanism and self.sasl_username):
            raise ValueError(
                "security_protocol SASL_* needs sasl_mechanism and sasl_username (and sasl_password)"
            )
        if self.heartbeat_interval_ms * 3 > self.session_timeout_ms:
            raise ValueError("heartbeat_interval_ms must be at most a third of session_timeout_ms")
        return self

    @property
    def servers(self) -> list[str]:
        return [s.strip() for s in self.bootstrap_servers.split(",") if s.strip()]

    def ssl_context(self) -> ssl.SSLContext | None:
        """A TLS context for SSL / SASL_SSL, else None."""
        if not self.security_protocol.endswith("SSL"):
            return None
        ctx = ssl.create_default_context(cafile=str(self.ssl_cafile) if self.ssl_cafile else None)
        if self.ssl_certfile:
            ctx.load_cert_chain(str(self.ssl_certfile), str(self.ssl_keyfile) if self.ssl_keyfile else None)
        return ctx

    def client_kwargs(self) -> dict[str, Any]:
        """Connection keyword arguments shared by aiokafka producers, consumers and admin clients."""
        kw: dict[str, Any] = {
            "bootstrap_servers": self.servers,
            "client_id": self.client_id,
            "security_protocol": self.security_protocol,
            "request_timeout_ms": self.request_timeout_ms,
        }
        ctx = self.ssl_context()
        if ctx is not None:
            kw["ssl_context"] = ctx
        if self.security_protocol.startswith("SASL"):
            kw["sasl_mechanism"] = self.sasl_mechanism
            kw["sasl_plain_username"] = self.sasl_username
            kw["sasl_plain_password"] = self.sasl_password.get_secret_value() if self.sasl_password else None
        return kw


class StreamSettings(DriftlabelSettings):
    """How the worker batches, routes, retries and checkpoints."""

    section = "stream"
    model_config = SettingsConfigDict(env_prefix="DRIFTLABEL_STREAM_", frozen=True, extra="forbid")

    batch_size: int = Field(64, ge=1, description="micro-batch size for embedding")
    batch_within_s: float = Field(
        0.01, gt=0, description="close a partial micro-batch after this long (a latency bound)"
    )
    max_message_bytes: int = Field(65536, ge=64, description="larger records go to dead-letter")
    max_text_chars: int = Field(4000, ge=1, description="longer texts go to dead-letter")
    top_k: int = Field(5, ge=1, description="candidates per label message")
    unlabelled_share: float = Field(
        0.0,
        ge=0.0,
        le=1.0,
        description="self-training, opt-in: the share of texts labelled without the judge (final, "
        "predicted) appended to `training` as unlabelled `stream` records with their embedding (chosen by "
        "id); re-solves learn them at experts.self_training weight, a routing twin picks what to judge. "
        "Measured (docs/models.md, 3 seeds): CLINC150 stationary +0.5 points, BANKING77 -0.2, CLINC150 "
        "class-incremental -0.7 (-1.8 without the twin); 0: off",
    )
    judge_target_share: float = Field(0.10, ge=0.0, le=1.0, description="share of texts sent to the judge")
    judge_calls_per_text: float = Field(
        0.0,
        ge=0.0,
        le=10.0,
        description="judge budget in endpoint calls per streamed text, every recursive delegation call "
        "counted (0: off, judge_target_share alone rules). When set, the routed share follows the measured "
        "calls per judged text so the calls stay within this budget; judge_target_share caps the share",
    )
    judge_rate_control: bool = Field(
        True,
        description="let models.drift.JudgeRateController steer the judged share: judge_target_share while "
        "the experts learn, judge_maintenance_share once the uncertainty stopped falling, back up on drift "
        "(river ADWIN on entropy, judge rejections and the class mix); off: a fixed judge_target_share",
    )
    proposals: bool = Field(
        True,
        description="texts the judge leaves unresolved (and far ones, proposal_far_texts) gather in a pool; "
        "a dense group of them is proposed as a new class on the proposals topic (named by the judge "
        "endpoint when it can)",
    )
    proposal_far_texts: bool = Field(
        True,
        description="texts labelled without the judge join the pool too when their nearest stored example "
        "is below the proposal_far_quantile line (class-incremental CLINC150 / BANKING77, default judge, "
        "seed 0, at the out-of-scope line: 81.4 / 79.4 % without, 83.2 / 85.7 % with; bench_loop.py, "
        "docs/models.md)",
    )
    proposal_far_quantile: float = Field(
        0.25,
        gt=0.0,
        lt=1.0,
        description="proposal_far_texts: a text is far when its nearest stored example is less similar than "
        "this quantile of the store's own leave-one-out similarities (the out-of-scope line, "
        "experts.oos_quantile, is 0.05). Class-incremental CLINC150 / BANKING77, default judge, seeds 0-2 "
        "(bench_loop.py, docs/models.md): 0.05 84.0 / 83.4 %, 0.15 87.0 / 84.9 %, 0.25 89.8 / 84.3 % "
        "(with proposal_known_quantile 0.75), stationary flat; looser pools more texts of known classes "
        "too, and each group of them named costs a call (stationary BANKING77 per 9,233 texts: 45-61 at "
        "0.15, 117-168 at 0.25, 73-111 at 0.25 with proposal_known_quantile)",
    )
    proposal_known_quantile: float = Field(
        0.75,
        ge=0.0,
        lt=1.0,
        description="a group whose centroid is at least as similar to a known label's centroid as this "
        "quantile of the stored examples are to their own label's centroid is taken for the edge of that "
        "class: not named (no judge call), counted as outcome=near_known; 0 turns the check off (every "
        "group is named). At proposal_far_quantile 0.25, seeds 0-2 (bench_loop.py, docs/models.md): "
        "naming calls on stationary BANKING77 134 -> 93 per 9,233 texts, new classes added in the "
        "class-incremental streams 48.3 -> 48.0 of CLINC150's 50 and all of BANKING77's 25, final accuracy "
        "within 0.16 points of no check; 0.6 and 0.5 save more calls but lose new classes",
    )
    proposal_learn_known: bool = Field(
        True,
        description="a group the judge endpoint names after a known class teaches that class the group's "
        "texts the experts rank first under it too (training records, source judge; never a text whose "
        "candidates the judge rejected): two opinions agree on each, and such a group is a known class's "
        "wording far from its stored examples. Default judge, seeds 0-2 (bench_loop.py, docs/models.md): "
        "BANKING77 stationary / shift / class-incremental 88.27 -> 88.45, 88.07 -> 88.72, 84.34 -> 84.35 %, "
        "naming calls 22-31 % fewer there (the taught texts are no longer far); CLINC150 within 0.1 point",
    )
    proposal_min_size: int = Field(8, ge=2, description="texts a group needs to be proposed")
    proposal_similarity: float = Field(0.55, gt=-1.0, lt=1.0, description="cosine similarity within a group")
    auto_add_proposals: bool = Field(
        False,
        description="add a named proposal as a class at once (a control add_class with the group's own "
        "texts: not those a stored example is nearer than the group's centroid)",
    )
    generate_examples: bool = Field(
        True, description="add_class with only a description asks the judge endpoint for synthetic examples"
    )
    generated_examples: int = Field(5, ge=1, le=50, description="how many synthetic examples to ask for")
    judge_maintenance_share: float = Field(
        0.03, ge=0.0, le=1.0, description="judged share once the loop has saturated (rate control on)"
    )
    judge_max_burst: float = Field(20.0, ge=1.0, description="routing credit that may pile up in quiet times")
    routing_window: int = Field(2000, ge=10, description="recent uncertainties the threshold is taken from")
    uncertainty: Literal["margin", "entropy", "random"] = Field(
        "margin",
        description="what routes a text to the judge: 1 - margin (p1 - p2), or normalised entropy; "
        "random (a control, not for production) routes the same share chosen by id, to measure what "
        "uncertainty routing buys on a stream",
    )
    judge_depth_candidates: int = Field(3, ge=1, description="candidates (with examples) sent to the judge")
    judge_retry_s: float = Field(1.0, gt=0, description="first wait when the judge is unavailable")
    judge_retry_max_s: float = Field(30.0, gt=0)
    judge_concurrency: int = Field(
        4, ge=1, description="judge calls in flight per worker (each with up to judge.batch_size items)"
    )
    commit_interval_s: float = Field(
        1.0, gt=0, description="how often consumed offsets are committed (a crash repeats at most this much)"
    )
    checkpoint_dir: Path = Field(Path(".driftlabel/checkpoints"), description="where checkpoints are kept")
    checkpoint_every_s: float = Field(60.0, gt=0)
    checkpoint_keep: int = Field(3, ge=1)
    learn_batch: int = Field(256, ge=1, description="training records read from the log in one poll")
    learn_step: int = Field(
        16,
        ge=0,
        description="at most this many training records learned in one model-thread job, so labelling "
        "runs between them (learning is batch-invariant: the model is the same); 0: a whole poll at once",
    )
    refit_every: int = Field(
        0,
        ge=0,
        description="full refit of the experts after this many newly learned valid examples, on the copy "
        "the live learner's step is applied to, so labelling goes on (0: never; the default, since an "
        "incremental update is exact)",
    )
    reform_every: int = Field(
        2000,
        ge=0,
        description="re-form the label subsets on a copy in the background after this many newly learned "
        "valid examples, then swap it in (0: never); labelling never pauses for it",
    )
    reform_in: Literal["process", "thread"] = Field(
        "process", description="where the re-forming runs: a child process (no GIL sharing) or a thread"
    )
    embedding_cache: int = Field(20000, ge=0, description="embeddings kept so learning need not re-embed")
    seed_wait_s: float = Field(600.0, gt=0, description="how long a fresh worker waits for seed examples")
    malloc_mmap_threshold: int | None = Field(
        None,
        ge=0,
        le=32 * 2**20,
        description="glibc (Linux): allocations of at least this many bytes get their own mapping, "
        "given back to the OS when freed (glibc's dynamic threshold off); 0: glibc's default. Without it "
        "the worker's RSS kept growing with freed re-solve temporaries while its live heap stayed flat "
        "(docs/reliability.md, Memory). None (auto): 131072, except with the sentence-transformers "
        "embedder, whose torch activations (MBs per batch) then cost a page fault per touch: 20 % fewer "
        "texts/s (219 -> 176) measured, so glibc's default stays there",
    )
    malloc_arena_max: int = Field(
        2, ge=0, description="glibc: at most this many malloc arenas (0: glibc's default, 8 per core)"
    )

    @model_validator(mode="after")
    def _check_candidates(self) -> StreamSettings:
        if self.judge_depth_candidates > self.top_k:
            raise ValueError(
                f"judge_depth_candidates ({self.judge_depth_candidates}) > top_k ({self.top_k}): the judge "
                "is shown the label message's candidates, so it would silently get only top_k; raise "
                "DRIFTLABEL_STREAM_TOP_K (or [stream] top_k) to at least judge_depth_candidates"
            )
        return self

    def mmap_threshold_for(self, embedder_kind: str) -> int:
        """The mmap threshold to apply: the setting, or the auto choice for this embedder."""
        if self.malloc_mmap_threshold is not None:
            return self.malloc_mmap_threshold
        return 0 if embedder_kind == "sentence-transformers" else DEFAULT_MMAP_THRESHOLD


class MetricsSettings(DriftlabelSettings):
    """The per-worker Prometheus page."""

    section = "metrics"
    model_config = SettingsConfigDict(env_prefix="DRIFTLABEL_METRICS_", frozen=True, extra="forbid")

    enabled: bool = True
    host: str = "127.0.0.1"
    port: int = Field(9464, ge=0, le=65535, description="0 picks a free port (printed at start)")
    share_window: int = Field(1000, ge=10, description="items in the rolling uncertain share")
    liveness_timeout_s: float = Field(
        30.0, gt=0, description="/healthz fails when the event loop has not run for this long"
    )
