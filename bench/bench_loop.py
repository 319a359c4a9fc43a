"""The learning loop on real data: seeded with 10 examples per class, the rest of the train split streamed.

Each run replays R.E.D.'s recursion with the service's own parts, in process, on cached MiniLM embeddings:
``RedClassifier`` (background warm re-solves), ``streams.routing.AdaptiveRouter`` (which texts go to the
judge), ``models.drift.JudgeRateController`` (learning / maintenance / drift rates, calls per item) and
``models.emerging.NoveltyPool`` (new classes nobody declared). The judge is the simulated expert's rule
(the true label, each (text, label) answer flipped with probability ``error``, deterministically), asked
recursively about the ranked candidates up to ``--depth`` (3, as ``judge.max_depth``); every call is
counted. The held-out test split is scored every ``--eval-every`` items. Scenarios:

- ``stationary``: the rest of the train split, shuffled;
- ``incremental``: a third of the classes are absent from the seeds and from the first half of the stream;
  at half-way half of them are added through ``add_class`` with a description and 5 generated examples
  (what ``Judge.generate_examples`` returns from the simulated expert: real texts of the class, each from
  another class with probability ``error``), the other half must be discovered (as the worker does: each
  unresolved text, and each unjudged text far from every stored example (``--no-pool-far``: not those),
  joins the pool, which is then searched for dense groups -> proposals -> the judge names each from the
  group's own texts (``Proposal.own``; ``--all-proposal-texts``: every text, the worker before 7 December)
  -> added through ``control`` with up to 50 of them; a group named after a known class is counted, not
  added, as the worker does (which pools in every scenario, and so does the bench since 7 December; each
  naming or generate-examples call is paid from the budget, ``JudgeRateController.charge``); until 6
  December the bench searched only every 320 items, took one group at a time and needed 10 texts, and
  the worker pooled no far texts; from 6 to 7 December it taught a known-named group's texts to that
  class, which the worker never did; "far" is below the ``--far-quantile`` (0.25,
  ``stream.proposal_far_quantile``; 0.05 before 7 December, then 0.15) quantile of the store's
  leave-one-out similarities; a group whose centroid is as near a label's centroid as the
  ``--known-quantile`` (0.75) of the stored rows are to their own label's is not named, as in the worker);
- ``shift``: the class mix flips half-way (75 % / 25 % of each class's items before / after, for half the
  classes, and the reverse for the other half).

Baselines on the same stream: ``seeds`` (no judge), ``random`` routing, ``subsets`` (the paper's experts of
at most 8 labels each; ``red`` runs the default, one expert over up to 1,000 labels, and ``flat`` forces one
expert whatever the label count), ``every`` item judged (the cost of asking an LLM about everything), and
full-data LogisticRegression(C=10) as the ceiling; ``pseudo`` adds the confident unjudged predictions (top-1
probability >= 0.5) as training data, the self-training variant; ``entropy`` routes by normalised entropy
instead of the margin; ``diverse`` spends the same budget on the most uncertain items that are not near
duplicates (cosine >= 0.9) of the last 500 judged ones; ``nohardneg`` learns only the accepted pairs (no
hard negatives from rejected candidates); ``selftrain`` keeps every unjudged item for self-training
(``RedClassifier.observe_embeddings``: each background re-solve learns them, at weight
``ExpertSettings.self_training``, as the labels its starting weights give them; the service does the same
with ``stream.unlabelled_share`` > 0; what to judge follows the model's routing twin, which learns the
judged rows but no unlabelled ones, ``ExpertSettings.self_training_router``); ``selfalone`` is
self-training without the twin (the self-trained experts' own uncertainty routes); ``choose`` asks one
question per judged item, "which of the ``--depth`` candidates, if any?" (``judge.question = "choose"``;
the simulated expert's answer is wrong with probability ``error``: another candidate, or none), and
``chooseself`` adds self-training. What this does not
include is the broker and the worker: the
service path is measured by ``driftlabel demo`` / ``bench_stream``; this isolates what the loop learns.

    python bench/bench_loop.py --quick          # CLINC150, 3 scenarios, 5 % error, 6,000 items (< 5 min)
    python bench/bench_loop.py                  # CLINC150 + BANKING77, 0/5/15 % error, baselines
"""

from __future__ import annotations

import argparse
import hashlib
import sys
import time
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # `bench.common`, however this is run

from bench.common import (
    CachedArrayEmbedder,
    cached_embeddings,
    dataset_embeddings,
    k_shot_indices,
    markdown_table,
    write_report,
)
from driftlabel.models import ExpertSettings, RedClassifier
from driftlabel.models.drift import JudgeRateController
from driftlabel.models.emerging import NoveltyPool, Proposal
from driftlabel.streams.routing import AdaptiveRouter, uncertainty
from driftlabel.streams.settings import StreamSettings

EMBEDDER = CachedArrayEmbedder("all-MiniLM-L6-v2", 384)
BATCH = 64
DIVERSE_MEMORY = 500  # judged embeddings the "diverse" method compares with
DIVERSE_SIMILARITY = 0.9


def _flip(text: str, label: str, error: float) -> bool:
    """Deterministic per (text, label), like the simulated expert: True = this answer is wrong."""
    if error <= 0:
        return False
    h = hashlib.blake2b(f"{text}\x1f{label}".encode(), digest_size=8).digest()
    return int.from_bytes(h, "big") / 2**64 < error


@dataclass
class Run:
    dataset: str
    scenario: str
    method: str
    error: float
    items: int = 0
    calls: float = 0
    judged: int = 0
    accepted: int = 0
    curve: list[tuple[int, float]] = field(default_factory=list)  # (items, test accuracy)
    preq: list[int] = field(default_factory=list)  # 1 per item whose emitted top-1 was right
    final_right: int = 0
    added: list[str] = field(default_factory=list)
    proposals: int = 0  # groups named (one judge call each)
    near_known: int = 0  # groups taken for a known class's edge, not named (stream.proposal_known_quantile)
    taught: int = 0  # texts of groups named after a known class, learned as it (stream.proposal_learn_known)
    taught_wrong: int = 0  # ... of them of another class
    far: int = 0
    evicted: int = 0  # learned rows dropped when a class was added (--evict-on-add)
    pooled_first: int = 0  # routed texts pooled instead of judged (--pool-first)
    proposal_rows: int = 0  # texts added with discovered classes
    proposal_wrong: int = 0  # ... of them of another class
    wrong_unknown: int = 0  # wrong labels learned for a text whose true class the model did not have yet
    groups: dict[str, tuple[float, float]] = field(default_factory=dict)  # incremental: acc, stored/class
    drift_events: list[tuple[int, str]] = field(default_factory=list)
    worst_learn_s: float = 0.0
    add_s: list[float] = field(default_factory=list)  # seconds of each add_class call (model thread)
    seconds: float = 0.0
    states: list[tuple[int, str]] = field(default_factory=list)
    verified: int = 0  # picks cross-checked with a yes/no question (judge.verify_below)
    refuted: int = 0
    wrong_accepted: int = 0  # accepted labels that are not the text's true label
    #: choose methods: (p of the pick, p of the experts' favourite, pick wrong) per pick, before any check
    picks: list[tuple[float, float, bool]] = field(default_factory=list)
    #: datasets with an out-of-scope split: (items, in-scope test flagged, streamed-not-learned flagged,
    #: out-of-scope caught) with ``oos = "centroid"`` on the store the loop has built so far
    oos: list[tuple[int, float, float, float]] = field(default_factory=list)
    phase2: int = 0  # where the second phase starts (shift: the flip; incremental: the new classes)

    @property
    def final_acc(self) -> float:
        return self.curve[-1][1] if self.curve else float("nan")

    @property
    def calls_per_item(self) -> float:
        return self.calls / max(self.items, 1)


def _stream_order(
    y: np.ndarray, seeds: np.ndarray, scenario: str, rng: np.random.Generator, late: set[str]
) -> tuple[np.ndarray, int]:
    """Indices of the streamed rows in order, and the index where the second phase starts."""
    rest = np.setdiff1d(np.arange(len(y)), seeds)
    if scenario == "stationary":
        return rng.permutation(rest), len(rest) // 2
    if scenario == "incremental":
        is_late = np.array([lab in late for lab in y[rest].tolist()])
        early = rng.permutation(rest[~is_late])
        half = len(early) // 2
        second = rng.permutation(np.concatenate([early[half:], rest[is_late]]))
        return np.concatenate([early[:half], second]), half
    if scenario == "shift":
        labels = sorted(set(y.tolist()))
        group_a = set(rng.permutation(labels)[: len(labels) // 2].tolist())
        early_rows: list[np.ndarray] = []
        late_rows: list[np.ndarray] = []
        for lab in labels:
            rows = rng.permutation(rest[y[rest] == lab])
            cut = round(len(rows) * (0.75 if lab in group_a else 0.25))
            early_rows.append(rows[:cut])
            late_rows.append(rows[cut:])
        a, b = rng.permutation(np.concatenate(early_rows)), rng.permutation(np.concatenate(late_rows))
        return np.concatenate([a, b]), len(a)
    raise ValueError(f"unknown scenario {scenario!r}")


def description_vectors(dataset: str, labels: Sequence[str]) -> dict[str, np.ndarray]:
    """Every label's ``add_class`` description as the service benchmark sends it (the name, underscores as
    spaces), embedded by MiniLM itself as the worker would (cached beside the datasets' vectors)."""
    texts = [lab.replace("_", " ") for lab in labels]
    try:
        x = cached_embeddings(EMBEDDER, texts, f"{dataset}-descriptions", progress=False)
    except RuntimeError:  # not cached yet: the real model, once (the cache key is the same)
        from driftlabel.models import EmbedderSettings, load_embedder

        x = cached_embeddings(
            load_embedder(EmbedderSettings(kind="sentence-transformers")), texts, f"{dataset}-descriptions"
        )
    x = x / np.linalg.norm(x, axis=1, keepdims=True)
    return dict(zip(labels, x, strict=True))


def run_loop(
    data: dict[str, Any],
    dataset: str,
    scenario: str,
    method: str,
    error: float,
    *,
    budget: float,
    limit: int | None,
    eval_every: int,
    seed: int = 0,
    depth: int = 3,
    batch: int = 1,
    maintenance: float | None = None,
    drift_boost: float = 1.0,
    young: int | None = None,
    verify: float = 0.0,
    single_checks: bool = False,
    lag: int = 0,
    far_depth: int | None = None,
    min_ratio: float = 0.0,
    pool_far: bool = True,
    far_quantile: float = StreamSettings.model_fields["proposal_far_quantile"].default,
    known_quantile: float = StreamSettings.model_fields["proposal_known_quantile"].default,
    pool_first: bool = False,
    proposal_own: bool = True,
    learn_known: bool = StreamSettings.model_fields["proposal_learn_known"].default,
    evict_on_add: bool = False,
    descriptions: Mapping[str, np.ndarray] | None = None,
) -> Run:
    """One stream through the loop; see the module docstring. ``descriptions``: each label's description
    text embedded, as the worker embeds an ``add_class`` description (:func:`description_vectors`); without
    it (synthetic test data) a described class's description vector is the mean of its true examples,
    which flatters the class-incremental figures (the bench used that until 8 December)."""
    t_start = time.perf_counter()
    tr, te = data["train"], data["test"]
    X, texts, y = tr.X, tr.texts, np.asarray(tr.labels, dtype=object).astype(str)
    Xt, yt = te.X, np.asarray(te.labels, dtype=object).astype(str)
    rng = np.random.default_rng(seed)
    labels = sorted(set(y.tolist()))
    late: set[str] = set()
    if scenario == "incremental":
        late = set(rng.permutation(labels)[: len(labels) // 3].tolist())
    described = set(sorted(late)[: len(late) // 2])
    seeds = k_shot_indices(y, 10, seed=seed)
    seeds = seeds[np.array([lab not in late for lab in y[seeds].tolist()], dtype=bool)]
    order, phase2 = _stream_order(y, seeds, scenario, rng, late)
    # generated examples for the described classes come out of the stream (the judge's data file)
    synthetic: dict[str, np.ndarray] = {}
    if described:
        for lab in sorted(described):
            rows = order[y[order] == lab][:5]
            synthetic[lab] = rows
        drop = np.concatenate(list(synthetic.values()))
        phase2 -= int(np.isin(order[:phase2], drop).sum())
        order = order[~np.isin(order, drop)]
    if limit is not None and len(order) > limit:
        keep = np.sort(rng.choice(len(order), size=limit, replace=False))
        phase2 = int(np.searchsorted(keep, phase2))
        order = order[keep]
    sizes = {"flat": 100_000, "subsets": 8}
    settings = ExpertSettings(subset_size=sizes[method]) if method in sizes else ExpertSettings()
    if method == "selfalone":  # ablation: self-training without its routing twin
        settings = settings.model_copy(update={"self_training_router": False})
    if young is not None:
        settings = settings.model_copy(update={"young_examples": young})
    clf = RedClassifier(embedder=EMBEDDER, settings=settings)
    clf.fit_embeddings(X[seeds], [texts[i] for i in seeds], y[seeds])
    run = Run(dataset, scenario, method, error, phase2=phase2)

    def evaluate(at: int) -> None:
        clf.settle()
        pred = np.array(clf.predict_embeddings(Xt))
        run.curve.append((at, float(np.mean(pred == yt))))
        if "oos_test" in data:
            run.oos.append((at, *oos_rates(clf, Xt, X[order[:at]], data["oos_test"].X)))

    evaluate(0)
    if method == "seeds":
        run.items = len(order)
        run.seconds = time.perf_counter() - t_start
        return run
    ctrl = JudgeRateController(
        calls_per_item=budget,
        drift_boost=drift_boost,
        **({} if maintenance is None else {"maintenance": min(maintenance, budget)}),
    )
    router = AdaptiveRouter(target=ctrl.target_share)
    stream_defaults = StreamSettings.model_fields
    unresolved: set[str] = set()  # pooled texts the judge rejected every asked candidate of
    pool = NoveltyPool(  # the worker's pool and defaults (streams/proposals.py)
        min_size=stream_defaults["proposal_min_size"].default,
        similarity=stream_defaults["proposal_similarity"].default,
    )
    recent = np.zeros((0, X.shape[1]), dtype=X.dtype)  # the latest judged embeddings ("diverse")
    next_eval = eval_every
    lagging: deque[tuple[np.ndarray, list[str], list[str], list[bool]]] = deque()
    for lo in range(0, len(order), BATCH):
        if scenario == "incremental" and lo <= phase2 < lo + BATCH and described:
            for lab in sorted(described):  # the user adds them through `control` with a description
                rows = synthetic[lab]
                ex_rows = np.array(
                    [r if not _flip(texts[r], lab, error) else rng.choice(seeds) for r in rows.tolist()]
                )
                t_add = time.perf_counter()
                clf.add_class_embeddings(
                    lab,
                    X[ex_rows],
                    [f"generated {lab} {i}" for i in range(len(ex_rows))],
                    description=lab.replace("_", " "),
                    description_embedding=(
                        descriptions[lab]
                        if descriptions is not None
                        else X[rows].mean(axis=0) / np.linalg.norm(X[rows].mean(axis=0))
                    ),
                    synthetic=True,
                )
                run.add_s.append(time.perf_counter() - t_add)
                run.added.append(lab)
                if evict_on_add:
                    run.evicted += _evict_nearer(clf, lab)
                run.calls += 1  # one generate_examples call, paid from the budget (as the worker does)
                ctrl.charge(1.0)
        rows = order[lo : lo + BATCH]
        Xb, yb = X[rows], y[rows]
        r = clf.rank_embeddings(Xb, top_k=max(3, depth))  # --depth above 3 was cut to 3 before 6 December
        top1 = np.array([c[0][0] for c in r.candidates], dtype=object)
        run.preq.extend((top1 == yb).astype(int).tolist())
        if method == "every":
            routed = np.ones(len(rows), dtype=bool)
        else:
            router.target = ctrl.target_share
            kind = "entropy" if method == "entropy" else "margin"
            u = uncertainty(r.entropy, r.margin, kind, len(clf.labels))
            routed = router.route(u)
            if method == "random":
                k = int(routed.sum())
                routed = np.zeros(len(rows), dtype=bool)
                routed[rng.choice(len(rows), size=k, replace=False)] = True
            elif method == "diverse" and routed.any():
                routed = _diverse(u, routed, Xb, recent)
        if method == "diverse" and routed.any():
            recent = np.concatenate([recent, Xb[routed]])[-DIVERSE_MEMORY:]
        learn_X, learn_t, learn_y, learn_v = [], [], [], []
        calls_each: list[float] = []
        rejected_top1: list[bool] = []
        checked: list[int] = []  # indices into calls_each of the items whose pick was cross-checked
        found: list[Proposal] = []  # dense groups of pooled texts: proposed new classes
        final = top1.copy()
        far_item = np.zeros(len(rows), dtype=bool)
        if far_depth is not None and routed.any():
            far_item = clf.nearest_similarity(Xb) < clf.oos_similarity_threshold()
        if pool_first and routed.any() and len(pool):
            # a routed text nearer a pooled text than any stored example joins the pool unjudged
            psim = pool.nearest_similarity(Xb)
            pooled = routed & (psim >= pool.similarity) & (psim > clf.nearest_similarity(Xb))
            if pooled.any():
                run.pooled_first += int(pooled.sum())
                idx = np.flatnonzero(pooled).tolist()
                pool.add(Xb[idx], [texts[rows[j]] for j in idx], [str(rows[j]) for j in idx])
                found += pool.find_groups()
                routed = routed & ~pooled
        for i in np.flatnonzero(routed).tolist():
            t, truth = texts[rows[i]], yb[i]
            accepted = None
            cands = r.candidates[i][: far_depth if far_item[i] else depth]
            asked = [lab for lab, p in cands if p >= min_ratio * cands[0][1]]
            run.far += int(far_item[i])
            if method.startswith("choose"):  # one call: "which of these candidates, if any?"
                n_calls = 1 / batch  # judge.batch_size items share one call
                accepted = truth if truth in asked else None
                if _flip(t, "\x00choose", error):  # a wrong answer: another candidate, or none
                    accepted = next((lab for lab in asked if lab != accepted), None)
                answered = [(lab, lab == accepted) for lab in asked]  # the others: hard negatives
                if accepted is not None:
                    p_pick, p_top = dict(r.candidates[i])[accepted], r.candidates[i][0][1]
                    run.picks.append((p_pick, p_top, accepted != truth))
                if accepted is not None and p_pick < verify * p_top:  # judge.verify_below: asked again
                    run.verified += 1
                    checked.append(len(calls_each))  # its cost is known once the chunk's checks are counted
                    if (accepted == truth) == _flip(t, accepted, error):  # the yes/no says no
                        run.refuted += 1
                        answered = [(accepted, False)]  # the two answers disagree: keep only the no
                        accepted = None
            else:  # a yes/no call per candidate until a yes
                answered = []
                for lab in asked:
                    valid = (lab == truth) != _flip(t, lab, error)
                    answered.append((lab, valid))
                    if valid:
                        accepted = lab
                        break
                n_calls = len(answered) / batch  # judge.batch_size questions share one call
            for lab, valid in answered:
                learn_X.append(Xb[i])
                learn_t.append(t)
                learn_y.append(lab)
                learn_v.append(bool(valid))
            calls_each.append(n_calls)
            rejected_top1.append(accepted != r.candidates[i][0][0])
            run.calls += n_calls
            run.judged += 1
            if accepted is not None:
                final[i] = accepted
                run.accepted += 1
                run.wrong_accepted += int(accepted != truth)
                run.wrong_unknown += int(accepted != truth and truth not in clf.labels)
            else:  # the worker pools each unresolved text and looks for a group (in every scenario)
                pool.add(Xb[i : i + 1], [t], [str(rows[i])])
                unresolved.add(str(rows[i]))
                found += pool.find_groups()
        if checked:  # the chunk's checks share calls of up to `batch` questions (judge.batch_size)
            per = 1 if single_checks else batch
            cost = -(-len(checked) // per) / len(checked)
            for j in checked:
                calls_each[j] += cost
            run.calls += cost * len(checked)
        run.final_right += int(np.sum(final == yb))
        if method == "pseudo":  # confident, unjudged predictions as training data (confirmation-bias risk)
            sure = ~routed & (np.asarray(r.scores) >= 0.5)
            for i in np.flatnonzero(sure).tolist():
                learn_X.append(Xb[i])
                learn_t.append(texts[rows[i]])
                learn_y.append(str(top1[i]))
                learn_v.append(True)
        if pool_far:  # unjudged texts far from every stored example join too
            line = clf.oos_similarity_threshold(far_quantile)  # stream.proposal_far_quantile
            far = np.flatnonzero(~routed & (clf.nearest_similarity(Xb) < line))
            if len(far):  # (stream.proposal_far_texts: the worker's texts agent, per micro-batch)
                pool.add(Xb[far], [texts[j] for j in rows[far].tolist()], [str(j) for j in rows[far]])
                found += pool.find_groups()
        for proposal in found:
            if known_quantile > 0:  # the worker's check before naming (stream.proposal_known_quantile)
                sim, line = clf.known_class_edge(proposal.centroid, known_quantile)
                if sim >= line:
                    run.near_known += 1
                    continue
            run.proposals += 1
            run.calls += 1  # one propose_class call, paid from the budget (as the worker does)
            ctrl.charge(1.0)
            if proposal_own:  # the worker's rule (Proposal.own): not the texts a stored example is nearer
                own = proposal.own(clf.nearest_similarity(proposal.embeddings))
                if not own.texts:  # published for a human, not added
                    continue
                proposal = own
            truths = [y[int(i)] for i in proposal.ids]
            # the judge names it by its majority (the simulated expert's propose-class rule) and the worker
            # adds it through `control` with up to 50 of its texts; a known name is refused
            # (Judge.propose_class: KnownClassProposedError): nothing is added, and the group's unjudged
            # texts the experts rank first under that class are learned as it, as the worker does since 7
            # December, night (until 7 December the bench taught every text of the group here, which the
            # worker never did)
            name = min(set(truths), key=lambda lab: (-truths.count(lab), lab))
            if name in clf.labels and learn_known:  # the worker's rule (NewClassProposals.teach_known)
                unjudged = [j for j, i in enumerate(proposal.ids) if i not in unresolved]
                firsts = clf.predict_embeddings(proposal.embeddings[unjudged]) if unjudged else []
                for j, lab in zip(unjudged, firsts, strict=True):
                    if lab == name:
                        learn_X.append(proposal.embeddings[j])
                        learn_t.append(proposal.texts[j])
                        learn_y.append(name)
                        learn_v.append(True)
                        run.taught += 1
                        run.taught_wrong += int(truths[j] != name)
            if name not in clf.labels:
                t_add = time.perf_counter()
                clf.add_class_embeddings(name, proposal.embeddings[:50], proposal.texts[:50])
                run.proposal_rows += len(truths[:50])
                run.proposal_wrong += sum(t != name for t in truths[:50])
                run.add_s.append(time.perf_counter() - t_add)
                run.added.append(name)
                if evict_on_add:
                    run.evicted += _evict_nearer(clf, name)
        if method == "nohardneg" and learn_X:  # ablation: learn only the accepted pairs
            keep_v = [i for i, v in enumerate(learn_v) if v]
            learn_X = [learn_X[i] for i in keep_v]
            learn_t = [learn_t[i] for i in keep_v]
            learn_y = [learn_y[i] for i in keep_v]
            learn_v = [True] * len(keep_v)
        if learn_X:
            lagging.append((np.stack(learn_X), learn_t, learn_y, learn_v))
        # --lag: a chunk's labels are learned only after `lag` more chunks were routed (the service's
        # judge and training-topic delay); all of them before the last evaluation
        while lagging and (len(lagging) > lag or lo + BATCH >= len(order)):
            t0 = time.perf_counter()
            clf.learn_embeddings(*lagging.popleft())
            run.worst_learn_s = max(run.worst_learn_s, time.perf_counter() - t0)
        # selftrain: what the service does with stream.unlabelled_share = 1
        if method in ("selftrain", "selfalone", "chooseself") and not routed.all():
            clf.observe_embeddings(Xb[~routed])
        ent = r.entropy / np.log(max(len(clf.labels), 2))
        events = ctrl.observe(ent, top1.tolist(), calls_each, rejected_top1)
        run.drift_events += [(lo + BATCH, e.signal) for e in events]
        run.states.append((lo, ctrl.state))
        run.items = min(lo + BATCH, len(order))
        if run.items >= next_eval or run.items == len(order):
            evaluate(run.items)
            next_eval += eval_every
    if scenario == "incremental":  # where the points go: classes known at the start, described, discovered
        pred = np.array(clf.predict_embeddings(Xt))
        stored = clf.store.counts()
        for name, group in (
            ("known", set(labels) - late),
            ("described", described),
            ("discovered", late - described),
        ):
            m = np.isin(yt, sorted(group))
            run.groups[name] = (
                float(np.mean(pred[m] == yt[m])) if m.any() else float("nan"),
                float(np.mean([stored.get(lab, 0) for lab in group])) if group else float("nan"),
            )
    run.seconds = time.perf_counter() - t_start
    return run


def _evict_nearer(clf: RedClassifier, new: str) -> int:
    """Prototype (--evict-on-add): drop the learned (not representative) rows of every other label that
    sit nearer the new label's centroid than their own label's: texts of the new class accepted under a
    known label before it existed."""
    store = clf.store
    X, y, texts = store.arrays()
    if not np.any(y == new):
        return 0
    labels, codes = np.unique(y.astype(str), return_inverse=True)
    C = np.zeros((len(labels), X.shape[1]), dtype=np.float64)
    np.add.at(C, codes, X)  # each label's centroid
    C /= np.maximum(np.linalg.norm(C, axis=1, keepdims=True), 1e-12)
    to_new = X @ C[int(np.searchsorted(labels, new))]
    to_own = np.einsum("ij,ij->i", X, C[codes])
    out = ~store.representative() & (y != new) & (to_new > to_own)
    dropped = 0
    for lab in np.unique(y[out]).tolist():
        rows = np.flatnonzero(out & (y == lab)).tolist()
        dropped += store.remove_texts(lab, {texts[i] for i in rows})
    return dropped


def _rows_as_bytes(X: np.ndarray) -> np.ndarray:
    """Each float32 row as one opaque value, so whole rows compare with ``np.isin`` (no Python loop)."""
    X = np.ascontiguousarray(X, dtype=np.float32)
    return X.view(np.dtype((np.void, X.itemsize * X.shape[1]))).ravel()


def oos_rates(
    clf: RedClassifier, X_test: np.ndarray, X_streamed: np.ndarray, X_oos: np.ndarray
) -> tuple[float, float, float]:
    """Shares flagged by ``oos = "centroid"`` on ``clf``'s current store, whatever its own mode: in-scope
    test texts, streamed texts the store did not learn (mostly the confident ones) and out-of-scope texts
    (caught)."""
    plain = clf.settings
    clf.settings = plain.model_copy(update={"oos": "centroid"})  # a read-only probe; restored below
    try:
        threshold = clf.scope_threshold()
        unseen = ~np.isin(_rows_as_bytes(X_streamed), _rows_as_bytes(clf.store.arrays()[0]))

        def flagged(Xq: np.ndarray) -> float:
            return float(np.mean(clf.scope_similarity(Xq) < threshold)) if len(Xq) else float("nan")

        return flagged(X_test), flagged(X_streamed[unseen]), flagged(X_oos)
    finally:
        clf.settings = plain


def _diverse(u: np.ndarray, routed: np.ndarray, Xb: np.ndarray, recent: np.ndarray) -> np.ndarray:
    """As many items as the router chose, most uncertain first, skipping near-duplicates of what was
    judged lately or earlier in this batch (cosine >= DIVERSE_SIMILARITY): the budget goes further."""
    k = int(routed.sum())
    near_recent = (Xb @ recent.T).max(axis=1) >= DIVERSE_SIMILARITY if len(recent) else np.zeros(len(u), bool)
    near = Xb @ Xb.T >= DIVERSE_SIMILARITY
    out = np.zeros(len(u), dtype=bool)
    for i in np.argsort(-u, kind="stable").tolist():
        if not near_recent[i] and not (near[i] & out).any():
            out[i] = True
            if out.sum() == k:
                break
    return out


def recovery_items(
    preq: Sequence[int], phase2: int, window: int = 500, tolerance: float = 0.02
) -> int | None:
    """Items after the change at ``phase2`` until the rolling ``window``-item prequential accuracy is back
    within ``tolerance`` of the ``window`` items before it (checked every 50 items)."""
    p = np.asarray(preq, dtype=np.float64)
    if phase2 <= window or len(p) <= phase2:
        return None
    before = p[phase2 - window : phase2].mean()
    csum = np.r_[0.0, np.cumsum(p)]
    for end in range(phase2 + window, len(p) + 1, 50):
        if (csum[end] - csum[end - window]) / window >= before - tolerance:
            return end - phase2
    return None


def recovery_text(scenario: str, preq: Sequence[int], phase2: int, window: int = 500) -> str:
    """The recovery column of both benches' reports: ``-`` for a stationary stream, the items, ``> N``
    when not back by the end, ``n/a`` when a phase is shorter than the window."""
    if scenario not in ("shift", "incremental"):
        return "-"
    rec = recovery_items(preq, phase2, window)
    if rec is not None:
        return str(rec)
    if phase2 <= window or len(preq) < phase2 + window:
        return "n/a (stream too short)"
    return f"> {len(preq) - phase2}"


def logreg_ceiling(data: dict[str, Any]) -> float:
    from sklearn.linear_model import LogisticRegression

    tr, te = data["train"], data["test"]
    lr = LogisticRegression(C=10, max_iter=1000).fit(tr.X, np.asarray(tr.labels).astype(str))
    return float(np.mean(lr.predict(te.X) == np.asarray(te.labels).astype(str)))


def _plot(runs: Sequence[Run], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for run in runs:
        xs, ys = zip(*run.curve, strict=True)
        ax.plot(xs, [100 * v for v in ys], marker=".", label=f"{run.method} ({run.error:.0%} err)")
    ax.set_xlabel("items streamed")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="CLINC150, 5 %% error, 6,000 items a stream")
    parser.add_argument("--datasets", nargs="*", default=None)
    parser.add_argument("--scenarios", nargs="*", default=["stationary", "incremental", "shift"])
    parser.add_argument("--errors", nargs="*", type=float, default=None)
    parser.add_argument(
        "--methods",
        nargs="*",
        default=None,
        help="red seeds random subsets flat every pseudo entropy diverse nohardneg selftrain selfalone "
        "choose chooseself",
    )
    parser.add_argument("--budget", type=float, default=0.10, help="judge calls per streamed item")
    parser.add_argument(
        "--depth", type=int, default=3, help="candidates asked per judged item (judge.max_depth)"
    )
    parser.add_argument(
        "--batch",
        type=int,
        default=1,
        help="judged items (choose methods) or yes/no questions (the others) per judge call "
        "(judge.batch_size): each is charged 1/batch calls",
    )
    parser.add_argument(
        "--drift-boost",
        type=float,
        default=1.0,
        help="judge rate for drift_items items after a drift event, x the budget (borrowed: paid back "
        "after; models.drift.JudgeRateController.drift_boost)",
    )
    parser.add_argument(
        "--maintenance",
        type=float,
        default=None,
        help="judge calls per item once saturated (stream.judge_maintenance_share; default 0.03)",
    )
    parser.add_argument(
        "--young", type=int, default=None, help="ExpertSettings.young_examples (0: no young-label re-solves)"
    )
    parser.add_argument(
        "--verify",
        type=float,
        default=0.0,
        help="choose methods: a pick the experts gave less than this fraction of their favourite's "
        "probability is asked again as a yes/no question (judge.verify_below); with --batch the checks "
        "of a 64-item chunk share calls of up to --batch questions, as the judge batches them",
    )
    parser.add_argument(
        "--lag",
        type=int,
        default=0,
        help="learn each 64-item chunk's judged labels only after this many more chunks were routed "
        "(models the service's delay between routing an item and learning its label)",
    )
    parser.add_argument(
        "--single-checks",
        action="store_true",
        help="ablation: every cross-check costs a whole call (the judge before checks were batched)",
    )
    parser.add_argument(
        "--far-depth",
        type=int,
        default=None,
        help="ablation, yes/no methods: candidates asked for a judged item whose nearest stored example is "
        "below the out-of-scope threshold (nearest mode), i.e. one that may belong to no known class",
    )
    parser.add_argument(
        "--min-ratio",
        type=float,
        default=0.0,
        help="ablation, yes/no methods: a candidate after the first is asked only if the experts gave it at "
        "least this fraction of the first candidate's probability",
    )
    parser.add_argument(
        "--all-proposal-texts",
        dest="proposal_own",
        action="store_false",
        help="ablation, incremental: a proposed class is added with all its group's texts, also those nearer "
        "a stored example than the group's centroid (the worker before 7 December)",
    )
    parser.add_argument(
        "--no-learn-known",
        dest="learn_known",
        action="store_false",
        help="ablation: a group the judge names after a known class teaches it nothing (stream."
        "proposal_learn_known = false; before 7 December, night, the worker only counted it)",
    )
    parser.add_argument(
        "--evict-on-add",
        action="store_true",
        help="prototype, incremental: when a class is added, drop other labels' learned rows nearer its "
        "centroid than their own label's",
    )
    parser.add_argument(
        "--pool-first",
        action="store_true",
        help="ablation: a routed text nearer a pooled text than any stored example joins the new-class pool "
        "instead of being judged",
    )
    parser.add_argument(
        "--no-pool-far",
        dest="pool_far",
        action="store_false",
        help="ablation: only unresolved texts join the new-class pool, not the unjudged ones whose nearest "
        "stored example is below the --far-quantile line (stream.proposal_far_texts = false)",
    )
    for flag, setting, text in (
        (
            "--far-quantile",
            "proposal_far_quantile",
            "an unjudged text joins the new-class pool when its nearest stored example is below this "
            "quantile of the store's leave-one-out similarities (0.05, the out-of-scope line, before 7 "
            "December, then 0.15 until that night)",
        ),
        (
            "--known-quantile",
            "proposal_known_quantile",
            "a group whose centroid is at least as similar to a known label's centroid as this quantile of "
            "the stored examples are to their own label's centroid is not named (0: every group named, as "
            "before 7 December, night)",
        ),
    ):  # the worker's own defaults (stream.<field>)
        default = StreamSettings.model_fields[setting].default
        parser.add_argument(flag, type=float, default=default, help=f"{text}; stream.{setting}")
    parser.add_argument("--limit", type=int, default=None, help="at most this many streamed items")
    parser.add_argument("--eval-every", type=int, default=1000)
    parser.add_argument(
        "--seed", type=int, default=0, help="seed examples and stream order (judge flips: by text and label)"
    )
    parser.add_argument("--name", default="loop", help="report name under bench/results/")
    args = parser.parse_args(argv)
    datasets = args.datasets or (["clinc150"] if args.quick else ["clinc150", "banking77"])
    errors = args.errors or ([0.05] if args.quick else [0.0, 0.05, 0.15])
    methods = args.methods or (["red", "seeds"] if args.quick else ["red", "seeds", "random", "subsets"])
    limit = args.limit or (6000 if args.quick else None)
    plan = [
        (ds, sc, m, e)
        for ds in datasets
        for sc in args.scenarios
        for e in errors
        for m in methods
        if m == "red" or args.methods or (e == 0.05 and (sc == "stationary" or m == "seeds"))
    ]  # the default plan runs the baselines on the stationary 5 % stream; named methods run everywhere
    results: list[Run] = []
    ceilings: dict[str, float] = {}
    t0 = time.perf_counter()
    for n, (ds, sc, m, e) in enumerate(plan, 1):
        data = dataset_embeddings(EMBEDDER, ds, ["train", "test", "oos_test"], progress=False)
        if ds not in ceilings:
            ceilings[ds] = logreg_ceiling(data)
        descriptions = None
        if sc == "incremental":
            descriptions = description_vectors(ds, sorted(set(data["train"].y.astype(str).tolist())))
        run = run_loop(
            data,
            ds,
            sc,
            m,
            e,
            descriptions=descriptions,
            budget=args.budget,
            limit=limit,
            eval_every=args.eval_every,
            seed=args.seed,
            depth=args.depth,
            batch=args.batch,
            maintenance=args.maintenance,
            drift_boost=args.drift_boost,
            young=args.young,
            verify=args.verify,
            single_checks=args.single_checks,
            lag=args.lag,
            far_depth=args.far_depth,
            min_ratio=args.min_ratio,
            pool_far=args.pool_far,
            far_quantile=args.far_quantile,
            known_quantile=args.known_quantile,
            pool_first=args.pool_first,
            proposal_own=args.proposal_own,
            evict_on_add=args.evict_on_add,
            learn_known=args.learn_known,
        )
        results.append(run)
        elapsed = time.perf_counter() - t0
        print(
            f"[{n}/{len(plan)} {elapsed:6.0f}s] {ds} {sc:<11} {m:<6} err {e:.2f}: final test acc "
            f"{100 * run.final_acc:.2f} % calls/item {run.calls_per_item:.3f} judged {run.judged} "
            f"accepted {run.accepted} (wrong {run.wrong_accepted}) verified {run.verified} "
            f"refuted {run.refuted} added {len(run.added)} proposals {run.proposals} "
            f"(near known {run.near_known}) taught {run.taught} (wrong {run.taught_wrong}) far {run.far} "
            f"pooled-first {run.pooled_first} "
            f"evicted {run.evicted} "
            f"({run.seconds:.0f}s)",
            file=sys.stderr,
            flush=True,
        )
    body = [
        f"Command: `python bench/bench_loop.py {' '.join(argv if argv is not None else sys.argv[1:])}`",
        "",
        f"Judge budget {args.budget} calls per streamed item (every recursive call counted, plus one per "
        "generated-example or proposal-naming request); seeds: 10 per class; test split held out."
        + (
            f" The choose methods put {args.batch} judged items in one call (`judge.batch_size`): each is "
            f"charged 1/{args.batch} call."
            if args.batch > 1
            else ""
        )
        + (
            f" A pick the experts gave less than {args.verify} x their favourite's probability is asked "
            "again as a yes/no question (`judge.verify_below`; the simulated judge errs on it "
            "independently); "
            + (
                "each check costs a whole call (`--single-checks`)."
                if args.single_checks or args.batch == 1
                else f"the checks of a 64-item chunk share calls of up to {args.batch} questions."
            )
            if args.verify > 0
            else ""
        )
        + (f" Maintenance rate once saturated: {args.maintenance} calls/item." if args.maintenance else "")
        + (f" Drift boost {args.drift_boost:g}x the budget (borrowed)." if args.drift_boost != 1.0 else "")
        + (f" young_examples = {args.young}." if args.young is not None else "")
        + (f" Each chunk's labels are learned {args.lag} chunks of 64 late (`--lag`)." if args.lag else ""),
        "",
    ]
    rows = []
    for run in results:
        rows.append(
            [
                run.dataset,
                run.scenario,
                run.method,
                f"{run.error:.0%}",
                run.items,
                f"{100 * run.curve[0][1]:.1f}",
                f"{100 * run.final_acc:.2f}",
                f"{100 * ceilings[run.dataset]:.1f}",
                f"{run.calls_per_item:.3f}",
                f"{100 * run.final_right / max(run.items, 1):.1f}" if run.method != "seeds" else "-",
                run.judged,
                f"{run.accepted} ({run.wrong_accepted})",
                f"{run.verified} ({run.refuted})" if run.verified else "-",
                len(run.added),
                f"{run.proposals} ({run.near_known})",
                f"{run.taught} ({run.taught_wrong})",
                recovery_text(run.scenario, run.preq, run.phase2),
                len(run.drift_events),
                f"{run.worst_learn_s:.2f}",
                f"{np.median(run.add_s):.2f} / {max(run.add_s):.2f}" if run.add_s else "-",
                f"{run.seconds:.0f}",
            ]
        )
    body.append(
        markdown_table(
            [
                "dataset",
                "scenario",
                "method",
                "judge error",
                "items",
                "seed acc %",
                "final test acc %",
                "full-data LR %",
                "judge calls/item",
                "final labels right %",
                "judged",
                "labels learned (wrong)",
                "cross-checked (refuted)",
                "classes added",
                "groups named (not: near known)",
                "texts taught by a known name (wrong)",
                "recovery items",
                "drift events",
                "worst learn call s",
                "add_class s (median / worst)",
                "run s",
            ],
            rows,
        )
    )
    chose = [run for run in results if run.picks]
    if chose:  # what the cross-check rule (judge.verify_below) would flag among the picks, before any check
        ratios = (0.2, 0.3, 0.5)
        body += [
            "",
            "Picks below r x the experts' favourite's probability (`judge.verify_below = r` would ask them "
            "again), counted before any check: flagged / of them wrong.",
            "",
        ]
        flag_rows = []
        for run in chose:
            P = np.asarray(run.picks, dtype=float)
            p_pick, p_top, wrong = P[:, 0], P[:, 1], P[:, 2].astype(bool)
            row: list[Any] = [run.dataset, run.scenario, run.method, len(P), int(wrong.sum())]
            for r in ratios:
                low = p_pick < r * p_top
                row.append(f"{int(low.sum())} / {int((low & wrong).sum())}")
            flag_rows.append(row)
        header = ["dataset", "scenario", "method", "picks", "wrong", *(f"r = {r}" for r in ratios)]
        body.append(markdown_table(header, flag_rows))
    grouped = [run for run in results if run.groups]
    if grouped:  # the class-incremental scenario by class group
        body += [
            "",
            "Class-incremental, by class group at the end of the stream: test accuracy % / stored examples "
            "per class, for the classes known from the start, those added through `control` with a "
            "description, and those left to be discovered; *wrong before its class* counts the wrong labels "
            "learned for a text whose true class the model did not have yet; the last column counts the "
            "texts a discovered class was added with and, in brackets, those of another class.",
            "",
        ]
        group_rows = [
            [run.dataset, run.method, f"{run.error:.0%}"]
            + [f"{100 * acc:.1f} / {n:.1f}" for acc, n in run.groups.values()]
            + [f"{run.wrong_unknown} of {run.wrong_accepted}", f"{run.proposal_rows} ({run.proposal_wrong})"]
            for run in grouped
        ]
        header = ["dataset", "method", "judge error", "known", "described", "discovered"]
        header += ["wrong before its class", "texts added with discovered classes (of another class)"]
        body.append(markdown_table(header, group_rows))
    scoped = [run for run in results if run.oos]
    if scoped:  # out-of-scope on the loop's own store (oos = "centroid"), at the seeds and at the end
        body += [
            "",
            'Out of scope with `oos = "centroid"` on the store the loop built (seeds, then the seeds plus '
            "what the stream taught; the loop itself runs with detection off; calibrated on the seeds, the "
            "store's representative rows): in-scope test texts flagged, streamed texts the store did not "
            "learn flagged (mostly the confident ones: the judged ones joined it), out-of-scope test texts "
            "caught, %. At 0 items of the incremental scenario a third of the classes are not known yet, "
            "so their test texts are rightly flagged.",
            "",
        ]
        oos_rows = [
            [run.dataset, run.scenario, run.method, f"{run.error:.0%}", at]
            + ["-" if np.isnan(v) else f"{100 * v:.1f}" for v in vals]
            for run in scoped
            for at, *vals in (run.oos[0], run.oos[-1])
        ]
        header = ["dataset", "scenario", "method", "judge error", "items", "test flagged", "stream flagged"]
        body.append(markdown_table([*header, "out-of-scope caught"], oos_rows))
    out_dir = Path(__file__).resolve().parent / "results"
    out_dir.mkdir(exist_ok=True)
    for ds in datasets:
        for sc in args.scenarios:
            sel = [r for r in results if r.dataset == ds and r.scenario == sc and r.method != "seeds"]
            if sel:
                png = out_dir / f"{args.name}_{ds}_{sc}.png"
                _plot(sel, png, f"{ds}, {sc}: test accuracy over the stream")
                body += ["", f"![{ds} {sc}]({png.name})"]
    body += [
        "",
        "Columns: *final test acc* is the held-out test split after the stream (every class, also the late "
        "ones); *final labels right* is the share of streamed items whose final label (the judge's where "
        "asked) was right; *labels learned (wrong)* counts the judge's accepted labels and, in brackets, "
        "those that are not the text's true label; *groups named* the new-class pool's dense groups the "
        "judge was asked to name (one call each) and, in brackets, those taken for a known class's edge "
        "and not named (stream.proposal_known_quantile); *texts taught by a known name* the unjudged "
        "texts of groups the judge named after a known class that the experts rank first under that class "
        "too, learned as it (stream.proposal_learn_known), and in brackets those of another class; "
        "*cross-checked* the picks asked again as yes/no "
        "(`--verify`, judge.verify_below) and how many of those the check refuted; *recovery items* "
        "counts items after the change (shift: the flip; class-incremental: the first texts of the new "
        "classes) until the rolling 500-item prequential accuracy of the experts' top-1 is back within 2 "
        "points of its value before; *worst learn call* is the "
        "longest `learn_embeddings` call (a swap waiting for its re-solve shows here).",
    ]
    path = write_report(args.name, "The learning loop on real data (bench/bench_loop.py)", "\n".join(body))
    print(f"report: {path}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
