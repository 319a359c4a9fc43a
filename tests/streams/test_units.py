"""Pure parts of the service without Kafka: pipeline rules, checkpoints, settings, metrics, client input."""

from __future__ import annotations

import io
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest

from driftlabel.config import ConfigError, load_settings
from driftlabel.judge import JudgeOutcome, Verdict
from driftlabel.streams.checkpoint import list_checkpoints, read_checkpoint, write_checkpoint
from driftlabel.streams.client import control_record, iter_input_records
from driftlabel.streams.errors import CheckpointError, InvalidMessageError
from driftlabel.streams.messages import JudgeRequestMessage, log_digest
from driftlabel.streams.metrics import METRIC_NAMES, ServiceMetrics
from driftlabel.streams.pipeline import judge_result_messages, label_messages, new_pairs
from driftlabel.streams.settings import KafkaSettings, MetricsSettings
from driftlabel.streams.topics import TopicNames


@dataclass
class FakeRanking:
    labels: list[str]
    scores: np.ndarray
    candidates: list[list[tuple[str, float]]]
    entropy: np.ndarray
    margin: np.ndarray
    out_of_scope: np.ndarray


@dataclass
class FakeVerdict:
    label: str
    valid: bool
    depth: int
    judge_model: str = "sim"
    latency_ms: float = 5.0
    tokens: int = 40


@dataclass
class FakeOutcome:
    id: str
    status: str
    label: str | None
    verdicts: list[FakeVerdict] = field(default_factory=list)
    reason: str | None = None

    @property
    def pairs(self) -> list[tuple[str, bool]]:
        return [(v.label, v.valid) for v in self.verdicts]


def _ranking() -> FakeRanking:
    return FakeRanking(
        labels=["a", "out_of_scope", "b"],
        scores=np.array([0.9, 0.3, 0.5]),
        candidates=[[("a", 0.9), ("b", 0.1)], [("b", 0.3), ("a", 0.2)], [("b", 0.5), ("a", 0.4)]],
        entropy=np.array([0.1, 1.2, 0.7]),
        margin=np.array([0.8, 0.1, 0.1]),
        out_of_scope=np.array([False, True, False]),
    )


def test_immediate_labels_final_unless_routed() -> None:
    msgs = label_messages(["i1", "i2", "i3"], _ranking(), np.array([False, False, True]), 7, 100.0)
    assert [(m.status, m.final) for m in msgs] == [
        ("predicted", True),
        ("out_of_scope", True),
        ("predicted", False),
    ]
    assert msgs[0].candidates == [("a", 0.9), ("b", 0.1)] and msgs[2].model_version == 7


def _request() -> JudgeRequestMessage:
    cands = [{"label": "b", "probability": 0.5, "description": None, "examples": []},
             {"label": "a", "probability": 0.4, "description": "A", "examples": ["x"]}]  # fmt: skip
    return JudgeRequestMessage(id="i3", text="some text", candidates=cands, label="b", score=0.5, entropy=0.7,
                               model_version=7, received_ts=1.0, ts=2.0)  # fmt: skip


def test_corrected_outcome_gives_final_label_and_training_pairs() -> None:
    out = FakeOutcome("i3", "corrected", "a", [FakeVerdict("b", False, 1), FakeVerdict("a", True, 2)])
    r = judge_result_messages(_request(), out, 7, 3.0)
    assert (r.label.label, r.label.status, r.label.final, r.label.score) == ("a", "corrected", True, 0.4)
    assert [(t.label, t.valid, t.source) for t in r.training] == [("b", False, "judge"), ("a", True, "judge")]
    assert [v.depth for v in r.verdicts] == [1, 2] and r.review is None


def test_an_item_judged_again_after_a_crash_writes_only_the_pairs_the_log_lacks() -> None:
    """The first judging wrote its rejected pair before the kill; the second judging (same id) accepts
    a lower candidate: only that pair is new, whatever the verdict on the repeated one."""
    first = judge_result_messages(
        _request(), FakeOutcome("i3", "unresolved", None, [FakeVerdict("b", False, 1)]), 7, 1.0
    )
    seen = {log_digest(t) for t in first.training}
    again = FakeOutcome("i3", "corrected", "a", [FakeVerdict("b", False, 1), FakeVerdict("a", True, 2)])
    r = judge_result_messages(_request(), again, 8, 2.0)
    assert [(t.label, t.valid) for t in new_pairs(r.training, seen)] == [("a", True)]
    assert new_pairs(r.training, set()) == r.training


def test_unresolved_outcome_goes_to_review_and_keeps_top_candidate() -> None:
    out = FakeOutcome(
        "i3", "unresolved", None, [FakeVerdict("b", False, 1), FakeVerdict("a", False, 2)], "none"
    )
    r = judge_result_messages(_request(), out, 7, 3.0)
    assert (r.label.label, r.label.status, r.label.final) == ("b", "unresolved", True)
    assert (
        r.review is not None and r.review.reason == "none" and r.review.candidates == [("b", 0.5), ("a", 0.4)]
    )
    assert all(not t.valid for t in r.training)


class FakeModel:
    model_version = 5

    def save(self, path: Path) -> None:
        path.mkdir()
        (path / "weights.bin").write_bytes(b"123")


def test_checkpoint_roundtrip_prune_and_corrupt(tmp_path: Path) -> None:
    offs = {"p.training": {0: 10, 1: 3}, "p.control": {0: 1}}
    for _ in range(4):
        ck = write_checkpoint(tmp_path, FakeModel(), offs, worker="w/1", topic_prefix="p.", keep=2)
    paths = list_checkpoints(tmp_path)
    assert len(paths) == 2 and paths[0] == ck.path
    back = read_checkpoint(paths[0], "p.")
    assert back.offsets == offs and back.model_version == 5 and (back.model_dir / "weights.bin").is_file()
    with pytest.raises(CheckpointError, match="topic prefix"):
        read_checkpoint(paths[0], "other.")
    (paths[1] / "checkpoint.json").write_text("{broken")
    with pytest.raises(CheckpointError, match="unreadable"):
        read_checkpoint(paths[1])
    assert not list((tmp_path).glob(".tmp-*"))


def test_kafka_settings_env_secret_and_sasl(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DRIFTLABEL_KAFKA_BOOTSTRAP_SERVERS", "k1:9093, k2:9093")
    monkeypatch.setenv("DRIFTLABEL_KAFKA_SECURITY_PROTOCOL", "SASL_PLAINTEXT")
    monkeypatch.setenv("DRIFTLABEL_KAFKA_SASL_MECHANISM", "SCRAM-SHA-512")
    monkeypatch.setenv("DRIFTLABEL_KAFKA_SASL_USERNAME", "svc")
    monkeypatch.setenv("DRIFTLABEL_KAFKA_SASL_PASSWORD", "hunter2")
    k = load_settings(KafkaSettings)
    assert k.servers == ["k1:9093", "k2:9093"]
    assert "hunter2" not in repr(k) and "hunter2" not in str(k.model_dump())
    kw = k.client_kwargs()
    assert kw["sasl_plain_password"] == "hunter2" and kw["sasl_mechanism"] == "SCRAM-SHA-512"
    monkeypatch.delenv("DRIFTLABEL_KAFKA_SASL_USERNAME")
    with pytest.raises(ConfigError, match="sasl"):
        load_settings(KafkaSettings)


def test_settings_from_file_section(tmp_path: Path) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text('[kafka]\ntopic_prefix = "prod."\npartitions = 12\n[metrics]\nport = 9999\n')
    k = load_settings(KafkaSettings, cfg)
    assert (k.topic_prefix, k.partitions) == ("prod.", 12)
    assert TopicNames.from_settings(k).judge_requests == "prod.judge-requests"
    assert load_settings(MetricsSettings, cfg).port == 9999


def test_metrics_names_and_rolling_share() -> None:
    m = ServiceMetrics(MetricsSettings(share_window=10))
    m.observe_batch(np.array([0.1, 0.2]), np.array([True, False]), 0.5)
    m.count_labels(["predicted", "predicted", "validated"], [True, False, True])
    page = m.render().decode()
    for name in METRIC_NAMES:
        assert f"# TYPE {name} " in page, name
        assert name.startswith("driftlabel_")
    assert "driftlabel_uncertain_share 0.5" in page
    assert 'driftlabel_items_total{final="false",status="predicted"} 1.0' in page
    m.observe_batch(np.zeros(20), np.zeros(20, dtype=bool), 0.5)  # the window forgets
    assert "driftlabel_uncertain_share 0.0" in m.render().decode()


def test_input_formats(tmp_path: Path) -> None:
    csv_path = tmp_path / "seed.csv"
    csv_path.write_text("text,label\nhello there,greet\nbye now,farewell\n")
    recs = list(iter_input_records(csv_path, io.StringIO(), "training", source="seed"))
    assert recs[0] == {
        "id": "train-1",
        "text": "hello there",
        "label": "greet",
        "source": "seed",
        "valid": True,
    }
    lines = list(iter_input_records(None, io.StringIO("first text\n\nsecond text\n"), "texts"))
    assert lines == ["first text", "second text"]
    jsonl = list(iter_input_records(None, io.StringIO('{"id": "a", "text": "x"}\n'), "texts"))
    assert jsonl == [{"id": "a", "text": "x"}]
    with pytest.raises(InvalidMessageError, match="label"):
        list(iter_input_records(None, io.StringIO("just text\n"), "training"))
    with pytest.raises(InvalidMessageError, match="line 2"):
        list(iter_input_records(None, io.StringIO('{"text": "x"}\n{bad\n'), "texts"))


def test_control_record_checks() -> None:
    assert control_record("add_class", "pizza", "food", ["a", " "]) == {
        "op": "add_class", "label": "pizza", "description": "food", "examples": ["a"],
    }  # fmt: skip
    for args in [("explode", "x"), ("add_class", "x"), ("describe_class", "x"), ("remove_class", " ")]:
        with pytest.raises(InvalidMessageError):
            control_record(*args)
    assert json.dumps(control_record("remove_class", "x"))


def test_bad_config_file_is_a_clear_error(tmp_path: Path) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text("[kafka]\npartitions = 0\n")
    with pytest.raises(ConfigError, match="PARTITIONS"):
        load_settings(KafkaSettings, cfg)


def test_deploy_example_config_is_valid() -> None:
    from driftlabel.judge import JudgeSettings
    from driftlabel.models import EmbedderSettings, ExpertSettings
    from driftlabel.streams.settings import StreamSettings

    cfg = Path(__file__).resolve().parents[2] / "deploy" / "driftlabel.toml"
    for cls in (KafkaSettings, StreamSettings, MetricsSettings, JudgeSettings):
        load_settings(cls, cfg)  # type: ignore[type-var]
    for cls in (EmbedderSettings, ExpertSettings):
        load_settings(cls, cfg)  # type: ignore[type-var]
    assert load_settings(KafkaSettings, cfg).security_protocol == "SASL_SSL"


def test_seed_set_applies_control_in_order_and_cache_is_lru() -> None:
    from driftlabel.streams.host import EmbeddingCache, SeedSet
    from driftlabel.streams.messages import ControlMessage, TrainingMessage

    seed = SeedSet()
    seed.add_training(
        [
            TrainingMessage(id="1", text="a", label="x", source="seed"),
            TrainingMessage(id="2", text="b", label="y", source="seed"),
            TrainingMessage(id="3", text="c", label="y", source="judge", valid=False),
        ]
    )
    seed.add_control(ControlMessage(op="add_class", label="z", description="zed", examples=["d", "e"]))
    seed.add_control(ControlMessage(op="remove_class", label="y"))
    texts, labels, desc = seed.fit_data()
    assert (texts, labels, desc) == (["a", "d", "e"], ["x", "z", "z"], {"z": "zed"})
    assert seed.n_labels == 2 and len(seed.negatives) == 1

    cache = EmbeddingCache(2)
    cache.put_many(["a", "b", "c"], np.eye(3, dtype=np.float32))
    assert cache.get("a") is None and cache.get("c") is not None and len(cache) == 2


def test_worker_print_config_masks_secrets(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from driftlabel.streams.cli import main

    monkeypatch.setenv("DRIFTLABEL_KAFKA_SECURITY_PROTOCOL", "SASL_PLAINTEXT")
    monkeypatch.setenv("DRIFTLABEL_KAFKA_SASL_MECHANISM", "PLAIN")
    monkeypatch.setenv("DRIFTLABEL_KAFKA_SASL_USERNAME", "svc")
    monkeypatch.setenv("DRIFTLABEL_KAFKA_SASL_PASSWORD", "hunter2")
    monkeypatch.setenv("DRIFTLABEL_JUDGE_API_KEY", "sk-very-secret")
    assert main(["worker", "--print-config", "--bootstrap", "k:9092"]) == 0
    out = capsys.readouterr().out
    assert "hunter2" not in out and "sk-very-secret" not in out
    assert "[kafka]" in out and "[judge]" in out and "bootstrap_servers = k:9092" in out
    assert "sasl_password = **********" in out


def test_worker_embedder_choice(capsys: pytest.CaptureFixture[str]) -> None:
    from driftlabel.streams.cli import main

    assert main(["worker", "--print-config", "--bootstrap", "k:9092", "--embedder", "static"]) == 0
    out = capsys.readouterr().out
    assert "[embedder]\nkind = static" in out
    assert main(["worker", "--print-config", "--bootstrap", "k:9092", "--embedder", "minilm"]) == 0
    assert "kind = sentence-transformers" in capsys.readouterr().out
    assert main(["worker", "--print-config", "--bootstrap", "k:9092"]) == 0  # the default: MiniLM, int8 ONNX
    assert "[embedder]\nkind = onnx" in capsys.readouterr().out


def test_a_refuted_cross_check_is_learned_as_its_no_only() -> None:
    """``judge.verify_below``: the choice said "a", the yes/no about "a" said no; only that no is learned."""
    chose = [Verdict("i3", "b", False, 1, "m", 5.0, 90), Verdict("i3", "a", True, 2, "m", 5.0, 0)]
    check = Verdict("i3", "a", False, 2, "m", 4.0, 60)
    out = JudgeOutcome(
        "i3", "unresolved", None, [*chose, check], "refuted", calls=2.0, chosen=True, check=check
    )
    r = judge_result_messages(_request(), out, 7, 3.0)
    assert [(t.label, t.valid) for t in r.training] == [("a", False)]
    assert [(v.label, v.valid) for v in r.verdicts] == [("b", False), ("a", True), ("a", False)]
    assert (r.label.label, r.label.status) == ("b", "unresolved") and r.review is not None
    assert out.answers == [(True, 5.0, 90), (False, 4.0, 60)] and out.tokens == 150
