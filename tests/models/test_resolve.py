"""Streamed learning equals a refit: background warm re-solves at log positions (models/resolve.py)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from driftlabel.models import ExpertSettings, RedClassifier

from .conftest import make_blobs

pytestmark = pytest.mark.filterwarnings("ignore")


def _problem() -> tuple[
    RedClassifier, tuple[np.ndarray, list[str], np.ndarray], tuple[np.ndarray, np.ndarray]
]:
    blobs = make_blobs(n_labels=16, dim=24, noise=0.28, seed=7)
    seeds = blobs.sample(3, seed=1)
    stream = blobs.sample(40, seed=2)
    X_te, _, y_te = blobs.sample(30, seed=3)
    return seeds, stream, (X_te, y_te)


def _stream(clf: RedClassifier, stream: tuple[np.ndarray, list[str], np.ndarray], batch: int = 16) -> None:
    X, texts, y = stream
    order = np.random.default_rng(0).permutation(len(X))
    for lo in range(0, len(X), batch):
        rows = order[lo : lo + batch]
        clf.learn_embeddings(X[rows], [texts[i] for i in rows], y[rows])


def _settings(**kw: object) -> ExpertSettings:
    return ExpertSettings(**{"subset_size": 4, "resolve_every": 64, **kw})  # type: ignore[arg-type]


def _weights(clf: RedClassifier) -> list[np.ndarray]:
    return [np.concatenate([e.coef_.ravel(), e.intercept_]) for e in clf._experts]  # type: ignore[attr-defined]


def test_streamed_batches_move_predictions_as_far_as_a_refit() -> None:
    seeds, stream, (X_te, y_te) = _problem()
    streamed = RedClassifier(settings=_settings()).fit_embeddings(*seeds)
    seeds_only = np.mean(np.array(streamed.predict_embeddings(X_te)) == y_te)
    _stream(streamed, stream)
    streamed.settle()
    assert streamed.resolves >= 3
    refit = RedClassifier(settings=_settings()).fit_embeddings(*seeds)
    refit._store.add(stream[0], stream[1], stream[2])  # type: ignore[union-attr]
    refit.refit()
    p_stream = np.array(streamed.predict_embeddings(X_te))
    p_refit = np.array(refit.predict_embeddings(X_te))
    acc_stream, acc_refit = np.mean(p_stream == y_te), np.mean(p_refit == y_te)
    assert acc_refit > seeds_only + 0.05  # the problem is one where more data matters
    assert acc_stream >= acc_refit - 0.02, (seeds_only, acc_stream, acc_refit)
    assert np.mean(p_stream == p_refit) >= 0.9


def test_gradient_steps_alone_fall_short_of_the_re_solve() -> None:
    seeds, stream, (X_te, y_te) = _problem()
    # no re-solve of any kind (young-label re-solves are re-solves too)
    sgd = RedClassifier(settings=_settings(resolve_every=0, young_examples=0)).fit_embeddings(*seeds)
    _stream(sgd, stream)
    assert sgd.resolves == 0 and not sgd.resolve_pending
    resolved = RedClassifier(settings=_settings()).fit_embeddings(*seeds)
    _stream(resolved, stream)
    resolved.settle()
    acc = [np.mean(np.array(m.predict_embeddings(X_te)) == y_te) for m in (sgd, resolved)]
    assert acc[1] >= acc[0]


def test_background_and_inline_re_solves_give_the_same_weights() -> None:
    """The swap point is a log position, so how fast the solve runs cannot change the result."""
    seeds, stream, _ = _problem()
    models = []
    for background in (True, False):
        clf = RedClassifier(settings=_settings(resolve_background=background)).fit_embeddings(*seeds)
        _stream(clf, stream)
        clf.settle()
        models.append(clf)
    a, b = models
    assert a.resolves == b.resolves and a.model_version == b.model_version and a.position == b.position
    for wa, wb in zip(_weights(a), _weights(b), strict=True):
        np.testing.assert_array_equal(wa, wb)


def test_labels_keep_coming_while_a_re_solve_runs() -> None:
    """Between the snapshot and the swap the old weights answer; the swap bumps the version once."""
    seeds, stream, (X_te, _) = _problem()
    clf = RedClassifier(settings=_settings(resolve_lag=10.0)).fit_embeddings(*seeds)
    X, texts, y = stream
    clf.learn_embeddings(X[:64], texts[:64], y[:64])
    assert clf.resolve_pending
    before = clf.predict_proba_embeddings(X_te)  # answered at once, from the weights before the solve
    v = clf.model_version
    clf.settle()
    assert not clf.resolve_pending and clf.model_version == v + 1 and clf.resolves == 1
    assert not np.allclose(before, clf.predict_proba_embeddings(X_te))  # the solve was not visible before


def test_save_and_load_continue_the_schedule_bit_for_bit(tmp_path: Path) -> None:
    seeds, stream, _ = _problem()
    X, texts, y = stream
    half = len(X) // 2 + 5  # mid-chunk: a provisional step is saved with its chunk start
    straight = RedClassifier(settings=_settings()).fit_embeddings(*seeds)
    _stream(straight, (X, texts, y))
    straight.settle()

    first = RedClassifier(settings=_settings()).fit_embeddings(*seeds)
    order = np.random.default_rng(0).permutation(len(X))
    for lo in range(0, half, 7):
        rows = order[lo : min(lo + 7, half)]
        first.learn_embeddings(X[rows], [texts[i] for i in rows], y[rows])
    first.save(tmp_path / "m")
    resumed = RedClassifier.load(tmp_path / "m")
    for lo in range(half, len(X), 16):
        rows = order[lo : lo + 16]
        resumed.learn_embeddings(X[rows], [texts[i] for i in rows], y[rows])
    resumed.settle()
    assert resumed.position == straight.position and resumed.resolves == straight.resolves >= 1
    assert resumed.model_version == straight.model_version
    for wa, wb in zip(_weights(straight), _weights(resumed), strict=True):
        np.testing.assert_array_equal(wa, wb)


def test_copy_is_independent() -> None:
    seeds, stream, (X_te, _) = _problem()
    clf = RedClassifier(settings=_settings()).fit_embeddings(*seeds)
    twin = clf.copy()
    _stream(clf, stream)
    clf.settle()
    assert twin.model_version < clf.model_version and twin.n_examples < clf.n_examples
    assert len(twin.predict_embeddings(X_te)) == len(X_te)


@pytest.mark.parametrize("sizes", [(1,), (7,), (16,), (5, 31, 2, 64)])
def test_the_same_rows_give_the_same_model_however_they_are_batched(sizes: tuple[int, ...]) -> None:
    """A replay from a checkpoint batches the log differently: chunk starts are log positions."""
    seeds, (X, texts, y), _ = _problem()
    reference = RedClassifier(settings=_settings()).fit_embeddings(*seeds)
    _stream(reference, (X, texts, y), batch=32)
    reference.settle()
    other = RedClassifier(settings=_settings()).fit_embeddings(*seeds)
    order = np.random.default_rng(0).permutation(len(X))
    lo, k = 0, 0
    while lo < len(X):
        n = sizes[k % len(sizes)]
        rows = order[lo : lo + n]
        other.learn_embeddings(X[rows], [texts[i] for i in rows], y[rows])
        lo += n
        k += 1
    other.settle()
    assert other.position == reference.position and other.resolves == reference.resolves
    for wa, wb in zip(_weights(reference), _weights(other), strict=True):
        np.testing.assert_array_equal(wa, wb)


def test_a_single_learned_row_takes_effect_at_once() -> None:
    seeds, (X, texts, y), _ = _problem()
    clf = RedClassifier(settings=_settings()).fit_embeddings(*seeds)
    before = _weights(clf)
    clf.learn_embeddings(X[:1], texts[:1], y[:1])
    assert clf.buffered == 1 and clf.n_examples == len(seeds[0]) + 1
    assert any(not np.array_equal(a, b) for a, b in zip(before, _weights(clf), strict=True))


def test_the_blas_thread_count_stays_pinned_between_calls() -> None:
    """A limit entered and left around each call flips the process-wide BLAS thread count under a
    background re-solve (its sums, so its weights, then differ run to run); it must stay pinned."""
    script = textwrap.dedent(
        """
        import numpy as np
        from threadpoolctl import threadpool_info
        from driftlabel.models import ExpertSettings, RedClassifier

        def blas():  # numpy's and scipy's OpenBLAS (L-BFGS) alike
            return sorted({i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas"})

        before = blas()
        rng = np.random.default_rng(0)
        X = rng.normal(size=(40, 8)).astype(np.float32)
        X /= np.linalg.norm(X, axis=1, keepdims=True)
        y = np.repeat(["a", "b", "c", "d"], 10)
        clf = RedClassifier(settings=ExpertSettings(subset_size=2, blas_threads=1))
        clf.fit_embeddings(X, [f"t{i}" for i in range(40)], y)
        print(before == [2], blas())
        """
    )
    env = dict(os.environ, OPENBLAS_NUM_THREADS="2")  # a default above 1, whatever the machine
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == "True [1]", out.stdout


def test_young_labels_are_re_solved_at_count_milestones_only() -> None:
    """One expert covers every label, so a young label's re-solve is a pass over the whole store: it
    runs when the label's count reaches 1, 2, 3, 5, 8, 13, ..., not for every row it learns."""
    from driftlabel.models.classifier import young_milestones

    assert young_milestones(20).tolist() == [1, 2, 3, 5, 8, 13] and young_milestones(0).tolist() == []
    seeds, stream, _ = _problem()  # 3 seeds per label
    clf = RedClassifier(settings=_settings(resolve_every=0, learn_chunk=1)).fit_embeddings(*seeds)
    calls: list[int] = []
    real = clf._refit_experts

    def spy(which: object, fresh: bool = False, max_iter: int | None = None, **kw: object) -> None:
        calls.append(clf.store.count(label))
        real(which, fresh=fresh, max_iter=max_iter, **kw)  # type: ignore[arg-type]

    clf._refit_experts = spy  # type: ignore[method-assign]
    X, texts, y = stream
    label = str(y[0])
    rows = np.flatnonzero(y == label)[:20]
    for i in rows.tolist():  # one row at a time: 3 -> 23 stored examples
        clf.learn_embeddings(X[i : i + 1], [texts[i]], y[i : i + 1])
    assert calls == [5, 8, 13]


def test_a_new_label_drops_a_running_re_solve_instead_of_waiting_for_it() -> None:
    """Adding a label mid-solve: no wait, no stale swap; the next chunk starts a re-solve that knows it."""
    seeds, stream, _ = _problem()
    X, texts, y = stream
    clf = RedClassifier(settings=_settings(resolve_lag=10.0)).fit_embeddings(*seeds)
    clf.learn_embeddings(X[:64], texts[:64], y[:64])
    assert clf.resolve_pending
    resolves = clf.resolves
    new = X[:4] * -1.0  # far from every blob
    new /= np.linalg.norm(new, axis=1, keepdims=True)
    clf.add_class_embeddings("newcomer", new, [f"new {i}" for i in range(4)])
    assert not clf.resolve_pending and clf.resolves == resolves  # dropped, not swapped in
    assert clf.predict_embeddings(new) == ["newcomer"] * 4
    clf.learn_embeddings(X[64:80], texts[64:80], y[64:80])  # the next chunk: a re-solve is due again
    assert clf.resolve_pending
    clf.settle()
    assert clf.resolves == resolves + 1 and clf.predict_embeddings(new) == ["newcomer"] * 4
    # and two workers reading the same log still agree, weight for weight
    inline = _settings(resolve_lag=10.0, resolve_background=False)
    twin = RedClassifier(settings=inline).fit_embeddings(*seeds)
    twin.learn_embeddings(X[:64], texts[:64], y[:64])
    twin.add_class_embeddings("newcomer", new, [f"new {i}" for i in range(4)])
    twin.learn_embeddings(X[64:80], texts[64:80], y[64:80])
    twin.settle()
    for wa, wb in zip(_weights(clf), _weights(twin), strict=True):
        np.testing.assert_array_equal(wa, wb)


def test_a_dropped_re_solve_stops_unless_a_copy_still_holds_it(monkeypatch: pytest.MonkeyPatch) -> None:
    """A voided re-solve is cancelled (queued) or stopped at its next L-BFGS step (running) once no model
    holds it any more, so it stops taking a core; while a copy (a re-forming's, a control op's) still
    holds it, it runs on and that copy can swap it in."""
    import concurrent.futures

    from driftlabel.models import SolveStopped

    seeds, stream, _ = _problem()
    X, texts, y = stream
    clf = RedClassifier(settings=_settings(resolve_lag=10.0)).fit_embeddings(*seeds)
    clf.learn_embeddings(X[:64], texts[:64], y[:64])
    job = clf._pending
    assert job is not None
    twin = clf.copy()
    new = X[:4] * -1.0
    new /= np.linalg.norm(new, axis=1, keepdims=True)
    clf.add_class_embeddings("newcomer", new, [f"new {i}" for i in range(4)])
    assert not clf.resolve_pending and not job.stop.is_set()  # the copy still holds it
    twin.settle()  # ... and swaps it in
    assert twin.resolves == 1

    import threading

    import driftlabel.models.resolve as resolve

    gate = threading.Event()  # the solve is held until the label is added: it cannot finish first
    real = resolve._solve

    def held(*args: object) -> object:
        assert gate.wait(30)
        return real(*args)  # type: ignore[arg-type]

    monkeypatch.setattr(resolve, "_solve", held)
    clf2 = RedClassifier(settings=_settings(resolve_lag=10.0)).fit_embeddings(*seeds)
    clf2.learn_embeddings(X[:64], texts[:64], y[:64])
    job2 = clf2._pending
    assert job2 is not None and not job2.done
    clf2.add_class_embeddings("newcomer", new, [f"new {i}" for i in range(4)])
    assert job2.stop.is_set()
    gate.set()
    concurrent.futures.wait([job2.future], timeout=60)
    # cancelled if it was still queued behind another solve, else stopped at its first check
    assert job2.future.cancelled() or isinstance(job2.future.exception(), SolveStopped)
    monkeypatch.setattr(resolve, "_solve", real)

    clf3 = RedClassifier(settings=_settings(resolve_lag=10.0)).fit_embeddings(*seeds)
    clf3.learn_embeddings(X[:64], texts[:64], y[:64])
    job3 = clf3._pending
    assert job3 is not None
    clf3.copy().release_resolve()  # a discarded copy does not stop the original's
    assert not job3.stop.is_set()
    clf3.release_resolve()
    assert job3.stop.is_set() and not clf3.resolve_pending


def test_solves_stop_at_their_next_step_when_told() -> None:
    from driftlabel.models import SoftmaxExpert, SolveStopped
    from driftlabel.models.experts import solve_columns, stoppable

    blobs = make_blobs(n_labels=4, dim=8, noise=0.3, seed=1)
    X, _, y = blobs.sample(20, seed=0)
    expert = SoftmaxExpert().fit_many(X, y)
    with stoppable(lambda: True), pytest.raises(SolveStopped):
        SoftmaxExpert().fit_many(X, y)
    codes = np.searchsorted(expert.classes_, y)
    with stoppable(lambda: True), pytest.raises(SolveStopped):
        solve_columns(expert, X, codes, np.ones(len(X)), np.ones(len(X), bool), np.array([0]), 10)
    SoftmaxExpert().fit_many(X, y)  # outside the block: unaffected


@pytest.mark.parametrize("mode", ["columns", "all"])
def test_a_young_label_re_solve_moves_its_own_column_only_in_columns_mode(mode: str) -> None:
    """``young_solve = "columns"``: a young label's re-solve (and a new label's placement) moves that
    label's weights against the others' fixed logits; "all" moves every column of its expert."""
    seeds, stream, (X_te, y_te) = _problem()
    settings = _settings(subset_size=100, resolve_every=0, learn_chunk=1, young_solve=mode)
    clf = RedClassifier(settings=settings).fit_embeddings(*seeds)
    X, texts, y = stream
    label = str(y[0])
    rows = np.flatnonzero(y == label)[:2]  # 3 -> 5 stored: the milestone 5 re-solves it
    e = clf._experts[0]
    col = list(e.classes_).index(label)
    before = e.coef_.copy()  # type: ignore[union-attr]
    clf._learn_rows = lambda *a, **k: None  # type: ignore[method-assign]  # no gradient steps: the re-solve alone
    clf.learn_embeddings(X[rows], [texts[i] for i in rows], y[rows])
    after = clf._experts[0].coef_
    assert after is not None and not np.allclose(after[:, col], before[:, col])
    others = np.delete(after, col, axis=1), np.delete(before, col, axis=1)
    assert np.array_equal(*others) == (mode == "columns")
    # a new label's placement likewise
    new = X[:4] * -1.0
    new /= np.linalg.norm(new, axis=1, keepdims=True)
    before = clf._experts[0].coef_.copy()  # type: ignore[union-attr]
    acc = np.mean(np.array(clf.predict_embeddings(X_te)) == y_te)
    clf.add_class_embeddings("newcomer", new, [f"new {i}" for i in range(4)])
    after = clf._experts[0].coef_
    assert after is not None and clf.predict_embeddings(new) == ["newcomer"] * 4
    old = list(clf._experts[0].classes_).index("newcomer")
    grown = np.delete(after, old, axis=1)
    assert np.array_equal(grown, before) == (mode == "columns")
    assert np.mean(np.array(clf.predict_embeddings(X_te)) == y_te) >= acc - 0.01  # the others keep theirs


def test_auto_young_solve_moves_every_column_only_while_that_is_cheap() -> None:
    """``auto``: stored rows x columns at most ``young_solve_max_cells`` -> every column; above -> the
    young label's own (what keeps the model thread's hold small at O*NET's scale)."""
    seeds, stream, _ = _problem()
    X, texts, y = stream
    label = str(y[0])
    rows = np.flatnonzero(y == label)[:2]
    moved = []
    for cells in (10**9, 1):
        settings = _settings(subset_size=100, resolve_every=0, young_solve_max_cells=cells)
        clf = RedClassifier(settings=settings).fit_embeddings(*seeds)
        assert clf.settings.young_solve == "auto"
        col = list(clf._experts[0].classes_).index(label)
        before = clf._experts[0].coef_.copy()  # type: ignore[union-attr]
        clf._learn_rows = lambda *a, **k: None  # type: ignore[method-assign]
        clf.learn_embeddings(X[rows], [texts[i] for i in rows], y[rows])
        clf.flush()
        after = clf._experts[0].coef_
        assert after is not None
        moved.append(not np.array_equal(np.delete(after, col, axis=1), np.delete(before, col, axis=1)))
    assert moved == [True, False]


def test_unfinished_resolves_are_those_a_call_would_wait_for(monkeypatch: pytest.MonkeyPatch) -> None:
    """A service awaits these off its model thread: the running re-solve counts for a step only when the
    step's rows reach its swap point, and always for a save or a settle (within=None)."""
    import threading

    import driftlabel.models.resolve as resolve

    gate = threading.Event()
    real = resolve._solve

    def slow(*args: object) -> object:
        assert gate.wait(30)
        return real(*args)  # type: ignore[arg-type]

    monkeypatch.setattr(resolve, "_solve", slow)
    seeds, stream, _ = _problem()
    X, texts, y = stream
    clf = RedClassifier(settings=_settings(resolve_lag=1.0)).fit_embeddings(*seeds)
    clf.learn_embeddings(X[:64], texts[:64], y[:64])
    job = clf._pending
    assert job is not None and not job.done
    ahead = job.swap_at - clf.position
    assert ahead > 1
    assert clf.unfinished_resolves(ahead - 1) == []
    assert clf.unfinished_resolves(ahead) == [job.future] == clf.unfinished_resolves()
    gate.set()
    job.future.result(timeout=30)
    assert clf.unfinished_resolves() == []


def test_the_re_solve_thread_yields_the_cpu_on_linux() -> None:
    import threading

    from driftlabel.models.resolve import _lower_priority

    if sys.platform != "linux":
        pytest.skip("per-thread nice values are a Linux feature")
    seen: list[int] = []
    here = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())

    def probe() -> None:
        before = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
        _lower_priority(5)
        seen.append(os.getpriority(os.PRIO_PROCESS, threading.get_native_id()) - before)

    t = threading.Thread(target=probe)
    t.start()
    t.join()
    assert seen == [5] or os.getpriority(os.PRIO_PROCESS, 0) >= 15  # (already niced near the top)
    assert os.getpriority(os.PRIO_PROCESS, threading.get_native_id()) == here  # this thread untouched


def _learn_in_fives(clf: RedClassifier, X: np.ndarray, texts: list[str], y: np.ndarray) -> None:
    for lo in range(0, len(X), 5):
        clf.learn_embeddings(X[lo : lo + 5], texts[lo : lo + 5], y[lo : lo + 5])


def test_a_loaded_model_learns_like_one_that_never_stopped_after_a_new_label(tmp_path: Path) -> None:
    """Replay draws stored rows by label order: a label added after fit that does not sort last must be
    drawn in the same place by the live model and by one loaded from its save (which stores labels sorted)."""
    seeds, (X, texts, y), _ = _problem()
    live = RedClassifier(settings=_settings(resolve_every=0)).fit_embeddings(*seeds)
    live.learn_embeddings(X[:3], ["first 0", "first 1", "first 2"], ["AAA"] * 3)  # sorts before label_*
    live.save(tmp_path / "m")
    loaded = RedClassifier.load(tmp_path / "m")
    _learn_in_fives(live, X[3:60], texts[3:60], y[3:60])
    _learn_in_fives(loaded, X[3:60], texts[3:60], y[3:60])
    for wa, wb in zip(_weights(live), _weights(loaded), strict=True):
        np.testing.assert_array_equal(wa, wb)


def test_a_loaded_model_trains_on_descriptions_in_the_live_order(tmp_path: Path) -> None:
    """Description embeddings are training rows of every re-solve: given in an unsorted order, they must
    train the live model and one loaded from its save (which lists them sorted) in the same order."""
    seeds, (X, texts, y), _ = _problem()
    blobs = make_blobs(n_labels=16, dim=24, noise=0.28, seed=7)
    picked = {lab: blobs.labels.index(lab) for lab in ("label_03", "label_01", "label_02")}
    descriptions = {lab: f"about {lab}" for lab in picked}
    desc_emb = {lab: blobs.centers[i].astype(np.float32) for lab, i in picked.items()}
    settings = _settings(resolve_every=16, resolve_lag=0.0, resolve_background=False)
    live = RedClassifier(settings=settings).fit_embeddings(*seeds, descriptions, desc_emb)
    live.save(tmp_path / "m")
    loaded = RedClassifier.load(tmp_path / "m")
    _learn_in_fives(live, X[:80], texts[:80], y[:80])
    _learn_in_fives(loaded, X[:80], texts[:80], y[:80])
    assert live.resolves == loaded.resolves >= 1
    for wa, wb in zip(_weights(live), _weights(loaded), strict=True):
        np.testing.assert_array_equal(wa, wb)


def test_a_hard_negative_of_a_label_new_in_the_same_call_is_learned_however_batched() -> None:
    """A hard negative of an unknown label L is dropped, but L is known from its first valid row on: a
    negative after that row is kept whether the two rows came in one call or in two."""
    seeds, (X, _, _), _ = _problem()
    rows = (X[:4], ["n1", "n2", "n3", "n4"], ["NEW", "NEW", "NEW", "label_01"], [True, False, True, True])

    def learned(cuts: list[tuple[int, int]]) -> RedClassifier:
        clf = RedClassifier(settings=_settings()).fit_embeddings(*seeds)
        for lo, hi in cuts:
            clf.learn_embeddings(rows[0][lo:hi], rows[1][lo:hi], rows[2][lo:hi], rows[3][lo:hi])
        clf.settle()
        return clf

    whole, split = learned([(0, 4)]), learned([(0, 1), (1, 4)])
    assert whole.position == split.position == 4 and whole.store.n_negatives == split.store.n_negatives == 1
    for wa, wb in zip(_weights(whole), _weights(split), strict=True):
        np.testing.assert_array_equal(wa, wb)
