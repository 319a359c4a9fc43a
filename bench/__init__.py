"""driftlabel's benchmarks (installed as ``driftlabel.bench``; run them with ``driftlabel bench NAME``).

Each ``bench_*.py`` keeps working as a script (``python bench/bench_x.py``) and exposes ``main(argv)``;
:mod:`driftlabel.bench.cli` dispatches to them. Reports land in ``bench/results/``.
"""
