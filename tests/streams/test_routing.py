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
