"""Online experts: small classifiers over one label subset plus ``noise``, with a river-like contract.

Every expert follows the same small interface (river's estimator contract, numpy micro-batches instead of
per-item dicts), so one parametrised test checks them all and the classifier can swap them:

- constructor parameters are stored under their own names (``get_params()``, ``clone()``);
- ``learn_many(X, y, sample_weight=None, valid=None)`` learns incrementally from a micro-batch; labels not
  seen before become new classes; ``valid=False`` rows are hard negatives ("x is NOT y");
- ``fit_many(...)`` (same arguments) refits from scratch on everything given;
- ``predict_proba_many(X)`` returns an ``(n, len(classes_))`` matrix, ``predict_many(X)`` the argmax labels;
- ``add_class(label)`` / ``remove_class(label)`` change the label set without touching the other classes.

:class:`SoftmaxExpert` (numpy multinomial logistic regression) is the fast default: full refits solve the
same L2-regularised objective as scikit-learn's ``LogisticRegression`` with L-BFGS, incremental steps are
gradient steps on micro-batches. Being linear, its weights can be stacked with the other experts' into one
matrix, which is what makes combined prediction one matmul per micro-batch (see ``combine.py``).
:class:`RiverExpert` wraps ``river.linear_model.SoftmaxRegression`` for comparison; it learns one item at a
time through dicts and is far below the speed bar (measured in ``bench/bench_models.py``).
"""

from __future__ import annotations

import contextlib
import copy
import threading
from collections.abc import Callable, Iterator, Sequence
from typing import Any, Literal, Protocol, runtime_checkable

import numpy as np
from pydantic import Field
from pydantic_settings import SettingsConfigDict

from driftlabel.config import DriftlabelSettings
from driftlabel.models.errors import InvalidDataError, SolveStopped, UnknownLabelError
from driftlabel.models.uncertainty import softmax

__all__ = [
    "NOISE",
    "Expert",
    "ExpertSettings",
    "RiverExpert",
    "SoftmaxExpert",
    "fit_joint",
    "is_noise",
    "make_expert",
    "noise_class",
    "solve_columns",
]

NOISE = "__noise__"
"""Prefix of the reserved noise classes every R.E.D. expert has besides its subset's labels ("some other
subset's label"). An expert has one noise class per *noise group* (``__noise__0``, ``__noise__1``, ...):
the other labels are clustered into groups of similar labels, and a noise row's class is its label's group.
"""


def noise_class(group: int) -> str:
    """The name of noise class ``group`` (``__noise__0``, ...)."""
    return f"{NOISE}{group}"


def is_noise(label: object) -> bool:
    """True for every noise class name."""
    return isinstance(label, str) and label.startswith(NOISE)


class ExpertSettings(DriftlabelSettings):
    """Knobs of the R.E.D. core (section ``experts``, env ``DRIFTLABEL_EXPERTS_``)."""

    model_config = SettingsConfigDict(env_prefix="DRIFTLABEL_EXPERTS_", frozen=True, extra="forbid")
    section = "experts"

    subset_size: int = Field(
        1000,
        ge=1,
        description="at most this many labels per expert. Default: one expert over every label up to 1,000 "
        "labels, since it beat subsets of 8 on every set and budget measured (bench_loop, 10 seeds + 0.10 "
        "calls/item: CLINC150 +0.5-0.6, BANKING77 +0.5-1.1 points; full data 95.6 / 93.1 % vs 94.7 / 92.2 "
        "%; O*NET 23.2 / 25.4 % vs 21.1 / 23.5 %, fits 1.0-1.6x faster; see docs/models.md)",
    )
    noise_ratio: float = Field(
        20.0,
        ge=0.0,
        description="noise class weight as a multiple of the subset's mean label size (measured: 2.0, the "
        "paper's oversampling, loses 2 points on CLINC150; see docs/models.md)",
    )
    noise_mode: Literal["stratified", "weighted", "sampled"] = Field(
        "stratified",
        description="which other-subset examples a full refit uses as noise: stratified (up to "
        "noise_per_label of every other label), weighted (all), sampled (noise_ratio x mean size drawn)",
    )
    noise_per_label: int = Field(
        10,
        ge=1,
        description="stratified noise: rows per other label, at least this many, or a third of the "
        "subset's mean label size when larger (measured: BANKING77 full data 90.9 % with 10, 92.1 % with 40)",
    )
    max_noise_rows: int = Field(
        6000, ge=1, description="stratified noise: fewer rows per label when there are many labels (O*NET)"
    )
    seed: int = 0
    learner: Literal["softmax", "river"] = "softmax"
    l2: float = Field(0.1, ge=0.0, description="L2 penalty on the summed loss (= 1/C of scikit-learn)")
    max_iter: int = Field(
        100,
        ge=1,
        description="L-BFGS iterations of a full refit (measured, full data: 100 give the same test accuracy "
        "as 300 on CLINC150 94.67 %, BANKING77 92.21 % and O*NET 23.54 %; O*NET's fit 76.5 -> 33.9 s)",
    )
    learning_rate: float = Field(
        0.1,
        gt=0.0,
        description="step size of incremental micro-batch updates (measured, CLINC150 10-shot: 1.0 with 2 "
        "epochs lost 0.4 points over 150 examples, 0.1 with 1 epoch is neutral; the re-solves learn)",
    )
    epochs: int = Field(1, ge=1, description="gradient steps per incremental micro-batch")
    replay: float = Field(1.0, ge=0.0, description="stored examples replayed per new example when learning")
    negative_weight: float = Field(1.0, ge=0.0, description="weight of hard negatives (complementary loss)")
    temperature: float = Field(1.0, gt=0.0, description="softmax temperature of the combined scores")
    oos: Literal["off", "nearest", "centroid", "noise"] = Field(
        "off",
        description="out-of-scope detection, the same default for the CLI, the Python API and the stream. "
        "off: never (no cost to in-scope accuracy); nearest: the text's cosine similarity to its nearest "
        "stored example is below the oos_quantile quantile of the store's own leave-one-out similarities "
        "(measured, CLINC150 10-shot: 75 % of out-of-scope texts caught, 5.0 % of in-scope flagged); "
        "centroid: the same with the mean of that similarity and the one to the nearest label centroid "
        "(10-shot: 80.5 % caught, 5.1 % flagged; more flagged as the store grows, docs/models.md); noise: "
        "every expert says noise (log-odds below oos_threshold; subsets of 8 at 10-shot: 96 % caught but "
        "23 % flagged; one expert flags nothing)",
    )
    oos_quantile: float = Field(
        0.05, gt=0.0, lt=1.0, description="nearest mode: the in-scope share that may be flagged (calibrated)"
    )
    oos_threshold: float = Field(
        0.0, description="noise mode: out_of_scope when every label's log-odds against noise is below this"
    )
    synthetic_replace_after: int = Field(
        5,
        ge=1,
        description="a class added with generated examples drops them once it has this many real ones",
    )
    max_examples_per_label: int = Field(1000, ge=1, description="stored known-good examples per label (FIFO)")
    max_negatives_per_label: int = Field(200, ge=0, description="stored hard negatives per label (FIFO)")
    description_weight: float = Field(
        0.3, ge=0.0, le=1.0, description="share of a description in a label's embedding"
    )
    noise_groups: int = Field(
        8,
        ge=1,
        description="noise classes per expert: other labels are clustered (k-means over label embeddings) "
        "and each cluster is one noise class. One noise class is a single linear direction for every other "
        "label and loses 2-3 points against a flat softmax (measured: CLINC150 10-shot 88.3 % with 1, "
        "90.8 % with 8; see docs/models.md)",
    )
    umap_components: int = Field(8, ge=2)
    umap_neighbors: int = Field(15, ge=2)
    umap_min_labels: int = Field(
        24, ge=4, description="below this many labels subsets use cosine space, no UMAP"
    )
    batch_size: int = Field(256, ge=1, description="micro-batch size for embedding and learning")
    young_examples: int = Field(
        20,
        ge=0,
        description="a label with fewer stored examples than this gets its expert re-solved (warm) when its "
        "count reaches 1, 2, 3, 5, 8, 13, ... (models.classifier.young_milestones), so a new class learns "
        "from its first examples as a refit would (0: off)",
    )
    young_iter: int = Field(
        10,
        ge=1,
        description="L-BFGS iterations of a young label's re-solve, on the caller's (model) thread "
        "(measured with one expert, bench_loop seed 0: 30 -> 10 cut CLINC150's loop from 110 to 44 s, "
        "accuracy within run-to-run noise; see docs/models.md)",
    )
    young_solve: Literal["auto", "columns", "all"] = Field(
        "auto",
        description="what a young (or just added) label's re-solve moves. auto: every column of its expert "
        "while stored rows x the expert's columns is at most young_solve_max_cells, else columns; "
        "columns: only the young "
        "labels' own weights against the others' fixed logits (their log-sum-exp computed once: 0.02 s "
        "at CLINC150, 0.2 s at O*NET); all, every column of their experts (a pass over every label per "
        "iteration: 2.2-4.9 s on the model thread at O*NET's 923 labels). Measured in docs/models.md",
    )
    young_solve_max_cells: int = Field(
        500_000,
        ge=0,
        description="auto young_solve: the largest stored rows x columns solved whole (~0.2 s on the model "
        "thread here, as a column-only solve at O*NET). Whole re-solves help short streams (driftlabel "
        "demo: 93.1 % against 92.3 % of final labels right) and cost seconds at O*NET's scale",
    )
    learn_chunk: int = Field(
        16,
        ge=1,
        description="rows are learned in chunks of this many, in log order (a partial chunk waits, or is "
        "flushed by a structural change): the same rows give the same model however they were batched",
    )
    resolve_every: int = Field(
        100,
        ge=0,
        description="re-solve every expert (warm-started L-BFGS, the same objective as a full refit) after "
        "this many newly learned rows, or after resolve_growth x the stored examples if that is more; 0: "
        "never (incremental gradient steps only). Measured on CLINC150: gradient steps alone move 10-shot "
        "accuracy 90.4 -> 90.5 % over the whole train split, a warm re-solve takes it to 94.7 %",
    )
    resolve_growth: float = Field(
        0.05, ge=0.0, description="re-solve when the stored examples grew by this share (see resolve_every)"
    )
    resolve_iter: int = Field(30, ge=1, description="L-BFGS iterations of a warm re-solve")
    self_training: float = Field(
        0.3,
        ge=0.0,
        description="weight of an unlabelled stream row in re-solves and refits: each one learns the label "
        "the weights the solve starts from give it (self-training; docs/models.md). 0: off, unlabelled "
        "rows are not kept",
    )
    self_training_router: bool = Field(
        True,
        description="with self-training, rank candidates with the self-trained experts but take the "
        "uncertainty (entropy, margin: what the judge is asked about) from a twin that learns the same "
        "labelled rows and no unlabelled ones; measured: keeps the stationary gain and most of the "
        "class-incremental loss goes (docs/models.md)",
    )
    unlabelled_max: int = Field(
        10_000,
        ge=0,
        description="newest unlabelled stream rows kept for self-training (FIFO, 4 x dim bytes a row)",
    )
    resolve_lag: float = Field(
        0.5,
        ge=0.0,
        description="a re-solve started at log position p is swapped in at p + lag x its trigger size, so "
        "the swap point is a position in the training log (deterministic), not a moment in time",
    )
    resolve_background: bool = Field(
        True,
        description="run re-solves on a background thread (labelling goes on with the current weights); "
        "False solves on the caller's thread at the trigger point (the same weights at every position, "
        "with a pause)",
    )
    resolve_nice: int = Field(
        10,
        ge=0,
        le=19,
        description="Linux: the background re-solve thread's nice value, so that it takes the CPU the "
        "embedder leaves (0: the process's own). Measured once each at O*NET on 2 cores, a 300-record "
        "burst learned during a re-forming, before the service waited for re-solves off its model thread: "
        "first-label p99 1.3 s at 0, 0.61 s at 10, 0.58 s with re-solves off (with that wait too: "
        "1.00 / 1.14 s in two runs; docs/streaming.md). As the service waits off its model thread, a "
        "slower re-solve delays learning, never labelling",
    )
    joint_updates: bool = Field(
        True, description="incremental steps of all softmax experts in one matmul (same result, faster)"
    )
    joint_fit: bool = Field(
        True,
        description="full refits and re-solves of softmax experts as one L-BFGS over all their weights, on "
        "one shared stratified noise sample, in float32 matmuls (False: one expert at a time, each with its "
        "own sample; measured on O*NET, see docs/models.md)",
    )
    blas_threads: int | None = Field(
        1,
        ge=1,
        description="BLAS threads for the experts' math (None: the library default). The matrices are small, "
        "and on a busy machine (the embedder shares the cores) one thread is several times faster",
    )


_stop = threading.local()


@contextlib.contextmanager
def stoppable(stop: Callable[[], bool]) -> Iterator[None]:
    """Solves run on this thread inside the block raise :class:`SolveStopped` at their next L-BFGS
    evaluation once ``stop()`` is true (a background re-solve whose result nobody will use)."""
    previous = getattr(_stop, "check", None)
    _stop.check = stop
    try:
        yield
    finally:
        _stop.check = previous


def _check_stop() -> None:
    check = getattr(_stop, "check", None)
    if check is not None and check():
        raise SolveStopped("the re-solve was dropped by every model that held it")


@runtime_checkable
class Expert(Protocol):
    """The contract every expert implements (checked by one parametrised test)."""

    classes_: np.ndarray

    def get_params(self) -> dict[str, Any]: ...

    def clone(self) -> Expert: ...

    def learn_many(
        self,
        X: np.ndarray,
        y: Sequence[str] | np.ndarray,
        sample_weight: np.ndarray | None = None,
        valid: np.ndarray | None = None,
    ) -> Expert: ...

    def fit_many(
        self,
        X: np.ndarray,
        y: Sequence[str] | np.ndarray,
        sample_weight: np.ndarray | None = None,
        valid: np.ndarray | None = None,
    ) -> Expert: ...

    def predict_proba_many(self, X: np.ndarray) -> np.ndarray: ...

    def predict_many(self, X: np.ndarray) -> np.ndarray: ...

    def add_class(self, label: str) -> None: ...

    def remove_class(self, label: str) -> None: ...


def _check_xy(
    X: np.ndarray, y: Sequence[str] | np.ndarray, sample_weight: np.ndarray | None, valid: np.ndarray | None
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    X = np.asarray(X)
    if X.ndim != 2:
        raise InvalidDataError(f"X must be a 2-D array (n, dim), got shape {X.shape}")
    y_arr = np.asarray(y, dtype=object)
    if y_arr.ndim != 1 or len(y_arr) != len(X):
        raise InvalidDataError(
            f"y must be 1-D with one label per row of X ({len(X)}), got shape {y_arr.shape}"
        )
    if not np.all(np.isfinite(X)):
        raise InvalidDataError("X contains NaN or infinite values; check the embedder output")
    w = np.ones(len(X)) if sample_weight is None else np.asarray(sample_weight, dtype=np.float64)
    if w.shape != (len(X),) or np.any(w < 0) or not np.all(np.isfinite(w)):
        raise InvalidDataError("sample_weight must be finite, non-negative, one per row")
    v = np.ones(len(X), dtype=bool) if valid is None else np.asarray(valid, dtype=bool)
    if v.shape != (len(X),):
        raise InvalidDataError("valid must hold one bool per row")
    return X, y_arr, w, v


class SoftmaxExpert:
    """Multinomial logistic regression in numpy: L-BFGS full refits, gradient-step micro-batch updates.

    The full-refit objective is ``sum_i w_i * loss_i + l2/2 * ||W||^2`` (intercepts not penalised), i.e.
    scikit-learn's ``LogisticRegression(C=1/l2)`` with sample weights, so the flat variant reproduces it.
    ``loss_i`` is cross-entropy for valid rows and the complementary loss ``-log(1 - p_y)`` (times
    ``negative_weight``) for hard negatives, which pushes ``p_y`` down without saying where the mass goes.
    Incremental steps: ``epochs`` gradient steps of size ``learning_rate`` on the batch's mean loss, with
    the L2 penalty scaled to the examples seen so far.
    """

    def __init__(
        self,
        l2: float = 1.0,
        max_iter: int = 300,
        learning_rate: float = 1.0,
        epochs: int = 2,
        negative_weight: float = 1.0,
        tol: float = 1e-6,
    ) -> None:
        self.l2 = l2
        self.max_iter = max_iter
        self.learning_rate = learning_rate
        self.epochs = epochs
        self.negative_weight = negative_weight
        self.tol = tol
        self.classes_: np.ndarray = np.empty(0, dtype=object)
        self.coef_: np.ndarray | None = None  # (dim, n_classes)
        self.intercept_: np.ndarray = np.zeros(0)
        self.n_seen_: float = 0.0

    # -- river-like plumbing -------------------------------------------------------------------------
    def get_params(self) -> dict[str, Any]:
        return {
            "l2": self.l2,
            "max_iter": self.max_iter,
            "learning_rate": self.learning_rate,
            "epochs": self.epochs,
            "negative_weight": self.negative_weight,
            "tol": self.tol,
        }

    def clone(self) -> SoftmaxExpert:
        """A fresh, unfitted expert with the same parameters."""
        return SoftmaxExpert(**self.get_params())

    def __repr__(self) -> str:
        params = ", ".join(f"{k}={v!r}" for k, v in self.get_params().items())
        return f"SoftmaxExpert({params}) with {len(self.classes_)} classes"

    # -- classes --------------------------------------------------------------------------------------
    def _ensure_dim(self, dim: int) -> None:
        if self.coef_ is None:
            self.coef_ = np.zeros((dim, len(self.classes_)))
        elif self.coef_.shape[0] != dim:
            raise InvalidDataError(
                f"X has {dim} columns but this expert was trained on {self.coef_.shape[0]}"
            )

    def add_class(self, label: str) -> None:
        """Add a class (no-op if known); its logit starts at the lowest intercept so it is not favoured."""
        if label in set(self.classes_.tolist()):
            return
        self.classes_ = np.append(self.classes_, np.array([label], dtype=object))
        b0 = float(self.intercept_.min()) if len(self.intercept_) else 0.0
        self.intercept_ = np.append(self.intercept_, b0)
        if self.coef_ is not None:
            self.coef_ = np.concatenate([self.coef_, np.zeros((self.coef_.shape[0], 1))], axis=1)

    def remove_class(self, label: str) -> None:
        idx = np.flatnonzero(self.classes_ == label)
        if len(idx) == 0:
            raise UnknownLabelError(f"class {label!r} is not one of this expert's classes")
        keep = np.ones(len(self.classes_), dtype=bool)
        keep[idx] = False
        self.classes_ = self.classes_[keep]
        self.intercept_ = self.intercept_[keep]
        if self.coef_ is not None:
            self.coef_ = self.coef_[:, keep]

    def _codes(self, y: np.ndarray, add: bool) -> np.ndarray:
        """Class index of every label; loops over the distinct labels only, never over rows."""
        uniq, inv = np.unique(y.astype(str), return_inverse=True)
        pos = {c: i for i, c in enumerate(self.classes_.tolist())}
        codes = np.empty(len(uniq), dtype=np.intp)
        for j, u in enumerate(uniq.tolist()):
            if u not in pos:
                if not add:
                    raise UnknownLabelError(f"label {u!r} is not one of this expert's classes")
                self.add_class(u)
                pos[u] = len(self.classes_) - 1
            codes[j] = pos[u]
        return codes[inv.reshape(-1)]

    # -- objective ------------------------------------------------------------------------------------
    def _grad(
        self, W: np.ndarray, b: np.ndarray, X: np.ndarray, codes: np.ndarray, w: np.ndarray, valid: np.ndarray
    ) -> tuple[float, np.ndarray, np.ndarray]:
        """Summed weighted loss and its gradient (without the L2 term)."""
        n = len(X)
        P = softmax(X @ W + b)
        rows = np.arange(n)
        py = np.clip(P[rows, codes], 1e-12, 1.0)
        G = P.copy()
        G[rows, codes] -= 1.0  # cross-entropy gradient: p - e_y
        loss_rows = -np.log(py)
        if not valid.all():
            _complementary(G, py, loss_rows, ~valid, self.negative_weight)
        G *= w[:, None]
        return float(np.dot(w, loss_rows)), X.T @ G, G.sum(axis=0)

    def _prepare(
        self,
        X: np.ndarray,
        y: Sequence[str] | np.ndarray,
        sample_weight: np.ndarray | None,
        valid: np.ndarray | None,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        X, y_arr, w, v = _check_xy(X, y, sample_weight, valid)
        codes = self._codes(y_arr, add=True)
        self._ensure_dim(X.shape[1])
        return X.astype(np.float64, copy=False), codes, w, v

    def fit_many(
        self,
        X: np.ndarray,
        y: Sequence[str] | np.ndarray,
        sample_weight: np.ndarray | None = None,
        valid: np.ndarray | None = None,
    ) -> SoftmaxExpert:
        """Full refit with L-BFGS, warm-started from the current weights (known classes are kept)."""
        from scipy.optimize import minimize

        if len(X) == 0:
            return self
        Xf, codes, w, v = self._prepare(X, y, sample_weight, valid)
        assert self.coef_ is not None
        d, c = self.coef_.shape
        l2 = self.l2

        def fun(theta: np.ndarray) -> tuple[float, np.ndarray]:
            _check_stop()
            W = theta[: d * c].reshape(d, c)
            b = theta[d * c :]
            loss, gW, gb = self._grad(W, b, Xf, codes, w, v)
            loss += 0.5 * l2 * float(np.sum(W * W))
            gW = gW + l2 * W
            return loss, np.concatenate([gW.ravel(), gb])

        theta0 = np.concatenate([self.coef_.ravel(), self.intercept_])
        res = minimize(
            fun,
            theta0,
            jac=True,
            method="L-BFGS-B",
            options={"maxiter": self.max_iter, "gtol": self.tol, "ftol": 1e-12},
        )
        self.coef_ = res.x[: d * c].reshape(d, c).copy()
        self.intercept_ = res.x[d * c :].copy()
        self.n_seen_ = float(w.sum())
        return self

    def fit_columns(
        self,
        X: np.ndarray,
        y: Sequence[str] | np.ndarray,
        classes: Sequence[str],
        sample_weight: np.ndarray | None = None,
        valid: np.ndarray | None = None,
        max_iter: int | None = None,
    ) -> SoftmaxExpert:
        """Re-solve only the weights of ``classes`` (warm), every other column held where it is.

        The objective is :meth:`fit_many`'s, minimised over those columns alone (a block of coordinate
        descent). Why: a new or young label needs its own column placed, and solving every column for it
        costs a pass over all of them per iteration (2.2-4.9 s at O*NET's 923 labels on the model
        thread); with the others fixed, their log-sum-exp is computed once and each iteration costs
        only the free columns.
        """
        if len(X) == 0:
            return self
        Xf, codes, w, v = self._prepare(X, y, sample_weight, valid)
        pos = {c: i for i, c in enumerate(self.classes_.tolist())}
        missing = [c for c in classes if c not in pos]
        if missing:
            raise UnknownLabelError(f"classes {missing!r} are not this expert's; add them first")
        free = np.array(sorted({pos[c] for c in classes}), dtype=np.intp)
        self.n_seen_ = float(w.sum())
        solve_columns(self, Xf, codes, w, v, free, self.max_iter if max_iter is None else max_iter, self.tol)
        return self

    def learn_many(
        self,
        X: np.ndarray,
        y: Sequence[str] | np.ndarray,
        sample_weight: np.ndarray | None = None,
        valid: np.ndarray | None = None,
    ) -> SoftmaxExpert:
        """Incremental update from one micro-batch (new labels become new classes)."""
        if len(X) == 0:
            return self
        Xf, codes, w, v = self._prepare(X, y, sample_weight, valid)
        assert self.coef_ is not None
        self.n_seen_ += float(w.sum())
        n = len(Xf)
        l2 = self.l2 / max(self.n_seen_, 1.0)
        step = self.learning_rate
        for _ in range(self.epochs):
            _, gW, gb = self._grad(self.coef_, self.intercept_, Xf, codes, w, v)
            self.coef_ -= step * (gW / n + l2 * self.coef_)
            self.intercept_ -= step * (gb / n)
        return self

    # -- prediction -----------------------------------------------------------------------------------
    def decision_function(self, X: np.ndarray) -> np.ndarray:
        """Raw logits ``X @ W + b``, shape (n, n_classes)."""
        if self.coef_ is None:
            return np.zeros((len(X), len(self.classes_)))
        X = np.asarray(X)
        if X.ndim != 2 or X.shape[1] != self.coef_.shape[0]:
            raise InvalidDataError(f"X must have shape (n, {self.coef_.shape[0]}), got {X.shape}")
        return np.asarray(X @ self.coef_.astype(X.dtype, copy=False) + self.intercept_)

    def predict_proba_many(self, X: np.ndarray) -> np.ndarray:
        if len(self.classes_) == 0:
            raise InvalidDataError("this expert has no classes yet; call learn_many or fit_many first")
        return softmax(self.decision_function(X).astype(np.float64))

    def predict_many(self, X: np.ndarray) -> np.ndarray:
        return np.asarray(self.classes_[np.argmax(self.predict_proba_many(X), axis=1)])


class RiverExpert:
    """``river.linear_model.SoftmaxRegression`` behind the same contract, for comparison.

    River learns one dict at a time, so this is ~1,000 items/s (below the speed bar). Sample weights are
    honoured by unbiased stochastic repetition (a row of weight 2.3 is learnt 2 or 3 times); river has no
    complementary loss, so hard negatives (``valid=False``) are skipped, and ``fit_many`` is
    ``epochs`` shuffled passes from scratch.
    """

    def __init__(self, learning_rate: float = 0.05, l2: float = 0.0, epochs: int = 3, seed: int = 0) -> None:
        self.learning_rate = learning_rate
        self.l2 = l2
        self.epochs = epochs
        self.seed = seed
        self.classes_: np.ndarray = np.empty(0, dtype=object)
        self._rng = np.random.default_rng(seed)
        self._model: Any = self._new_model()

    def _new_model(self) -> Any:
        from river import linear_model, optim

        return linear_model.SoftmaxRegression(optimizer=optim.SGD(self.learning_rate), l2=self.l2)

    def get_params(self) -> dict[str, Any]:
        return {"learning_rate": self.learning_rate, "l2": self.l2, "epochs": self.epochs, "seed": self.seed}

    def clone(self) -> RiverExpert:
        return RiverExpert(**self.get_params())

    def add_class(self, label: str) -> None:
        if label not in set(self.classes_.tolist()):
            self.classes_ = np.append(self.classes_, np.array([label], dtype=object))

    def remove_class(self, label: str) -> None:
        if label not in set(self.classes_.tolist()):
            raise UnknownLabelError(f"class {label!r} is not one of this expert's classes")
        self.classes_ = self.classes_[self.classes_ != label]
        self._model.weights.pop(label, None)

    def learn_many(
        self,
        X: np.ndarray,
        y: Sequence[str] | np.ndarray,
        sample_weight: np.ndarray | None = None,
        valid: np.ndarray | None = None,
    ) -> RiverExpert:
        X, y_arr, w, v = _check_xy(X, y, sample_weight, valid)
        for label in np.unique(y_arr[v].astype(str)).tolist():
            self.add_class(label)
        reps = np.floor(w).astype(int) + (self._rng.random(len(w)) < (w - np.floor(w)))
        reps[~v] = 0
        keys = [f"x{j}" for j in range(X.shape[1])] + ["bias"]
        for i in np.flatnonzero(reps):
            x = dict(zip(keys, [*X[i].tolist(), 1.0], strict=True))
            for _ in range(int(reps[i])):
                self._model.learn_one(x, str(y_arr[i]))
        return self

    def fit_many(
        self,
        X: np.ndarray,
        y: Sequence[str] | np.ndarray,
        sample_weight: np.ndarray | None = None,
        valid: np.ndarray | None = None,
    ) -> RiverExpert:
        X, y_arr, w, v = _check_xy(X, y, sample_weight, valid)
        classes = self.classes_
        self._model = self._new_model()
        self.classes_ = classes
        for _ in range(self.epochs):
            order = self._rng.permutation(len(X))
            self.learn_many(X[order], y_arr[order], w[order], v[order])
        return self

    def predict_proba_many(self, X: np.ndarray) -> np.ndarray:
        if len(self.classes_) == 0:
            raise InvalidDataError("this expert has no classes yet; call learn_many or fit_many first")
        X = np.asarray(X)
        # river's weights are dicts label -> feature -> w: read them into a matrix once per call
        keys = [f"x{j}" for j in range(X.shape[1])] + ["bias"]
        W = np.array([[self._model.weights[c].get(k, 0.0) for k in keys] for c in self.classes_.tolist()])
        Xb = np.concatenate([X, np.ones((len(X), 1))], axis=1)
        return softmax(Xb @ W.T)

    def predict_many(self, X: np.ndarray) -> np.ndarray:
        return np.asarray(self.classes_[np.argmax(self.predict_proba_many(X), axis=1)])

    def __deepcopy__(self, memo: dict[int, Any]) -> RiverExpert:
        new = self.clone()
        new.classes_ = self.classes_.copy()
        new._model = copy.deepcopy(self._model, memo)
        return new


def _complementary(
    G: np.ndarray, py: np.ndarray, loss_rows: np.ndarray, neg: np.ndarray, weight: float
) -> None:
    """Hard negatives (rows ``neg``), in place: the complementary loss ``-log(1 - p_y)`` x ``weight``
    instead of cross-entropy, whose gradient turns ``G = p - e_y`` into ``(p_y / (1 - p_y)) (e_y - p)``
    (on whichever columns ``G`` holds), the factor capped at 50 for stability."""
    q = np.clip(1.0 - py[neg], 1e-6, 1.0)
    factor = np.minimum(py[neg] / q, 50.0) * weight
    G[neg] = -G[neg] * factor[:, None]
    loss_rows[neg] = -np.log(q) * weight


def make_expert(settings: ExpertSettings) -> SoftmaxExpert | RiverExpert:
    """A fresh expert of the kind the settings name."""
    if settings.learner == "river":
        return RiverExpert(l2=0.0, seed=settings.seed)
    return SoftmaxExpert(
        l2=settings.l2,
        max_iter=settings.max_iter,
        learning_rate=settings.learning_rate,
        epochs=settings.epochs,
        negative_weight=settings.negative_weight,
    )


def solve_columns(
    expert: SoftmaxExpert,
    X: np.ndarray,
    codes: np.ndarray,
    w: np.ndarray,
    valid: np.ndarray,
    free: np.ndarray,
    max_iter: int,
    tol: float = 1e-6,
    chunk_rows: int = 2048,
) -> int:
    """Minimise the expert's objective over columns ``free`` only (L-BFGS, warm); the rest stay fixed.

    The fixed columns enter every row's softmax only through their log-sum-exp (and the target's logit
    when the target is fixed), both computed once in float32 chunks; an iteration is then two float32
    products with ``(d, len(free))`` weights (the optimiser state stays float64, as in
    :func:`fit_joint`). Hard negatives (``valid`` False) take the complementary loss as in
    :meth:`SoftmaxExpert._grad`. Returns the number of L-BFGS iterations run.
    """
    from scipy.optimize import minimize

    assert expert.coef_ is not None
    n = len(X)
    d, c = expert.coef_.shape
    free = np.asarray(free, dtype=np.intp)
    m = len(free)
    if m == 0 or n == 0:
        return 0
    fixed = np.setdiff1d(np.arange(c), free)
    slot = np.full(c, -1, dtype=np.intp)
    slot[free] = np.arange(m)
    t_free = slot[codes]  # target's position among the free columns, -1 when fixed
    lse_fixed = np.full(n, -np.inf)
    z_fixed = np.zeros(n)  # the target's logit where the target is fixed
    X32 = np.ascontiguousarray(X, dtype=np.float32)  # matmuls in float32 (as fit_joint), the rest float64
    if len(fixed):
        W32 = expert.coef_[:, fixed].astype(np.float32)
        b32 = expert.intercept_[fixed].astype(np.float32)
        where = np.full(c, -1, dtype=np.intp)
        where[fixed] = np.arange(len(fixed))
        t_fixed = where[codes]
        for lo in range(0, n, chunk_rows):
            Z = X32[lo : lo + chunk_rows] @ W32 + b32  # float32 throughout: exp of rows x classes
            top = Z.max(axis=1)
            total = np.exp(Z - top[:, None]).sum(axis=1, dtype=np.float64)
            lse_fixed[lo : lo + len(Z)] = top.astype(np.float64) + np.log(total)
            r = np.flatnonzero(t_fixed[lo : lo + len(Z)] >= 0)
            z_fixed[lo + r] = Z[r, t_fixed[lo + r]]
    on_free = np.flatnonzero(t_free >= 0)
    neg = ~np.asarray(valid, dtype=bool)
    l2 = expert.l2
    k = d * m

    def fun(theta: np.ndarray) -> tuple[float, np.ndarray]:
        _check_stop()
        W = theta[:k].reshape(d, m)
        b = theta[k:]
        Z = (X32 @ W.astype(np.float32)).astype(np.float64) + b  # (n, m)
        top = np.maximum(Z.max(axis=1), lse_fixed)
        lse = top + np.log(np.exp(Z - top[:, None]).sum(axis=1) + np.exp(lse_fixed - top))
        P = np.exp(Z - lse[:, None])
        zy = z_fixed.copy()
        zy[on_free] = Z[on_free, t_free[on_free]]
        py = np.clip(np.exp(zy - lse), 1e-12, 1.0)
        G = P
        G[on_free, t_free[on_free]] -= 1.0  # p - e_y on the free columns
        loss_rows = -np.log(py)
        if neg.any():
            _complementary(G, py, loss_rows, neg, expert.negative_weight)
        G *= w[:, None]
        loss = float(np.dot(w, loss_rows)) + 0.5 * l2 * float(np.sum(W * W))
        gW = (X32.T @ G.astype(np.float32)).astype(np.float64) + l2 * W
        return loss, np.concatenate([gW.ravel(), G.sum(axis=0)])

    theta0 = np.concatenate([expert.coef_[:, free].ravel(), expert.intercept_[free]])
    res = minimize(
        fun, theta0, jac=True, method="L-BFGS-B", options={"maxiter": max_iter, "gtol": tol, "ftol": 1e-12}
    )
    coef = expert.coef_.copy()
    coef[:, free] = res.x[:k].reshape(d, m)
    intercept = expert.intercept_.copy()
    intercept[free] = res.x[k:]
    expert.coef_, expert.intercept_ = coef, intercept
    return int(res.nit)


def fit_joint(
    experts: Sequence[SoftmaxExpert],
    X_shared: np.ndarray,
    t_shared: np.ndarray,
    w_shared: np.ndarray,
    X_private: np.ndarray,
    owner: np.ndarray,
    t_private: np.ndarray,
    w_private: np.ndarray,
    v_private: np.ndarray,
    max_iter: int,
    tol: float = 1e-6,
    chunk_rows: int = 2048,
    free: Sequence[Sequence[int]] | None = None,
) -> int:
    """Refit many softmax experts as one problem: one L-BFGS over all their stacked weights.

    Why: fitting the ~116 experts of a 923-label model one after another is 116 memory-bound L-BFGS runs
    over 16-column matrices; stacked, every iteration is one float32 GEMM over all experts' columns
    (compute-bound, ~4x the throughput here) and the per-call overheads are paid once. The objective is
    the sum of the experts' own objectives (each ``sum_i w_i loss_i + l2/2 ||W||^2``, intercepts free),
    which is separable, so each expert's optimum is the one it would reach alone.

    Rows come in two blocks. ``X_shared`` (n, d) rows are seen by every expert: ``t_shared[i, s]`` is the
    class index (in ``experts[s].classes_``) row i trains in expert s with weight ``w_shared[i, s]`` (0:
    not used by s); these are the shared noise sample, also holding the experts' own rows drawn into it.
    ``X_private`` (m, d) rows belong to one expert each (``owner``): its own-label rows outside the sample
    and its hard negatives (``v_private`` False: complementary loss). Warm-started from each expert's
    current ``coef_`` / ``intercept_`` (zeros when unfitted; classes must already be added). Matmuls run in
    float32, the optimiser state in float64; the result depends only on the inputs (deterministic).
    With ``free`` (column indices per expert), only those columns move, expert by expert over the same rows
    (:func:`solve_columns`): a young label's re-solve. Returns the number of L-BFGS iterations run.
    """
    from scipy.optimize import minimize

    S = len(experts)
    if S == 0:
        return 0
    d = int(X_shared.shape[1] if X_shared.ndim == 2 and X_shared.shape[1] else X_private.shape[1])
    widths = np.array([len(e.classes_) for e in experts], dtype=np.intp)
    c = int(widths.max())
    for e in experts:
        e._ensure_dim(d)
    Xs = np.ascontiguousarray(X_shared, dtype=np.float32)
    ts = np.asarray(t_shared, dtype=np.intp).reshape(len(Xs), S)
    ws = np.asarray(w_shared, dtype=np.float32).reshape(len(Xs), S)
    # private rows sorted by owner: one contiguous slice per expert
    order = np.argsort(owner, kind="stable")
    Xp = np.ascontiguousarray(np.asarray(X_private, dtype=np.float32)[order])
    op, tp = np.asarray(owner, dtype=np.intp)[order], np.asarray(t_private, dtype=np.intp)[order]
    wp, vp = np.asarray(w_private, dtype=np.float64)[order], np.asarray(v_private, dtype=bool)[order]
    bounds = np.searchsorted(op, np.arange(S + 1))
    if free is not None:
        iterations = 0
        for s, e in enumerate(experts):
            cols = np.asarray(free[s], dtype=np.intp)
            if not len(cols):
                continue
            sh = np.flatnonzero(ws[:, s] > 0)
            lo, hi = int(bounds[s]), int(bounds[s + 1])
            w_e = np.r_[ws[sh, s].astype(np.float64), wp[lo:hi]]
            iterations += solve_columns(
                e,
                np.concatenate([Xs[sh], Xp[lo:hi]]),
                np.r_[ts[sh, s], tp[lo:hi]],
                w_e,
                np.r_[np.ones(len(sh), dtype=bool), vp[lo:hi]],
                cols,
                max_iter,
                tol,
                chunk_rows,
            )
            e.n_seen_ = float(w_e.sum())
        return iterations
    # padded layout (d, S, c): expert s owns columns [s*c, s*c + widths[s]); padding is masked in the logits
    # and its gradient is zero, so L-BFGS never moves it off zero
    real = np.arange(c)[None, :] < widths[:, None]  # (S, c)
    mask = np.where(real, 0.0, -1e30).astype(np.float32).ravel()
    W0 = np.zeros((d, S, c))
    b0 = np.zeros((S, c))
    for s, e in enumerate(experts):
        assert e.coef_ is not None
        W0[:, s, : widths[s]] = e.coef_
        b0[s, : widths[s]] = e.intercept_
    l2 = np.broadcast_to(np.array([e.l2 for e in experts])[None, :, None], (d, S, c)).ravel()
    neg_w = np.array([e.negative_weight for e in experts])
    # flat index of (row, expert, target) inside a (rows, S*c) block, per shared row
    flat_s = np.arange(S)[None, :] * c + ts
    slices = [(s, int(bounds[s]), int(bounds[s + 1])) for s in range(S) if bounds[s + 1] > bounds[s]]
    n_w = d * S * c

    def fun(theta: np.ndarray) -> tuple[float, np.ndarray]:
        _check_stop()
        W = theta[:n_w].reshape(d, S * c)
        b = theta[n_w:]
        W32 = W.astype(np.float32)
        bm = b.astype(np.float32) + mask
        gW = np.zeros((d, S * c), dtype=np.float32)
        gb = np.zeros(S * c)
        loss = 0.0
        for lo in range(0, len(Xs), chunk_rows):
            Xc = Xs[lo : lo + chunk_rows]
            n = len(Xc)
            Z = (Xc @ W32 + bm).reshape(n, S, c)
            Z -= Z.max(axis=2, keepdims=True)
            np.exp(Z, out=Z)
            Z /= Z.sum(axis=2, keepdims=True)  # P, (n, S, c)
            G = Z.reshape(n, S * c)
            idx = flat_s[lo : lo + n] + (np.arange(n) * (S * c))[:, None]
            py = G.reshape(-1)[idx]
            wc = ws[lo : lo + n]
            loss -= float(np.dot(wc.ravel().astype(np.float64), np.log(np.maximum(py, 1e-12)).ravel()))
            G *= np.repeat(wc, c, axis=1)
            G.reshape(-1)[idx] -= wc
            gW += Xc.T @ G
            gb += G.sum(axis=0, dtype=np.float64)
        for s, lo, hi in slices:  # each expert's private rows against its own columns only
            cols = slice(s * c, s * c + c)
            Xc = Xp[lo:hi]
            Zs = Xc @ W32[:, cols] + bm[cols]
            Zs -= Zs.max(axis=1, keepdims=True)
            np.exp(Zs, out=Zs)
            Zs /= Zs.sum(axis=1, keepdims=True)
            r = np.arange(hi - lo)
            t = tp[lo:hi]
            py64 = np.clip(Zs[r, t].astype(np.float64), 1e-12, 1.0)
            Gs = Zs.astype(np.float64)
            Gs[r, t] -= 1.0
            loss_rows = -np.log(py64)
            v = vp[lo:hi]
            if not v.all():
                _complementary(Gs, py64, loss_rows, ~v, float(neg_w[s]))
            w = wp[lo:hi]
            Gs *= w[:, None]
            loss += float(np.dot(w, loss_rows))
            gW[:, cols] += Xc.T @ Gs.astype(np.float32)
            gb[cols] += Gs.sum(axis=0)
        gW64 = gW.astype(np.float64).ravel()
        loss += 0.5 * float(np.dot(l2 * W.ravel(), W.ravel()))
        gW64 += l2 * W.ravel()
        gb = np.where(mask < 0, 0.0, gb)
        return loss, np.concatenate([gW64, gb])

    theta0 = np.concatenate([W0.ravel(), b0.ravel()])
    res = minimize(
        fun,
        theta0,
        jac=True,
        method="L-BFGS-B",
        options={"maxiter": max_iter, "gtol": tol, "ftol": 1e-12},
    )
    W = res.x[:n_w].reshape(d, S, c)
    b = res.x[n_w:].reshape(S, c)
    w_rows = ws.sum(axis=0, dtype=np.float64) + np.bincount(op, wp, minlength=S)
    for s, e in enumerate(experts):
        e.coef_ = W[:, s, : widths[s]].copy()
        e.intercept_ = b[s, : widths[s]].copy()
        e.n_seen_ = float(w_rows[s])
    return int(res.nit)
