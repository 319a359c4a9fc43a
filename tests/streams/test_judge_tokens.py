"""``driftlabel_judge_tokens_total`` counts every token the judge endpoint reported.

An answer the judge cannot use carries no verdict, so counting the verdicts' tokens missed it (and the
calls made for no text: naming a proposal, generating examples). The metric now follows the judge's own
tally. Real ``Judge`` and ``openai`` client against the simulated expert on loopback answering garbage.
"""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

from driftlabel.judge import Judge, JudgeSettings
from driftlabel.streams.messages import JudgeRequestMessage
from driftlabel.streams.settings import KafkaSettings, MetricsSettings, StreamSettings
from driftlabel.streams.worker import WorkerService

from .test_health import TinyEmbedder


def _service(judge: Any) -> WorkerService:
    return WorkerService(
        kafka=KafkaSettings(bootstrap_servers="127.0.0.1:1"),
        stream=StreamSettings(),
        metrics=MetricsSettings(enabled=False),
        embedder=TinyEmbedder(),
        judge=judge,
    )


def _tokens(service: WorkerService) -> float:
    return float(service.metrics.registry.get_sample_value("driftlabel_judge_tokens_total") or 0.0)


def test_tokens_of_answers_the_judge_could_not_use_are_counted(judge_server: Any) -> None:
    judge = Judge(JudgeSettings(base_url=judge_server.base_url, max_retries=1, breaker_failures=100))
    service = _service(judge)
    cands = [{"label": "balance", "probability": 0.6, "description": None, "examples": []}]
    req = JudgeRequestMessage(id="g1", text="how much money is in my account", candidates=cands,
                              label="balance", score=0.6, entropy=0.7, model_version=1, received_ts=1.0,
                              ts=1.0)  # fmt: skip

    async def judged() -> Any:
        try:
            return await service.judge(req)
        finally:
            await judge.aclose()

    judge_server.fail_always("garbage")
    try:
        outcome = asyncio.run(judged())
        service.count_judge_tokens(outcome.tokens)
    finally:
        judge_server.fail_always(None)
        service.metrics.close()
        service.host.close()
    assert outcome.status == "unresolved" and outcome.tokens == 0  # no verdict carries them
    spent = judge.stats.tokens
    assert spent > 0 and _tokens(service) == spent


def test_the_metric_follows_the_tally_once_and_falls_back_for_a_judge_without_one() -> None:
    tally = SimpleNamespace(tokens=0)
    counted = _service(SimpleNamespace(stats=tally))
    fake = _service(SimpleNamespace())  # a test fake: no stats
    try:
        tally.tokens = 120  # e.g. a naming call for a proposal, between judged items
        counted.count_judge_tokens(fallback=7)
        counted.count_judge_tokens(fallback=7)  # nothing new: nothing added
        tally.tokens = 150
        counted.count_judge_tokens()
        assert _tokens(counted) == 150
        fake.count_judge_tokens(fallback=7)
        assert _tokens(fake) == 7
    finally:
        for s in (counted, fake):
            s.metrics.close()
            s.host.close()
