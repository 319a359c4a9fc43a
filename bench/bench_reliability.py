"""Reliability benchmark, the chaos suite at size: kill -9, worker loss, judge faults, fuzzed input, soak,
broker stalls.

    driftlabel bench reliability              # full: 20,000 texts with a kill every ~30 s, 60 s faults,
                                              # 10,000 fuzzed records, a 10-minute soak at half the max rate
    driftlabel bench reliability --quick      # the same cases, reduced (under 5 minutes on 2 cores)
    python bench/bench_reliability.py --only kill soak --texts 5000 --soak-s 300

Everything runs here against the real parts (harness: ``bench/chaos.py``): a Tansu broker on loopback,
the simulated expert in this process (faults switched on and off), ``driftlabel worker`` processes with
the static embedder (the embedder's speed is not what is measured), 30 CLINC150 classes seeded with 10
examples each. Results are read from the raw topics. Each section's figures are kept in
``bench/results/reliability.json`` so sections can be re-run one at a time; the report
``bench/results/reliability.md`` and its PNG plots are rendered from all of them (``--quick`` writes
``reliability_quick.*`` instead, so a quick run never overwrites the full figures).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import random
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

if __package__ in (None, ""):  # `python bench/bench_reliability.py`
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from driftlabel.bench import chaos
from driftlabel.bench.common import machine_info, markdown_table
from driftlabel.streams.broker import LocalBroker

RESULTS = Path(__file__).resolve().parent / "results"
NAME = "reliability"  # "reliability_quick" with --quick, so a quick run never overwrites full figures
SECTIONS = ("kill", "loss", "faults", "fuzz", "soak", "stall")
FAULTS = ("down", "503", "500", "timeout", "garbage")


def _say(msg: str) -> None:
    print(f"reliability: {msg}", flush=True)


def _load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def data_file(data: Path | None) -> Path:
    from driftlabel.models.datasets import default_data_dir

    path = (data or default_data_dir()) / "clinc150" / "data_full.json"
    if not path.is_file():
        raise SystemExit(
            f"{path} not found; pass --data DIR (the folder holding clinc150/) or set DRIFTLABEL_DATA_DIR"
        )
    return path


def _cluster(work: Path, path: Path, broker: LocalBroker, share: str, **kw: Any) -> chaos.Cluster:
    c = chaos.Cluster(work, path, broker=broker, stream_env={"judge_target_share": share}, **kw)
    return c.start()


def _seeded(c: chaos.Cluster, rows: dict[str, list[tuple[str, str]]]) -> None:
    c.send(c.names.training, chaos.seed_training(rows["train"]))


def _final_times(c: chaos.Cluster, t0: float) -> list[float]:
    assert c.follower is not None
    return sorted(
        r.t - t0
        for r in c.follower.snapshot(c.names.labels)
        if isinstance(v := r.json(), dict) and v.get("final")
    )


def _replay_rows(r: dict[str, Any] | None) -> list[list[Any]]:
    """The kill section's "final model equals a replay without kills" rows (absent in older runs)."""
    if not r:
        return []
    return [
        [
            "final model equals a from-scratch replay of the log (fresh worker, never killed)",
            "**yes**" if r["equal"] else "**no**",
        ],
        [
            "  model_version killed / replay; examples killed / replay",
            f"{r['live_version']:.0f} / {r['replay_version']:.0f}; "
            f"{r['live_examples']:,} / {r['replay_examples']:,}",
        ],
        [
            "  predictions that differ (validation texts); accuracy killed / replay",
            f"{r['differ']} of {r['probes']}; "
            f"{100 * r['live_accuracy']:.1f} / {100 * r['replay_accuracy']:.1f} %",
        ],
        ["  replay: fresh worker start -> settled model", f"{_f(r['replay_s'])} s"],
    ]


# ---- sections


def run_kill(path: Path, broker: LocalBroker, work: Path, rows: Any, a: argparse.Namespace) -> dict[str, Any]:
    """One worker, texts streaming, SIGKILL every ~``kill_every_s`` at a random point, restarted each time."""
    c = _cluster(work / "kill", path, broker, "0.3")
    try:
        _seeded(c, rows)
        w = c.worker("w0")
        ready0 = w.start()
        values, _ = chaos.text_values(rows["train"][300:] + rows["test"], a.texts, "k")
        duration = a.texts / a.rate
        kill_at = chaos.random_kill_times(duration, a.kill_every_s, random.Random(a.seed))
        _say(f"kill: {a.texts} texts at {a.rate:.0f}/s ({duration:.0f}s), {len(kill_at)} kills planned")
        t0 = time.monotonic()
        run = chaos.kill_run(c, [w], values, a.rate, kill_at, timeout_s=a.drain_timeout_s, progress=_say)
        finals = _final_times(c, t0)
        kills_rel = [k - t0 for k in run.kill_moments]
        _say("kill: stopping the killed worker; a fresh worker replays the whole log for comparison")
        rc = chaos.replay_check(c, w, rows["val"], replay_timeout_s=a.drain_timeout_s)
        replay = dataclasses.asdict(rc) | {"equal": rc.equal}
        out = {
            "texts": a.texts,
            "rate": a.rate,
            "kills": run.kills,
            "lost": len(run.delivery.lost),
            "duplicated": len(run.delivery.duplicated),
            "dup_finals": sum(run.delivery.duplicated.values()),
            "dup_training": len(run.duplicated_training),
            "accepted_without_verdict": len(run.accepted_without_verdict),
            "recovery_s": run.recovery_s,
            "worst_latency_after_kill_s": run.worst_latency_after_kill_s,
            "ready_s": [ready0, *run.ready_s],
            "stream_s": run.stream_s,
            "drain_s": run.drain_s,
            "final_times": finals,
            "kill_times": kills_rel,
            "replay": replay,
        }
        _say(
            f"kill: {run.kills} kills; lost {out['lost']}, duplicated {out['duplicated']}, training twice "
            f"{out['dup_training']}, accepted w/o verdict {out['accepted_without_verdict']}; max recovery "
            f"{_max(run.recovery_s):.1f}s (worst latency after a kill "
            f"{_max(run.worst_latency_after_kill_s):.1f}s); "
            f"drain {run.drain_s:.1f}s; final model equals a replay: {rc.equal} (versions "
            f"{rc.live_version:.0f} / {rc.replay_version:.0f}, {rc.differ} of {rc.probes} predictions differ)"
        )
        return out
    finally:
        c.stop()


def run_loss(path: Path, broker: LocalBroker, work: Path, rows: Any, a: argparse.Namespace) -> dict[str, Any]:
    """Two workers; one is killed for good mid-stream; the survivor must take over its partitions."""
    c = _cluster(work / "loss", path, broker, "0.3")
    try:
        _seeded(c, rows)
        w1, w2 = c.worker("a"), c.worker("b")
        w1.start()
        w2.start()
        warm, _ = chaos.text_values(rows["test"], 200, "warm")
        c.send(c.names.texts, warm)
        assert c.follower is not None
        c.follower.wait(chaos.all_final([v["id"] for v in warm], c.names.labels), 180, "warm-up")
        shared = w1.metric("driftlabel_items_total") > 0 and w2.metric("driftlabel_items_total") > 0
        n = max(300, a.texts // 5)
        values, _ = chaos.text_values(rows["train"][300:], n, "loss")
        kill_at = (n / a.rate) * 0.4
        _say(f"loss: {n} texts at {a.rate:.0f}/s over 2 workers, worker b killed for good at {kill_at:.0f}s")
        run = chaos.kill_run(
            c,
            [w1, w2],
            values,
            a.rate,
            [kill_at],
            restart=False,
            victim=lambda k: w2,
            timeout_s=a.drain_timeout_s,
        )
        out = {
            "texts": n,
            "both_had_partitions": shared,
            "lost": len(run.delivery.lost),
            "duplicated": len(run.delivery.duplicated),
            "takeover_s": _max(run.worst_latency_after_kill_s),
            "next_final_after_kill_s": _max(run.recovery_s),
            "accepted_without_verdict": len(run.accepted_without_verdict),
            "drain_s": run.drain_s,
            "survivor_alive": w1.alive,
        }
        _say(f"loss: lost {out['lost']}, duplicated {out['duplicated']}, takeover {out['takeover_s']:.1f}s")
        return out
    finally:
        c.stop()


def run_faults(
    path: Path, broker: LocalBroker, work: Path, rows: Any, a: argparse.Namespace
) -> dict[str, Any]:
    """Each judge fault for ``fault_s`` while texts stream (every text judged), then recovery and drain."""
    c = _cluster(work / "faults", path, broker, "1.0", judge_kwargs={"hang_s": 5.0})
    out: dict[str, Any] = {"fault_s": a.fault_s, "rate": a.fault_rate, "kinds": {}}
    try:
        _seeded(c, rows)
        w = c.worker("w0")
        w.start()
        assert c.follower is not None
        # texts never seen before in each fault: a repeated text could be answered from the judge's
        # verdict cache, which is a real (earlier) verdict but would hide the outage
        pool = rows["test"] + rows["val"] + rows["train"][300:]
        n = max(20, int(a.fault_s * a.fault_rate))
        if n * len(FAULTS) > len(pool):
            n = len(pool) // len(FAULTS)
            _say(f"faults: only {len(pool)} distinct texts: {n} per fault")
        for i, kind in enumerate(FAULTS):
            values, _ = chaos.text_values(pool[i * n : (i + 1) * n], n, f"f{kind}")
            ids = {v["id"] for v in values}
            c.fault(kind)
            t0 = time.monotonic()
            chaos.paced_send(c, values, a.fault_rate)
            time.sleep(max(0.0, a.fault_s - (time.monotonic() - t0)))
            labels = c.follower.snapshot(c.names.labels)
            first = chaos.first_labels(labels, ids)
            during = {
                v["id"]: v
                for r in labels
                if isinstance(v := r.json(), dict) and v.get("final") and v.get("id") in ids
            }
            c.fault(None)
            t_up = time.monotonic()
            try:
                c.follower.wait(chaos.all_final(ids, c.names.labels), a.drain_timeout_s, "drain")
                drain = time.monotonic() - t_up
            except TimeoutError:
                drain = math.nan
            time.sleep(2)
            labels = c.follower.snapshot(c.names.labels)
            d = chaos.delivery(ids, labels)
            statuses: dict[str, int] = {}
            for r in labels:
                v = r.json()
                if isinstance(v, dict) and v.get("final") and v.get("id") in ids:
                    statuses[v["status"]] = statuses.get(v["status"], 0) + 1
            out["kinds"][kind] = {
                "texts": n,
                "first_labelled_during": len(first),
                "final_during": len(during),
                "accepted_during": sum(v["status"] in ("validated", "corrected") for v in during.values()),
                "drain_s": drain,
                "lost": len(d.lost),
                "duplicated": len(d.duplicated),
                "statuses": statuses,
                "accepted_without_verdict": len(
                    chaos.accepted_without_verdict(labels, c.follower.snapshot(c.names.judge_verdicts))
                ),
                "worker_alive": w.alive,
            }
            _say(
                f"faults: {kind}: {n} texts, {len(first)} labelled during the fault, {len(during)} final "
                f"during it; drained in {drain:.1f}s; final statuses {statuses}"
            )
        return out
    finally:
        c.stop()


def run_fuzz(path: Path, broker: LocalBroker, work: Path, rows: Any, a: argparse.Namespace) -> dict[str, Any]:
    """``fuzz`` bad records in all, split over the four input topics, shuffled into valid traffic."""
    c = _cluster(work / "fuzz", path, broker, "0.1")
    try:
        _seeded(c, rows)
        w = c.worker("w0")
        w.start()
        per = a.fuzz // 4
        _say(f"fuzz: {per} bad records on each of texts, training, control, judge-verdicts")
        r = chaos.fuzz_run(c, w, rows["test"], per, n_texts=500, timeout_s=a.drain_timeout_s, progress=_say)
        out = {k: v for k, v in r.__dict__.items() if not k.startswith("_")}
        out["missing"] = {k: len(v) for k, v in r.missing.items()}
        out["wrong_reason"] = {k: len(v) for k, v in r.wrong_reason.items()}
        _say(
            f"fuzz: dead-lettered once {r.dead_once}; missing {out['missing']}; repeated {r.repeated}; "
            f"wrong reason {out['wrong_reason']}; worker alive {r.worker_alive}"
        )
        return out
    finally:
        c.stop()


def run_soak(path: Path, broker: LocalBroker, work: Path, rows: Any, a: argparse.Namespace) -> dict[str, Any]:
    """Measure the max rate, then stream at half of it for ``soak_s``: memory, latency, lag over time."""
    c = _cluster(work / "soak", path, broker, "0.1")
    try:
        _seeded(c, rows)
        w = c.worker("w0")
        if a.soak_store_cap:  # the example store's cap, so that the soak reaches it (see the report)
            w.env["DRIFTLABEL_EXPERTS_MAX_EXAMPLES_PER_LABEL"] = str(a.soak_store_cap)
            w.env["DRIFTLABEL_EXPERTS_MAX_NEGATIVES_PER_LABEL"] = str(max(1, a.soak_store_cap // 3))
        w.start()
        assert c.follower is not None
        pool = rows["train"][300:] + rows["test"] + rows["val"]
        # CLINC's splits are grouped by intent: unshuffled, the soak would be a class-mix shift every
        # second (drift events, the judge at its full rate), not the stationary load it is meant to be
        random.Random(a.seed).shuffle(pool)
        burst, _ = chaos.text_values(pool, a.burst, "burst")
        t0 = time.monotonic()
        c.send(c.names.texts, burst)
        c.follower.wait(chaos.all_final([v["id"] for v in burst], c.names.labels), a.drain_timeout_s, "burst")
        max_rate = a.burst / (time.monotonic() - t0)
        rate = max_rate / 2
        n = int(rate * a.soak_s)
        values, _ = chaos.text_values(pool, n, "soak")
        _say(f"soak: max {max_rate:.0f} texts/s; {n} texts at {rate:.0f}/s for {a.soak_s:.0f}s")
        sent_at: dict[str, float] = {}
        samples: list[dict[str, float]] = []
        t_start = time.monotonic()
        last = [0.0]

        def tick(elapsed: float) -> None:
            if elapsed - last[0] < 5.0:
                return
            last[0] = elapsed
            try:
                lag = w.metric("driftlabel_consumer_lag")
                learned = w.metric("driftlabel_training_examples_total")
            except OSError:
                lag = learned = math.nan
            samples.append({"t": elapsed, "rss_mb": w.rss_mb() or math.nan, "lag": lag, "learned": learned})
            if int(elapsed) % 60 < 5:
                _say(f"soak: {elapsed:.0f}s, rss {samples[-1]['rss_mb']:.0f} MiB, lag {lag:.0f}")

        chaos.paced_send(c, values, rate, tick, sent_at=sent_at)
        with _suppress_timeout():
            c.follower.wait(chaos.all_final(sent_at, c.names.labels), a.drain_timeout_s, "soak drain")
        labels = c.follower.snapshot(c.names.labels)
        first = {}
        for r in labels:
            v = r.json()
            if isinstance(v, dict) and v.get("id") in sent_at and v["id"] not in first:
                first[v["id"]] = r.t
        lat = sorted((sent_at[i] - t_start, first[i] - sent_at[i]) for i in first)
        windows = []
        for k in range(0, int(a.soak_s), 30):
            xs = [dt for ts, dt in lat if k <= ts < k + 30]
            if xs:
                windows.append(
                    {
                        "t": k + 15,
                        "p50_ms": 1000 * float(np.percentile(xs, 50)),
                        "p99_ms": 1000 * float(np.percentile(xs, 99)),
                        "n": len(xs),
                    }
                )
        d = chaos.delivery(list(sent_at), labels)
        half = [s for s in samples if s["t"] >= a.soak_s / 2 and math.isfinite(s["rss_mb"])]
        slope = _slope([s["t"] / 60 for s in half], [s["rss_mb"] for s in half])
        p99s = [w_["p99_ms"] for w_ in windows]
        first_half = [s for s in samples if s["t"] < a.soak_s / 2 and math.isfinite(s["rss_mb"])]
        lags = [s["lag"] for s in samples if math.isfinite(s["lag"])]
        out = {
            "max_rate": max_rate,
            "rate": rate,
            "soak_s": a.soak_s,
            "store_cap": a.soak_store_cap,
            "rss_slope_first_half_mb_per_min": _slope(
                [s["t"] / 60 for s in first_half], [s["rss_mb"] for s in first_half]
            ),
            "learned": [samples[0].get("learned", math.nan), samples[-1].get("learned", math.nan)]
            if samples
            else [],
            "lag_median": float(np.median(lags)) if lags else math.nan,
            "lag_max": float(max(lags)) if lags else math.nan,
            "lag_last": lags[-1] if lags else math.nan,
            "texts": n,
            "lost": len(d.lost),
            "duplicated": len(d.duplicated),
            "samples": samples,
            "latency_windows": windows,
            "rss_slope_mb_per_min": slope,
            "p50_ms": 1000 * float(np.median([x for _, x in lat])) if lat else math.nan,
            "p99_ms": 1000 * float(np.percentile([x for _, x in lat], 99)) if lat else math.nan,
            "p99_first_half_ms": float(np.median(p99s[: len(p99s) // 2])) if len(p99s) > 1 else math.nan,
            "p99_second_half_ms": float(np.median(p99s[len(p99s) // 2 :])) if p99s else math.nan,
        }
        _say(
            f"soak: memory slope {slope:+.2f} MiB/min (second half), p50 {out['p50_ms']:.0f} ms, "
            f"p99 {out['p99_ms']:.0f} ms; lost {out['lost']}, duplicated {out['duplicated']}"
        )
        return out
    finally:
        c.stop()


class _suppress_timeout:
    def __enter__(self) -> None:
        return None

    def __exit__(self, et: Any, ev: Any, tb: Any) -> bool:
        return et is TimeoutError


def _half_median(so: dict[str, Any], key: str, half: int) -> float:
    """Median of a per-window latency over the first (0) or second (1) half of the soak's windows."""
    xs = [w[key] for w in so.get("latency_windows", [])]
    part = xs[: len(xs) // 2] if half == 0 else xs[len(xs) // 2 :]
    return float(np.median(part)) if part else math.nan


def _slope(x: Sequence[float], y: Sequence[float]) -> float:
    if len(x) < 3:
        return math.nan
    return float(np.polyfit(np.asarray(x), np.asarray(y), 1)[0])


def _max(xs: Sequence[float]) -> float:
    good = [x for x in xs if math.isfinite(x)]
    return max(good) if good else math.nan


def run_stall(
    path: Path, broker: LocalBroker, work: Path, rows: Any, a: argparse.Namespace
) -> dict[str, Any]:
    """The broker freezes (SIGSTOP) for each of ``a.stall_s`` seconds mid-stream and goes on (SIGCONT):
    two workers, a slow judge so judgements are in flight, a worker that exits restarted. Each stall runs
    on a broker of its own (freezing the shared one would stall nothing else here, but keeps runs apart)."""
    del broker  # each stall gets its own broker: it is the part that fails
    out: dict[str, Any] = {"runs": []}
    n, rate = (300 if a.quick else 600), 40.0
    for k, stall in enumerate(a.stall_s):
        with LocalBroker(log_path=work / f"stall{k}-broker.log") as b:  # stopped however the run ends
            c = _cluster(
                work / f"stall{k}", path, b, "0.3",
                judge_kwargs={"latency_ms": 800, "latency_jitter_ms": 600}, judge_env={"timeout_s": "10"},
            )  # fmt: skip
            try:
                _seeded(c, rows)
                workers = [c.worker("a"), c.worker("b")]
                for w in workers:
                    w.start()
                resumed: list[float] = []

                def freeze(
                    c: chaos.Cluster = c, stall: float = stall, resumed: list[float] = resumed
                ) -> None:
                    c.hang_broker(stall)
                    resumed.append(time.monotonic())

                values, _ = chaos.text_values(rows["train"][300:] + rows["test"], n, f"stall{k}")
                _say(f"stall: {n} texts at {rate:.0f}/s over 2 workers, the broker frozen for {stall:.0f}s")
                run = chaos.kill_run(
                    c, workers, values, rate, [], events=[(0.4 * n / rate, freeze)], supervise=True,
                    timeout_s=a.drain_timeout_s,
                )  # fmt: skip
                assert c.follower is not None
                labels = c.follower.snapshot(c.names.labels)
                r = {
                    "stall_s": stall,
                    "texts": n,
                    "lost": len(run.delivery.lost),
                    "duplicated": len(run.delivery.duplicated),
                    "dup_training": len(run.duplicated_training),
                    "accepted_without_verdict": len(run.accepted_without_verdict),
                    "dead_letters": len(c.follower.snapshot(c.names.dead_letter)),
                    "exits": [code for _, code in run.exits],
                    "next_final_after_resume_s": _max(chaos.recovery_gaps(labels, resumed)),
                    "drain_s": run.drain_s,
                }
                out["runs"].append(r)
                _say(
                    f"stall {stall:.0f}s: lost {r['lost']}, duplicated {r['duplicated']}, exits {r['exits']}"
                )
            finally:
                c.stop()
    out["lost"] = sum(r["lost"] for r in out["runs"])
    out["duplicated"] = sum(r["duplicated"] for r in out["runs"])
    out["texts"] = sum(r["texts"] for r in out["runs"])
    return out


RUNNERS: dict[str, Callable[..., dict[str, Any]]] = {
    "kill": run_kill,
    "loss": run_loss,
    "faults": run_faults,
    "fuzz": run_fuzz,
    "soak": run_soak,
    "stall": run_stall,
}


# ---- report


def _plots(state: dict[str, Any]) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    made = []
    k = state.get("kill")
    if k and k.get("final_times"):
        fig, ax = plt.subplots(figsize=(8, 3))
        ft = np.asarray(k["final_times"])
        bins = [float(x) for x in np.arange(0, ft.max() + 2, 1.0)]
        ax.hist(ft, bins=bins, color="#4477aa", label="final labels / s")
        for i, t in enumerate(k["kill_times"]):
            ax.axvline(t, color="#cc3311", ls="--", lw=1, label="kill -9" if i == 0 else None)
        ax.set_xlabel("seconds since the stream started")
        ax.set_ylabel("final labels per second")
        ax.set_title(f"kill -9 run: {k['texts']} texts, {k['kills']} kills")
        ax.legend(loc="upper right")
        fig.tight_layout()
        fig.savefig(RESULTS / f"{NAME}_kill.png", dpi=110)
        plt.close(fig)
        made.append(f"{NAME}_kill.png")
    f = state.get("faults")
    if f and f.get("kinds"):
        kinds = list(f["kinds"])
        fig, ax = plt.subplots(figsize=(6, 3))
        ax.bar(kinds, [f["kinds"][x]["drain_s"] for x in kinds], color="#228833")
        ax.set_ylabel("drain after recovery (s)")
        ax.set_title(f"judge faults of {f['fault_s']:.0f}s each")
        fig.tight_layout()
        fig.savefig(RESULTS / f"{NAME}_faults.png", dpi=110)
        plt.close(fig)
        made.append(f"{NAME}_faults.png")
    s = state.get("soak")
    if s and s.get("samples"):
        fig, axes = plt.subplots(3, 1, figsize=(8, 7), sharex=True)
        t = [x["t"] / 60 for x in s["samples"]]
        axes[0].plot(t, [x["rss_mb"] for x in s["samples"]], color="#4477aa")
        axes[0].set_ylabel("worker RSS (MiB)")
        if any("learned" in x for x in s["samples"]):
            ax2 = axes[0].twinx()
            ax2.plot(t, [x.get("learned", math.nan) for x in s["samples"]], color="#999933", ls=":")
            ax2.set_ylabel("training records learned", color="#999933")
        lw = s["latency_windows"]
        axes[1].plot([x["t"] / 60 for x in lw], [x["p50_ms"] for x in lw], label="p50")
        axes[1].plot([x["t"] / 60 for x in lw], [x["p99_ms"] for x in lw], label="p99")
        axes[1].set_ylabel("publish -> first label (ms)")
        axes[1].legend()
        axes[2].plot(t, [x["lag"] for x in s["samples"]], color="#cc3311")
        axes[2].set_ylabel("consumer lag (records)")
        axes[2].set_xlabel("minutes")
        axes[0].set_title(
            f"soak: {s['rate']:.0f} texts/s (half of {s['max_rate']:.0f}) for {s['soak_s'] / 60:.1f} min"
        )
        fig.tight_layout()
        fig.savefig(RESULTS / f"{NAME}_soak.png", dpi=110)
        plt.close(fig)
        made.append(f"{NAME}_soak.png")
    return made


def _f(x: Any, fmt: str = ".1f") -> str:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "n/a"
    return format(x, fmt)


def render(state: dict[str, Any]) -> str:
    plots = _plots(state)
    meta = state.get("meta", {})
    lines = [
        "# Reliability: the chaos suite at size (`driftlabel bench reliability`)",
        "",
        "Real Tansu broker on loopback, simulated expert (faults injected), `driftlabel worker` processes "
        "with the static embedder, 30 CLINC150 classes seeded with 10 examples each; every figure read from "
        "the raw topics (no consumer-side dedupe). Sections may come from different runs; each shows its own "
        "command, time and machine load. **The machine is shared with other engineers' tests and benchmarks: "
        "times "
        "are upper bounds, rates lower bounds.** Harness: `bench/chaos.py`; fast cases: `tests/chaos/`.",
        "",
    ]
    rows = []
    k, lo, fa, fz, so, st = (state.get(x) for x in SECTIONS)
    streamed = sum(x.get("texts", 0) for x in (k or {}, lo or {}, so or {}, st or {}))
    if fa:
        streamed += sum(v["texts"] for v in fa["kinds"].values())
    kills = (k or {}).get("kills", 0) + (1 if lo else 0)
    lost = sum((x or {}).get("lost", 0) for x in (k, lo, so, st)) + sum(
        v["lost"] for v in (fa or {}).get("kinds", {}).values()
    )
    dup = sum((x or {}).get("duplicated", 0) for x in (k, lo, so, st)) + sum(
        v["duplicated"] for v in (fa or {}).get("kinds", {}).values()
    )
    rec = [_max(k.get("worst_latency_after_kill_s", k["recovery_s"]))] if k else []
    if lo:
        rec.append(lo["takeover_s"])
    drains = [v["drain_s"] for v in (fa or {}).get("kinds", {}).values()]
    rows += [
        ["texts streamed (all sections)", f"{streamed:,}"],
        ["worker kills (SIGKILL)", kills],
        ["ids without a final label (lost)", lost],
        ["ids with more than one final label (duplicated)", dup],
        [
            "max recovery time (worst publish -> first label of texts sent in the 20 s after a kill)",
            f"{_f(_max(rec))} s",
        ],
        ["drain time after a judge fault (max over kinds)", f"{_f(_max(drains))} s"],
        [
            "worker memory slope in the soak (second half)",
            f"{_f((so or {}).get('rss_slope_mb_per_min'), '+.2f')} MiB/min",
        ],
    ]
    lines += ["## Summary", "", markdown_table(["measure", "value"], rows), ""]
    if k:
        lines += [
            f"## kill -9 while streaming ({meta.get('kill', '')})",
            "",
            markdown_table(
                ["measure", "value"],
                [
                    ["texts, rate", f"{k['texts']:,} at {k['rate']:.0f}/s ({k['stream_s']:.0f} s)"],
                    ["kills (each restarted at once)", k["kills"]],
                    [
                        "lost / duplicated final labels",
                        f"{k['lost']} / {k['duplicated']} ({k['dup_finals']} records)",
                    ],
                    ["judge training records written twice", k["dup_training"]],
                    ["final labels accepted without a valid verdict", k["accepted_without_verdict"]],
                    ["per kill: kill -> next final label (s)", ", ".join(_f(x) for x in k["recovery_s"])],
                    [
                        "per kill: worst publish -> first label, texts sent in the 20 s after (s)",
                        ", ".join(_f(x) for x in k.get("worst_latency_after_kill_s", [])),
                    ],
                    ["worker start to ready (s)", ", ".join(_f(x) for x in k["ready_s"])],
                    ["drain after the last send", f"{_f(k['drain_s'])} s"],
                    *_replay_rows(k.get("replay")),
                ],
            ),
            "",
            f"![kill run]({NAME}_kill.png)" if f"{NAME}_kill.png" in plots else "",
            "",
            "Reading it: a drain after the last send of more than a few seconds means the worker fell behind "
            "the send rate (a backlog), so the worst publish -> first label figures include queueing behind "
            "that backlog, not only the restart; `kill -> next final label` and `start to ready` are the "
            "restart itself.",
            "",
        ]
    if lo:
        lines += [
            f"## Two workers, one killed for good ({meta.get('loss', '')})",
            "",
            markdown_table(
                ["measure", "value"],
                [
                    ["texts", lo["texts"]],
                    ["both workers had partitions before the kill", lo["both_had_partitions"]],
                    ["lost / duplicated", f"{lo['lost']} / {lo['duplicated']}"],
                    [
                        "takeover: worst publish -> first label of texts sent in the 20 s after the kill",
                        f"{_f(lo['takeover_s'])} s",
                    ],
                    ["accepted without a verdict", lo["accepted_without_verdict"]],
                    ["survivor alive at the end", lo["survivor_alive"]],
                ],
            ),
            "",
        ]
    if fa:
        lines += [
            f"## Judge faults, {fa['fault_s']:.0f} s each, every text judged ({meta.get('faults', '')})",
            "",
            markdown_table(
                [
                    "fault",
                    "texts",
                    "first-labelled during",
                    "final during",
                    "accepted during",
                    "drain (s)",
                    "lost",
                    "dup",
                    "final statuses",
                ],
                [
                    [
                        kind,
                        v["texts"],
                        v["first_labelled_during"],
                        v["final_during"],
                        v["accepted_during"],
                        _f(v["drain_s"]),
                        v["lost"],
                        v["duplicated"],
                        json.dumps(v["statuses"]),
                    ]
                    for kind, v in fa["kinds"].items()
                ],
            ),
            "",
            f"![faults]({NAME}_faults.png)" if f"{NAME}_faults.png" in plots else "",
            "",
        ]
    if fz:
        keys = ["texts", "training", "control", "judge_verdicts"]
        lines += [
            f"## Fuzzed bad records (hypothesis) in a valid stream ({meta.get('fuzz', '')})",
            "",
            markdown_table(
                [
                    "topic",
                    "bad sent",
                    "dead-lettered once, right reason",
                    "never",
                    "more than once",
                    "wrong reason",
                ],
                [
                    [
                        t,
                        fz["sent_bad"][t],
                        fz["dead_once"][t],
                        fz["missing"][t],
                        fz["repeated"][t],
                        fz["wrong_reason"][t],
                    ]
                    for t in keys
                ],
            ),
            "",
            f"Valid traffic alongside: {fz['valid_texts_final']}/{fz['valid_texts']} texts got a final "
            "label, "
            f"{_f(fz['human_learned'], '.0f')}/{fz['human_sent']} human training records learned, "
            f"{_f(fz['classes_added'], '.0f')}/{fz['classes_sent']} add_class ops applied, "
            + (
                f"{_f(fz['verdicts_audited'], '.0f')}/{fz['verdicts_sent']} valid verdicts counted by the "
                "verdict-log audit (`driftlabel_verdict_log_total`); "
                if "verdicts_sent" in fz
                else "valid verdicts not checked (a run from before the worker consumed `judge-verdicts`); "
            )
            + f"worker alive: {fz['worker_alive']}.",
            "",
        ]
    if so:
        lines += [
            f"## Soak at half the maximum rate ({meta.get('soak', '')})",
            "",
            markdown_table(
                ["measure", "value"],
                [
                    ["max rate (burst)", f"{so['max_rate']:.0f} texts/s"],
                    [
                        "soak",
                        f"{so['rate']:.0f} texts/s for {so['soak_s'] / 60:.1f} min ({so['texts']:,} texts)",
                    ],
                    [
                        "publish -> first label p50 / p99",
                        f"{_f(so['p50_ms'], '.0f')} / {_f(so['p99_ms'], '.0f')} ms",
                    ],
                    [
                        "p99 per 30 s window, median of first / second half",
                        f"{_f(so['p99_first_half_ms'], '.0f')} / {_f(so['p99_second_half_ms'], '.0f')} ms",
                    ],
                    [
                        "p50 per 30 s window, median of first / second half",
                        f"{_f(_half_median(so, 'p50_ms', 0), '.0f')} / "
                        f"{_f(_half_median(so, 'p50_ms', 1), '.0f')} ms",
                    ],
                    [
                        "worker RSS slope, first / second half",
                        f"{_f(so.get('rss_slope_first_half_mb_per_min'), '+.2f')} / "
                        f"{_f(so['rss_slope_mb_per_min'], '+.2f')} MiB/min",
                    ],
                    [
                        "consumer lag (records): median / max / at the end",
                        f"{_f(so.get('lag_median'), '.0f')} / {_f(so.get('lag_max'), '.0f')} / "
                        f"{_f(so.get('lag_last'), '.0f')}",
                    ],
                    [
                        "stored examples per label (cap): training records learned, start -> end",
                        f"{so.get('store_cap') or 'model default (1000)'}: "
                        + " -> ".join(_f(x, ".0f") for x in so.get("learned", [])),
                    ],
                    ["lost / duplicated", f"{so['lost']} / {so['duplicated']}"],
                ],
            ),
            "",
            f"![soak]({NAME}_soak.png)" if f"{NAME}_soak.png" in plots else "",
            "",
            "Reading it: the model keeps every accepted example up to a per-label cap (`experts."
            "max_examples_per_label`, default 1,000, and a third of it for hard negatives here), so until "
            "the store is full the worker's memory grows with it by design; at this rate a 10-minute soak "
            "fills a 1,000 cap to a tenth. The soak therefore runs with a cap it reaches in its first "
            "minutes (the table's last rows), so that the second half shows what the service itself does "
            "over time. Measured without the cap, and what grows per id, in `docs/reliability.md` (Memory). "
            "The texts are the 30 classes' held-back texts, shuffled (seeded) and cycled, so the class "
            "mix is stationary; ids are all new, texts repeat every ~4,200.",
            "",
        ]
    if st:
        lines += [
            f"## The broker stalls ({meta.get('stall', '')})",
            "",
            "The Tansu process frozen with SIGSTOP mid-stream, then let go on (SIGCONT): past the clients' "
            "request timeout (30 s) and the group's session timeout (6 s) fetches, commits and heartbeats "
            "time out and the members are expelled and rejoin. Two workers, a simulated expert answering in "
            "0.8 ± 0.6 s (judgements in flight at the freeze), 30 % of texts judged, 40 texts/s; a worker "
            "that exits by itself would be restarted (the exit statuses column).",
            "",
            markdown_table(
                [
                    "stall s",
                    "texts",
                    "lost",
                    "duplicated",
                    "training twice",
                    "accepted w/o verdict",
                    "dead letters",
                    "worker exits",
                    "resume -> next final label s",
                    "drain s",
                ],
                [
                    [
                        f"{r['stall_s']:.0f}",
                        r["texts"],
                        r["lost"],
                        r["duplicated"],
                        r["dup_training"],
                        r["accepted_without_verdict"],
                        r["dead_letters"],
                        ", ".join(str(x) for x in r["exits"]) or "none",
                        _f(r["next_final_after_resume_s"]),
                        _f(r["drain_s"]),
                    ]
                    for r in st["runs"]
                ],
            ),
            "",
            "Reading it: the drain after the last send is the slow judge's backlog (texts sent during the "
            "stall arrive at once when it ends), not the stall's own cost; `resume -> next final label` is.",
            "",
        ]
    return "\n".join(lines).rstrip() + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--quick", action="store_true", help="reduced sizes: under 5 minutes on 2 cores")
    ap.add_argument("--only", nargs="+", choices=SECTIONS, default=list(SECTIONS))
    ap.add_argument("--data", type=Path, help="folder holding clinc150/ (default: the shared data)")
    ap.add_argument("--texts", type=int, help="texts in the kill run (full 20000, quick 800)")
    ap.add_argument("--rate", type=float, help="texts/s sent in the kill and loss runs (full 100, quick 40)")
    ap.add_argument(
        "--kill-every-s", type=float, help="one kill per window of this length (full 30, quick 9)"
    )
    ap.add_argument("--fault-s", type=float, help="how long each judge fault lasts (full 60, quick 5)")
    ap.add_argument("--fault-rate", type=float, default=10.0, help="texts/s during the faults")
    ap.add_argument("--fuzz", type=int, help="bad records in all, over 4 topics (full 10000, quick 400)")
    ap.add_argument("--soak-s", type=float, help="soak length (full 600, quick 30)")
    ap.add_argument("--burst", type=int, default=3000, help="texts of the max-rate burst before the soak")
    ap.add_argument(
        "--soak-store-cap",
        type=int,
        help="the soak worker's stored examples per label (full and quick 60; 0: the model's default, 1000, "
        "which a 10-minute soak is far from filling, so memory grows with the store)",
    )
    ap.add_argument(
        "--stall-s",
        type=float,
        nargs="+",
        help="broker stalls, one run each (full 20 45 90 with 600 texts, quick 10 with 300)",
    )
    ap.add_argument("--drain-timeout-s", type=float, default=300.0)
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument(
        "--name",
        help="report name under bench/results/ (default reliability, or reliability_quick with --quick); "
        "a section run alone under its own name leaves the full report as it is",
    )
    ap.add_argument("--render-only", action="store_true", help="re-render the report from the saved figures")
    a = ap.parse_args(argv)
    full = {
        "texts": 20000,
        "rate": 100.0,
        "kill_every_s": 30.0,
        "fault_s": 60.0,
        "fuzz": 10000,
        "soak_s": 600.0,
        "soak_store_cap": 60,
        "stall_s": [20.0, 45.0, 90.0],
    }
    quick = {
        "texts": 800,
        "rate": 40.0,
        "kill_every_s": 9.0,
        "fault_s": 5.0,
        "fuzz": 400,
        "soak_s": 30.0,
        "soak_store_cap": 60,
        "stall_s": [10.0],
    }
    for key, val in (quick if a.quick else full).items():
        if getattr(a, key) is None:
            setattr(a, key, val)
    global NAME
    if a.quick:
        a.burst = min(a.burst, 600)
        NAME = "reliability_quick"
    if a.name:
        NAME = a.name
    state_path = RESULTS / f"{NAME}.json"
    report_path = RESULTS / f"{NAME}.md"
    state: dict[str, Any] = json.loads(state_path.read_text()) if state_path.is_file() else {}
    if a.render_only:
        report_path.write_text(render(state), encoding="utf-8")
        _say(f"wrote {report_path}")
        return 0
    path = data_file(a.data)
    rows = chaos.clinc_rows(path, classes=30)
    state.setdefault("meta", {})
    cmd = "driftlabel bench reliability " + " ".join(sys.argv[1:] if argv is None else argv)
    work = Path(tempfile.mkdtemp(prefix="driftlabel-reliability-"))
    _say(f"{machine_info()}; work dir {work}")
    broker = LocalBroker(log_path=work / "broker.log").start()
    try:
        for section in a.only:
            t0 = time.monotonic()
            load0 = _load()
            state[section] = RUNNERS[section](path, broker, work, rows, a)
            state["meta"][section] = (
                f"`{cmd.strip()}`, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, "
                f"{time.monotonic() - t0:.0f} s, load {load0} -> {_load()}"
            )
            RESULTS.mkdir(parents=True, exist_ok=True)
            state_path.write_text(json.dumps(state, indent=1, default=float), encoding="utf-8")
            report_path.write_text(render(state), encoding="utf-8")
            _say(f"{section} done in {time.monotonic() - t0:.0f}s; wrote {report_path}")
    finally:
        broker.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
