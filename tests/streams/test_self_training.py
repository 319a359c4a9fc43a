"""The texts nobody judged reach the learning log as unlabelled ``stream`` records and the model's pool.

Pure parts (record format, sampling, which labels qualify, log planning) and the model host, without
Kafka; the service path runs in tests/streams/test_service.py.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from driftlabel.models import RedClassifier
from driftlabel.streams.errors import InvalidMessageError
from driftlabel.streams.learner import plan_steps
from driftlabel.streams.messages import (
    TrainingMessage,
    decode_vector,
    encode_vector,
    parse_training,
)
from driftlabel.streams.pipeline import sampled, unlabelled_values

from .test_refit import ClusterEmbedder, _assert_same_model, _host, _records
from .test_shape import Rec


def test_a_vector_rides_as_float16_base64() -> None:
    x = np.random.default_rng(0).normal(size=384).astype(np.float32)
    x /= np.linalg.norm(x)
    s = encode_vector(x)
    assert len(s) == 1024  # 768 bytes
    np.testing.assert_allclose(decode_vector(s), x, atol=1e-3)
    for bad in ("not base64!", "", "AA==", encode_vector(np.full(3, np.inf))):  # odd bytes, inf
        with pytest.raises(InvalidMessageError) as exc:
            decode_vector(bad)
        assert exc.value.reason == "invalid_value"


def test_stream_records_parse_without_a_label() -> None:
    vec = encode_vector(np.ones(4, np.float32) / 2)
    t = parse_training(
        json.dumps({"id": "7", "text": "hi", "source": "stream", "embedding": vec, "embedder": "e"}).encode()
    )
    assert (t.source, t.label, t.embedder) == ("stream", "", "e") and t.embedding == vec
    plain = parse_training(b'{"id": "8", "text": "hi", "source": "stream"}')  # a user's: the worker embeds
    assert plain.embedding is None
    for raw, reason in [
        ({"text": "hi", "source": "stream", "embedding": vec}, "missing_field"),  # which embedder?
        ({"text": "hi", "source": "stream", "embedding": "%%", "embedder": "e"}, "invalid_value"),
        ({"text": "hi", "source": "stream", "embedding": 5, "embedder": "e"}, "wrong_type"),
        ({"text": "", "source": "stream"}, "empty_text"),
    ]:
        with pytest.raises(InvalidMessageError) as exc:
            parse_training(json.dumps(raw).encode())
        assert exc.value.reason == reason, raw


def test_sampling_is_by_id() -> None:
    ids = [f"id-{i}" for i in range(4000)]
    picked = [sampled(i, 0.25) for i in ids]
    assert 0.22 < np.mean(picked) < 0.28
    assert picked == [sampled(i, 0.25) for i in ids]  # a retry decides the same
    assert all(sampled(i, 1.0) for i in ids[:10]) and not any(sampled(i, 0.0) for i in ids[:10])


def _label(i: int, status: str = "predicted", final: bool = True) -> dict[str, Any]:
    return {"id": f"t{i}", "label": "a", "status": status, "final": final}


def test_only_final_in_scope_predictions_are_kept() -> None:
    labels = [_label(0), _label(1, final=False), _label(2, "out_of_scope"), _label(3)]
    X = np.eye(4, dtype=np.float32)
    out = unlabelled_values(labels, ["a", "b", "c", "d"], X, "emb", 1.0)
    assert [v["id"] for v in out] == ["t0", "t3"]
    assert out[1]["text"] == "d" and out[1]["source"] == "stream" and out[1]["embedder"] == "emb"
    np.testing.assert_allclose(decode_vector(out[1]["embedding"]), X[3])
    assert unlabelled_values(labels, ["a", "b", "c", "d"], X, "emb", 0.0) == []


def test_stream_records_are_applied_every_time_and_keep_no_digest() -> None:
    tr = "p.training"
    stream = b'{"id": "s1", "text": "x", "source": "stream"}'
    recs = [
        Rec(tr, 0, 0, stream),
        Rec(tr, 0, 1, b'{"id": "1", "text": "a", "label": "x", "source": "judge"}'),
        Rec(tr, 0, 2, stream),  # written twice (a worker crashed before its offset was committed)
    ]
    (step,) = plan_steps(recs, max_bytes=1000, max_chars=100)  # type: ignore[arg-type]
    assert [t.source for t in step.training] == ["stream", "judge", "stream"]
    assert len(step.digests) == 1  # the judge pair only: nothing kept per streamed text


def _stream_records(texts: list[str], emb: ClusterEmbedder, carry: bool = True) -> list[TrainingMessage]:
    X = emb.encode(texts)
    return [
        TrainingMessage(
            id=f"s{i}",
            text=t,
            label="",
            source="stream",
            embedding=encode_vector(X[i]) if carry else None,
            embedder=emb.name if carry else None,
        )
        for i, t in enumerate(texts)
    ]


def test_the_host_keeps_stream_records_in_log_order_without_embedding_them(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    host = _host(refit_every=None)
    calls: list[tuple[str, int]] = []
    model = host.live
    for kind in ("learn", "observe"):
        real = getattr(RedClassifier, f"{kind}_embeddings")

        def spy(self: Any, X: Any, *a: Any, _kind: str = kind, _real: Any = real) -> Any:
            if self is model:  # not the self-training twin it mirrors the call to
                calls.append((_kind, len(X)))
            return _real(self, X, *a)

        monkeypatch.setattr(RedClassifier, f"{kind}_embeddings", spy)
    emb = host.embedder
    encoded = 0
    real_encode = emb.encode

    def counting(texts: Any) -> np.ndarray:
        nonlocal encoded
        encoded += len(texts)
        return real_encode(texts)

    emb.encode = counting  # type: ignore[method-assign]
    records = [
        *_stream_records(["alpha 900", "beta 901"], ClusterEmbedder()),
        *_records(300, 3),
        *_stream_records(["gamma 902"], ClusterEmbedder(), carry=False),  # no vector: embedded here
    ]
    host._learn(records)
    assert calls == [("observe", 2), ("learn", 3), ("observe", 1)]
    assert encoded == 4  # the 3 judge texts and the one without a vector; never the carried ones
    assert model.n_unlabelled == 3  # type: ignore[attr-defined]


def test_a_step_with_stream_records_is_learned_on_a_copy_as_on_the_model_thread() -> None:
    """The live learner applies a step with ``stream`` records to a copy too: the same model, pool and
    counters as the model thread's, swapped in whole."""
    records = [
        *_stream_records(["alpha 900", "beta 901"], ClusterEmbedder()),
        *_records(300, 3),
        *_stream_records(["gamma 902"], ClusterEmbedder(), carry=False),
    ]
    host, inline = _host(refit_every=None), _host(refit_every=None)
    host.position = inline.position = 12
    before = host.live
    asyncio.run(host.learn(records, position=18, live=True))
    inline._learn(records, position=18)
    assert host.live is not before, "not learned on a copy"
    assert host.state() == inline.state()
    assert host.changes_since_checkpoint == inline.changes_since_checkpoint
    assert host.live.n_unlabelled == inline.live.n_unlabelled == 3  # type: ignore[attr-defined]
    _assert_same_model(host.live, inline.live)
    host.close()
    inline.close()


@pytest.mark.slow
def test_the_service_writes_unjudged_texts_to_the_log_and_learns_them(
    broker: Any, judge_server: Any, clinc: Any, h: Any, tmp_path: Path
) -> None:
    """A worker with `stream.unlabelled_share = 1` and no judge: every final label is followed by one
    `stream` record carrying the worker's embedding, and the learner keeps every one (metric)."""
    prefix = f"st{int(time.time() * 1000) % 10**8}."
    w = h.make_worker(
        broker, prefix, tmp_path, judge_server.base_url,
        judge_target_share="0", unlabelled_share="1.0", checkpoint_every_s="3600",
    )  # fmt: skip
    names = w.names
    h.send(w.kafka, names.training, h.seed_records(clinc, per_class=5))
    w.start()
    try:
        texts = [{"id": f"u-{i}", "text": t} for i, (t, _) in enumerate(clinc["test"][:30])]
        h.send(w.kafka, names.texts, texts)
        ids = {v["id"] for v in texts}

        def all_streamed(records: list[tuple[str, Any]]) -> bool:
            return {v.get("id") for _, v in records if v.get("source") == "stream"} >= ids

        log = h.read_until(w.kafka, [names.training], all_streamed, timeout=120)
        stream = [v for _, v in log if v.get("source") == "stream"]
        assert sorted(v["id"] for v in stream) == sorted(ids)  # one each
        assert {v["embedder"] for v in stream} == {"all-MiniLM-L6-v2-onnx-int8"}  # the default embedder
        assert all(len(decode_vector(v["embedding"])) == 384 for v in stream)
        deadline = time.monotonic() + 60
        learned = 0.0
        while time.monotonic() < deadline:
            page = w.metrics()
            pattern = r'^driftlabel_training_examples_total\{source="stream",valid="true"\} (\S+)$'
            m = re.search(pattern, page, re.M)
            learned = float(m.group(1)) if m else 0.0
            if learned >= len(ids):
                break
            time.sleep(0.5)
        assert learned == len(ids)
    finally:
        w.stop()
