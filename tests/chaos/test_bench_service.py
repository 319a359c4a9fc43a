"""``bench/bench_service.py`` on a tiny configuration: 30 CLINC150 classes, a few hundred streamed texts,
the static embedder, the class-incremental scenario (the one with the most moving parts).

Behaviour, not timing: the test split is scored at several points of the stream from the worker's own
checkpoints, every streamed item ends with one final label, judge calls are counted from
``judge-verdicts`` (plus the generated-examples calls of the described classes), the classes added
through ``control`` with only a description end up in the worker's model, and the report and its plot
are written.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from driftlabel.bench import bench_service as bs
from driftlabel.models import load_embedder
from driftlabel.models.datasets import Dataset
from driftlabel.models.embeddings import EmbedderSettings

pytestmark = pytest.mark.slow


def test_incremental_through_the_service(chaos_broker: Any, data_dir: Path, tmp_path: Path) -> None:
    ds = bs.load_data("clinc150", data_dir, classes=30)
    ds = Dataset(ds.name, ds.train, ds.test.take(list(range(0, len(ds.test), 3))))  # 300 test texts
    plan = bs.plan_stream(np.asarray(ds.train.labels, dtype=object), "incremental", limit=400)
    assert len(plan.order) == 400 and len(plan.late) == 10 and len(plan.described) == 5
    assert not plan.late & {ds.train.labels[i] for i in plan.seeds.tolist()}, "late classes were seeded"
    first_half = {ds.train.labels[i] for i in plan.order[: plan.phase2].tolist()}
    assert not plan.late & first_half, "late classes streamed before half-way"
    embedder = load_embedder(EmbedderSettings(kind="static"))
    Xt = embedder.encode(ds.test.texts)
    spec = bs.Spec("clinc150", "incremental", 0.05)
    lines: list[str] = []
    run = bs.run_service(
        spec,
        ds,
        plan,
        broker=chaos_broker,
        work=tmp_path / "run",
        data_file=bs.judge_file("clinc150", data_dir, tmp_path),
        embedder_kind="static",
        embedder=embedder,
        Xt=Xt,
        rate=80.0,
        eval_every=100,
        judge_share=0.2,
        drain_timeout_s=180.0,
        progress=lines.append,
    )
    assert run.worker_alive, "the worker died during the run"
    # out of scope on the worker's own store: the seed run is what the model file marks representative
    assert run.oos is not None and all(0.0 <= v <= 1.0 for v in run.oos)
    assert run.representative is not None and run.representative[0] == len(plan.seeds)
    assert run.representative[1] > run.representative[0], "the stream taught the store nothing"
    assert run.items == 400 and run.finals == 400, f"{run.finals} of 400 items have a final label"
    # scored at the start, during the stream and at the end, from the worker's checkpoints
    assert len(run.curve) >= 4, run.curve
    assert all(0.0 < acc <= 1.0 for _, _, acc, _ in run.curve)
    assert [v for *_, v in run.curve] == sorted(v for *_, v in run.curve), "model versions went backwards"
    assert run.curve[-1][3] > run.curve[0][3], "the worker learned nothing from the judge"
    assert run.curve[-1][0] == 400
    # judge calls: every verdict record, plus one generated-examples call per described class and one per
    # naming request the endpoint answered (published proposals, and groups named after a known class)
    assert run.verdicts >= run.routed > 0
    assert run.generate_calls >= len(
        plan.described
    )  # the expert's count: a class short of examples is asked again
    # tokens: every request's usage the endpoint reported; the verdicts' own tokens miss the generating calls
    assert run.endpoint_tokens is not None and run.endpoint_tokens > run.verdict_tokens > 0
    assert run.tokens_per_item == run.endpoint_tokens / 400
    assert run.complete, "a wait timed out: the final model was scored incomplete"
    assert run.naming_calls >= run.proposals
    assert run.calls == run.verdicts + run.generate_calls + run.naming_calls
    assert 0.0 < run.uncertain_share < 1.0
    assert len(run.preq) == 400 and 0 < sum(run.preq) < 400
    assert 0.5 < run.final_labels_acc <= 1.0
    # the described classes were added (examples from the judge endpoint) and are in the final model
    assert run.added_described == plan.described
    assert any("add_class" in line for line in lines)
    # every item's first label was timed from its send, the classes' addition included
    assert len(run.latency) == 400 and all(0.0 < t < 120.0 for t in run.latency)
    assert run.latency_text().count(" / ") == 2 and run.latency_after_change() != "-"
    path = bs.write_service_report(
        "service_test",
        [run],
        command="test",
        settings="tiny",
        loads=[(0.0, 0.0, 0.0)],
        out_dir=tmp_path / "results",
        compare=False,
    )
    text = path.read_text()
    assert "| clinc150 | incremental | red | 5% | 400 |" in text
    assert "5+" in text and "of 10" in text
    assert (tmp_path / "results" / "service_test_clinc150_incremental.png").stat().st_size > 1000


def test_onet_judge_file_holds_the_train_split_as_text_and_label(data_dir: Path, tmp_path: Path) -> None:
    """O*NET's task statements (Task, Title columns) reach the simulated expert as a text/label TSV."""
    from driftlabel.judge.data import read_labelled
    from driftlabel.models.datasets import load_dataset

    path = bs.judge_file("onet", data_dir, tmp_path)
    assert path.parent == tmp_path
    train = load_dataset("onet", data_dir).train
    rows = read_labelled(path)
    assert rows == list(zip(train.texts, train.labels, strict=True))


def test_slow_model_thread_jobs_are_read_from_the_worker_log() -> None:
    log = (
        "2026-12-06 INFO driftlabel.streams.host: model thread: _learn ran 0.31s (labels waited)\n"
        "2026-12-06 INFO driftlabel.streams.worker: ready (model v10)\n"
        "2026-12-06 INFO driftlabel.streams.host: model thread: _swap ran 1.20s (labels waited)\n"
    )
    assert bs.slow_jobs(log) == [("_learn", 0.31), ("_swap", 1.2)]
    assert bs.slow_jobs("") == []


def test_batch_applies_to_every_judging_method_and_verify_to_choose_only() -> None:
    args = bs.argparse.Namespace(
        datasets=["clinc150"], scenarios=["stationary"], errors=[0.05], error_scenarios=None,
        methods=["red", "seeds", "choose"], batch=4, verify=1.0, batch_wait_ms=2000.0,
    )  # fmt: skip
    plan = {spec.method: spec for spec in bs.build_plan(args)}
    assert (plan["red"].batch, plan["red"].verify) == (4, 0.0)  # yes/no questions, batched
    assert (plan["choose"].batch, plan["choose"].verify) == (4, 1.0)
    assert plan["seeds"].batch == 1  # no judge


def test_each_baseline_changes_only_its_own_setting() -> None:
    """The report's baselines are the same worker with one setting changed: ``random`` routes the same
    budget by id, ``subsets`` uses PRODUCT.md's experts of 8, ``every`` asks the judge about every text
    with no budget, ``seeds`` never asks (no routed text, no proposal to name); and each name is a real
    setting of its concern."""
    from driftlabel.judge import JudgeSettings
    from driftlabel.models.experts import ExpertSettings
    from driftlabel.streams.settings import StreamSettings

    base = bs.worker_env(bs.Spec("clinc150", "stationary", 0.05, "red"), 0.5, 0.10)
    assert base["stream"]["judge_calls_per_text"] == "0.1" and base["experts"] == {}
    assert base["judge"]["question"] == "validate" and "batch_size" not in base["judge"]
    changed = {
        "random": {"uncertainty": "random"},
        "every": {"judge_target_share": "1.0", "judge_calls_per_text": "0", "judge_rate_control": "false"},
        "seeds": {"judge_target_share": "0.0", "judge_calls_per_text": "0.0", "proposals": "false"},
    }
    for method, diff in changed.items():
        env = bs.worker_env(bs.Spec("clinc150", "stationary", 0.05, method), 0.5, 0.10)
        got = {k: v for k, v in env["stream"].items() if base["stream"].get(k) != v}
        assert got == diff, method
        assert env["judge"] == base["judge"] and env["experts"] == {}, method
    subsets = bs.worker_env(bs.Spec("clinc150", "stationary", 0.05, "subsets"), 0.5, 0.10)
    assert subsets["experts"] == {"subset_size": "8"} and subsets["stream"] == base["stream"]
    concerns = {"stream": StreamSettings, "judge": JudgeSettings, "experts": ExpertSettings}
    for method in ("red", "random", "every", "subsets", "choose"):
        env = bs.worker_env(bs.Spec("clinc150", "incremental", 0.05, method, batch=4, verify=1.0), 0.5, 0.1)
        for concern, cls in concerns.items():
            assert set(env[concern]) <= set(cls.model_fields), (method, concern)
        assert (method, env["stream"]["auto_add_proposals"]) == (method, "true")
    # every value the worker would read parses as its setting
    assert StreamSettings(**changed["every"]).judge_rate_control is False  # type: ignore[arg-type]
    assert StreamSettings(uncertainty="random").uncertainty == "random"
