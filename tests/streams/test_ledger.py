"""The dedupe ledger's memory bound without a broker: keys are kept while their records can still be in
the topic (the retention horizon), in time buckets dropped whole; without retention, for ever."""

from __future__ import annotations

from driftlabel.streams.ledger import BUCKETS_PER_HORIZON, DigestSet, TopicLedger, final_label_key
from driftlabel.streams.settings import KafkaSettings
from driftlabel.streams.topics import deletion_horizon_ms

H = 16_000  # ms: buckets of 1 s


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def _ledger(horizon_ms: int | None, clock: Clock | None = None) -> TopicLedger:
    return TopicLedger(
        KafkaSettings(), "t.labels", final_label_key, horizon_ms=horizon_ms, clock_ms=clock or Clock()
    )


def test_keys_past_the_horizon_are_forgotten_whole_buckets_at_a_time() -> None:
    led = _ledger(H)
    led.add(0, "old", ts_ms=1_000.0)
    led.add(0, "newer", ts_ms=9_500.0)
    led.add(1, "other", ts_ms=1_200.0)
    assert led.has(0, "old") and led.has(1, "other") and not led.has(1, "old")
    assert led.prune(now_ms=1_000.0 + H) == 0  # its bucket [1 s, 2 s) is not wholly past the horizon yet
    assert led.prune(now_ms=2_000.0 + H) == 2
    assert not led.has(0, "old") and not led.has(1, "other") and led.has(0, "newer")
    assert len(led) == 1
    led.add(0, "old", ts_ms=30_000.0)  # the id again, later: a new key
    assert led.has(0, "old")


def test_a_record_read_back_after_its_horizon_is_not_kept() -> None:
    clock = Clock()
    led = _ledger(H, clock)
    clock.now = 100_000.0
    led.add(0, "ancient", ts_ms=1_000.0)  # e.g. a producer's clock far behind: due for deletion already
    led.add(0, "recent", ts_ms=99_000.0)
    led.add(0, "mine")  # a write made now
    assert not led.has(0, "ancient") and led.has(0, "recent") and led.has(0, "mine")


def test_a_key_is_kept_at_most_one_bucket_past_the_horizon() -> None:
    led = _ledger(H)
    width = H // BUCKETS_PER_HORIZON
    led.add(0, "k", ts_ms=5 * width - 1.0)  # newest moment of bucket 4
    assert led.prune(now_ms=5 * width - 1.0 + H) == 0
    assert led.prune(now_ms=5 * width + H) == 1


def test_without_retention_every_key_stays() -> None:
    led = _ledger(None)
    for i in range(1000):
        led.add(i % 4, f"id-{i}", ts_ms=float(i))
    assert led.prune(now_ms=1e15) == 0 and len(led) == 1000 and led.has(3, "id-999")


def test_the_horizon_from_the_topic_configuration() -> None:
    day, week = 86_400_000, 7 * 86_400_000
    assert deletion_horizon_ms(None) is None  # the broker did not say (Tansu): keep every key
    assert deletion_horizon_ms({"cleanup.policy": "compact", "retention.ms": str(day)}) is None
    assert deletion_horizon_ms({"retention.ms": "-1"}) is None
    kafka_default = {"cleanup.policy": "delete", "retention.ms": str(day), "segment.ms": str(week)}
    assert deletion_horizon_ms(kafka_default, margin_ms=0) == day + week
    assert deletion_horizon_ms(
        {"cleanup.policy": "compact,delete", "retention.ms": "1000", "segment.ms": "10"}
    ) == (1010 + 3_600_000)


def test_a_key_is_claimed_once_per_partition() -> None:
    """Two agents of one worker about to write the same final label: only the first claim wins."""
    led = _ledger(None)
    assert led.claim(0, "id-1") and led.has(0, "id-1")
    assert not led.claim(0, "id-1")
    assert led.claim(1, "id-1")  # another partition is another key space
    led.add(0, "id-2")
    assert not led.claim(0, "id-2")


def test_the_digest_set_keeps_membership_in_16_bytes_a_key() -> None:
    keys = DigestSet(min_merge=64)
    ids = [f"soak-{i}" for i in range(5000)]
    for k in ids:
        keys.add(k)
    for k in ids[:100]:  # repeats add nothing, before and after a merge
        keys.add(k)
    assert len(keys) == 5000
    assert all(k in keys for k in ids)
    assert not any(f"soak-{i}" in keys for i in range(5000, 6000))
    assert "" not in keys and "soak-1 " not in keys  # the whole string counts
    assert keys._hi.nbytes + keys._lo.nbytes <= 16 * 5000
    other = DigestSet()
    other.add("late")
    other.add("soak-7")
    keys.update(other)
    assert len(keys) == 5001 and "late" in keys
