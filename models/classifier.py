"""``RedClassifier``: label subsets + one online expert per subset + product-of-experts ranking.

The classifier owns four things and keeps them consistent under every change:

- the label list (insertion order) and descriptions;
- the subsets (``subsets.py``) and one expert per subset over its labels + ``noise`` (``experts.py``);
- the example store (``store.py``): what experts are refit from and what the judge is shown;
- ``model_version``, incremented by every change, so every emitted label can say which model made it.

Texts go through the embedder once; every method has an ``*_embeddings`` twin for callers (the stream,
the benchmarks) that already hold the vectors. Calls that refuse their input raise before changing
anything.
"""

from __future__ import annotations

import concurrent.futures
import copy
import dataclasses
import functools
import os
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np

from driftlabel.config import load_settings
from driftlabel.models.combine import OUT_OF_SCOPE, CombinedExperts, Ranking, make_ranking
from driftlabel.models.errors import InvalidDataError, ModelError, UnknownLabelError
from driftlabel.models.experts import (
    NOISE,
    Expert,
    ExpertSettings,
    SoftmaxExpert,
    fit_joint,
    is_noise,
    make_expert,
    noise_class,
)
from driftlabel.models.resolve import ResolveJob, start_resolve
from driftlabel.models.store import ExampleStore, UnlabelledPool
from driftlabel.models.subsets import (
    cluster_labels,
    greedy_subsets,
    label_embeddings,
    nearest_label,
    place_label,
    reduce_labels,
)

if TYPE_CHECKING:
    from typing import Self

    from driftlabel.models.embeddings import Embedder

__all__ = ["RESERVED_LABELS", "RedClassifier", "is_reserved_label"]

RESERVED_LABELS = frozenset({NOISE, OUT_OF_SCOPE})


def is_reserved_label(label: str) -> bool:
    """A name driftlabel keeps for itself (the out-of-scope status, a noise class): no class may have it."""
    return label in RESERVED_LABELS or is_noise(label)


F = TypeVar("F", bound=Callable[..., Any])
_pinned: tuple[int, Any] | None = None  # (threads, the threadpoolctl limiter that holds them)


def _pin_blas_threads(threads: int) -> None:
    """Set this process's BLAS thread count once and keep it (not around each call).

    A BLAS limit is process-wide. Entered and left around each call on the model thread, it flipped the
    thread count under a re-solve running on the background thread, and a float32 GEMM split over other
    threads sums in another order: two identical in-process CLINC150 loops diverged at item 1,823 (93.36
    vs 92.60 % final accuracy) and agreed bit for bit with the count pinned. Pinned, the weights are a
    function of the training log alone, as the service's replay promises.
    """
    global _pinned
    if _pinned is not None and _pinned[0] == threads:
        return
    import scipy.optimize  # noqa: F401  (loads scipy's own BLAS, which L-BFGS uses, so the pin covers it)
    from threadpoolctl import ThreadpoolController

    # BLAS only: an OpenMP limit would also pin torch's threads (the embedder has its own setting)
    _pinned = (threads, ThreadpoolController().limit(limits=threads, user_api="blas"))


def _blas_limited(method: F) -> F:
    """Run a method with ``settings.blas_threads`` BLAS threads, pinned for the process (see above)."""

    @functools.wraps(method)
    def wrapper(self: RedClassifier, *args: Any, **kwargs: Any) -> Any:
        if self.settings.blas_threads is not None:
            _pin_blas_threads(self.settings.blas_threads)
        return method(self, *args, **kwargs)

    return wrapper  # type: ignore[return-value]


def _mirrored(method: F) -> F:
    """Apply a state-changing call to the routing twin too (self-training's ``_router``), once: only the
    outermost call is mirrored, with the same arguments, after it succeeded on the model itself."""

    @functools.wraps(method)
    def wrapper(self: RedClassifier, *args: Any, **kwargs: Any) -> Any:
        router = getattr(self, "_router", None)
        if router is None or getattr(self, "_mirroring", False):
            return method(self, *args, **kwargs)
        self._mirroring = True
        try:
            out = method(self, *args, **kwargs)
        finally:
            self._mirroring = False
        getattr(router, method.__name__)(*args, **kwargs)
        return out

    return wrapper  # type: ignore[return-value]


def young_milestones(young: int) -> np.ndarray:
    """Stored counts below ``young`` at which a young label's expert is re-solved: 1, 2, 3, 5, 8, 13, ...
    (each the sum of the two before), so a new class is re-solved often while it has a handful of
    examples and a 10-shot class once or twice before it grows out of ``young_examples``."""
    marks = [1, 2]
    while marks[-1] < young:
        marks.append(marks[-1] + marks[-2])
    return np.array([m for m in marks if m < young], dtype=np.int64)


def _check_texts(texts: Sequence[str], what: str = "texts") -> list[str]:
    if isinstance(texts, str):
        raise InvalidDataError(f"{what} must be a sequence of strings, not one string; wrap it in a list")
    out = list(texts)
    bad = [i for i, t in enumerate(out) if not isinstance(t, str) or not t.strip()]
    if bad:
        raise InvalidDataError(
            f"{what}: {len(bad)} empty or non-string entries (first at index {bad[0]}); drop them"
        )
    return out


def _check_labels(labels: Sequence[str] | np.ndarray, n: int) -> np.ndarray:
    if isinstance(labels, str):
        raise InvalidDataError("labels must be a sequence of strings, one per text, not one string")
    y = np.asarray(list(labels), dtype=object)
    if len(y) != n:
        raise InvalidDataError(f"{n} texts but {len(y)} labels; give exactly one label per text")
    if n:
        ok = np.array([isinstance(v, str) and bool(v.strip()) for v in y.tolist()])
        if not ok.all():
            raise InvalidDataError(
                f"labels: {int((~ok).sum())} empty or non-string (first at index {int(np.argmin(ok))})"
            )
        reserved = sorted(lab for lab in set(y.tolist()) if is_reserved_label(lab))
        if reserved:
            raise InvalidDataError(f"labels {reserved} are reserved by driftlabel; rename them")
    return y.astype(str).astype(object)


def _member(y: np.ndarray, labels: set[str] | frozenset[str]) -> np.ndarray:
    """``y[i] in labels`` for every row, looking up each distinct label once (np.isin on objects is slow)."""
    if len(y) == 0:
        return np.zeros(0, dtype=bool)
    uniq, inv = np.unique(y.astype(str), return_inverse=True)
    return np.array([u in labels for u in uniq.tolist()], dtype=bool)[inv.reshape(-1)]


def _check_description_embedding(label: str, e: object, dim: int) -> np.ndarray:
    """One description embedding as a finite ``(dim,)`` row, checked before anything changes: a NaN
    spread to every weight of the model, a wrong shape failed half-way through a change (leaving a
    model that saved but would not load)."""
    try:
        v = np.asarray(e, dtype=np.float32)
    except (TypeError, ValueError) as exc:
        raise InvalidDataError(f"description embedding of {label!r} must be numbers: {exc}") from exc
    if v.shape != (dim,):
        raise InvalidDataError(f"description embedding of {label!r} must have shape ({dim},), got {v.shape}")
    if not np.all(np.isfinite(v)):
        raise InvalidDataError(f"description embedding of {label!r} contains NaN or infinite values")
    return v


MIN_REPRESENTATIVE = 50
"""Out-of-scope calibration samples the store's representative rows when at least this many remain."""


class RedClassifier:
    """R.E.D. text classifier: see the module docstring and ``docs/models.md``."""

    def __init__(self, embedder: Embedder | None = None, settings: ExpertSettings | None = None) -> None:
        self.settings = settings if settings is not None else load_settings(ExpertSettings)
        self._embedder = embedder
        self._embedder_name: str | None = embedder.name if embedder is not None else None
        self._dim: int | None = embedder.dim if embedder is not None else None
        self._labels: list[str] = []
        self._descriptions: dict[str, str] = {}
        self._desc_emb: dict[str, np.ndarray] = {}
        self._subsets: list[list[str]] = []
        self._noise_group: dict[str, int] = {}  # label -> its noise class in the other labels' experts
        self._experts: list[Expert] = []
        self._store: ExampleStore | None = None
        self._model_version = 0
        self._combined: tuple[int, CombinedExperts] | None = None
        self._rng = np.random.default_rng(self.settings.seed)
        self._total_count = 0
        # the re-solve schedule: positions in the stream of learned rows (see models/resolve.py)
        self._position = 0  # rows learned incrementally so far (valid + hard negatives)
        self._resolved_at = 0  # position of the last re-solve snapshot (or fit)
        self._resolves = 0  # re-solves swapped in so far
        self._pending: ResolveJob | None = None
        self._synthetic: dict[str, list[str]] = {}  # label -> its generated examples, until real ones arrive
        self._buffer: list[tuple[np.ndarray, list[str], np.ndarray, np.ndarray]] = []  # the partial chunk
        self._buffered = 0
        # out-of-scope calibration per score ("nearest", "centroid"): (store size, threshold)
        self._oos_cal: dict[str, tuple[int, float]] = {}
        # (store X it was built from, per-label sums, unit centroids, each stored row's label index)
        self._centroid_cache: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray] | None = None
        self._boundary: tuple[list[tuple[np.ndarray, np.ndarray, float]], dict[str, Any]] | None = None
        self._fit_iterations: int | None = None  # L-BFGS iterations of the last joint solve (diagnostics)
        self._unlabelled: UnlabelledPool | None = None  # the stream's unlabelled rows (self-training)
        # self-training's routing twin: every labelled row and class op, no unlabelled rows (see observe)
        self._router: RedClassifier | None = None
        self._mirroring = False

    # -- properties -----------------------------------------------------------------------------------
    @property
    def labels(self) -> list[str]:
        return list(self._labels)

    @property
    def descriptions(self) -> dict[str, str]:
        return dict(self._descriptions)

    @property
    def model_version(self) -> int:
        return self._model_version

    @property
    def resolves(self) -> int:
        """Background re-solves swapped in so far (each one a new ``model_version``)."""
        return self._resolves

    @property
    def resolve_pending(self) -> bool:
        """True while a re-solve is running or waiting for its swap point."""
        return self._pending is not None

    @property
    def position(self) -> int:
        """Rows learned incrementally so far: the clock the re-solve schedule runs on."""
        return self._position

    def unfinished_resolves(self, within: int | None = None) -> list[concurrent.futures.Future[Any]]:
        """The background re-solves (this model's and its routing twin's) still running that a call could
        wait for: those whose swap point is at most ``within`` rows ahead (None: any, as :meth:`save` and
        :meth:`settle` wait for any). A service awaits them off its model thread before such a call, so
        the wait never holds predictions; the weights are the same either way."""
        out = []
        for model in (self, self._router):
            if model is None or model._pending is None or model._pending.done:
                continue
            job = model._pending
            if within is None or job.swap_at <= model._position + within:
                out.append(job.future)
        return out

    @property
    def n_subsets(self) -> int:
        return len(self._subsets)

    @property
    def subsets(self) -> list[list[str]]:
        return [list(s) for s in self._subsets]

    @property
    def n_examples(self) -> int:
        return self._store.n_examples if self._store is not None else 0

    @property
    def dim(self) -> int | None:
        return self._dim

    @property
    def store(self) -> ExampleStore:
        if self._store is None:
            raise ModelError("the model has no examples yet; call fit() first")
        return self._store

    @property
    def embedder(self) -> Embedder:
        """The embedder; the packaged default is loaded on first use when none was given."""
        if self._embedder is None:
            from driftlabel.models.embeddings import load_embedder

            emb = load_embedder()
            if self._embedder_name is not None and emb.name != self._embedder_name:
                raise ModelError(
                    f"this model was trained with embedder {self._embedder_name!r} but the default is "
                    f"{emb.name!r}; pass the matching embedder (RedClassifier.load(path, embedder=...))"
                )
            self._set_embedder(emb)
        assert self._embedder is not None
        return self._embedder

    def _set_embedder(self, emb: Embedder) -> None:
        if self._dim is not None and emb.dim != self._dim:
            raise ModelError(
                f"embedder {emb.name!r} gives {emb.dim}-d vectors but the model uses {self._dim}-d"
            )
        self._embedder = emb
        self._embedder_name = emb.name
        self._dim = emb.dim

    def _encode(self, texts: Sequence[str], what: str = "texts") -> np.ndarray:
        texts = _check_texts(texts, what)
        if not texts:
            return np.zeros((0, self._dim or self.embedder.dim), dtype=np.float32)
        X = np.asarray(self.embedder.encode(texts), dtype=np.float32)
        if X.shape != (len(texts), self.embedder.dim):
            raise ModelError(
                f"embedder returned shape {X.shape} for {len(texts)} texts; is the model intact?"
            )
        return X

    def _check_X(self, X: np.ndarray, n: int | None = None) -> np.ndarray:
        try:  # strings or ragged rows: the documented error, not numpy's ValueError
            X = np.asarray(X, dtype=np.float32)
        except (TypeError, ValueError) as exc:
            raise InvalidDataError(f"embeddings must be numbers of shape (n, {self._dim}): {exc}") from exc
        if X.ndim != 2 or (self._dim is not None and X.shape[1] != self._dim):
            raise InvalidDataError(f"embeddings must have shape (n, {self._dim}), got {X.shape}")
        if n is not None and len(X) != n:
            raise InvalidDataError(f"{len(X)} embeddings for {n} texts; give one embedding per text")
        if not np.all(np.isfinite(X)):
            raise InvalidDataError("embeddings contain NaN or infinite values")
        return X

    def _require_fitted(self) -> None:
        if not self._experts:
            raise ModelError("the model has no labels yet; call fit() (or add_class()) first")

    def _bump(self) -> None:
        self._model_version += 1

    # -- fitting --------------------------------------------------------------------------------------
    def fit(
        self, texts: Sequence[str], labels: Sequence[str], descriptions: Mapping[str, str] | None = None
    ) -> Self:
        """Train from scratch: embed, build subsets, train one expert per subset. Replaces any old state."""
        texts = _check_texts(texts)
        y = _check_labels(labels, len(texts))
        X = self._encode(texts)
        desc = self._encode_descriptions(descriptions or {})
        return self._fit(X, texts, y, descriptions or {}, desc)

    def fit_embeddings(
        self,
        X: np.ndarray,
        texts: Sequence[str],
        labels: Sequence[str],
        descriptions: Mapping[str, str] | None = None,
        description_embeddings: Mapping[str, np.ndarray] | None = None,
    ) -> Self:
        """:meth:`fit` with the embeddings already computed (descriptions need their embeddings too)."""
        texts = _check_texts(texts)
        y = _check_labels(labels, len(texts))
        X = self._check_X(X, len(texts))  # checked against the model's dim when it has one
        descriptions = dict(descriptions or {})
        desc = {
            k: _check_description_embedding(k, e, X.shape[1])
            for k, e in (description_embeddings or {}).items()
            if k in descriptions  # the others are not used
        }
        if self._dim is None:
            self._dim = X.shape[1]
        if set(descriptions) - set(desc):
            desc.update(self._encode_descriptions({k: v for k, v in descriptions.items() if k not in desc}))
        return self._fit(X, texts, y, descriptions, desc)

    def _encode_descriptions(self, descriptions: Mapping[str, str]) -> dict[str, np.ndarray]:
        if not descriptions:
            return {}
        keys = list(descriptions)
        vals = _check_texts([descriptions[k] for k in keys], "descriptions")
        E = self._encode(vals, "descriptions")
        return {k: E[i] for i, k in enumerate(keys)}

    @_blas_limited
    def _fit(
        self,
        X: np.ndarray,
        texts: list[str],
        y: np.ndarray,
        descriptions: Mapping[str, str],
        desc_emb: Mapping[str, np.ndarray],
    ) -> Self:
        if len(X) == 0:
            raise InvalidDataError("fit() needs at least one example")
        labels = sorted(set(y.tolist()))
        unknown = sorted(set(descriptions) - set(labels))
        if unknown:
            raise InvalidDataError(
                f"descriptions for labels with no examples: {unknown[:5]}; give examples, or add them later "
                "with add_class(label, description, examples)"
            )
        s = self.settings
        self.release_resolve()  # a re-solve of the old model (and of its routing twin) is void
        self._buffer, self._buffered, self._boundary, self._oos_cal = [], 0, None, {}
        self._centroid_cache = None
        self._resolved_at = self._position
        self._dim = X.shape[1]
        self._store = ExampleStore(self._dim, s.max_examples_per_label, s.max_negatives_per_label)
        self._store.add(X, texts, y, representative=True)
        self._unlabelled = UnlabelledPool(self._dim, s.unlabelled_max)
        self._router = None
        self._labels = labels
        self._descriptions = dict(descriptions)
        self._desc_emb = {
            k: np.asarray(v, dtype=np.float32) for k, v in desc_emb.items() if k in descriptions
        }
        Xs, ys, _ = self._store.arrays()
        E = label_embeddings(Xs, ys, labels, self._desc_emb, s.description_weight)
        self._subsets = [[labels[i] for i in g] for g in self._form_subsets(E)]
        self._noise_group = dict(zip(labels, cluster_labels(E, s.noise_groups, s.seed).tolist(), strict=True))
        self._experts = [make_expert(s) for _ in self._subsets]
        self._refit_experts(range(len(self._experts)), fresh=True)
        self._bump()
        return self

    def _form_subsets(self, E: np.ndarray) -> list[list[int]]:
        """Label indices per expert: UMAP + greedy subsets of at most ``subset_size`` labels; one subset of
        every label, without UMAP, when they all fit in one."""
        s = self.settings
        if len(E) <= s.subset_size:
            return [list(range(len(E)))] if len(E) else []
        Z = reduce_labels(E, s.umap_components, s.umap_neighbors, s.seed, s.umap_min_labels)
        return greedy_subsets(Z, s.subset_size)

    def _label_subset_index(self) -> dict[str, int]:
        return {lab: si for si, sub in enumerate(self._subsets) for lab in sub}

    def _expert_data(
        self,
        si: int,
        y: np.ndarray,
        rows_subset: np.ndarray,
        counts: Mapping[str, int],
        *,
        full: bool,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Rows, targets and weights of expert ``si`` among rows labelled ``y``: its labels + noise.

        ``rows_subset[i]`` is the subset of row i's label (-1: not to be used). The noise class always
        weighs ``noise_ratio`` x the subset's mean label size in total; full refits choose its rows by
        ``noise_mode``: ``stratified`` (up to ``noise_per_label`` rows of every other label, the default:
        every other label is represented, and the cost stays O(labels) rather than O(examples)),
        ``weighted`` (every other row) or ``sampled`` (that many rows drawn at random, the literal design).
        Incremental steps use every noise row of the micro-batch at weight target / all noise examples.
        """
        s = self.settings
        subset = self._subsets[si]
        mean_size = float(np.mean([max(counts.get(lab, 0), 1) for lab in subset]))
        n_noise_target = s.noise_ratio * mean_size
        pos = np.flatnonzero(rows_subset == si)
        noise = np.flatnonzero((rows_subset != si) & (rows_subset >= 0))
        if full and len(noise) and s.noise_mode == "sampled":
            m = max(1, round(n_noise_target))
            noise = np.sort(self._rng.choice(noise, size=m, replace=m > len(noise)))
            w_noise = np.full(len(noise), n_noise_target / m)
        elif full and len(noise) and s.noise_mode == "stratified":
            perm = self._rng.permutation(noise)
            _, codes = np.unique(y[perm].astype(str), return_inverse=True)
            order = np.argsort(codes.reshape(-1), kind="stable")
            sorted_codes = codes.reshape(-1)[order]
            starts = np.flatnonzero(np.r_[True, sorted_codes[1:] != sorted_codes[:-1]])
            rank = np.arange(len(order)) - np.repeat(starts, np.diff(np.r_[starts, len(order)]))
            n_other = int(sorted_codes[-1]) + 1
            # enough rows of every other label to stand for it: grows with the data (a third of a label)
            wanted = max(s.noise_per_label, int(np.ceil(mean_size / 3)))
            per_label = max(1, min(wanted, s.max_noise_rows // n_other))
            noise = np.sort(perm[order[rank < per_label]])
            w_noise = np.full(len(noise), n_noise_target / len(noise))
        else:
            total_noise = self._total_count - sum(counts.get(lab, 0) for lab in subset)
            w_noise = np.full(len(noise), n_noise_target / max(total_noise, 1))
        idx = np.concatenate([pos, noise])
        target = np.concatenate([y[pos], self._noise_targets(y[noise])])
        weights = np.concatenate([np.ones(len(pos)), w_noise])
        return idx, target, weights

    def _noise_classes(self) -> list[str]:
        """Every expert's noise classes, one per noise group (fixed order)."""
        return [noise_class(g) for g in range(max(self._noise_group.values(), default=0) + 1)]

    def _row_groups(self, y: np.ndarray) -> np.ndarray:
        """Noise group of every row's label (0 for a label without one), vectorised over distinct labels."""
        if len(y) == 0:
            return np.zeros(0, dtype=np.intp)
        uniq, inv = np.unique(y.astype(str), return_inverse=True)
        groups = np.array([self._noise_group.get(u, 0) for u in uniq.tolist()], dtype=np.intp)
        return groups[inv.reshape(-1)]

    def _noise_targets(self, y: np.ndarray) -> np.ndarray:
        """The noise class each row of another subset's label trains: its label's noise group."""
        names = np.array(self._noise_classes(), dtype=object)
        return names[self._row_groups(y)] if len(y) else np.zeros(0, dtype=object)

    def _rows_subset(self, y: np.ndarray) -> np.ndarray:
        """Subset index of every row's label, vectorised over the distinct labels."""
        if len(y) == 0:
            return np.zeros(0, dtype=np.intp)
        index = self._label_subset_index()
        uniq, inv = np.unique(y.astype(str), return_inverse=True)
        return np.array([index.get(u, -1) for u in uniq.tolist()], dtype=np.intp)[inv.reshape(-1)]

    def _training_arrays(
        self, pseudo: tuple[np.ndarray, np.ndarray] | None = None
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Stored valid examples + one row per description embedding: what full refits train on; with
        ``pseudo`` (from :meth:`_pseudo_labelled`), also the unlabelled pool's rows (self-training), after
        the real ones. Returns ``(X, labels, subset of each row, weight of each row)``: 1 for real rows,
        ``self_training`` for pseudo-labelled ones."""
        Xs, ys, _ = self.store.arrays()
        if self._desc_emb:
            # sorted, as a save lists them: a loaded model trains on the same rows in the same order
            keys = sorted(k for k in self._desc_emb if k in self._label_subset_index())
            if keys:
                Xs = np.concatenate([Xs, np.stack([self._desc_emb[k] for k in keys])])
                ys = np.concatenate([ys, np.array(keys, dtype=object)])
        ws = np.ones(len(ys))
        if pseudo is not None and len(pseudo[0]):
            Xs = np.concatenate([Xs, pseudo[0]])
            ys = np.concatenate([ys, pseudo[1]])
            ws = np.r_[ws, np.full(len(pseudo[1]), self.settings.self_training)]
        return Xs, ys, self._rows_subset(ys), ws

    def _pseudo_labelled(self) -> tuple[np.ndarray, np.ndarray]:
        """The unlabelled pool with the top label the current experts give each row.

        Only rows at least as close to a stored example as the store's own 5 % quantile of nearest
        neighbours (the ``nearest`` out-of-scope rule) are used. Deterministic in the weights, the store
        and the pool, so every worker at one log position makes the same rows (docs/models.md).
        """
        pool = self._unlabelled
        if pool is None or not len(pool) or self.settings.self_training <= 0 or not self._experts:
            return np.zeros((0, self._dim or 0), dtype=np.float32), np.zeros(0, dtype=object)
        assert self._dim is not None
        X = pool.arrays()
        Z = CombinedExperts(self._labels, self._subsets, self._experts, self._dim).log_odds(X)
        top = np.argmax(Z, axis=1)
        # a row far from every stored example may belong to a class the model does not know yet: naming
        # it after a known one would teach that class the newcomer's texts (a guard: in the measured
        # class-incremental runs it moved nothing beyond run-to-run spread; docs/models.md)
        near = self.nearest_similarity(X) >= self._similarity_quantile(self.settings.oos_quantile)
        return X[near], np.asarray(self._labels, dtype=object)[top[near]]

    def _refit_experts(
        self,
        which: Iterable[int],
        fresh: bool = False,
        max_iter: int | None = None,
        pseudo: tuple[np.ndarray, np.ndarray] | None = None,
        columns: Collection[str] | None = None,
    ) -> None:
        """Refit experts ``which`` from the store (warm unless ``fresh``); ``max_iter`` caps L-BFGS iterations
        for warm re-solves, which converge in a few tens (models/resolve.py). With ``columns`` (labels),
        only those labels' weights move in softmax experts (a young label's re-solve; the same rows and
        objective).

        Softmax experts with stratified noise are solved together (``joint_fit``, :func:`fit_joint`): one
        L-BFGS over all their weights on one shared noise sample; otherwise one expert at a time.
        """
        which = list(which)
        if not which:
            return
        Xs, ys, rs, ws = self._training_arrays(pseudo)
        Xn, yn, _ = self.store.arrays(valid=False)
        rn = self._rows_subset(yn)
        counts = self.store.counts()
        self._total_count = sum(counts.values())
        experts: list[Expert] = []
        for si in which:
            expert = make_expert(self.settings) if fresh else self._experts[si]
            known = set(np.asarray(getattr(expert, "classes_", ())).tolist())  # add_class is O(classes)
            for lab in [*self._subsets[si], *self._noise_classes()]:  # fixed order: labels, then noise
                if lab not in known:
                    expert.add_class(lab)
            experts.append(expert)
        s = self.settings
        softmax_experts = [e for e in experts if isinstance(e, SoftmaxExpert)]
        if s.joint_fit and s.noise_mode == "stratified" and len(softmax_experts) == len(experts):
            n_real = len(ys) - (len(pseudo[0]) if pseudo is not None else 0)
            rows = (Xs, ys, rs, ws)
            free = None
            if columns is not None:
                free = [np.flatnonzero(np.isin(e.classes_, list(columns))) for e in softmax_experts]
            self._refit_joint(which, softmax_experts, rows, (Xn, yn, rn), counts, max_iter, n_real, free)
        else:
            for si, expert in zip(which, experts, strict=True):
                idx, target, weights = self._expert_data(si, ys, rs, counts, full=True)
                weights = weights * ws[idx]
                negs = np.flatnonzero(rn == si)
                Xe = np.concatenate([Xs[idx], Xn[negs]])
                ye = np.concatenate([target, yn[negs]])
                we = np.concatenate([weights, np.ones(len(negs))])
                ve = np.concatenate([np.ones(len(idx), dtype=bool), np.zeros(len(negs), dtype=bool)])
                saved = getattr(expert, "max_iter", None)
                if max_iter is not None and saved is not None:
                    expert.max_iter = max_iter
                try:
                    if columns is not None and isinstance(expert, SoftmaxExpert):
                        wanted = set(columns)
                        own = [c for c in expert.classes_.tolist() if c in wanted]
                        expert.fit_columns(Xe, ye, own, we, ve)
                    else:
                        expert.fit_many(Xe, ye, we, ve)
                finally:
                    if max_iter is not None and saved is not None:
                        expert.max_iter = saved
        for si, expert in zip(which, experts, strict=True):
            self._experts[si] = expert

    def _noise_sample(self, y: np.ndarray, rs: np.ndarray, counts: Mapping[str, int]) -> np.ndarray:
        """Rows of the shared stratified noise sample: up to ``per_label`` random rows of every label.

        Every other label must be represented in an expert's noise (docs/models.md), with more rows per
        label as labels grow (a third of the mean label size, at least ``noise_per_label``), capped so
        the sample stays near ``max_noise_rows``; one sample serves every expert of a joint solve.
        """
        s = self.settings
        rows = np.flatnonzero(rs >= 0)
        if not len(rows):
            return rows
        perm = self._rng.permutation(rows)
        _, codes = np.unique(y[perm].astype(str), return_inverse=True)
        codes = codes.reshape(-1)
        order = np.argsort(codes, kind="stable")
        sorted_codes = codes[order]
        starts = np.flatnonzero(np.r_[True, sorted_codes[1:] != sorted_codes[:-1]])
        rank = np.arange(len(order)) - np.repeat(starts, np.diff(np.r_[starts, len(order)]))
        n_labels = len(starts)
        sizes = [max(counts.get(lab, 0), 1) for sub in self._subsets for lab in sub]
        mean_size = float(np.mean(sizes)) if sizes else 1.0
        wanted = max(s.noise_per_label, int(np.ceil(mean_size / 3)))
        per_label = max(1, min(wanted, s.max_noise_rows // n_labels))
        return np.sort(perm[order[rank < per_label]])

    def _refit_joint(
        self,
        which: list[int],
        experts: list[SoftmaxExpert],
        valid_rows: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray],
        negative_rows: tuple[np.ndarray, np.ndarray, np.ndarray],
        counts: Mapping[str, int],
        max_iter: int | None,
        n_real: int | None = None,
        free: list[np.ndarray] | None = None,
    ) -> None:
        """Build the joint problem of experts ``which`` (see :func:`fit_joint`) and solve it; rows from
        ``n_real`` on are pseudo-labelled (self-training): never in the noise sample, weighted.

        Shared rows: one stratified noise sample of every label; row i trains expert s as its own label
        (weight 1) when s owns the label, else as the noise class of the label's group at weight
        ``noise_ratio`` x the subset's mean label size / the expert's noise rows in the sample. Private
        rows: the experts' own-label rows outside the sample, and their hard negatives.
        """
        s = self.settings
        Xs, ys, rs, ws = valid_rows
        Xn, yn, rn = negative_rows
        S = len(which)
        slot = np.full(len(self._subsets) + 1, -1, dtype=np.intp)  # subset index -> position in which
        slot[np.asarray(which, dtype=np.intp)] = np.arange(S)
        names = self._noise_classes()
        col: list[dict[str, int]] = [{c: j for j, c in enumerate(e.classes_.tolist())} for e in experts]
        noise_col = np.array([[cm[name] for name in names] for cm in col], dtype=np.intp)  # (S, groups)

        def own_cols(y: np.ndarray, r: np.ndarray) -> np.ndarray:
            """Column of each row's label in its owning (solved) expert; -1 where not solved."""
            out = np.full(len(y), -1, dtype=np.intp)
            if not len(y):
                return out
            uniq, inv = np.unique(y.astype(str), return_inverse=True)
            first = np.zeros(len(uniq), dtype=np.intp)
            first[inv.reshape(-1)] = np.arange(len(y))
            owners = slot[r[first]].tolist()
            pairs = zip(uniq.tolist(), owners, strict=True)
            lookup = np.array([col[k].get(u, -1) if k >= 0 else -1 for u, k in pairs], dtype=np.intp)
            return lookup[inv.reshape(-1)]

        real = np.arange(len(ys)) < (len(ys) if n_real is None else n_real)
        pool = self._noise_sample(ys, np.where(real, rs, -1), counts)
        in_pool = np.zeros(len(ys), dtype=bool)
        in_pool[pool] = True
        yp, rp, gp = ys[pool], rs[pool], self._row_groups(ys[pool])
        own_p = own_cols(yp, rp)
        mine = slot[rp] >= 0  # the row's label is one of a solved expert's own
        n_noise = len(pool) - np.bincount(slot[rp][mine], minlength=S)  # noise rows per expert
        w_noise = np.empty(S)
        for k, si in enumerate(which):
            mean_size = float(np.mean([max(counts.get(lab, 0), 1) for lab in self._subsets[si]]))
            w_noise[k] = s.noise_ratio * mean_size / max(int(n_noise[k]), 1)
        T = noise_col[:, gp].T.copy()  # (rows, S)
        Wt = np.broadcast_to(w_noise, (len(pool), S)).copy()
        hit = np.flatnonzero(mine)
        T[hit, slot[rp[hit]]] = own_p[hit]
        Wt[hit, slot[rp[hit]]] = 1.0
        priv = np.flatnonzero(~in_pool & (slot[rs] >= 0))
        negs = np.flatnonzero(slot[rn] >= 0)
        X_priv = np.concatenate([Xs[priv], Xn[negs]])
        owner = np.concatenate([slot[rs[priv]], slot[rn[negs]]])
        t_priv = np.concatenate([own_cols(ys[priv], rs[priv]), own_cols(yn[negs], rn[negs])])
        v_priv = np.r_[np.ones(len(priv), dtype=bool), np.zeros(len(negs), dtype=bool)]
        self._fit_iterations = fit_joint(
            experts,
            Xs[pool],
            T,
            Wt,
            X_priv,
            owner,
            t_priv,
            np.r_[ws[priv], np.ones(len(negs))],
            v_priv,
            max_iter=max_iter if max_iter is not None else s.max_iter,
            tol=experts[0].tol,
            free=free,
        )

    @_mirrored
    @_blas_limited
    def refit(self, resubset: bool = False) -> None:
        """Full refit of every expert from the stored examples (optionally rebuilding the subsets too)."""
        self._require_fitted()
        self.settle()
        self._resolved_at = self._position
        pseudo = self._pseudo_labelled()  # by the weights before the refit
        if resubset:
            s = self.settings
            E = self._label_matrix(self._labels)
            self._subsets = [[self._labels[i] for i in g] for g in self._form_subsets(E)]
            groups = cluster_labels(E, s.noise_groups, s.seed).tolist()
            self._noise_group = dict(zip(self._labels, groups, strict=True))
        self._experts = [make_expert(self.settings) for _ in self._subsets]
        self._refit_experts(range(len(self._subsets)), fresh=True, pseudo=pseudo)
        self._boundary = None
        self._bump()

    # -- incremental learning -------------------------------------------------------------------------
    @_mirrored
    def learn(self, texts: Sequence[str], labels: Sequence[str], valid: Sequence[bool] | None = None) -> None:
        """Learn a micro-batch incrementally; ``valid=False`` rows are hard negatives ("NOT this label").

        A valid row with a label the model does not know adds that label (placed like :meth:`add_class`).
        """
        texts = _check_texts(texts)
        y = _check_labels(labels, len(texts))
        v = self._check_valid(valid, len(texts))
        X = self._encode(texts)
        self._learn(X, texts, y, v)
        self._model_version += len(texts)  # by rows: a log position has one version, however batched

    @_mirrored
    def learn_embeddings(
        self, X: np.ndarray, texts: Sequence[str], labels: Sequence[str], valid: Sequence[bool] | None = None
    ) -> None:
        """:meth:`learn` with the embeddings already computed."""
        texts = _check_texts(texts)
        y = _check_labels(labels, len(texts))
        v = self._check_valid(valid, len(texts))
        X = self._check_X(X, len(texts))
        self._learn(X, texts, y, v)
        self._model_version += len(texts)  # by rows: a log position has one version, however batched

    def observe(self, texts: Sequence[str]) -> None:
        """Keep texts nobody labelled for self-training: the next re-solve (or :meth:`refit`) learns each one,
        at weight ``self_training``, as the label the weights it starts from give it. The weights do not
        change now, and the model version does not move."""
        texts = _check_texts(texts)
        self.observe_embeddings(self._encode(texts))

    def observe_embeddings(self, X: np.ndarray) -> None:
        """:meth:`observe` with the embeddings already computed."""
        self._require_fitted()
        X = self._check_X(X)
        if self.settings.self_training <= 0 or not len(X):
            return
        if self._unlabelled is None:
            assert self._dim is not None
            self._unlabelled = UnlabelledPool(self._dim, self.settings.unlabelled_max)
        if self._router is None and self.settings.self_training_router:
            # the twin starts as this model is now (nothing unlabelled learned yet) and from here on gets
            # every labelled row and class op but no unlabelled row: its uncertainty picks what to judge
            twin = self.copy()
            twin._unlabelled = None
            twin.settings = self.settings.model_copy(update={"self_training": 0.0})
            self._router = twin
        self._unlabelled.add(X)

    @property
    def n_unlabelled(self) -> int:
        """Unlabelled stream rows kept for self-training."""
        return len(self._unlabelled) if self._unlabelled is not None else 0

    @staticmethod
    def _check_valid(valid: Sequence[bool] | None, n: int) -> np.ndarray:
        if valid is None:
            return np.ones(n, dtype=bool)
        v = np.asarray(list(valid))
        if v.shape != (n,) or not all(isinstance(b, bool | np.bool_) for b in v.tolist()):
            raise InvalidDataError(f"valid must hold one bool per text ({n}), got {v.shape} of {v.dtype}")
        return v.astype(bool)

    @_blas_limited
    def _learn(self, X: np.ndarray, texts: list[str], y: np.ndarray, v: np.ndarray) -> None:
        """Learn rows in log order, in chunks of ``learn_chunk`` that do not depend on how they were batched.

        A complete chunk gets its gradient step from the weights at the chunk's start; the rows of a chunk
        not yet complete get a *provisional* step from the same start (so they take effect at once) that is
        redone when the chunk completes. Chunk starts are positions in the log (every ``learn_chunk`` rows,
        and at a row with a new label), so a replay from a checkpoint, which batches the log differently,
        reaches every chunk start with the same weights.
        """
        self._require_fitted()
        if len(X) == 0:
            return
        known = set(self._labels)
        new = v & ~_member(y, known)
        if new.any():  # a new label starts a chunk of its own: flush, place it, go on
            i0 = int(np.argmax(new))
            if i0:
                self._learn(X[:i0], texts[:i0], y[:i0], v[:i0])
            self.flush()
            self._learn_chunk(X[i0 : i0 + 1], texts[i0 : i0 + 1], y[i0 : i0 + 1], v[i0 : i0 + 1])
            if i0 + 1 < len(X):
                self._learn(X[i0 + 1 :], texts[i0 + 1 :], y[i0 + 1 :], v[i0 + 1 :])
            return
        # after the split at new labels: a negative of a label placed earlier in this call is kept, as it
        # is when the rows come in two calls
        unknown_neg = ~v & ~_member(y, known)
        if unknown_neg.any():  # "not label L" says nothing when L is not known: keep nothing of it
            keep = ~unknown_neg
            X, y, v = X[keep], y[keep], v[keep]
            texts = [t for t, k in zip(texts, keep.tolist(), strict=True) if k]
        if not len(X):
            return
        chunk = self.settings.learn_chunk
        self._buffer.append((X, list(texts), y, v))
        self._buffered += len(X)
        stored = self._buffered - len(X)  # buffered rows already in the store (provisional ones)
        while self._buffered >= chunk:
            rows = self._take(chunk)
            self._restore_boundary()
            self._learn_chunk(*rows, already_stored=min(stored, chunk))
            stored = max(0, stored - chunk)
        if self._buffered:
            rows = self._take(self._buffered)
            self._restore_boundary()
            if len(rows[0]) > stored:
                lo = stored
                self.store.add(rows[0][lo:], rows[1][lo:], rows[2][lo:], rows[3][lo:])
            if self._synthetic:
                self._replace_synthetic(rows[2], rows[3])
            self._learn_rows(rows[0], rows[2], rows[3])  # provisional: redone when the chunk completes
            self._refit_young(rows[2], rows[3])
            self._buffer, self._buffered = [rows], len(rows[0])

    def _refit_young(self, y: np.ndarray, v: np.ndarray) -> None:
        """Re-solve (warm, at once) the experts of labels that have few examples yet: a new class learns
        from its first examples as a refit would, rather than from small gradient steps.

        Only when a young label's stored count reaches a milestone (:func:`young_milestones`: 1, 2, 3, 5,
        8, 13, ... below ``young_examples``), not every time it learns: re-solving for every young row took
        most of the model thread at 60 texts/s when each re-solve moved every column (docs/models.md);
        large experts now move only the young labels' columns (``young_solve``). The rows ``y``/``v``
        are already stored, so the count before them is the count now minus theirs: the same chunk gives
        the same re-solves however the log was batched.
        """
        young = self.settings.young_examples
        if young <= 0 or not len(y):
            return
        index = self._label_subset_index()
        marks = young_milestones(young)
        labs, n_new = np.unique(np.asarray(y[v], dtype=object).astype(str), return_counts=True)
        which, grown = set(), set()
        for lab, n in zip(labs.tolist(), n_new.tolist(), strict=True):
            if lab not in index:
                continue
            after = self.store.count(lab)
            before = after - int(n)
            if np.any((marks > before) & (marks <= after)):
                which.add(index[lab])
                grown.add(lab)
        if which:  # on the model thread: a warm re-solve's few iterations, not a full refit's 300
            self._refit_young_experts(sorted(which), grown)

    def _refit_young_experts(self, which: list[int], labels: set[str], whole: bool = False) -> None:
        """The re-solve of young ``labels`` (experts ``which``): their columns only, or every column of
        their experts (``young_solve``; ``auto``: whole while that is cheap; or ``whole``: a new expert,
        whose noise columns start at zero)."""
        s = self.settings
        mode = s.young_solve
        if mode == "auto":  # rows x columns: what one pass over the expert costs (deterministic in the log)
            cells = self.n_examples * sum(len(self._subsets[i]) + len(self._noise_classes()) for i in which)
            mode = "all" if cells <= s.young_solve_max_cells else "columns"
        columns = labels if mode == "columns" and not whole else None
        self._refit_experts(which, fresh=False, max_iter=self.settings.young_iter, columns=columns)

    def _boundary_state(self) -> tuple[list[tuple[np.ndarray, np.ndarray, float]], dict[str, Any]]:
        ws = [(e.coef_.copy(), e.intercept_.copy(), e.n_seen_) for e in self._experts]
        return ws, copy.deepcopy(dict(self._rng.bit_generator.state))

    def _restore_boundary(self) -> None:
        """Back to the weights and RNG of the last chunk start (undoes a provisional step)."""
        b = self._boundary
        if b is None or len(b[0]) != len(self._experts):
            self._boundary = self._boundary_state()
            return
        for e, (W, _c, _n) in zip(self._experts, b[0], strict=True):
            if getattr(e, "coef_", None) is None or e.coef_.shape != W.shape:
                self._boundary = self._boundary_state()
                return
        for e, (W, c, n) in zip(self._experts, b[0], strict=True):
            e.coef_, e.intercept_, e.n_seen_ = W.copy(), c.copy(), n
        self._rng.bit_generator.state = copy.deepcopy(b[1])

    def _take(self, n: int) -> tuple[np.ndarray, list[str], np.ndarray, np.ndarray]:
        """The first ``n`` buffered rows, removed from the buffer."""
        parts: list[tuple[np.ndarray, list[str], np.ndarray, np.ndarray]] = []
        need = n
        while need > 0 and self._buffer:
            X, t, y, v = self._buffer[0]
            if len(X) <= need:
                parts.append(self._buffer.pop(0))
                need -= len(X)
            else:
                parts.append((X[:need], t[:need], y[:need], v[:need]))
                self._buffer[0] = (X[need:], t[need:], y[need:], v[need:])
                need = 0
        self._buffered -= n - need
        return (
            np.concatenate([p[0] for p in parts]),
            [t for p in parts for t in p[1]],
            np.concatenate([p[2] for p in parts]),
            np.concatenate([p[3] for p in parts]),
        )

    @_mirrored
    def flush(self) -> None:
        """Complete the current partial chunk now (before structural changes): a chunk start in the log."""
        if self._buffered:
            n = self._buffered
            rows = self._take(n)
            self._restore_boundary()
            self._learn_chunk(*rows, already_stored=n)
            self._bump()

    @property
    def buffered(self) -> int:
        """Rows of the current partial chunk (learned provisionally)."""
        return self._buffered

    def _learn_chunk(
        self, X: np.ndarray, texts: list[str], y: np.ndarray, v: np.ndarray, already_stored: int = 0
    ) -> None:
        """One complete chunk: store, gradient step, re-solve schedule; then a new chunk start."""
        known = set(self._labels)
        new_labels = sorted({lab for lab in y[v].tolist() if lab not in known})
        for lab in new_labels:  # each drops a pending re-solve (_place_new_label)
            rows = (y == lab) & v
            self._place_new_label(lab, X[rows], [t for t, r in zip(texts, rows.tolist(), strict=True) if r])
        rest = ~np.isin(y, new_labels) if new_labels else np.ones(len(y), dtype=bool)
        lo = already_stored
        fresh = rest.copy()
        fresh[:lo] = False
        if fresh.any():
            kept = [t for t, r in zip(texts, fresh.tolist(), strict=True) if r]
            self.store.add(X[fresh], kept, y[fresh], v[fresh])
        if self._synthetic:  # before the step: the store it samples from is then the same in any batching
            self._replace_synthetic(y[rest], v[rest])
        self._learn_rows(X[rest], y[rest], v[rest])
        self._refit_young(y[rest], v[rest])
        self._position += len(X)
        if self._pending is not None:
            self._pending.batches.append((X[rest], y[rest], v[rest]))
        self._schedule_resolve()
        self._boundary = self._boundary_state()

    # -- re-solves (models/resolve.py) ----------------------------------------------------------------
    def _resolve_trigger(self) -> int:
        s = self.settings
        return max(s.resolve_every, int(np.ceil(s.resolve_growth * max(self.n_examples, 1))))

    def _schedule_resolve(self) -> None:
        """Swap a due re-solve in, and start the next one when enough new rows arrived (log positions)."""
        s = self.settings
        if self._pending is not None and self._position >= self._pending.swap_at:
            self._swap_resolve()
        if s.resolve_every == 0 or self._pending is not None:
            return
        trigger = self._resolve_trigger()
        if self._position - self._resolved_at >= trigger:
            p = self._position
            self._resolved_at = p
            swap_at = p + max(1, int(s.resolve_lag * trigger))
            self._pending = start_resolve(self, p, swap_at, background=s.resolve_background, seed=(s.seed, p))
            if s.resolve_lag == 0:
                self._swap_resolve()

    def _swap_resolve(self) -> None:
        """Install a finished re-solve (waiting for it if needed) and replay what was learned since."""
        job = self._pending
        if job is None:
            return
        self._pending = None
        self._boundary = None  # new weights: the next chunk starts from them
        experts = job.future.result()  # re-raises a failed solve: the caller sees why
        self._experts = copy.deepcopy(experts)
        for X, y, v in job.batches:
            self._learn_rows(X, y, v)
        self._resolves += 1
        self._bump()

    @_mirrored
    def settle(self) -> None:
        """Finish a pending re-solve now (waits for it): before structural changes, saves and comparisons.

        Settling at the same log position on two workers gives the same weights.
        """
        self.flush()
        self._settle_resolve()

    def _settle_resolve(self) -> None:
        if self._pending is not None:
            self._swap_resolve()

    def _void_resolve(self) -> None:
        """Drop a pending re-solve without waiting for it: a new label's column changes the structure it
        was built on, so its result would be stale. Waiting was a labelling pause as long as a re-solve
        (~20 s at O*NET's 923 labels). The weights have learned every row since (the job only replays
        them), and the next chunk starts a re-solve on the new structure. Dropped at a log position, so
        every worker drops the same one."""
        job = self._pending
        if job is not None:  # the weights stay as they are: no new chunk start
            self._pending = None
            job.release(self)
            self._resolved_at = self._position - self._resolve_trigger()  # due again at the next chunk

    def release_resolve(self) -> None:
        """Let go of the pending re-solve (this model's and its routing twin's): it stops unless a copy
        still holds it. For a model being replaced (by a copy that learned more) or refitted from scratch;
        nothing else changes."""
        for model in (self, getattr(self, "_router", None)):
            job = getattr(model, "_pending", None) if model is not None else None
            if job is not None:
                model._pending = None  # type: ignore[union-attr]
                job.release(model)

    def copy(self) -> RedClassifier:
        """An independent deep copy (a pending re-solve is shared and swapped into each at its position)."""
        return copy.deepcopy(self)

    def __deepcopy__(self, memo: dict[int, Any]) -> RedClassifier:
        # the embedder (a torch model) and the prediction cache are shared, everything else is copied
        new = RedClassifier.__new__(RedClassifier)
        memo[id(self)] = new
        for key, value in self.__dict__.items():
            if key in ("_embedder", "_combined"):
                setattr(new, key, value)
            else:
                setattr(new, key, copy.deepcopy(value, memo))
        if new._pending is not None:
            new._pending.held_by(new)
        return new

    def _learn_rows(self, X: np.ndarray, y: np.ndarray, v: np.ndarray, skip: int | None = None) -> None:
        """One incremental step for every expert on a micro-batch plus replayed stored examples."""
        s = self.settings
        for start in range(0, len(X), s.batch_size):
            Xb, yb, vb = (
                X[start : start + s.batch_size],
                y[start : start + s.batch_size],
                v[start : start + s.batch_size],
            )
            Xr, yr = self.store.sample(round(s.replay * len(Xb)), self._rng)
            if len(Xr):
                Xb = np.concatenate([Xb, Xr])
                yb = np.concatenate([yb, yr])
                vb = np.concatenate([vb, np.ones(len(Xr), dtype=bool)])
            rs = self._rows_subset(yb)
            counts = self.store.counts()
            self._total_count = sum(counts.values())
            if self.settings.joint_updates and self._joint_ok():
                self._learn_joint(Xb, yb, vb, rs, counts, skip)
                continue
            for si, expert in enumerate(self._experts):
                if si == skip:
                    continue
                # valid rows: own labels + noise; hard negatives only for the expert that owns the label
                rs_valid = np.where(vb, rs, -1)
                idx, target, weights = self._expert_data(si, yb, rs_valid, counts, full=False)
                negs = np.flatnonzero(~vb & (rs == si))
                if len(negs):
                    idx = np.concatenate([idx, negs])
                    target = np.concatenate([target, yb[negs]])
                    weights = np.concatenate([weights, np.ones(len(negs))])
                ve = np.concatenate(
                    [np.ones(len(idx) - len(negs), dtype=bool), np.zeros(len(negs), dtype=bool)]
                )
                if len(idx):
                    expert.learn_many(Xb[idx], target, weights, ve)

    def _joint_ok(self) -> bool:
        ex = self._experts
        return all(isinstance(e, SoftmaxExpert) and e.coef_ is not None for e in ex) and (
            len({(e.epochs, e.negative_weight) for e in ex if isinstance(e, SoftmaxExpert)}) == 1
        )

    def _learn_joint(
        self,
        Xb: np.ndarray,
        yb: np.ndarray,
        vb: np.ndarray,
        rs: np.ndarray,
        counts: Mapping[str, int],
        skip: int | None,
    ) -> None:
        """Every expert's incremental step at once: one matmul over all experts' stacked columns.

        The same arithmetic as calling each ``SoftmaxExpert.learn_many`` on its rows (a test checks it),
        with each expert's softmax taken over its own block of columns (``reduceat``), so a micro-batch
        costs two matmuls whatever the number of experts instead of a Python loop over them.
        """
        s = self.settings
        experts: list[SoftmaxExpert] = [e for e in self._experts if isinstance(e, SoftmaxExpert)]
        S, n = len(experts), len(Xb)
        widths = np.array([len(e.classes_) for e in experts])
        offsets = np.r_[0, np.cumsum(widths)[:-1]]
        group = np.repeat(np.arange(S), widths)
        col_of: dict[str, int] = {}
        names = self._noise_classes()
        noise_col = np.zeros((S, len(names)), dtype=np.intp)  # (expert, group) -> column
        for si, e in enumerate(experts):
            classes = e.classes_.tolist()
            for j, c in enumerate(classes):
                if not is_noise(c):
                    col_of[c] = int(offsets[si] + j)
            first_noise = next(j for j, c in enumerate(classes) if is_noise(c))
            for g, name in enumerate(names):
                noise_col[si, g] = offsets[si] + (classes.index(name) if name in classes else first_noise)
        uniq, inv = np.unique(yb.astype(str), return_inverse=True)
        own_col = np.array([col_of.get(u, -1) for u in uniq.tolist()], dtype=np.intp)[inv.reshape(-1)]
        total = self._total_count
        w_noise = np.empty(S)
        for si, subset in enumerate(self._subsets):
            sizes = [counts.get(lab, 0) for lab in subset]
            mean_size = float(np.mean(np.maximum(sizes, 1)))
            w_noise[si] = s.noise_ratio * mean_size / max(total - sum(sizes), 1)
        known = (rs >= 0) & (own_col >= 0)
        mine = rs[:, None] == np.arange(S)[None, :]  # (n, S): the row's label belongs to expert s
        T = np.where(mine, own_col[:, None], noise_col[:, self._row_groups(yb)].T)
        Wt = np.where(mine, 1.0, w_noise[None, :] * vb[:, None])
        Wt[~known] = 0.0
        if skip is not None:
            Wt[:, skip] = 0.0
        included = Wt > 0
        n_s = included.sum(axis=0)
        active = n_s > 0
        for si in np.flatnonzero(active).tolist():
            experts[si].n_seen_ += float(Wt[:, si].sum())
        W = np.concatenate([e.coef_ for e in experts if e.coef_ is not None], axis=1)
        b = np.concatenate([e.intercept_ for e in experts])
        lr = np.array([e.learning_rate for e in experts])[group]
        l2 = np.array([e.l2 / max(e.n_seen_, 1.0) for e in experts])[group]
        inv_n = (1.0 / np.maximum(n_s, 1))[group]
        act = active[group]
        rows = np.broadcast_to(np.arange(n)[:, None], T.shape)
        neg_rows = np.flatnonzero(~vb & known)
        Xd = Xb.astype(np.float64)
        for _ in range(experts[0].epochs):
            Z = Xd @ W + b
            Z -= np.maximum.reduceat(Z, offsets, axis=1)[:, group]
            np.exp(Z, out=Z)
            P = Z / np.add.reduceat(Z, offsets, axis=1)[:, group]
            G = P * Wt[:, group]
            G[rows[included], T[included]] -= Wt[included]
            for r in neg_rows.tolist():  # complementary loss for hard negatives (rare): flip and scale
                si = int(rs[r])
                lo, hi = offsets[si], offsets[si] + widths[si]
                py = min(max(float(P[r, own_col[r]]), 1e-12), 1.0)
                factor = min(py / max(1.0 - py, 1e-6), 50.0) * experts[si].negative_weight
                G[r, lo:hi] *= -factor
            gW = Xd.T @ G
            gb = G.sum(axis=0)
            W -= np.where(act, lr, 0.0) * (gW * inv_n + l2 * W)
            b -= np.where(act, lr, 0.0) * gb * inv_n
        for si, e in enumerate(experts):
            lo, hi = offsets[si], offsets[si] + widths[si]
            e.coef_ = W[:, lo:hi].copy()
            e.intercept_ = b[lo:hi].copy()

    # -- label management -----------------------------------------------------------------------------
    def _label_matrix(self, labels: Sequence[str]) -> np.ndarray:
        Xs, ys, _ = self.store.arrays()
        keep = _member(ys, set(labels))
        return label_embeddings(
            Xs[keep],
            ys[keep],
            labels,
            {k: v for k, v in self._desc_emb.items() if k in labels},
            self.settings.description_weight,
        )

    def _place_new_label(self, label: str, X: np.ndarray, texts: list[str]) -> int:
        """Put a new label into the least similar subset with room (or a new one) and train that expert:
        warm, ``young_iter`` L-BFGS iterations on the caller's thread, as a young label's re-solve: its
        column only once the expert is large (``young_solve``). A full refit held the model thread for
        18-30 s per added label at O*NET's 923 labels, a re-solve of every column 3.4 s, the column alone
        0.22 s (docs/models.md)."""
        self._void_resolve()
        s = self.settings
        desc = {label: self._desc_emb[label]} if label in self._desc_emb else None
        e = label_embeddings(X, np.full(len(X), label, dtype=object), [label], desc, s.description_weight)[0]
        members = [self._label_matrix(sub) for sub in self._subsets]
        si = place_label(e, members, s.subset_size)
        # its noise group is that of the most similar known label
        known = [lab for sub in self._subsets for lab in sub]
        self._noise_group[label] = self._noise_group.get(known[nearest_label(e, np.concatenate(members))], 0)
        fresh_expert = si == len(self._subsets)
        if fresh_expert:
            self._subsets.append([label])
            self._experts.append(make_expert(s))
        else:
            self._subsets[si].append(label)
        self._labels.append(label)
        if self._unlabelled is not None:
            # the pool was read in a world without this label: some of its rows are the newcomer's texts,
            # and self-training would name them after the old labels against its few examples (measured:
            # class-incremental CLINC150 / BANKING77 lost 1.2-1.6 points when the pool was kept)
            self._unlabelled.clear()
        if len(X):
            self.store.add(X, texts, np.full(len(X), label, dtype=object))
        self._refit_young_experts([si], {label}, whole=fresh_expert)
        # the other experts see the new examples as noise
        if len(X):
            self._learn_rows(X, np.full(len(X), label, dtype=object), np.ones(len(X), dtype=bool), skip=si)
        self._boundary = None  # the placed label's expert was refit: chunks start from these weights
        return si

    @_mirrored
    @_blas_limited
    def add_class(
        self,
        label: str,
        description: str | None = None,
        examples: Sequence[str] = (),
        synthetic: bool = False,
    ) -> None:
        """Add a label (placed without moving any other); an existing label gets the description/examples.

        A new label needs examples or a description (a description alone trains the expert on its embedding).
        """
        _check_labels([label], 1)
        texts = _check_texts(examples, "examples")
        if self._experts:
            self.flush()  # a pending re-solve is dropped, not waited for, if the label is new
        if not self._experts:
            if not texts:
                raise ModelError("the model is empty: fit() it first, or give examples for the first label")
            self.fit(texts, [label] * len(texts), {label: description} if description else None)
            return
        if label in self._labels:
            if description is not None:
                self.describe_class(label, description)
            if texts:
                self.learn(texts, [label] * len(texts))
            return
        if not texts and not description:
            raise InvalidDataError(f"new label {label!r} needs examples or a description to learn from")
        X = self._encode(texts, "examples") if texts else np.zeros((0, self._dim or 0), dtype=np.float32)
        if description:
            self._descriptions[label] = description
            self._desc_emb[label] = self._encode([description], "description")[0]
        self._place_new_label(label, X, texts)
        if synthetic and texts:
            self._synthetic[label] = list(texts)
        self._bump()

    @_mirrored
    @_blas_limited
    def add_class_embeddings(
        self,
        label: str,
        X: np.ndarray,
        texts: Sequence[str],
        description: str | None = None,
        description_embedding: np.ndarray | None = None,
        synthetic: bool = False,
    ) -> None:
        """:meth:`add_class` with the example embeddings already computed.

        ``synthetic=True`` marks the examples as generated (e.g. by the judge endpoint from a description):
        they are dropped once ``synthetic_replace_after`` real examples of the label have been learned.
        """
        self._require_fitted()
        _check_labels([label], 1)
        texts = _check_texts(texts, "examples")
        X = self._check_X(X, len(texts))
        desc_e = None  # a new label's description embedding: checked (or encoded) before anything changes
        if description is not None and label not in self._labels:
            if description_embedding is None:
                desc_e = self._encode([description], "description")[0]
            else:
                assert self._dim is not None
                desc_e = _check_description_embedding(label, description_embedding, self._dim)
        if len(X) == 0 and desc_e is None and label not in self._labels:
            raise InvalidDataError(f"new label {label!r} needs examples or a description to learn from")
        self.flush()  # the partial chunk is learned before the structure changes; a pending re-solve is
        # dropped, not waited for (_place_new_label)
        if label in self._labels:
            if len(X):
                self.learn_embeddings(X, texts, [label] * len(texts))
            return
        if description is not None and desc_e is not None:
            self._descriptions[label] = description
            self._desc_emb[label] = desc_e
        self._place_new_label(label, X, texts)
        if synthetic and texts:
            self._synthetic[label] = list(texts)
        self._bump()

    @property
    def synthetic_labels(self) -> list[str]:
        """Labels still trained on generated examples (no or too few real ones yet)."""
        return sorted(self._synthetic)

    def _replace_synthetic(self, y: np.ndarray, v: np.ndarray) -> None:
        """Drop a label's generated examples once enough real ones have been learned."""
        for lab in sorted({str(t) for t in y[v].tolist()} & set(self._synthetic)):
            fake = set(self._synthetic[lab])
            real = self.store.count(lab) - sum(1 for t in self.store.label_examples(lab)[1] if t in fake)
            if real >= self.settings.synthetic_replace_after:
                self.store.remove_texts(lab, fake)
                del self._synthetic[lab]

    @_mirrored
    def remove_class(self, label: str) -> None:
        """Forget a label: its expert column, its examples, its description. Other labels stay put."""
        if label not in self._labels:
            raise UnknownLabelError(f"unknown label {label!r}; known: {len(self._labels)} labels")
        if len(self._labels) == 1:
            raise ModelError(f"cannot remove {label!r}, the only label; fit a new model instead")
        self.settle()
        si = self._label_subset_index()[label]
        self._subsets[si].remove(label)
        if self._subsets[si]:
            self._experts[si].remove_class(label)
        else:
            del self._subsets[si]
            del self._experts[si]
        self._labels.remove(label)
        self._synthetic.pop(label, None)
        self._noise_group.pop(label, None)
        self._descriptions.pop(label, None)
        self._desc_emb.pop(label, None)
        if self.store.count(label) or label in {str(v) for v in self.store.arrays(False)[1].tolist()}:
            self.store.remove_label(label)
        self._boundary = None
        self._bump()

    @_mirrored
    @_blas_limited
    def describe_class(self, label: str, description: str) -> None:
        """Set a label's description (shown to the judge; also one training row for its expert)."""
        if label not in self._labels:
            raise UnknownLabelError(f"unknown label {label!r}; add it with add_class() first")
        description = _check_texts([description], "description")[0]
        e = self._encode([description], "description")[0]
        self.settle()
        self._descriptions[label] = description
        self._desc_emb[label] = e
        # the description is one training row of its label's expert: refit that expert (small, warm-started)
        self._refit_experts([self._label_subset_index()[label]])
        self._boundary = None
        self._bump()

    def nearest_examples(self, label: str, embedding: np.ndarray, c: int = 6) -> list[str]:
        """The ``c`` known-good training texts of ``label`` nearest to ``embedding`` (for the judge)."""
        if label not in self._labels:
            raise UnknownLabelError(f"unknown label {label!r}")
        return self.store.nearest(label, embedding, c)

    # -- prediction -----------------------------------------------------------------------------------
    def _combiner(self) -> CombinedExperts:
        self._require_fitted()
        if self._combined is None or self._combined[0] != self._model_version:
            assert self._dim is not None
            self._combined = (
                self._model_version,
                CombinedExperts(self._labels, self._subsets, self._experts, self._dim),
            )
        return self._combined[1]

    def log_odds(self, X: np.ndarray) -> np.ndarray:
        """Per-label log-odds against the owning expert's noise, shape (n, n_labels), order ``labels``."""
        return self._combiner().log_odds(self._check_X(X))

    @_blas_limited
    def rank_embeddings(self, X: np.ndarray, top_k: int = 5) -> Ranking:
        """Ranked candidates, probabilities, entropy, margin and out-of-scope flag for each embedding."""
        X = self._check_X(X)
        Z = self._combiner().log_odds(X)  # X is checked once, here
        s = self.settings
        flagged = None
        if s.oos in ("nearest", "centroid") and len(X):
            flagged = self.scope_similarity(X) < self.scope_threshold()
        threshold = s.oos_threshold if s.oos == "noise" else None
        ranking = make_ranking(Z, self._labels, top_k, s.temperature, threshold, flagged)
        if self._router is not None:  # self-training: what to judge follows the twin's uncertainty
            # its log-odds alone (top 1: no candidate lists, no out-of-scope scan of its store)
            plain = make_ranking(self._router.log_odds(X), self._router.labels, 1, s.temperature)
            ranking = dataclasses.replace(ranking, entropy=plain.entropy, margin=plain.margin)
        return ranking

    def nearest_similarity(self, X: np.ndarray) -> np.ndarray:
        """Cosine similarity of each embedding to its nearest stored known-good example (chunked matmul)."""
        Xs, _, _ = self.store.arrays()
        X = np.asarray(X, dtype=np.float32)
        out = np.full(len(X), -1.0, dtype=np.float32)
        if len(Xs) == 0:
            return out
        for lo in range(0, len(Xs), 8192):
            np.maximum(out, (X @ Xs[lo : lo + 8192].T).max(axis=1), out=out)
        return out

    def scope_similarity(self, X: np.ndarray) -> np.ndarray:
        """How in-scope each embedding looks (higher: more), the score ``oos`` flags below
        :meth:`scope_threshold`: ``centroid`` mode averages the cosine to the nearest stored example with
        the cosine to the nearest label centroid (the mean of a label's stored examples), any other mode
        uses the nearest example alone.

        Why the average (measured, CLINC150 10-shot, in-scope flagged held at 5 %): the nearest example
        catches 75 % of out-of-scope texts and the nearest centroid 79 %, the two together 80 %; a
        centroid smooths over one odd example, the nearest example over a label with several senses.
        """
        X = np.asarray(X, dtype=np.float32)
        near = self.nearest_similarity(X)
        if self.settings.oos != "centroid" or not self.store.n_examples:
            return near
        return 0.5 * (near + self.label_centroid_similarity(X))

    def label_centroid_similarity(self, X: np.ndarray) -> np.ndarray:
        """Each embedding's cosine similarity to its nearest label centroid (the normalised mean of a
        label's stored examples); -1 with an empty store."""
        X = np.asarray(X, dtype=np.float32)
        _, C, _ = self._centroids()
        if not len(C):
            return np.full(len(X), -1.0, dtype=np.float32)
        return np.asarray((X @ C.T).max(axis=1), dtype=np.float32)

    def known_class_edge(self, centroid: np.ndarray, quantile: float) -> tuple[float, float]:
        """(``centroid``'s cosine similarity to the nearest label centroid, :meth:`own_centroid_similarity`
        at ``quantile``): a group whose first is at least the second is the edge of a known class
        (``StreamSettings.proposal_known_quantile``; the worker and ``bench_loop`` both ask this)."""
        sim = self.label_centroid_similarity(np.asarray(centroid, dtype=np.float32).reshape(1, -1))
        return float(sim[0]), self.own_centroid_similarity(quantile)

    def own_centroid_similarity(self, quantile: float) -> float:
        """The ``quantile`` quantile of the stored examples' cosine similarity to their own label's centroid:
        how near its centroid a label's own texts sit (computed each time: one dot product per stored row,
        ~5 ms at O*NET's 14,000 rows, asked once per dense group).

        What a group of new texts is measured against: one whose centroid is as near a label's centroid as
        most stored examples are to their own label's is the edge of that label, not a new class
        (``StreamSettings.proposal_known_quantile``). A store-relative line rather than a cosine, since
        embedders differ in scale (CLINC150, 10 examples per label: a label centroid's nearest other one
        sits at a median cosine of 0.63 with MiniLM, 0.79 with the static embedder)."""
        if not 0.0 < quantile < 1.0:
            raise InvalidDataError(f"quantile must be within (0, 1), got {quantile}")
        Xs = self.store.arrays()[0]
        if not len(Xs):
            return 1.0
        _, C, owner = self._centroids()
        return float(np.quantile(np.einsum("ij,ij->i", Xs, C[owner]), quantile))

    def _centroids(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Per-label sums, unit centroids and each stored row's label index (cached until the store
        changes: ``arrays()`` returns the same arrays until then)."""
        Xs, y, _ = self.store.arrays()
        cached = self._centroid_cache
        if cached is not None and cached[0] is Xs:
            return cached[1], cached[2], cached[3]
        run_start = np.r_[True, y[1:] != y[:-1]] if len(Xs) else np.zeros(0, dtype=bool)
        owner = np.cumsum(run_start) - 1  # arrays() groups the rows by label: one run per label
        if len(Xs):
            sums = np.add.reduceat(Xs.astype(np.float64), np.flatnonzero(run_start), axis=0)
        else:
            sums = np.zeros((0, Xs.shape[1]))
        C = (sums / np.maximum(np.linalg.norm(sums, axis=1, keepdims=True), 1e-12)).astype(np.float32)
        self._centroid_cache = (Xs, sums, C, owner)
        return sums, C, owner

    def scope_threshold(self) -> float:
        """The ``oos_quantile`` quantile of the store's own leave-one-out :meth:`scope_similarity`
        (calibrated on the model's examples; cached until the store changes size by 10 %)."""
        if self.settings.oos != "centroid":
            return self.oos_similarity_threshold()
        return self._calibrated("centroid", self._scope_quantile)

    def _calibrated(self, score: str, compute: Callable[[], float]) -> float:
        """``compute()``'s threshold for ``score``, again only when the store changed size by 10 %."""
        n = self.store.n_examples
        cached = self._oos_cal.get(score)
        if cached is not None and abs(cached[0] - n) <= 0.1 * max(cached[0], 1):
            return float(cached[1])
        thr = compute()
        self._oos_cal[score] = (n, thr)
        return thr

    def _scope_quantile(self) -> float:
        """Leave-one-out ``centroid`` scores of a fixed-seed sample of at most 2,048 stored rows: each row's
        nearest other example, and its own label's centroid without it (none for a label's only row).

        The sample is drawn from the store's *representative* rows (given to ``fit``; all rows when fewer
        than ``MIN_REPRESENTATIVE`` remain), scored against the whole store. Why: the rows the loop adds
        were judged because the experts were unsure of them, and their leave-one-out scores run low. On
        the stores the CLINC150 loop builds (10 seeds per class + 670-3,800 judged rows), calibrating on
        every row flagged 2.2-3.1 % of in-scope test texts and caught 69.7-79.3 % of out-of-scope ones;
        on the seeds 4.0-5.8 % and 78.9-85.9 % (`bench_loop.py`, docs/models.md).

        2,048 rather than :meth:`oos_similarity_threshold`'s 512: a 5 % quantile of 512 rows is off by ~1
        point of in-scope texts flagged (binomial), of 2,048 by ~0.5; the matmul is 2,048 x the store."""
        Xs = self.store.arrays()[0]
        n = len(Xs)
        if n < 2:
            return -1.0
        pick = np.flatnonzero(self.store.representative())
        if len(pick) < MIN_REPRESENTATIVE:
            pick = np.arange(n)
        rng = np.random.default_rng(self.settings.seed)
        rows = np.sort(rng.choice(pick, size=min(len(pick), 2048), replace=False))
        near = self._loo_nearest(Xs, rows)
        sums, C, owner = self._centroids()
        own = owner[rows]
        P = Xs[rows] @ C.T
        rest = sums[own] - Xs[rows]  # the own centroid without the row
        norm = np.linalg.norm(rest, axis=1)
        alone = norm < 1e-6
        P[np.arange(len(rows)), own] = np.where(
            alone, -1.0, np.einsum("ij,ij->i", Xs[rows], rest) / np.maximum(norm, 1e-12)
        )
        return float(np.quantile(0.5 * (near + P.max(axis=1)), self.settings.oos_quantile))

    def oos_similarity_threshold(self, quantile: float | None = None) -> float:
        """The ``quantile`` (default ``oos_quantile``) quantile of the store's leave-one-out
        nearest-neighbour similarities.

        Calibrated on the model's own examples (no held-out data needed), computed on a fixed-seed sample
        of at most 512 stored rows and cached until the store changes size by 10 %. Another ``quantile``
        than ``oos_quantile``: a looser line, e.g. which texts may belong to a class nobody declared
        (``StreamSettings.proposal_far_quantile``).
        """
        q = self.settings.oos_quantile if quantile is None else float(quantile)
        if not 0.0 < q < 1.0:
            raise InvalidDataError(f"quantile must be within (0, 1), got {quantile}")
        key = "nearest" if q == self.settings.oos_quantile else f"nearest@{q}"
        return self._calibrated(key, lambda: self._similarity_quantile(q))

    def _similarity_quantile(self, quantile: float) -> float:
        """:meth:`oos_similarity_threshold` computed now, from the store alone (no cache: a function of the
        log position, which the re-solves' self-training needs)."""
        Xs, _, _ = self.store.arrays()
        n = len(Xs)
        if n < 2:
            return -1.0
        rng = np.random.default_rng(self.settings.seed)
        rows = np.sort(rng.choice(n, size=min(n, 512), replace=False))
        return float(np.quantile(self._loo_nearest(Xs, rows), quantile))

    @staticmethod
    def _loo_nearest(Xs: np.ndarray, rows: np.ndarray) -> np.ndarray:
        """Each of ``Xs[rows]``'s cosine similarity to its nearest *other* stored row, 8,192 stored rows at a
        time: a whole ``rows x store`` matrix would be 1.2 GB for 2,048 rows of a 150,000-row store."""
        out = np.full(len(rows), -1.0, dtype=np.float32)
        Q = Xs[rows]
        for lo in range(0, len(Xs), 8192):
            hi = min(lo + 8192, len(Xs))
            S = Q @ Xs[lo:hi].T
            mine = (rows >= lo) & (rows < hi)
            S[np.flatnonzero(mine), rows[mine] - lo] = -1.0  # leave the row itself out
            np.maximum(out, S.max(axis=1), out=out)
        return out

    def rank(self, texts: Sequence[str], top_k: int = 5) -> Ranking:
        self._require_fitted()
        return self.rank_embeddings(self._encode(texts), top_k)

    @_blas_limited
    def predict_proba_embeddings(self, X: np.ndarray) -> np.ndarray:
        """Probability matrix over ``labels`` (rows sum to 1)."""
        from driftlabel.models.uncertainty import softmax

        return softmax(self.log_odds(X).astype(np.float64) / self.settings.temperature)

    def predict_embeddings(self, X: np.ndarray) -> list[str]:
        return self.rank_embeddings(X, top_k=1).labels

    def predict(self, texts: Sequence[str]) -> list[str]:
        """Top-1 label per text (``"out_of_scope"`` when every expert says noise)."""
        return self.rank(texts, top_k=1).labels

    def predict_proba(self, texts: Sequence[str]) -> list[dict[str, float]]:
        """``{label: probability}`` over every known label, per text."""
        self._require_fitted()
        P = self.predict_proba_embeddings(self._encode(texts))
        return [dict(zip(self._labels, row, strict=True)) for row in P.tolist()]

    # -- persistence ----------------------------------------------------------------------------------
    def save(self, path: str | os.PathLike[str]) -> None:
        """Write the model to a directory (JSON manifest + .npz arrays + texts; no pickle)."""
        from driftlabel.models.persistence import save_model

        save_model(self, path)

    @classmethod
    def load(cls, path: str | os.PathLike[str], embedder: Embedder | None = None) -> RedClassifier:
        """Read a model saved by :meth:`save`; refuses corrupt or foreign files with ``ModelFileError``."""
        from driftlabel.models.persistence import load_model

        return load_model(path, embedder)

    def __repr__(self) -> str:
        return (
            f"RedClassifier(labels={len(self._labels)}, subsets={len(self._subsets)}, "
            f"examples={self.n_examples}, model_version={self._model_version}, "
            f"embedder={self._embedder_name!r})"
        )

    def _state(self) -> dict[str, Any]:  # for persistence
        return {
            "labels": self._labels,
            "descriptions": self._descriptions,
            "desc_emb": self._desc_emb,
            "subsets": self._subsets,
            "noise_groups": self._noise_group,
            "experts": self._experts,
            "store": self._store,
            "model_version": self._model_version,
            "position": self._position,
            "resolved_at": self._resolved_at,
            "resolves": self._resolves,
            "rng": self._rng.bit_generator.state,
            "pending": self._pending,
            "synthetic": self._synthetic,
            "buffer": self._buffer,
            "boundary": self._boundary,
            "embedder_name": self._embedder_name,
            "dim": self._dim,
            "unlabelled": self._unlabelled,
        }
