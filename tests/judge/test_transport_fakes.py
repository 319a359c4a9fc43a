"""Endpoint behaviours the simulated expert does not have, faked with ``httpx.MockTransport``.

The real ``openai`` client runs on top; only the HTTP exchange is scripted.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from driftlabel.judge import (
    Candidate,
    Judge,
    JudgeRequest,
    JudgeSettings,
    JudgeUnavailableError,
    save_descriptions,
)

Handler = Callable[[httpx.Request], httpx.Response]
SettingsFor = Callable[..., JudgeSettings]


def completion(content: str, usage: dict[str, int] | None = None) -> httpx.Response:
    body: dict[str, Any] = {
        "id": "c1",
        "object": "chat.completion",
        "created": 0,
        "model": "fake",
        "choices": [
            {"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}
        ],
    }
    if usage is not None:
        body["usage"] = usage
    return httpx.Response(200, json=body)


def make_judge(settings: JudgeSettings, handler: Handler) -> Judge:
    http = httpx.AsyncClient(transport=httpx.MockTransport(handler))
    # openai accepts a classic httpx client at run time (its stubs name only its own httpx2 fork)
    client = openai.AsyncOpenAI(
        base_url="http://fake/v1",
        api_key="sk-test",
        http_client=http,  # type: ignore[arg-type,unused-ignore]
        max_retries=5,
    )
    return Judge(settings, client)


REQ = JudgeRequest("i1", "will it rain", [Candidate("weather")])


def refusing_json_schema(seen: list[str | None], answer: str) -> Handler:
    """An endpoint that refuses ``json_schema`` (HTTP 400) and answers ``answer`` in any other format;
    each request's ``response_format`` type goes to ``seen``."""

    def handler(request: httpx.Request) -> httpx.Response:
        kind = json.loads(request.content).get("response_format", {}).get("type")
        seen.append(kind)
        if kind == "json_schema":
            return httpx.Response(400, json={"error": {"message": "response_format not supported"}})
        return completion(answer)

    return handler


def test_refused_response_format_falls_back_to_strict_text(settings_for: SettingsFor) -> None:
    seen: list[dict[str, Any]] = []

    def handler(request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content)
        seen.append(body)
        if "response_format" in body:
            return httpx.Response(400, json={"error": {"message": "response_format not supported"}})
        assert "yes or no" in body["messages"][1]["content"]
        return completion("Yes.", {"prompt_tokens": 10, "completion_tokens": 1, "total_tokens": 11})

    async def scenario() -> None:
        judge = make_judge(settings_for("http://fake/v1"), handler)
        out = await judge.judge(REQ)
        out2 = await judge.judge(JudgeRequest("i2", "is it sunny", [Candidate("weather")]))
        assert out.status == "validated" and out2.status == "validated"
        assert judge.stats.answer_format == "text" and out.verdicts[0].tokens == 11
        await judge.aclose()

    asyncio.run(scenario())
    # json_schema refused, json_object refused, text answered; then text for good
    assert [b.get("response_format", {}).get("type") for b in seen] == [
        "json_schema",
        "json_object",
        None,
        None,
    ]


def test_calls_queued_behind_a_refusal_fall_back_without_being_sent(settings_for: SettingsFor) -> None:
    """Eight questions wait for one connection; once json_schema is refused, the seven queued behind it
    are not sent with it (each would be refused too, costing a call)."""
    seen: list[str | None] = []
    handler = refusing_json_schema(seen, '{"valid": true}')

    async def scenario() -> None:
        judge = make_judge(settings_for("http://fake/v1", concurrency=1), handler)
        reqs = [JudgeRequest(f"i{k}", f"will it rain {k}", [Candidate("weather")]) for k in range(8)]
        outs = await asyncio.gather(*(judge.judge(r) for r in reqs))
        assert all(o.status == "validated" for o in outs)
        assert judge.stats.calls == 9 and judge.stats.answer_format == "json_object"
        await judge.aclose()

    asyncio.run(scenario())
    assert seen == ["json_schema"] + ["json_object"] * 8


def test_a_json_question_other_than_a_verdict_settles_the_format_too(settings_for: SettingsFor) -> None:
    """generate_examples falls back through the same path as a verdict: once json_object answered, it is
    the format from then on (before, every generate call sent json_schema again and was refused again)."""
    seen: list[str | None] = []
    handler = refusing_json_schema(seen, '{"examples": ["will it rain tomorrow", "is a storm coming"]}')

    async def scenario() -> None:
        judge = make_judge(settings_for("http://fake/v1"), handler)
        assert len(await judge.generate_examples("weather", "Questions about the weather.", 2)) == 2
        assert len(await judge.generate_examples("forecast", "Questions about forecasts.", 2)) == 2
        assert judge.stats.answer_format == "json_object"
        await judge.aclose()

    asyncio.run(scenario())
    assert seen == ["json_schema", "json_object", "json_object"]


def test_auth_error_is_unavailable_with_a_hint_and_no_key_leak(settings_for: SettingsFor) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        assert request.headers["authorization"] == "Bearer sk-test"
        return httpx.Response(401, json={"error": {"message": "bad key"}})

    async def scenario() -> None:
        judge = make_judge(settings_for("http://fake/v1"), handler)
        with pytest.raises(JudgeUnavailableError, match="DRIFTLABEL_JUDGE_API_KEY") as info:
            await judge.judge(REQ)
        assert "sk-test" not in str(info.value)
        assert judge.stats.calls == 1  # not retried, and the client's own retries are off
        await judge.aclose()

    asyncio.run(scenario())


def test_missing_usage_and_empty_choices(settings_for: SettingsFor) -> None:
    answers = iter(
        [
            httpx.Response(
                200, json={"id": "x", "object": "chat.completion", "created": 0, "model": "f", "choices": []}
            ),
            completion('{"valid": false}'),
        ]
    )

    async def scenario() -> None:
        judge = make_judge(settings_for("http://fake/v1"), lambda r: next(answers))
        out = await judge.judge(REQ)
        assert out.status == "unresolved" and out.verdicts[0].valid is False
        assert out.verdicts[0].tokens == 0 and judge.stats.malformed == 1
        await judge.aclose()

    asyncio.run(scenario())


def test_retry_after_header_is_honoured(settings_for: SettingsFor) -> None:
    calls = {"n": 0}

    def handler(request: httpx.Request) -> httpx.Response:
        calls["n"] += 1
        if calls["n"] == 1:
            return httpx.Response(
                429, headers={"retry-after": "0.2"}, json={"error": {"message": "slow down"}}
            )
        return completion('{"valid": true}')

    async def scenario() -> float:
        judge = make_judge(settings_for("http://fake/v1", backoff_max_s=1.0), handler)
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        out = await judge.judge(REQ)
        assert out.status == "validated" and judge.stats.failures == {"429": 1}
        await judge.aclose()
        return loop.time() - t0

    assert asyncio.run(scenario()) >= 0.2


def test_item_rejected_by_endpoint_goes_to_review_without_opening_the_circuit(
    settings_for: SettingsFor,
) -> None:
    seen: list[dict[str, Any]] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(json.loads(request.content))
        return httpx.Response(400, json={"error": {"message": "context length exceeded"}})

    async def scenario() -> None:
        judge = make_judge(settings_for("http://fake/v1", breaker_failures=1), handler)
        out = await judge.judge(REQ)
        assert out.status == "unresolved" and "context length exceeded" in (out.reason or "")
        assert judge.breaker_state == "closed"
        assert judge.stats.answer_format == "json_schema"  # the format was not the problem: kept
        await judge.judge(JudgeRequest("i2", "is it sunny", [Candidate("weather")]))  # ... and used again
        await judge.aclose()

    asyncio.run(scenario())
    kinds = [b.get("response_format", {}).get("type") for b in seen]
    assert kinds == ["json_schema", "json_object", None] * 2


def test_descriptions_file_fills_missing_descriptions(settings_for: SettingsFor, tmp_path: Path) -> None:
    path = save_descriptions(tmp_path / "d.yaml", {"weather": "Questions about rain, sun or forecasts."})
    prompts: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        prompts.append(json.loads(request.content)["messages"][1]["content"])
        return completion('{"valid": true}')

    async def scenario() -> None:
        judge = make_judge(settings_for("http://fake/v1", descriptions_file=str(path)), handler)
        await judge.judge(REQ)
        await judge.judge(REQ)  # cached
        save_descriptions(path, {"weather": "Edited: weather questions."})
        judge.reload_descriptions()
        await judge.judge(REQ)  # the edit changes the description version: asked again
        given = JudgeRequest("i9", "will it rain", [Candidate("weather", 0.5, "Caller's own description.")])
        await judge.judge(given)
        await judge.aclose()

    asyncio.run(scenario())
    assert len(prompts) == 3
    assert "<description>Questions about rain, sun or forecasts.</description>" in prompts[0]
    assert "<description>Edited: weather questions.</description>" in prompts[1]
    assert "<description>Caller's own description.</description>" in prompts[2]


def test_llama_cpp_style_500_on_json_schema_downgrades_to_json_object(settings_for: SettingsFor) -> None:
    """llama-cpp-python answers an unknown response_format type with HTTP 500 naming the field."""
    seen: list[str | None] = []

    def handler(request: httpx.Request) -> httpx.Response:
        fmt = json.loads(request.content).get("response_format", {}).get("type")
        seen.append(fmt)
        if fmt == "json_schema":
            detail = "validation error: ('body', 'response_format', 'type') should be 'text' or 'json_object'"
            return httpx.Response(500, json={"error": {"message": detail}})
        return completion('{"valid": false}')

    async def scenario() -> None:
        judge = make_judge(settings_for("http://fake/v1", breaker_failures=1), handler)
        out = await judge.judge(REQ)
        assert out.verdicts[0].valid is False and judge.breaker_state == "closed"
        assert judge.stats.answer_format == "json_object" and judge.stats.retries == 0
        await judge.aclose()

    asyncio.run(scenario())
    assert seen == ["json_schema", "json_object"]
