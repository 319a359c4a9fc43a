"""Endpoints that misbehave in ways a review found the judge mishandled, faked with ``httpx.MockTransport``:
a half-open probe meeting a broken body, odd 200 replies, requests missing from an item's calls, callers
refused while the probe is out, and batch tokens lost for items asked again alone.
"""

from __future__ import annotations

import asyncio
import http.server
import json
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from driftlabel.judge import (
    Candidate,
    JudgeRequest,
    JudgeSettings,
    JudgeUnavailableError,
    MalformedAnswerError,
    generate_descriptions,
)
from driftlabel.judge.breaker import CircuitBreaker
from driftlabel.judge.cli import main as judge_cli
from driftlabel.judge.prompts import TASK_CHOOSE_BATCH, TASK_VALIDATE_BATCH, task_of

from .test_transport_fakes import completion, make_judge

SettingsFor = Callable[..., JudgeSettings]
USAGE = {"prompt_tokens": 90, "completion_tokens": 10, "total_tokens": 100}


def req(i: int, *labels: str) -> JudgeRequest:
    return JudgeRequest(f"i{i}", f"will it rain {i}", [Candidate(lab) for lab in labels or ("weather",)])


def body(payload: Any) -> httpx.Response:
    return httpx.Response(200, json=payload)


def message(content: Any, usage: dict[str, Any] | None = None) -> httpx.Response:
    payload: dict[str, Any] = {
        "choices": [{"index": 0, "message": {"role": "assistant", "content": content}}]
    }
    if usage is not None:
        payload["usage"] = usage
    return body(payload)


def task(request: httpx.Request) -> str | None:
    return task_of(json.loads(request.content)["messages"][1]["content"])


# -- 1. a half-open probe that meets a broken body ----------------------------------------------------------


def test_a_probe_meeting_a_broken_json_body_does_not_wedge_the_circuit(settings_for: SettingsFor) -> None:
    """A 200 whose JSON body is broken made the openai client raise json.JSONDecodeError, which no handler
    caught: the probe never released, and the circuit refused every call for good."""
    mode = {"m": "down"}

    def handler(request: httpx.Request) -> httpx.Response:
        if mode["m"] == "down":
            return httpx.Response(503, json={"error": {"message": "down"}})
        if mode["m"] == "broken":
            return httpx.Response(200, content=b"", headers={"content-type": "application/json"})
        return completion('{"valid": true}')

    async def scenario() -> None:
        s = settings_for(
            "http://fake/v1", max_retries=0, breaker_failures=2, breaker_reset_s=0.1, cache_size=0
        )
        judge = make_judge(s, handler)
        for i in range(2):
            with pytest.raises(JudgeUnavailableError):
                await judge.judge(req(i))
        assert judge.breaker_state == "open"
        await asyncio.sleep(0.15)
        mode["m"] = "broken"
        with pytest.raises(JudgeUnavailableError, match="unreadable response"):  # not JSONDecodeError
            await judge.judge(req(10))
        assert judge.breaker_state == "open" and judge.stats.failures["unexpected"] == 1  # a failed probe
        mode["m"] = "ok"
        await asyncio.sleep(0.15)
        assert (await judge.judge(req(20))).status == "validated"
        assert judge.breaker_state == "closed"
        await judge.aclose()

    asyncio.run(scenario())


def test_an_unexpected_client_error_is_a_failed_attempt_and_retried(settings_for: SettingsFor) -> None:
    answers = iter(
        [
            httpx.Response(200, content=b"not json{", headers={"content-type": "application/json"}),
            completion('{"valid": true}'),
        ]
    )

    async def scenario() -> None:
        judge = make_judge(settings_for("http://fake/v1"), lambda r: next(answers))
        out = await judge.judge(req(1))
        assert out.status == "validated" and out.n_calls == 2
        stats = judge.stats
        assert stats.failures == {"unexpected": 1} and stats.retries == 1 and stats.calls == 2
        await judge.aclose()

    asyncio.run(scenario())


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_breaker_releases_only_the_probe_out_and_gives_up_on_one_out_too_long() -> None:
    clock = FakeClock()
    br = CircuitBreaker(1, reset_s=10, clock=clock, probe_timeout_s=30)
    br.record_failure()
    clock.now += 10
    assert br.allow()  # the probe
    probe = br.probe_id
    br.release_probe(probe - 1)  # a call that was not the probe releases nothing
    assert not br.allow() and br.retry_after() == pytest.approx(1.0)  # a probe is out: not 0
    br.release_probe(probe)
    assert br.allow()  # released: the next call probes
    clock.now += 30  # that probe never came back: given up on, another may go
    assert br.allow() and br.probe_id == probe + 2
    br.release_probe(probe + 1)  # the one given up on ends at last: the new probe stays out
    assert not br.allow()
    br.record_success()
    assert br.state == "closed" and br.allow()


# -- 4. callers refused while the probe is out -------------------------------------------------------------


def test_while_the_probe_is_out_callers_wait_a_second_and_only_the_probe_releases_it(
    settings_for: SettingsFor,
) -> None:
    """Refused callers were told retry_after_s=0.0 (and came straight back); and a call cancelled (or out
    of budget) released the probe even when it was not the probe, letting a second probe out."""
    hold = asyncio.Event()
    sent: list[str] = []

    async def handler(request: httpx.Request) -> httpx.Response:
        text = json.loads(request.content)["messages"][1]["content"]
        sent.append(text)
        if "fails" in text:
            return httpx.Response(503, json={"error": {"message": "down"}})
        await hold.wait()
        return completion('{"valid": true}')

    def ask(name: str) -> JudgeRequest:
        return JudgeRequest(name, f"text that {name}", [Candidate("weather")])

    async def scenario() -> None:
        s = settings_for(
            "http://fake/v1", max_retries=0, breaker_failures=1, breaker_reset_s=0.1, cache_size=0
        )
        judge = make_judge(s, handler)  # type: ignore[arg-type]  # MockTransport awaits async handlers too
        slow = asyncio.create_task(judge.judge(ask("hangs")))  # sent while closed: not the probe
        await asyncio.sleep(0.02)
        with pytest.raises(JudgeUnavailableError):
            await judge.judge(ask("fails"))
        assert judge.breaker_state == "open"
        await asyncio.sleep(0.15)
        probe = asyncio.create_task(judge.judge(ask("probes")))
        await asyncio.sleep(0.02)
        slow.cancel()
        await asyncio.gather(slow, return_exceptions=True)
        with pytest.raises(JudgeUnavailableError, match="half-open") as info:
            await asyncio.wait_for(judge.judge(ask("waits")), 1.0)  # a second probe would hang here
        assert info.value.retry_after_s >= 1.0
        assert not any("waits" in t for t in sent)  # no second probe went out
        hold.set()
        assert (await probe).status == "validated" and judge.breaker_state == "closed"
        await judge.aclose()

    asyncio.run(scenario())


# -- 2. odd 200 replies --------------------------------------------------------------------------------------

ODD_REPLIES: dict[str, Callable[[], httpx.Response]] = {
    "html page": lambda: httpx.Response(200, text="<html>oops</html>", headers={"content-type": "text/html"}),
    "json list": lambda: body([1, 2]),
    "no message": lambda: body({"choices": [{"index": 0, "finish_reason": "stop"}]}),
    "null message": lambda: body({"choices": [{"index": 0, "message": None}]}),
    "content a list": lambda: message(["yes"]),
    "content an int": lambda: message(1),
    "huge int": lambda: message('{"valid": true, "choice": 1, "x": ' + "1" * 5000 + "}"),
    "deep nesting": lambda: message(
        '{"valid": true, "choice": 1, "x": ' + "[" * 100_000 + "]" * 100_000 + "}"
    ),
}


@pytest.mark.parametrize("question", ["validate", "choose"])
@pytest.mark.parametrize("reply", list(ODD_REPLIES))
def test_odd_200_replies_are_malformed_answers(settings_for: SettingsFor, reply: str, question: str) -> None:
    """They escaped as AttributeError / ValueError / RecursionError instead of a malformed answer."""
    sent = []

    def handler(request: httpx.Request) -> httpx.Response:
        sent.append(request)
        return ODD_REPLIES[reply]()

    async def scenario() -> None:
        judge = make_judge(settings_for("http://fake/v1", question=question), handler)
        out = await judge.judge(req(1))
        assert out.status == "unresolved" and out.label is None and out.reason is not None
        assert judge.stats.malformed == 2 and out.n_calls == 2 == len(sent)  # retried once, like any
        assert judge.breaker_state == "closed"
        await judge.aclose()

    asyncio.run(scenario())


def test_describe_label_reads_an_html_page_as_malformed(settings_for: SettingsFor) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(
            200, text="<html>Welcome to nginx</html>", headers={"content-type": "text/html"}
        )

    async def scenario() -> None:
        judge = make_judge(settings_for("http://fake/v1"), handler)
        with pytest.raises(MalformedAnswerError, match=r"not a chat completion.*DRIFTLABEL_JUDGE_BASE_URL"):
            await judge.describe_label("weather", ["will it rain"])
        await judge.aclose()

    asyncio.run(scenario())


def test_a_usage_count_that_is_not_a_number_costs_no_answer(settings_for: SettingsFor) -> None:
    """``int("lots")`` raised ValueError; the bill is unreadable, the answer is fine: kept, counted 0."""

    async def scenario() -> None:
        bill = {"prompt_tokens": 5, "completion_tokens": "x", "total_tokens": "lots"}
        judge = make_judge(settings_for("http://fake/v1"), lambda r: message('{"valid": true}', bill))
        out = await judge.judge(req(1))
        assert out.status == "validated" and out.tokens == 0
        assert (judge.stats.prompt_tokens, judge.stats.tokens) == (5, 0)
        await judge.aclose()

    asyncio.run(scenario())


class _OneLabelBreaks:
    """A judge stand-in whose description of ``broken`` fails with an error that is not a JudgeError."""

    async def describe_label(self, label: str, examples: list[str]) -> str:
        if label == "broken":
            raise RuntimeError("boom")
        return f"texts about {label}"


def test_one_label_failing_unexpectedly_keeps_the_other_descriptions() -> None:
    examples = {"weather": ["will it rain"], "broken": ["x"], "alarm": ["wake me up"]}
    result = asyncio.run(generate_descriptions(_OneLabelBreaks(), examples))
    assert result.descriptions == {"weather": "texts about weather", "alarm": "texts about alarm"}
    assert sorted(result.generated) == ["alarm", "weather"]
    assert list(result.failed) == ["broken"] and "RuntimeError: boom" in result.failed["broken"]


@pytest.fixture
def html_endpoint() -> Iterator[str]:
    """A real HTTP server that answers every request with an nginx welcome page (HTTP 200, text/html)."""

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            self.rfile.read(int(self.headers.get("content-length", 0)))
            page = b"<html><body>Welcome to nginx</body></html>"
            self.send_response(200)
            self.send_header("content-type", "text/html")
            self.send_header("content-length", str(len(page)))
            self.end_headers()
            self.wfile.write(page)

        def log_message(self, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/v1"
    finally:
        server.shutdown()
        server.server_close()


def test_describe_against_an_html_endpoint_ends_with_a_clear_error(
    html_endpoint: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """It ended in a traceback (AttributeError: 'str' object has no attribute 'choices')."""
    data = tmp_path / "seeds.csv"
    data.write_text("text,label\nwill it rain,weather\nwake me up at six,alarm\n", encoding="utf-8")
    monkeypatch.setenv("DRIFTLABEL_JUDGE_BASE_URL", html_endpoint)
    rc = judge_cli(["describe", "--data", str(data), "--out", str(tmp_path / "d.yaml")])
    err = capsys.readouterr().err
    assert rc == 1
    assert "failed alarm: the endpoint's reply is not a chat completion" in err and "failed weather" in err
    assert "Traceback" not in err


# -- 3. every request sent for an item is charged to it ------------------------------------------------------


def counting(answer: Callable[[httpx.Request, int], httpx.Response]) -> tuple[list[int], Any]:
    """A handler that numbers its requests (from 1) and counts them in ``n[0]``."""
    n = [0]

    def handler(request: httpx.Request) -> httpx.Response:
        n[0] += 1
        return answer(request, n[0])

    return n, handler


@pytest.mark.parametrize("question", ["validate", "choose"])
def test_malformed_answers_are_charged_to_the_item(settings_for: SettingsFor, question: str) -> None:
    """Garbage twice left the item unresolved with n_calls 0 (validate) or 1 (choose) for 2 requests."""
    n, handler = counting(lambda r, k: completion("maybe", USAGE))

    async def scenario() -> None:
        judge = make_judge(settings_for("http://fake/v1", question=question), handler)
        out = await judge.judge(req(1, "weather", "travel"))
        assert out.status == "unresolved" and out.n_calls == 2 == n[0] == judge.stats.calls
        await judge.aclose()

    asyncio.run(scenario())


@pytest.mark.parametrize("question", ["validate", "choose"])
def test_retries_are_charged_to_the_item(settings_for: SettingsFor, question: str) -> None:
    """503, 503, answer per question: validate charged 2 for 6 requests, choose 1 for 3."""

    def answer(request: httpx.Request, k: int) -> httpx.Response:
        if k % 3:
            return httpx.Response(503, json={"error": {"message": "busy"}})
        return completion('{"valid": false}' if question == "validate" else '{"choice": 2}')

    n, handler = counting(answer)

    async def scenario() -> None:
        judge = make_judge(settings_for("http://fake/v1", question=question, breaker_failures=10), handler)
        out = await judge.judge(req(1, "weather", "travel"))
        assert out.n_calls == n[0] == judge.stats.calls == (6 if question == "validate" else 3)
        await judge.aclose()

    asyncio.run(scenario())


@pytest.mark.parametrize("question", ["validate", "choose"])
def test_a_batch_call_charges_its_items_every_request_it_took(
    settings_for: SettingsFor, question: str
) -> None:
    """The batch question gets garbage twice, then each item is asked alone: each is charged half of the
    batch's two requests plus its own (it was charged half of one)."""

    def answer(request: httpx.Request, k: int) -> httpx.Response:
        if task(request) in (TASK_VALIDATE_BATCH, TASK_CHOOSE_BATCH):
            return completion("garbage", USAGE)
        return completion('{"valid": true}' if question == "validate" else '{"choice": 1}', USAGE)

    n, handler = counting(answer)

    async def scenario() -> None:
        s = settings_for("http://fake/v1", question=question, batch_size=2, batch_wait_ms=2000)
        judge = make_judge(s, handler)
        outs = await asyncio.gather(judge.judge(req(1)), judge.judge(req(2)))
        assert [o.status for o in outs] == ["validated"] * 2
        assert [o.n_calls for o in outs] == [2, 2] and n[0] == 4 == judge.stats.calls
        await judge.aclose()

    asyncio.run(scenario())


def test_a_batch_answer_with_a_retry_is_shared_out(settings_for: SettingsFor) -> None:
    def answer(request: httpx.Request, k: int) -> httpx.Response:
        if k == 1:
            return httpx.Response(503, json={"error": {"message": "busy"}})
        return completion(json.dumps({"choices": [{"item": 1, "choice": 1}, {"item": 2, "choice": 1}]}))

    n, handler = counting(answer)

    async def scenario() -> None:
        s = settings_for("http://fake/v1", question="choose", batch_size=2, batch_wait_ms=2000)
        judge = make_judge(s, handler)
        outs = await asyncio.gather(judge.judge(req(1)), judge.judge(req(2)))
        assert [o.n_calls for o in outs] == [1, 1] and n[0] == 2  # it was 1/2 each
        await judge.aclose()

    asyncio.run(scenario())


# -- 5. tokens of items asked again alone ------------------------------------------------------------------


def test_items_asked_again_alone_keep_their_share_of_the_batch_tokens(settings_for: SettingsFor) -> None:
    """The batch answer covers two of four items; the other two, asked alone, lost their share of the
    batch call's tokens (the outcomes summed to 2,500 of 3,000)."""
    bill = {"prompt_tokens": 1000, "completion_tokens": 0, "total_tokens": 1000}

    def answer(request: httpx.Request, k: int) -> httpx.Response:
        if task(request) == TASK_CHOOSE_BATCH:
            return completion(
                json.dumps({"choices": [{"item": 1, "choice": 1}, {"item": 2, "choice": 1}]}), bill
            )
        return completion('{"choice": 1}', bill)

    n, handler = counting(answer)

    async def scenario() -> None:
        s = settings_for("http://fake/v1", question="choose", batch_size=4, batch_wait_ms=2000)
        judge = make_judge(s, handler)
        outs = await asyncio.gather(*(judge.judge(req(i, "a", "b")) for i in range(4)))
        assert n[0] == 3 and sum(o.n_calls for o in outs) == pytest.approx(3)
        assert sum(o.tokens for o in outs) == judge.stats.tokens == 3000
        assert [o.tokens for o in outs] == [250, 250, 1250, 1250]
        await judge.aclose()

    asyncio.run(scenario())
