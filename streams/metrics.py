"""Prometheus metrics of one worker, served on its own ``/metrics`` page (with the probes, see
:mod:`~driftlabel.streams.health`).

Each worker owns a private :class:`~prometheus_client.CollectorRegistry`, so several workers can live in
one process (tests, the demo) without clashing, and nothing is registered at import time. Every name
starts with ``driftlabel_``; :data:`METRIC_NAMES` is the documented list (docs/streaming.md).
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from driftlabel.streams.health import Check, StatusServer
from driftlabel.streams.settings import MetricsSettings

__all__ = ["METRIC_NAMES", "ServiceMetrics"]

#: Names as they appear on /metrics (counters get the ``_total`` suffix there).
METRIC_NAMES = (
    "driftlabel_items_total",
    "driftlabel_prediction_entropy",
    "driftlabel_uncertain_share",
    "driftlabel_routing_threshold",
    "driftlabel_judge_target_share",
    "driftlabel_proposals_total",
    "driftlabel_judge_requests_total",
    "driftlabel_judge_outcomes_total",
    "driftlabel_judge_latency_seconds",
    "driftlabel_judge_tokens_total",
    "driftlabel_judge_in_flight",
    "driftlabel_judge_queue_depth",
    "driftlabel_judge_unavailable_total",
    "driftlabel_training_examples_total",
    "driftlabel_classes",
    "driftlabel_subsets",
    "driftlabel_model_version",
    "driftlabel_drift_events_total",
    "driftlabel_end_to_end_latency_seconds",
    "driftlabel_dead_letters_total",
    "driftlabel_consumer_lag",
    "driftlabel_batch_size",
    "driftlabel_checkpoints_total",
    "driftlabel_embed_seconds_total",
    "driftlabel_control_ops_total",
    "driftlabel_refits_total",
    "driftlabel_refit_seconds",
    "driftlabel_reforms_total",
    "driftlabel_reform_seconds",
    "driftlabel_duplicates_total",
    "driftlabel_log_repeats_total",
    "driftlabel_forwarded_total",
    "driftlabel_verdict_log_total",
    "driftlabel_verdict_log_latency_seconds",
    "driftlabel_verdict_log_tokens_total",
)

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)


class ServiceMetrics:
    """All metrics of one worker, plus the rolling uncertain share."""

    def __init__(self, settings: MetricsSettings | None = None) -> None:
        self.settings = settings or MetricsSettings()
        r = self.registry = CollectorRegistry(auto_describe=True)
        self.items = Counter(
            "driftlabel_items", "Labels published, by status and finality", ["status", "final"], registry=r
        )
        self.entropy = Histogram(
            "driftlabel_prediction_entropy",
            "Entropy of the experts' combined scores",
            buckets=(0.05, 0.1, 0.2, 0.4, 0.6, 0.8, 1.0, 1.5, 2.0, 3.0, 5.0),
            registry=r,
        )
        self.uncertain_share = Gauge(
            "driftlabel_uncertain_share",
            "Share of recent texts routed to the judge (rolling window)",
            registry=r,
        )
        self.threshold = Gauge(
            "driftlabel_routing_threshold", "Current adaptive uncertainty threshold", registry=r
        )
        self.judge_requests = Counter(
            "driftlabel_judge_requests", "Judge answers, by verdict", ["verdict"], registry=r
        )
        self.judge_outcomes = Counter(
            "driftlabel_judge_outcomes", "Judged items, by final status", ["status"], registry=r
        )
        self.judge_latency = Histogram(
            "driftlabel_judge_latency_seconds",
            "Latency of one judge answer",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.judge_tokens = Counter("driftlabel_judge_tokens", "Tokens spent by the judge", registry=r)
        self.judge_in_flight = Gauge("driftlabel_judge_in_flight", "Judge calls in flight", registry=r)
        self.judge_queue = Gauge(
            "driftlabel_judge_queue_depth",
            "Judge requests waiting (routed, not yet finally labelled) on this worker",
            registry=r,
        )
        self.judge_unavailable = Counter(
            "driftlabel_judge_unavailable", "Judge retries (circuit open / budget)", ["reason"], registry=r
        )
        self.training = Counter(
            "driftlabel_training_examples",
            "Training records learned, by source and validity",
            ["source", "valid"],
            registry=r,
        )
        self.classes = Gauge("driftlabel_classes", "Classes known to the model", registry=r)
        self.subsets = Gauge("driftlabel_subsets", "Label subsets (experts)", registry=r)
        self.model_version = Gauge(
            "driftlabel_model_version", "Model version (increments on every change)", registry=r
        )
        self.drift_events = Counter(
            "driftlabel_drift_events",
            "Detected upward shifts, by signal (entropy, rejection, class_mix)",
            ["signal"],
            registry=r,
        )
        self.proposals = Counter(
            "driftlabel_proposals",
            "Dense groups of unresolved or far texts, by outcome: added, named and unnamed (published), "
            "known (named after a known class: not published; its texts the experts rank first under that "
            "class are taught to it), near_known (its centroid as near a known "
            "class's as most stored examples are to their own: not named, no judge call)",
            ["outcome"],
            registry=r,
        )
        self.judge_target = Gauge(
            "driftlabel_judge_target_share",
            "Share of texts the router aims to send to the judge now (rate control)",
            registry=r,
        )
        self.e2e_latency = Histogram(
            "driftlabel_end_to_end_latency_seconds",
            "From reading a text to publishing its final label",
            ["path"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.dead_letters = Counter(
            "driftlabel_dead_letters",
            "Records sent to dead-letter, by reason",
            ["reason", "topic"],
            registry=r,
        )
        self.lag = Gauge(
            "driftlabel_consumer_lag",
            "Records behind the high-water mark",
            ["topic", "partition"],
            registry=r,
        )
        self.batch_size = Histogram(
            "driftlabel_batch_size",
            "Texts per micro-batch",
            buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256),
            registry=r,
        )
        self.checkpoints = Counter("driftlabel_checkpoints", "Checkpoints written", registry=r)
        self.embed_seconds = Counter(
            "driftlabel_embed_seconds", "Time spent embedding texts for prediction", registry=r
        )
        self.control_ops = Counter("driftlabel_control_ops", "Control operations applied", ["op"], registry=r)
        self.refits = Counter(
            "driftlabel_refits", "Full refits of the experts (every stream.refit_every examples)", registry=r
        )
        self.refit_seconds = Histogram(
            "driftlabel_refit_seconds",
            "Duration of one full refit (on a copy of the model while the worker is live)",
            buckets=(0.1, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0, 600.0),
            registry=r,
        )
        self.reforms = Counter(
            "driftlabel_reforms",
            "Subset re-formings swapped in (built on a copy in the background)",
            registry=r,
        )
        self.reform_seconds = Histogram(
            "driftlabel_reform_seconds",
            "Duration of one re-forming, by phase (background: labelling goes on; swap: on the model thread)",
            ["phase"],
            buckets=(0.01, 0.05, 0.1, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0),
            registry=r,
        )
        self.model_swaps = Counter("driftlabel_model_swaps", "Models swapped in by the learner", registry=r)
        self.duplicates = Counter(
            "driftlabel_duplicates",
            "Outputs not written because the topic already had them (final label, dead letter, judge pair)",
            ["what"],
            registry=r,
        )
        self.log_repeats = Counter(
            "driftlabel_log_repeats",
            "Learning-log records skipped as repeats of one already learned",
            registry=r,
        )
        self.forwarded = Counter(
            "driftlabel_forwarded",
            "Texts moved to their id's home partition, control ops appended to the learning log",
            ["what"],
            registry=r,
        )
        # the audit of the judge-verdicts log: each worker counts the verdicts of the partitions it
        # consumes, so the sum over workers is every verdict in the log, whichever worker called the judge
        self.verdict_log = Counter(
            "driftlabel_verdict_log",
            "Verdicts read from the judge-verdicts log, by judge model, answer and depth (sum over workers: "
            "every verdict once)",
            ["judge_model", "valid", "depth"],
            registry=r,
        )
        self.verdict_log_latency = Histogram(
            "driftlabel_verdict_log_latency_seconds",
            "Judge latency as recorded in the judge-verdicts log, by judge model",
            ["judge_model"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.verdict_log_tokens = Counter(
            "driftlabel_verdict_log_tokens",
            "Tokens recorded in the judge-verdicts log, by judge model (0 for cached verdicts)",
            ["judge_model"],
            registry=r,
        )
        self._ring = np.zeros(self.settings.share_window, dtype=bool)
        self._ring_pos = 0
        self._ring_filled = 0
        self._server: StatusServer | None = None
        self.port: int | None = None

    # -- updates -----------------------------------------------------------------------------------------
    def observe_batch(self, entropy: np.ndarray, routed: np.ndarray, threshold: float) -> None:
        """Record one predicted micro-batch (vectorised except the histogram's own observe)."""
        self.batch_size.observe(len(entropy))
        for e in np.asarray(entropy, dtype=float):
            self.entropy.observe(float(e))
        n = len(self._ring)
        r = np.asarray(routed, dtype=bool)[-n:]
        idx = (self._ring_pos + np.arange(len(r))) % n
        self._ring[idx] = r
        self._ring_pos = int((self._ring_pos + len(r)) % n)
        self._ring_filled = min(n, self._ring_filled + len(r))
        self.uncertain_share.set(float(self._ring[: self._ring_filled].mean()) if self._ring_filled else 0.0)
        self.threshold.set(threshold)

    def count_labels(self, statuses: Iterable[str], final: Iterable[bool]) -> None:
        pairs: dict[tuple[str, str], int] = {}
        for status, is_final in zip(statuses, final, strict=True):
            key = (status, "true" if is_final else "false")
            pairs[key] = pairs.get(key, 0) + 1
        for (status, fin), c in pairs.items():
            self.items.labels(status=status, final=fin).inc(c)

    def observe_verdict_log(self, model: str, valid: bool, depth: str, latency_s: float, tokens: int) -> None:
        """One record of the judge-verdicts log (labels already bounded by ``pipeline.VerdictAudit``)."""
        self.verdict_log.labels(judge_model=model, valid="true" if valid else "false", depth=depth).inc()
        self.verdict_log_latency.labels(judge_model=model).observe(latency_s)
        self.verdict_log_tokens.labels(judge_model=model).inc(tokens)

    def observe_refit(self, seconds: float) -> None:
        """One full refit took ``seconds`` (thread-safe: called from the model thread)."""
        self.refits.inc()
        self.refit_seconds.observe(seconds)

    def observe_reform(self, background_s: float, swap_s: float) -> None:
        """One re-forming was swapped in (thread-safe: called from the model thread)."""
        self.reforms.inc()
        self.reform_seconds.labels(phase="background").observe(background_s)
        self.reform_seconds.labels(phase="swap").observe(swap_s)

    def set_model(self, n_classes: int, n_subsets: int, version: int) -> None:
        self.classes.set(n_classes)
        self.subsets.set(n_subsets)
        self.model_version.set(version)

    # -- exposition --------------------------------------------------------------------------------------
    def render(self) -> bytes:
        """The /metrics page as bytes (text format)."""
        return generate_latest(self.registry)

    def serve(self, liveness: Check | None = None, readiness: Check | None = None) -> int:
        """Start the HTTP server (``/metrics``, ``/healthz``, ``/readyz``; a daemon thread); returns the
        port actually bound. Without checks, both probes answer 200."""
        if not self.settings.enabled or self._server is not None:
            return self.port or 0
        always: Check = lambda: (True, {})  # noqa: E731
        self._server = StatusServer(
            self.registry, liveness or always, readiness or always, self.settings.host, self.settings.port
        )
        self.port = self._server.port
        return self.port

    def close(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None
