"""``judge.batch_size`` with ``question = "validate"``: PRODUCT.md's recursion (one yes/no question per
candidate, best first, until a yes), several items' questions sharing one call
(closing the judge with items waiting: tests/judge/test_batch.py).

The real ``openai`` client against a real simulated expert over loopback HTTP; an answer that leaves a
question out on ``httpx.MockTransport``."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from driftlabel.judge import Judge, JudgeSettings, SimulatedExpert
from driftlabel.judge.prompts import TASK_VALIDATE_BATCH, extract_blocks, task_of

from .test_batch import DATA, ask, four
from .test_transport_fakes import completion, make_judge

JudgeFor = Callable[..., Judge]
SettingsFor = Callable[..., JudgeSettings]


def test_questions_of_several_items_share_a_call(judge_for: JudgeFor) -> None:
    async def scenario() -> None:
        async with SimulatedExpert(DATA) as sim:
            judge = judge_for(sim.base_url, batch_size=4, batch_wait_ms=100)
            outs = await asyncio.gather(*(judge.judge(r) for r in four()))
            stats = judge.stats
            await judge.aclose()
        # depth 1: the four items' first candidates in one call; depth 2: the two rejected items' second
        assert sim.counts["requests"] == 2 == stats.calls == sim.counts["validate_batch"]
        assert [(o.status, o.label) for o in outs] == [
            ("validated", "weather"),
            ("corrected", "transfer"),
            ("unresolved", None),
            ("validated", "alarm"),
        ]
        assert [o.n_calls for o in outs] == pytest.approx([0.25, 0.75, 0.75, 0.25])
        assert [[(v.label, v.valid, v.depth) for v in o.verdicts] for o in outs[1:3]] == [
            [("alarm", False, 1), ("transfer", True, 2)],
            [("weather", False, 1), ("transfer", False, 2)],
        ]
        assert outs[1].hard_negatives == ["alarm"] and outs[2].hard_negatives == ["weather", "transfer"]
        assert sum(o.tokens for o in outs) == stats.tokens > 0
        # the worker's request metrics count every yes/no answered, not one per item as for a choice
        assert [[a[0] for a in o.answers] for o in outs] == [[True], [False, True], [False, False], [True]]

    asyncio.run(scenario())


def test_batched_questions_answer_as_single_questions(judge_for: JudgeFor, clinc_rows: Any) -> None:
    """The simulated expert errs by text and label, so batching changes the calls, not the verdicts."""
    rows = clinc_rows[:40]
    labels = sorted({lab for _t, lab in clinc_rows[:400]})[:6]
    reqs = [ask(i, t, *[x for x in labels if x != lab][:1], lab) for i, (t, lab) in enumerate(rows)]

    async def outcomes(**kw: Any) -> tuple[list[tuple[str, str | None, int]], float]:
        async with SimulatedExpert(clinc_rows, error_rate=0.3, seed=3) as sim:
            judge = judge_for(sim.base_url, **kw)
            outs = await asyncio.gather(*(judge.judge(r) for r in reqs))
            await judge.aclose()
        return [(o.status, o.label, len(o.verdicts)) for o in outs], sum(o.n_calls for o in outs)

    single, single_calls = asyncio.run(outcomes())
    batched, batched_calls = asyncio.run(outcomes(batch_size=8, batch_wait_ms=20))
    assert batched == single
    assert {s for s, _lab, _n in single} >= {"validated", "corrected"}  # both depths and the errors showed
    assert batched_calls < single_calls / 4


def test_a_question_the_answer_leaves_out_is_asked_alone(settings_for: SettingsFor) -> None:
    tasks: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        prompt = json.loads(request.content)["messages"][1]["content"]
        tasks.append(task_of(prompt) or "yes/no")
        if task_of(prompt) == TASK_VALIDATE_BATCH:  # answers item 1 only
            return completion('{"verdicts": [{"item": 1, "valid": true}]}')
        assert extract_blocks(prompt, "text") == [four()[1].text]
        return completion('{"valid": false}')

    async def scenario() -> None:
        judge = make_judge(settings_for("http://fake/v1", batch_size=2, batch_wait_ms=5000), handler)
        outs = await asyncio.gather(*(judge.judge(r) for r in four()[:2]))
        await judge.aclose()
        assert tasks[:2] == [TASK_VALIDATE_BATCH, "yes/no"]
        assert (outs[0].status, outs[0].label) == ("validated", "weather")
        assert [v.valid for v in outs[1].verdicts][:1] == [False]  # asked alone, then went on
        assert outs[0].n_calls == pytest.approx(0.5)

    asyncio.run(scenario())


def test_an_answer_had_before_costs_nothing_and_does_not_wait(judge_for: JudgeFor) -> None:
    async def scenario() -> None:
        async with SimulatedExpert(DATA) as sim:
            judge = judge_for(sim.base_url, batch_size=4, batch_wait_ms=200)
            first = await judge.judge(four()[0])
            loop = asyncio.get_running_loop()
            t0 = loop.time()
            again = await judge.judge(four()[0])
            waited = loop.time() - t0
            await judge.aclose()
        assert first.label == again.label == "weather"
        assert again.n_calls == 0 and again.verdicts[0].cached and waited < 0.15
        assert sim.counts["requests"] == 1  # the lone first question left after the wait, alone

    asyncio.run(scenario())
