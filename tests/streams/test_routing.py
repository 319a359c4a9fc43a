"""The adaptive judge router keeps the routed share near its target, most uncertain first."""

from __future__ import annotations

import numpy as np
import pytest

from driftlabel.streams.routing import AdaptiveRouter, uncertainty


def test_share_tracks_target_while_uncertainty_falls() -> None:
    rng = np.random.default_rng(0)
    router = AdaptiveRouter(target=0.1, window=500)
    routed = 0
    for step in range(200):  # the stream gets easier: uncertainty falls 5x
        u = rng.beta(2, 5, size=32) / (1 + step / 50)
        routed += int(router.route(u).sum())
    assert 0.08 <= routed / (200 * 32) <= 0.11
    assert router.share == pytest.approx(routed / (200 * 32))


def test_a_share_above_max_burst_per_batch_is_still_met() -> None:
    """Batched judge calls make a 40 % share affordable: 0.4 x 64 texts a batch is more than max_burst
    (20), which bounds saved-up credit, not what one batch may route (it capped the share at 31 %)."""
    rng = np.random.default_rng(1)
    router = AdaptiveRouter(target=0.4, window=2000, max_burst=20)
    for _ in range(100):
        router.route(rng.random(64))
    assert 0.38 <= router.share <= 0.42


def test_most_uncertain_first_within_budget() -> None:
    router = AdaptiveRouter(target=0.1, window=100, max_burst=3)
    router.route(np.linspace(0, 0.5, 100), eligible=np.zeros(100, dtype=bool))  # history; credit saved
    u = np.array([0.99, 0.2, 0.97, 0.98, 0.96, 0.1, 0.95, 0.94, 0.93, 0.92])
    mask = router.route(u)
    assert mask.sum() == 3
    assert set(np.flatnonzero(mask)) == {0, 3, 2}


def test_eligible_mask_and_edges() -> None:
    assert not AdaptiveRouter(target=0.0).route(np.ones(10)).any()
    assert AdaptiveRouter(target=1.0).route(np.zeros(10)).all()
    r = AdaptiveRouter(target=1.0)
    assert r.route(np.ones(4), eligible=np.array([True, False, True, False])).tolist() == [
        True,
        False,
        True,
        False,
    ]
    assert AdaptiveRouter(0.5).route(np.array([])).shape == (0,)
    with pytest.raises(ValueError):
        AdaptiveRouter(target=1.5)


def test_uncertainty_kinds() -> None:
    assert uncertainty(np.array([0.0]), np.array([0.8])).tolist() == pytest.approx([0.2])
    assert uncertainty(np.array([np.log(4)]), np.array([0.0]), "entropy", n_classes=4).tolist() == [1.0]
    with pytest.raises(ValueError):
        uncertainty(np.zeros(1), np.zeros(1), "weird")


def test_random_routing_is_a_control_fixed_by_the_id() -> None:
    """``random`` (the bench's routing baseline) ignores the model's scores: the router sends the same
    share, and the same ids whatever the scores or the worker, so a retry decides alike."""
    n = 4000
    ids = [f"t{i}" for i in range(n)]
    rng = np.random.default_rng(0)
    margin = rng.random(n)
    u = uncertainty(rng.random(n), margin, "random", ids=ids)
    assert np.array_equal(u, uncertainty(np.zeros(n), np.zeros(n), "random", ids=ids))
    assert u.min() >= 0.0 and u.max() < 1.0
    routed = np.zeros(n, dtype=bool)
    router = AdaptiveRouter(target=0.1)
    for lo in range(0, n, 200):
        routed[lo : lo + 200] = router.route(u[lo : lo + 200])
    assert 0.07 < routed.mean() < 0.13
    # by margin the routed texts would be the least sure ones; at random they are like any others
    assert abs(margin[routed].mean() - margin.mean()) < 0.05
    with pytest.raises(ValueError, match="one id per text"):
        uncertainty(np.zeros(2), np.zeros(2), "random")


class _Rate:
    def __init__(self, rate: float, per_judged: float) -> None:
        self.rate = rate
        self.calls_per_judged = per_judged

    @property
    def target_share(self) -> float:
        return min(1.0, self.rate / max(self.calls_per_judged, 1.0))


def test_judged_share_turns_a_calls_budget_into_a_share() -> None:
    from driftlabel.models.drift import JudgeRateController
    from driftlabel.streams.routing import judged_share

    # a calls budget: 0.10 calls a text at 2 calls per judged text is a 5 % share, capped by the share
    assert judged_share(1.0, 0.10, True, _Rate(0.10, 2.0)) == pytest.approx(0.05)
    assert judged_share(0.03, 0.10, True, _Rate(0.10, 2.0)) == pytest.approx(0.03)
    assert judged_share(1.0, 0.10, False, _Rate(0.03, 2.0)) == pytest.approx(0.05)  # fixed: no maintenance
    # no calls budget: the share itself, steered by the controller only with rate control on
    assert judged_share(0.10, 0.0, True, _Rate(0.03, 2.0)) == pytest.approx(0.03)
    assert judged_share(0.10, 0.0, False, _Rate(0.03, 2.0)) == pytest.approx(0.10)
    assert judged_share(1.0, 0.0, True, _Rate(0.03, 2.0)) == pytest.approx(1.0)
    # the real controller: calls measured per judged text set the share
    ctl = JudgeRateController(calls_per_item=0.10, maintenance=0.03)
    ctl.observe_judged([2] * 40, [False] * 40)
    ctl.observe(np.full(400, 0.5), ["a"] * 400)
    assert judged_share(1.0, 0.10, True, ctl) == pytest.approx(0.05, abs=0.02)
