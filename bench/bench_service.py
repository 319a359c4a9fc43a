"""The learning loop through the real service: broker, ``driftlabel worker``, simulated expert over HTTP.

``bench/bench_loop.py`` replays R.E.D.'s recursion in process with the service's model parts; this runs
the same scenarios end to end, treating the service as a black box (the harness of ``bench/chaos.py``):
a Tansu broker on loopback, the simulated expert (``SimulatedExpert``, its own ``error_rate``: wrong
verdicts deterministic per (text, label), off-class generated examples) and one ``driftlabel worker``
child process per run. Per run:

1. 10 seed examples per class (the same draw as bench_loop: ``k_shot_indices(y, 10, seed=0)``) go to
   ``training``, then the worker starts and fits on them;
2. the rest of the train split (the same order as bench_loop's ``_stream_order`` for the scenario) is
   sent to ``texts`` at a fixed rate (``--rate`` texts/s);
3. every ``--eval-every`` sent items the worker's newest checkpoint (``DRIFTLABEL_STREAM_CHECKPOINT_EVERY_S``
   is 2 s here) is loaded with ``RedClassifier.load`` and the held-out test split is predicted in this
   process, on the same embedder's vectors: no test text ever goes through the service (never judged,
   never learned). The point is plotted at the number of streamed items that had their final label when
   that checkpoint was written;
4. at the end, once every item has its final label and the worker has checkpointed every ``training``
   record, the last checkpoint gives the final test accuracy.

Read from the topics: accuracy of the streamed final labels, judge calls per streamed item (every
``judge-verdicts`` record, i.e. every recursive call, plus one call per description-only ``add_class``
(generated examples) and one per naming call, the simulated expert's count, since a group named after a
known class is not published; as bench_loop counts them), the uncertain share (items
whose first label was not final, i.e. routed to the judge), the experts' own first labels (the
prequential accuracy, for the recovery after the shift), the classes added, and each item's first-label
latency (send to first ``labels`` record, p50 / p99 / max; also over the 1,000 items from the change,
where an incremental run's ``add_class`` ops hold the worker's model thread).

Scenarios (as bench_loop): ``stationary``; ``incremental`` (a third of the classes absent from the seeds and
the first half; at half-way half of them are added through ``control`` with a description only, the worker
asks the judge endpoint for examples; the other half must be discovered: the worker runs with
``auto_add_proposals``); ``shift`` (the class mix flips half-way). Methods: ``red`` (the service as
configured: ``judge_target_share`` ``--judge-share``, rate control on) and ``seeds`` (no judge:
``judge_target_share`` 0 and ``stream.proposals`` off, so no endpoint call; the seed model labels everything),
``selftrain`` (``stream.unlabelled_share`` 1), ``choose`` (``judge.question = "choose"``: one call per judged
item; calls are then counted as the items' depth-1 verdicts) and ``chooseself`` (both); the baselines
``random`` (the same budget, texts routed by a hash of their id: ``stream.uncertainty = random``), ``subsets``
(PRODUCT.md's experts of 8 labels: ``experts.subset_size = 8``) and ``every`` (the judge asked about every
text, no budget: an LLM per item, its cost in calls and tokens); the full-data LogisticRegression ceiling is
fitted in this process.

    driftlabel bench stream --quick  # = python bench/bench_service.py --quick
    driftlabel bench stream          # the full matrix (bench/cli.py's STREAM_FULL): ~2 h on 2 cores

    python bench/bench_service.py --quick       # static embedder, CLINC150, 3 scenarios, 5 % error
    python bench/bench_service.py               # CLINC150 + BANKING77, 0/5/15 % error, seeds baseline
    python bench/bench_service.py --embedder sentence-transformers --datasets clinc150 \\
        --scenarios stationary --errors 0.05 --methods red --rate 40 --name service_minilm
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import re
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from driftlabel.bench import chaos
from driftlabel.bench.bench_loop import _stream_order, oos_rates, recovery_text
from driftlabel.bench.common import (
    RESULTS_DIR,
    cached_embeddings,
    logreg_accuracy,
    machine_info,
    markdown_table,
)
from driftlabel.datafiles import read_rows
from driftlabel.judge import JudgeSettings
from driftlabel.models import RedClassifier
from driftlabel.models.datasets import Dataset, default_data_dir, k_shot_indices, load_dataset
from driftlabel.models.embeddings import Embedder, EmbedderSettings, load_embedder
from driftlabel.streams.broker import LocalBroker

__all__ = ["ServiceRun", "Spec", "StreamPlan", "main", "plan_stream", "run_service", "worker_env"]

#: the judge's own default, which the reports leave unnamed
BATCH_WAIT_MS: float = JudgeSettings.model_fields["batch_wait_ms"].default

#: bench_loop's in-process figures for the same setting (bench/results/loop_*.md), for the comparison
LOOP_FIGURES: dict[tuple[str, str, str, float], tuple[float, str]] = {
    ("clinc150", "stationary", "red", 0.05): (92.6, "loop_final_clinc.md (final code); 92.8 loop_stationary"),
    ("clinc150", "stationary", "red", 0.0): (93.3, "loop_stationary_clinc.md"),
    ("clinc150", "stationary", "red", 0.15): (92.5, "loop_stationary_clinc.md"),
    ("clinc150", "stationary", "seeds", 0.05): (90.4, "loop_stationary_clinc.md"),
    ("clinc150", "incremental", "red", 0.05): (82.9, "loop_final_clinc.md"),
    ("clinc150", "shift", "red", 0.05): (92.6, "loop_final_clinc.md"),
    ("banking77", "stationary", "red", 0.05): (87.8, "loop_stationary_banking.md"),
    ("banking77", "stationary", "seeds", 0.05): (84.4, "loop_stationary_banking.md"),
}


@dataclass(frozen=True)
class Spec:
    """One run: which data, which scenario, which judge error, which method."""

    dataset: str
    scenario: str
    error: float
    method: str = "red"
    batch: int = 1  # judge.batch_size: items (choose) or yes/no questions (validate) per judge call
    verify: float = 0.0  # judge.verify_below (choose methods): unlikely picks asked again as yes/no
    #: judge.batch_wait_ms: how long a batch (of choices, of checks) may wait to fill
    batch_wait_ms: float = BATCH_WAIT_MS

    @property
    def label(self) -> str:
        """The method as reports name it (``choose b4 v0.1``: four items per call, picks below 0.1
        cross-checked)."""
        return (
            self.method
            + (f" b{self.batch}" if self.batch > 1 else "")
            + (f" v{self.verify:g}" if self.verify > 0 else "")
            + (f" w{self.batch_wait_ms:g}" if self.batch > 1 and self.batch_wait_ms != BATCH_WAIT_MS else "")
        )

    @property
    def counts_requests(self) -> bool:
        """Whether judge calls are the endpoint's request count (a verdict is no longer one call)."""
        return self.batch > 1 or self.verify > 0

    @property
    def tag(self) -> str:
        return f"{self.dataset} {self.scenario} {self.label} err {self.error:.0%}"


@dataclass
class StreamPlan:
    """What is seeded and what is streamed, in which order (indices into the train split)."""

    seeds: np.ndarray
    order: np.ndarray
    phase2: int  # index in ``order`` where the second half (new classes, flipped mix) starts
    late: set[str]  # incremental: classes absent at the start
    described: list[str]  # incremental: the late classes added through control with a description


@dataclass
class ServiceRun:
    spec: Spec
    items: int = 0
    seconds: float = 0.0
    stream_s: float = 0.0
    drain_s: float = 0.0
    ready_s: float = 0.0
    #: (items with a final label when the checkpoint was written, items sent then, test acc, model version)
    curve: list[tuple[int, int, float, int]] = field(default_factory=list)
    verdicts: int = 0
    generate_calls: int = 0
    proposals: int = 0  # published on the proposals topic
    #: naming calls: the simulated expert's count (groups named after a known class are not published),
    #: else the published proposals
    naming_calls: int = 0
    routed: int = 0
    finals: int = 0
    final_right: int = 0
    preq: list[int] = field(default_factory=list)
    phase2: int = 0
    added_described: list[str] = field(default_factory=list)
    added_discovered: list[str] = field(default_factory=list)
    late: int = 0
    sim_counts: dict[str, int] = field(default_factory=dict)
    worker_alive: bool = True
    endpoint_calls: int = 0  # HTTP requests the judge endpoint answered (every kind, retries included)
    verdict_tokens: int = 0  # tokens the verdicts report (the endpoint's usage: prompt + answer)
    #: the usage the endpoint reported for every request (naming, generating, unusable answers too)
    endpoint_tokens: int | None = None
    #: the final model covers every training record and every id got its final label (no timeout hit)
    complete: bool = True
    #: CLINC150: (test flagged, streamed-not-learned flagged, out-of-scope caught) with oos = "centroid" on
    #: the last checkpoint's store, and (representative rows, stored rows) of that store
    oos: tuple[float, float, float] | None = None
    representative: tuple[int, int] | None = None
    #: seconds from each streamed item's send to its first label arriving here, in send order (nan: none)
    latency: list[float] = field(default_factory=list)
    #: model-thread jobs that held labelling over ``host.SLOW_JOB_S`` (the worker's ``-v`` log): name, s
    slow_jobs: list[tuple[str, float]] = field(default_factory=list)

    @property
    def final_acc(self) -> float:
        return self.curve[-1][2] if self.curve else float("nan")

    @property
    def calls(self) -> int:
        """Judge calls; with batches or cross-checks the endpoint's own request count."""
        if self.spec.counts_requests:
            return self.endpoint_calls
        return self.verdicts + self.generate_calls + self.naming_calls

    @property
    def calls_per_item(self) -> float:
        return self.calls / max(self.items, 1)

    @property
    def tokens_per_item(self) -> float:
        """Judge tokens per streamed item: what an LLM bill scales with, batched or not (every request the
        endpoint answered: the verdicts' tokens undercount, naming and example generation carry none)."""
        spent = self.endpoint_tokens if self.endpoint_tokens is not None else self.verdict_tokens
        return spent / max(self.items, 1)

    @property
    def uncertain_share(self) -> float:
        return self.routed / max(self.items, 1)

    @property
    def final_labels_acc(self) -> float:
        return self.final_right / max(self.items, 1)

    def latency_text(self, lo: int = 0, hi: int | None = None) -> str:
        """``p50 / p99 / max`` first-label latency (s) of items ``lo:hi`` in send order."""
        lat = np.asarray(self.latency[lo:hi], dtype=float)
        lat = lat[np.isfinite(lat)]
        if not len(lat):
            return "-"
        p50, p99 = np.percentile(lat, [50, 99])
        return f"{p50:.2f} / {p99:.2f} / {lat.max():.2f}"

    def latency_after_change(self) -> str:
        """The same over the 1,000 items sent from the change on (new classes, flipped mix)."""
        if self.spec.scenario == "stationary" or not self.phase2:
            return "-"
        return self.latency_text(self.phase2, self.phase2 + 1000)

    def recovery_text(self) -> str:
        """The recovery for the report (bench_loop's rule and wording)."""
        return recovery_text(self.spec.scenario, self.preq, self.phase2)


# ---- data


def judge_file(dataset: str, data_dir: Path, work: Path) -> Path:
    """The labelled file the simulated expert answers from (the streamed train texts are all in it).

    O*NET's task statements have their own columns (Task, Title), so its train split is written to a
    ``text``/``label`` TSV under ``work`` (never to the repository)."""
    if dataset == "clinc150":
        return data_dir / "clinc150" / "data_full.json"  # test/oos_test splits: never generated examples
    if dataset == "banking77":
        return data_dir / "banking77" / "train.csv"  # the train split only: test texts are not in it
    if dataset == "onet":
        path = work / "onet_train.tsv"
        if not path.exists():
            train = load_dataset("onet", data_dir).train
            work.mkdir(parents=True, exist_ok=True)
            with path.open("w", encoding="utf-8", newline="") as fh:
                out = csv.writer(fh, delimiter="\t")
                out.writerow(["text", "label"])
                out.writerows(zip(train.texts, train.labels, strict=True))
        return path
    raise ValueError(f"unknown dataset {dataset!r} (clinc150, banking77, onet)")


def load_data(dataset: str, data_dir: Path, classes: int = 0) -> Dataset:
    """The dataset, cut to its first ``classes`` labels (sorted) when ``classes`` > 0."""
    ds = load_dataset(dataset, data_dir)
    if not classes:
        return ds
    keep = set(ds.labels[:classes])
    tr = [i for i, lab in enumerate(ds.train.labels) if lab in keep]
    te = [i for i, lab in enumerate(ds.test.labels) if lab in keep]
    return Dataset(ds.name, ds.train.take(tr), ds.test.take(te))


def plan_stream(y: np.ndarray, scenario: str, limit: int | None, seed: int = 0) -> StreamPlan:
    """bench_loop's draw for the scenario: the same seeds, late classes, order and --limit subsample.

    (bench_loop also takes the described classes' 5 generated examples out of its stream; here the
    simulated expert hands out its own, so the stream keeps every text.)
    """
    rng = np.random.default_rng(seed)
    labels = sorted(set(y.tolist()))
    late: set[str] = set()
    if scenario == "incremental":
        late = set(rng.permutation(labels)[: len(labels) // 3].tolist())
    described = sorted(late)[: len(late) // 2]
    seeds = k_shot_indices(y, 10, seed=seed)
    seeds = seeds[np.array([lab not in late for lab in y[seeds].tolist()], dtype=bool)]
    order, phase2 = _stream_order(y, seeds, scenario, rng, late)
    if limit is not None and len(order) > limit:
        keep = np.sort(rng.choice(len(order), size=limit, replace=False))
        phase2 = int(np.searchsorted(keep, phase2))
        order = order[keep]
    return StreamPlan(seeds, order, phase2, late, described)


def test_embeddings(embedder: Embedder, dataset: str, texts: Sequence[str]) -> np.ndarray:
    """The test split's vectors in this process (bench/common's cache, keyed by the texts' hash)."""
    return cached_embeddings(embedder, list(texts), f"{dataset}-test", progress=False)


def full_data_ceiling(embedder: Embedder, dataset: str, ds: Dataset, Xt: np.ndarray) -> float:
    """Test accuracy of LogisticRegression (C=10) on the whole train split, true labels, same vectors:
    what a stream could reach if every text were labelled right (PRODUCT.md's reference figures)."""
    X = cached_embeddings(embedder, list(ds.train.texts), f"{dataset}-train", progress=False)
    y, yt = (np.asarray(split.labels, dtype=object).astype(str) for split in (ds.train, ds.test))
    return logreg_accuracy(X, y, Xt, yt)


# ---- one run through the service


def _checkpoint_meta(model_dir: Path) -> dict[str, Any]:
    return dict(json.loads((model_dir.parent / "checkpoint.json").read_text(encoding="utf-8")))


def _score(model_dir: Path, embedder: Embedder, Xt: np.ndarray, yt: np.ndarray) -> float:
    """Test accuracy of the model saved in ``model_dir`` (as saved: a pending re-solve is not forced)."""
    clf = RedClassifier.load(model_dir, embedder=embedder)
    pred = np.asarray(clf.predict_embeddings(Xt), dtype=object)
    return float(np.mean(pred == yt))


def _labels(model_dir: Path) -> set[str]:
    manifest = json.loads((model_dir / "manifest.json").read_text(encoding="utf-8"))
    return {str(lab) for lab in manifest.get("labels", [])}


def _finals_by_time(label_recs: Sequence[chaos.Rec], ids: set[str]) -> list[float]:
    """Arrival times (monotonic) of the first final label of each streamed id, sorted."""
    first: dict[str, float] = {}
    for r in label_recs:
        v = r.json()
        if isinstance(v, dict) and v.get("final") is True and v.get("id") in ids:
            first.setdefault(v["id"], r.t)
    return sorted(first.values())


def _judge_calls(records: Sequence[chaos.Rec], choose: bool) -> int:
    """Judge calls in the verdict log: one per verdict; with ``choose`` one per item asked (its depth-1
    verdict, since one answer gave all of the item's verdicts)."""
    return sum(
        1
        for r in records
        if isinstance(v := r.json(), dict) and v.get("id") and (not choose or v.get("depth") == 1)
    )


_SLOW_JOB = re.compile(r"model thread: (\S+) ran ([0-9.]+)s")


def slow_jobs(log_text: str) -> list[tuple[str, float]]:
    """The model-thread jobs a ``-v`` worker log reports as having held labelling: (job, seconds)."""
    return [(m[1], float(m[2])) for m in _SLOW_JOB.finditer(log_text)]


def _base_settings() -> str:
    """What every run's worker gets besides its own settings: the chaos harness's base stream and judge
    settings, and any ``DRIFTLABEL_*`` variable of this shell (the worker inherits the environment)."""
    base = [f"stream.{k} = {v}" for k, v in chaos.BASE_STREAM_ENV.items()]
    base += [f"judge.{k} = {v}" for k, v in chaos.BASE_JUDGE_ENV.items()]
    shell = sorted(f"{k}={v}" for k, v in os.environ.items() if k.startswith("DRIFTLABEL_"))
    return ", ".join(base) + (f"; from the shell: {', '.join(shell)}" if shell else "; none from the shell")


def worker_env(spec: Spec, judge_share: float, judge_calls: float) -> dict[str, dict[str, str]]:
    """The worker's settings for one run, by concern (``stream``, ``judge``, ``experts``; names without
    their ``DRIFTLABEL_<CONCERN>_`` prefix): what each method changes from the worker's defaults."""
    stream = {
        "checkpoint_every_s": "2",
        "checkpoint_keep": "8",
        "judge_target_share": str(0.0 if spec.method == "seeds" else judge_share),
        "judge_calls_per_text": str(0.0 if spec.method == "seeds" else judge_calls),
        "auto_add_proposals": "true" if spec.scenario == "incremental" else "false",
        # seeds: no judge means no endpoint call at all, naming proposals included
        "proposals": "false" if spec.method == "seeds" else "true",
        # selftrain: every text labelled without the judge goes to `training` as a `stream` record
        "unlabelled_share": "1.0" if spec.method in ("selftrain", "chooseself") else "0.0",
    }
    if spec.method == "random":  # the same budget, texts chosen by id instead of by uncertainty
        stream["uncertainty"] = "random"
    if spec.method == "every":  # the LLM-for-every-text baseline: no budget, no rate control
        stream |= {"judge_target_share": "1.0", "judge_calls_per_text": "0", "judge_rate_control": "false"}
    choose = spec.method in ("choose", "chooseself")  # judge.question = "choose": one call per item
    judge = {  # a benchmark, not a fault test: the judge's ordinary retries and timeouts
        "max_retries": "3",
        "breaker_failures": "5",
        "breaker_reset_s": "2",
        "timeout_s": "30",
        "question": "choose" if choose else "validate",
    }
    if spec.batch > 1:
        judge |= {"batch_size": str(spec.batch), "batch_wait_ms": f"{spec.batch_wait_ms:g}"}
    if spec.verify > 0:
        judge["verify_below"] = str(spec.verify)
    # subsets: PRODUCT.md's experts of 8 labels each instead of the default one expert
    experts = {"subset_size": "8"} if spec.method == "subsets" else {}
    return {"stream": stream, "judge": judge, "experts": experts}


def run_service(
    spec: Spec,
    ds: Dataset,
    plan: StreamPlan,
    *,
    broker: LocalBroker,
    work: Path,
    data_file: Path,
    embedder_kind: str,
    embedder: Embedder,
    Xt: np.ndarray,
    rate: float,
    eval_every: int,
    judge_share: float,
    judge_calls: float = 0.0,
    drain_timeout_s: float = 300.0,
    progress: Callable[[str], None] = print,
) -> ServiceRun:
    """Stream ``plan`` through a fresh worker (own topics, own checkpoints) and measure it."""
    t_start = time.monotonic()
    texts, y = ds.train.texts, np.asarray(ds.train.labels, dtype=object)
    yt = np.asarray(ds.test.labels, dtype=object)
    run = ServiceRun(spec, late=len(plan.late))
    holdout = ds.test.texts  # never handed out as a generated example (CLINC150 repeats one across splits)
    env = worker_env(spec, judge_share, judge_calls)
    choose = spec.method in ("choose", "chooseself")  # calls are then the items' depth-1 verdicts
    cluster = chaos.Cluster(
        work,
        data_file,
        broker=broker,
        judge_kwargs={"error_rate": spec.error, "holdout": holdout},
        stream_env=env["stream"],
        judge_env=env["judge"],
        embedder=embedder_kind,
        experts_env=env["experts"],
    )
    cluster.start()
    proposals: chaos.Follower | None = None
    try:
        names = cluster.names
        proposals = chaos.Follower(broker.bootstrap, [names.proposals]).start()
        seed_rows = [(texts[i], str(y[i])) for i in plan.seeds.tolist()]
        cluster.send(names.training, chaos.seed_training(seed_rows, per_class=10**6))
        worker = cluster.worker("w0", args=("-v",))  # -v: model-thread jobs over 0.2 s are logged
        run.ready_s = worker.start(timeout=600)
        ckpt_dir = work / "ckpt-w0"
        ids = [f"s{k}" for k in range(len(plan.order))]
        truth = {vid: str(y[i]) for vid, i in zip(ids, plan.order.tolist(), strict=True)}
        values = [{"id": vid, "text": texts[i]} for vid, i in zip(ids, plan.order.tolist(), strict=True)]
        idset = set(ids)
        assert cluster.follower is not None
        follower = cluster.follower
        # time.time() (checkpoint stamps) -> time.monotonic() (the follower's arrival times)
        wall_to_mono = time.monotonic() - time.time()
        last_scored: list[str] = []

        last_error: list[str] = []

        def evaluate(sent: int, final: bool = False) -> None:
            model_dir = None
            for _ in range(50):  # a checkpoint may be pruned while it is read: take the next one
                model_dir = chaos.newest_model(ckpt_dir)
                if model_dir is None:
                    time.sleep(0.2)
                    continue
                try:
                    meta = _checkpoint_meta(model_dir)
                    acc = _score(model_dir, embedder, Xt, yt)
                    version = int(meta["model_version"])
                    break
                except Exception as exc:  # pruned while read, or written by another model format
                    last_error[:] = [repr(exc)]
                    time.sleep(0.2)
            else:
                raise RuntimeError(f"no readable checkpoint under {ckpt_dir}: {last_error}")
            assert model_dir is not None
            last_scored[:] = [str(model_dir)]
            created = float(meta["created"]) + wall_to_mono
            done_at = _finals_by_time(follower.snapshot(names.labels), idset)
            labelled = int(np.searchsorted(np.asarray(done_at), created, side="right"))
            run.curve.append((labelled, sent, acc, version))
            n_ver = _judge_calls(follower.snapshot(names.judge_verdicts), choose)
            if spec.counts_requests and cluster.judge is not None:
                n_ver = int(cluster.judge.counts["requests"])
            progress(
                f"  {spec.tag}: {'final ' if final else ''}{labelled}/{len(ids)} labelled "
                f"({sent} sent), test acc {100 * acc:.1f} %, model v{version}, "
                f"judge calls/sent item so far {n_ver / max(sent, 1):.3f}"
            )

        evaluate(0)
        next_eval = [eval_every]
        control_sent = [False]
        sent_n = [0]
        per = max(1, round(rate * 0.5))

        def on_tick(elapsed: float) -> None:
            sent_n[0] = min(len(values), sent_n[0] + per)
            if plan.described and not control_sent[0] and sent_n[0] >= plan.phase2:
                ops = [
                    {"op": "add_class", "label": lab, "description": lab.replace("_", " ")}
                    for lab in plan.described
                ]
                cluster.send(names.control, ops)
                control_sent[0] = True
                progress(f"  {spec.tag}: add_class for {len(ops)} classes (description only)")
            if sent_n[0] >= next_eval[0] and sent_n[0] < len(values):
                evaluate(sent_n[0])
                next_eval[0] += eval_every

        t0 = time.monotonic()
        sent_at: dict[str, float] = {}
        chaos.paced_send(cluster, values, rate, on_tick, chunk_s=0.5, sent_at=sent_at)
        run.stream_s = time.monotonic() - t0
        t1 = time.monotonic()
        # the drain: the worker may lag behind the rate; keep scoring every eval_every labelled items.
        # A dead worker ends the wait (it is reported, not hidden), so does drain_timeout_s.
        deadline = time.monotonic() + drain_timeout_s
        next_drain_eval = run.curve[-1][0] + eval_every
        while worker.alive and time.monotonic() < deadline:
            done = chaos.finals(follower.snapshot(names.labels))
            n_final = sum(1 for i in ids if done[i])
            if n_final >= len(ids):
                break
            if n_final >= next_drain_eval:
                evaluate(len(values))
                next_drain_eval = n_final + eval_every
            time.sleep(0.5)
        else:
            run.complete = False  # the drain timed out (or the worker died): flagged in the report

        def learned_all(f: chaos.Follower) -> bool:
            """The newest checkpoint includes every training record written so far (control ops too)."""
            if not worker.alive:
                return True
            model_dir = chaos.newest_model(ckpt_dir)
            if model_dir is None:
                return False
            try:
                offsets = _checkpoint_meta(model_dir)["offsets"]
            except (OSError, ValueError, KeyError):
                return False
            # control ops are sequenced into the training log by the worker: training covers them too
            recs = f.snapshot(names.training)
            end = 1 + max((r.offset for r in recs if r.partition == 0), default=-1)
            return int(offsets.get(names.training, {}).get("0", 0)) >= end

        try:
            time.sleep(1.0)  # late training records of the last verdicts
            follower.wait(learned_all, 120, "a checkpoint with every training record learned")
        except TimeoutError:
            run.complete = False  # scored anyway, on the newest checkpoint: flagged in the report
        run.drain_s = time.monotonic() - t1
        evaluate(len(values), final=True)
        run.items = len(values)
        run.worker_alive = worker.alive
        run.slow_jobs = slow_jobs(worker.log())
        # ---- what the topics say
        label_recs = follower.snapshot(names.labels)
        arrived: dict[str, float] = {}
        for r in label_recs:
            v = r.json()
            if isinstance(v, dict) and v.get("id") in idset:
                arrived.setdefault(v["id"], r.t)
        nan = float("nan")
        run.latency = [arrived[i] - sent_at[i] if i in arrived and i in sent_at else nan for i in ids]
        first = chaos.first_labels(label_recs, ids)
        run.preq = [int(first.get(i, {}).get("label") == truth[i]) for i in ids]
        run.routed = sum(1 for i in ids if i in first and first[i].get("final") is not True)
        fin: dict[str, dict[str, Any]] = {}
        for r in follower.snapshot(names.labels):
            v = r.json()
            if isinstance(v, dict) and v.get("final") is True and v.get("id") in idset:
                fin.setdefault(v["id"], v)
        run.finals = len(fin)
        run.final_right = sum(1 for i, v in fin.items() if v.get("label") == truth[i])
        run.verdicts = _judge_calls(follower.snapshot(names.judge_verdicts), choose)
        run.verdict_tokens = sum(
            int(v.get("tokens") or 0)
            for r in follower.snapshot(names.judge_verdicts)
            if isinstance(v := r.json(), dict) and v.get("id")
        )
        run.generate_calls = len(plan.described) if control_sent[0] else 0  # the expert's count below
        run.proposals = len(proposals.snapshot(names.proposals))
        run.phase2 = plan.phase2
        if plan.late and last_scored:
            final_labels = _labels(Path(last_scored[0]))
            run.added_described = sorted(final_labels & set(plan.described))
            run.added_discovered = sorted(final_labels & (plan.late - set(plan.described)))
        if cluster.judge is not None:  # the simulated expert's count: 0 when it was never asked to name
            run.sim_counts = {k: int(v) for k, v in cluster.judge.counts.items()}
            run.endpoint_calls = run.sim_counts.get("requests", 0)
            run.naming_calls = run.sim_counts.get("propose", 0)
            run.endpoint_tokens = run.sim_counts.get("tokens", 0)
            if control_sent[0]:  # a class short of examples is asked again (Judge.generate_examples)
                run.generate_calls = run.sim_counts.get("generate", 0)
        else:
            run.naming_calls = run.proposals
    finally:
        if proposals is not None:
            proposals.stop()
        cluster.stop()
    if spec.dataset == "clinc150" and last_scored:
        run.oos, run.representative = _out_of_scope(
            Path(last_scored[0]), embedder, data_file, texts, plan.order, Xt
        )
    run.seconds = time.monotonic() - t_start
    return run


def _out_of_scope(
    model_dir: Path,
    embedder: Embedder,
    data_file: Path,
    texts: Sequence[str],
    order: np.ndarray,
    Xt: np.ndarray,
) -> tuple[tuple[float, float, float], tuple[int, int]]:
    """Out-of-scope on the store the worker built (its last checkpoint, loaded as saved: the
    representative flags come from the model file), as bench_loop measures its own store; the
    out-of-scope texts are the ``oos_test`` split of the judge's own CLINC150 file."""
    clf = RedClassifier.load(model_dir, embedder=embedder)
    oos_texts = [r.text for r in read_rows(data_file, splits={"oos_test"})]
    X_oos = cached_embeddings(embedder, oos_texts, "clinc150-oos_test", progress=False)
    X_streamed = cached_embeddings(embedder, list(texts), "clinc150-train", progress=False)[order]
    rep = clf.store.representative()
    return oos_rates(clf, Xt, X_streamed, X_oos), (int(rep.sum()), len(rep))


# ---- report


def _plot(runs: Sequence[ServiceRun], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for run in runs:
        xs = [c[0] for c in run.curve]
        ys = [100 * c[2] for c in run.curve]
        ax.plot(xs, ys, marker=".", label=f"{run.spec.label} ({run.spec.error:.0%} err)")
        if run.spec.scenario != "stationary" and run.phase2:
            ax.axvline(run.phase2, color="grey", lw=0.6, ls=":")
    ax.set_xlabel("streamed items with a final label (when the checkpoint was written)")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_service_report(
    name: str,
    runs: Sequence[ServiceRun],
    *,
    command: str,
    settings: str,
    loads: Sequence[tuple[float, float, float]],
    out_dir: Path = RESULTS_DIR,
    compare: bool = True,
    note: str = "",
    ceilings: dict[str, float] | None = None,
) -> Path:
    """``<out_dir>/<name>.md`` with a table per run, the comparison with bench_loop, and PNGs;
    ``ceilings``: each dataset's full-data LogisticRegression test accuracy on the same vectors."""
    out_dir.mkdir(parents=True, exist_ok=True)
    rows = []
    for run in runs:
        key = (run.spec.dataset, run.spec.scenario, run.spec.label, run.spec.error)
        loop = LOOP_FIGURES.get(key) if compare else None
        late = f"{len(run.added_described)}+{len(run.added_discovered)} of {run.late}" if run.late else "-"
        rows.append(
            [
                run.spec.dataset,
                run.spec.scenario,
                run.spec.label,
                f"{run.spec.error:.0%}",
                run.items,
                f"{100 * run.curve[0][2]:.1f}" if run.curve else "-",
                f"{100 * run.final_acc:.2f}",
                "-" if loop is None else f"{loop[0]:.1f}",
                f"{run.calls_per_item:.3f}",
                f"{run.tokens_per_item:.0f}",
                f"{100 * run.uncertain_share:.1f}",
                f"{100 * run.final_labels_acc:.1f}",
                f"{run.finals}/{run.items}"
                + ("" if run.worker_alive else " (worker died)")
                + ("" if run.complete or not run.worker_alive else " (incomplete: a wait timed out)"),
                late,
                run.recovery_text(),
                run.latency_text(),
                run.latency_after_change(),
                f"{run.ready_s:.0f}",
                f"{run.stream_s:.0f}+{run.drain_s:.0f}",
            ]
        )
    load_txt = ", ".join(f"{a:.1f}/{b:.1f}/{c:.1f}" for a, b, c in loads)
    body = [
        f"Command: `{command}`",
        "",
        settings,
        "",
        f"Load average (1/5/15 min) after each run: {load_txt}.",
        "",
        *([note, ""] if note else []),
        markdown_table(
            [
                "dataset",
                "scenario",
                "method",
                "judge error",
                "items",
                "seed acc %",
                "final test acc %",
                "bench_loop %",
                "judge calls/item",
                "judge tokens/item",
                "uncertain %",
                "final labels right %",
                "finals",
                "classes added (described+discovered)",
                "recovery items",
                "first label s (p50 / p99 / max)",
                "the same, 1,000 items from the change",
                "ready s",
                "stream+drain s",
            ],
            rows,
        ),
    ]
    if ceilings:
        body += [
            "",
            "The ceiling: LogisticRegression (C=10) fitted on the whole train split with its true labels, "
            "on the same embedder's vectors, scored on the same test split: "
            + ", ".join(f"{ds} **{100 * acc:.2f} %**" for ds, acc in sorted(ceilings.items()))
            + ".",
        ]
    combos = sorted({(r.spec.dataset, r.spec.scenario) for r in runs})
    for ds, sc in combos:
        sel = [r for r in runs if r.spec.dataset == ds and r.spec.scenario == sc and len(r.curve) > 1]
        if sel:
            png = out_dir / f"{name}_{ds}_{sc}.png"
            _plot(sel, png, f"{ds}, {sc}, through the service: test accuracy over the stream")
            body += ["", f"![{ds} {sc}]({png.name})"]
    scoped = [r for r in runs if r.oos is not None]
    if scoped:  # out-of-scope on the worker's own store, as bench_loop's table
        body += [
            "",
            'Out of scope with `oos = "centroid"` on the worker\'s last checkpoint (the stream itself ran '
            "with detection off; calibrated on the store's representative rows, the seed run, as the "
            "model file records them): in-scope test texts flagged, streamed texts the store did not learn "
            "flagged, CLINC150's out-of-scope test texts caught, %.",
            "",
            markdown_table(
                ["run", "representative / stored rows", "test flagged", "stream flagged", "caught"],
                [
                    [r.spec.tag, f"{r.representative[0]:,} / {r.representative[1]:,}"]
                    + [f"{100 * v:.1f}" for v in r.oos]
                    for r in scoped
                    if r.oos is not None and r.representative is not None
                ],
            ),
        ]
    batched = [r for r in runs if r.spec.counts_requests and r.sim_counts]
    if batched:  # how full the batches were: what a judged text cost
        body += ["", "Judge endpoint requests by kind (the simulated expert's counts):", ""]
        for r in batched:
            c = r.sim_counts
            single = c.get("yes", 0) + c.get("no", 0)
            body.append(
                f"- {r.spec.tag}: {c.get('requests', 0)} requests for {r.routed} judged texts "
                f"({r.routed / max(c.get('requests', 0), 1):.2f} a call): {c.get('choose', 0)} choices, "
                f"{c.get('validate_batch', 0)} batched yes/no calls, {single} single yes/no"
            )
    body += ["", "Model-thread jobs that held labelling over 0.2 s (the worker's `-v` log), by job:", ""]
    for r in runs:
        by_job: dict[str, list[float]] = {}
        for job, held in r.slow_jobs:
            by_job.setdefault(job, []).append(held)
        jobs = "; ".join(f"{job} {len(hs)}x, longest {max(hs):.2f} s" for job, hs in sorted(by_job.items()))
        body.append(f"- {r.spec.tag}: {len(r.slow_jobs)}{' (' + jobs + ')' if jobs else ''}")
    body += [
        "",
        "Columns: *final test acc* is the held-out test split scored with the worker's last checkpoint "
        "(every class, the late ones too), after every item had its final label and the worker had "
        "learned every `training` record; *bench_loop* is the in-process figure for the same setting "
        "(full stream, MiniLM; `bench/results/loop_*.md`); *judge calls/item*: `judge-verdicts` records "
        "(every recursive call) plus one call per description-only `add_class` and per naming call (also "
        "the groups named after a known class, which are not published), over the "
        "streamed items; *uncertain*: items whose first label was not final (routed to the judge); *final "
        "labels right*: streamed items whose final label (the judge's where asked) is the true one; "
        "*recovery items*: items after the change (shift: the flip; class-incremental: the first texts "
        "of the new classes) until the rolling 500-item accuracy of the "
        "experts' first labels is back within 2 points of its value before (bench_loop's rule); *first "
        "label s*: from each item's send to its first `labels` record arriving at this process (same clock), "
        "over the whole stream and over the 1,000 items sent from the change on (incremental: the "
        "described classes' `add_class` ops go to `control` then; shift: the mix flips); *ready*: "
        "worker start to ready (fit on the seeds, UMAP's compilation included).",
    ]
    stamp = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    path = out_dir / f"{name}.md"
    path.write_text(
        f"# The learning loop through the real service (bench/bench_service.py)\n\n_{stamp}; "
        f"{machine_info()}_\n\n" + "\n".join(body).rstrip() + "\n",
        encoding="utf-8",
    )
    return path


# ---- entry point


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def build_plan(args: argparse.Namespace) -> list[Spec]:
    """Every dataset x scenario x error x method; scenarios outside ``--error-scenarios`` run at 5 % only,
    the seeds baseline once per dataset (stationary)."""
    plan = []
    for ds in args.datasets:
        for sc in args.scenarios:
            errors = args.errors
            if args.error_scenarios is not None and sc not in args.error_scenarios:
                errors = [e for e in errors if e == 0.05] or errors[:1]
            for e in errors:
                for m in args.methods:
                    # baselines once per dataset (stationary, 5 %): they do not depend on the judge error
                    if m == "red" or (sc == "stationary" and (e == 0.05 or len(args.errors) == 1)):
                        choose = m in ("choose", "chooseself")
                        batch = args.batch if m != "seeds" else 1  # validate batches questions
                        verify = args.verify if choose else 0.0
                        plan.append(Spec(ds, sc, e, m, batch, verify, args.batch_wait_ms))
    return plan


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument(
        "--quick", action="store_true", help="CLINC150, 3 scenarios, 5 %% error, short streams"
    )
    parser.add_argument("--datasets", nargs="*", default=None, choices=["clinc150", "banking77", "onet"])
    parser.add_argument(
        "--scenarios", nargs="*", default=None, choices=["stationary", "incremental", "shift"]
    )
    parser.add_argument("--errors", nargs="*", type=float, default=None)
    parser.add_argument(
        "--error-scenarios",
        nargs="*",
        default=None,
        help="scenarios run at every --errors value; the others at 5 %% only (default: all at every one)",
    )
    parser.add_argument(
        "--methods",
        nargs="*",
        default=None,
        choices=["red", "seeds", "random", "subsets", "every", "selftrain", "choose", "chooseself"],
        help="red: the service as configured; baselines: seeds (no judge), random (the same budget routed "
        "at random: stream.uncertainty = random), subsets (experts of 8 labels, PRODUCT.md's design, "
        "instead of one), every (the judge asked about every text: an LLM per item, its cost)",
    )
    parser.add_argument(
        "--no-ceiling",
        action="store_true",
        help="skip the full-data LogisticRegression ceiling (fitted in this process on the embedder's "
        "vectors of the whole train split)",
    )
    parser.add_argument("--embedder", default="static", choices=["static", "sentence-transformers", "onnx"])
    parser.add_argument("--rate", type=float, default=None, help="texts/s sent to the service")
    parser.add_argument(
        "--limit", type=int, default=None, help="at most this many streamed items (bench_loop's)"
    )
    parser.add_argument(
        "--eval-every", type=int, default=None, help="score the test split every N sent items"
    )
    parser.add_argument(
        "--judge-share",
        type=float,
        default=0.05,
        help="stream.judge_target_share (a share of texts; 0.05 lands near bench_loop's 0.10 calls/item)",
    )
    parser.add_argument(
        "--judge-calls",
        type=float,
        default=0.0,
        help="stream.judge_calls_per_text: a budget in judge calls per text (0: off; the share caps it)",
    )
    parser.add_argument(
        "--batch",
        type=int,
        default=1,
        help="judge.batch_size: judged items (choose methods) or yes/no questions (the others) per judge "
        "call (calls are then the endpoint's request count)",
    )
    parser.add_argument(
        "--verify",
        type=float,
        default=0.0,
        help="judge.verify_below for the choose methods: picks the experts gave less than this fraction of "
        "their favourite's probability are asked again as yes/no (calls: the endpoint's request count)",
    )
    parser.add_argument(
        "--batch-wait-ms",
        type=float,
        default=BATCH_WAIT_MS,
        help="judge.batch_wait_ms with --batch: how long a batch of choices (or of checks) waits to fill; "
        "at R judged texts/s a batch of B fills in about B/R s",
    )
    parser.add_argument(
        "--seed", type=int, default=0, help="seed examples and stream order, as bench_loop's --seed"
    )
    parser.add_argument("--classes", type=int, default=0, help="only the first N classes (sorted); 0: all")
    parser.add_argument("--test-limit", type=int, default=0, help="score at most N test texts (0: all)")
    parser.add_argument("--data-dir", type=Path, default=None)
    parser.add_argument("--name", default=None, help="report name under --out-dir (service*)")
    parser.add_argument("--out-dir", type=Path, default=RESULTS_DIR)
    parser.add_argument("--note", default="", help="a paragraph added to the report (markdown)")
    parser.add_argument("--work", type=Path, default=None, help="scratch folder (default: a temp dir)")
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, _interrupt)  # `driftlabel bench` stops its child with SIGTERM: clean up
    args.datasets = args.datasets or (["clinc150"] if args.quick else ["clinc150", "banking77"])
    args.scenarios = args.scenarios or ["stationary", "incremental", "shift"]
    args.errors = args.errors if args.errors is not None else ([0.05] if args.quick else [0.0, 0.05, 0.15])
    args.methods = args.methods or (["red"] if args.quick else ["red", "seeds"])
    rate = args.rate or (60.0 if args.embedder == "sentence-transformers" else 100.0)
    limit = args.limit if args.limit is not None else (1500 if args.quick else None)
    eval_every = args.eval_every or (500 if args.quick else 1500)
    name = args.name or ("service_quick" if args.quick else "service")
    data_dir = args.data_dir or default_data_dir()
    plan = build_plan(args)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    # lazy: the model is loaded only if the test split is not cached yet
    embedder = load_embedder(EmbedderSettings(kind=args.embedder))
    work = args.work or Path(tempfile.mkdtemp(prefix="bench-service-"))
    work.mkdir(parents=True, exist_ok=True)
    broker = LocalBroker(log_path=work / "broker.log")
    broker.start()
    runs: list[ServiceRun] = []
    loads: list[tuple[float, float, float]] = []
    t0 = time.monotonic()
    print(f"bench service: {len(plan)} runs, embedder {args.embedder}, rate {rate:g}/s, limit {limit}; "
          f"{machine_info()}", flush=True)  # fmt: skip
    code = 0
    failed: list[str] = []

    def report() -> None:
        """(Re)write the report with the runs so far: an interrupted benchmark keeps what it measured."""
        if not runs:
            return
        settings = (
            f"Embedder `{args.embedder}` in the worker and for the test split; {rate:g} texts/s sent"
            f"{' (seeds baseline: 4x)' if 'seeds' in args.methods else ''}; stream limit {limit} "
            f"(bench_loop's subsample); judge_target_share {args.judge_share}"
            f"{f', judge_calls_per_text {args.judge_calls}' if args.judge_calls else ''}"
            " with rate control (the "
            "worker's defaults otherwise; `every`: share 1, no budget, rate control off; `random`: "
            "`stream.uncertainty = random`; `subsets`: `experts.subset_size = 8`); 10 seeds per class; "
            "test split held out "
            f"({len(cache[runs[0].spec.dataset][0].test)} texts"
            f"{', first ' + str(args.classes) + ' classes' if args.classes else ''}); scored every "
            f"{eval_every} sent items from the newest checkpoint (every 2 s). "
            f"The chaos harness's base settings under the run's own: {_base_settings()}."
        )
        command = "python bench/bench_service.py " + " ".join(sys.argv[1:] if argv is None else argv)
        path = write_service_report(
            name,
            runs,
            command=command.strip(),
            settings=settings,
            loads=loads,
            out_dir=args.out_dir,
            # bench_loop's figures are MiniLM on the whole stream: only such a run is the same setting
            compare=args.embedder == "sentence-transformers" and limit is None and not args.classes,
            note="\n\n".join([args.note, *(f"FAILED: {f}" for f in failed)]).strip(),
            ceilings=ceilings,
        )
        print(f"report: {path}", flush=True)

    cache: dict[str, tuple[Dataset, np.ndarray]] = {}
    ceilings: dict[str, float] = {}
    try:
        for n, spec in enumerate(plan, 1):
            if spec.dataset not in cache:
                ds = load_data(spec.dataset, data_dir, args.classes)
                if args.test_limit and len(ds.test) > args.test_limit:
                    pick = np.random.default_rng(0).choice(len(ds.test), args.test_limit, replace=False)
                    ds = Dataset(ds.name, ds.train, ds.test.take(np.sort(pick).tolist()))
                Xt = test_embeddings(embedder, spec.dataset, ds.test.texts)
                cache[spec.dataset] = (ds, Xt)
                if not args.no_ceiling:
                    ceilings[spec.dataset] = full_data_ceiling(embedder, spec.dataset, ds, Xt)
                    print(f"{spec.dataset}: full-data LogisticRegression "
                          f"{100 * ceilings[spec.dataset]:.2f} %", flush=True)  # fmt: skip
            ds, Xt = cache[spec.dataset]
            sp = plan_stream(np.asarray(ds.train.labels, dtype=object), spec.scenario, limit, seed=args.seed)
            print(f"[{n}/{len(plan)} {time.monotonic() - t0:5.0f}s] {spec.tag}: {len(sp.order)} items "
                  f"at {rate:g}/s, {len(sp.seeds)} seeds", flush=True)  # fmt: skip
            try:
                run = run_service(
                    spec,
                    ds,
                    sp,
                    broker=broker,
                    work=work / f"run{n}",
                    data_file=judge_file(spec.dataset, data_dir, work),
                    embedder_kind=args.embedder,
                    embedder=embedder,
                    Xt=Xt,
                    rate=rate * (4 if spec.method == "seeds" else 1),
                    eval_every=eval_every,
                    judge_share=args.judge_share,
                    judge_calls=args.judge_calls,
                    progress=lambda s: print(s, flush=True),
                )
            except Exception as exc:  # one broken run must not lose the others
                failed.append(f"{spec.tag}: {type(exc).__name__}: {exc}")
                print(f"[{n}/{len(plan)}] {spec.tag}: FAILED ({exc!r}); going on", flush=True)
                code = 1
                continue
            runs.append(run)
            loads.append(os.getloadavg())
            print(
                f"[{n}/{len(plan)} {time.monotonic() - t0:5.0f}s] {spec.tag}: final test acc "
                f"{100 * run.final_acc:.2f} % (seeds {100 * run.curve[0][2]:.1f}), calls/item "
                f"{run.calls_per_item:.3f}, uncertain {100 * run.uncertain_share:.1f} %, final labels "
                f"{100 * run.final_labels_acc:.1f} % right ({run.finals}/{run.items} final), naming calls "
                f"{run.naming_calls} ({run.proposals} published)"
                + (f", recovery {run.recovery_text()} items" if spec.scenario != "stationary" else "")
                + (
                    f", added {len(run.added_described)} described + {len(run.added_discovered)} "
                    f"discovered of {run.late}"
                    if run.late
                    else ""
                ),
                flush=True,
            )
            shutil.rmtree(work / f"run{n}" / "ckpt-w0", ignore_errors=True)
            report()
    except KeyboardInterrupt:
        code = 130
    finally:
        broker.stop()
    report()
    if args.work is None:
        shutil.rmtree(work, ignore_errors=True)
    return code


if __name__ == "__main__":
    raise SystemExit(main())
