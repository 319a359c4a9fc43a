"""End to end on real data: the packaged MiniLM + RedClassifier on a slice of CLINC150.

15 intents x 10 seed examples -> fit -> accuracy on those intents' 450 test texts (chance: 6.7 %),
then save/load, incremental learning from the validation split, and out-of-scope texts.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from driftlabel.models.classifier import RedClassifier
from driftlabel.models.datasets import Dataset, load_clinc150, sample_k_shot
from driftlabel.models.embeddings import Embedder
from driftlabel.models.experts import ExpertSettings

pytestmark = pytest.mark.slow

N_INTENTS, K = 15, 10


@pytest.fixture(scope="module")
def clinc_slice(data_dir: Path) -> Dataset:
    """Every 10th intent (so the slice spans CLINC's domains), 10 seeds each, all their val/test texts."""
    ds = load_clinc150(data_dir)
    keep = set(ds.labels[:: len(ds.labels) // N_INTENTS][:N_INTENTS])

    def only(split: tuple[list[str], list[str]]) -> tuple[list[str], list[str]]:
        texts, labels = split
        rows = [(t, lab) for t, lab in zip(texts, labels, strict=True) if lab in keep]
        return [t for t, _ in rows], [lab for _, lab in rows]

    from driftlabel.models.datasets import Split

    train = Split(*sample_k_shot(*only(ds.train), k=K, seed=0))
    return Dataset(
        "clinc-slice",
        train=train,
        test=Split(*only(ds.test)),
        val=Split(*only(ds.val)),
        oos_test=Split(ds.oos_test.texts[:100], ds.oos_test.labels[:100]),
    )


@pytest.fixture(scope="module")
def model(embedder: Embedder, clinc_slice: Dataset) -> RedClassifier:
    return RedClassifier(embedder, ExpertSettings(subset_size=8)).fit(*clinc_slice.train)


def _accuracy(clf: RedClassifier, ds: Dataset) -> float:
    return float(np.mean(np.array(clf.predict(ds.test.texts)) == np.array(ds.test.labels)))


def test_slice_shape(clinc_slice: Dataset) -> None:
    assert len(clinc_slice.labels) == N_INTENTS and len(clinc_slice.train) == N_INTENTS * K
    assert len(clinc_slice.test) == N_INTENTS * 30


def test_accuracy_well_above_chance(model: RedClassifier, clinc_slice: Dataset) -> None:
    assert model.labels == clinc_slice.labels and model.n_subsets == 2
    assert _accuracy(model, clinc_slice) >= 0.85  # chance 1/15; LogisticRegression on these vectors: 0.998


def test_rank_is_consistent(model: RedClassifier, clinc_slice: Dataset) -> None:
    r = model.rank(clinc_slice.test.texts[:50], top_k=3)
    assert len(r) == 50
    assert all(c[0][0] == lab for c, lab in zip(r.candidates, r.labels, strict=True) if lab in model.labels)
    assert np.all(r.margin >= 0) and np.all(r.entropy >= 0)


def test_save_load_round_trip(
    model: RedClassifier, clinc_slice: Dataset, tmp_path: Path, embedder: Embedder
) -> None:
    model.save(tmp_path / "m")
    loaded = RedClassifier.load(tmp_path / "m", embedder=embedder)
    texts = clinc_slice.test.texts[:60]
    assert loaded.predict(texts) == model.predict(texts)
    assert loaded.model_version == model.model_version
    np.testing.assert_allclose(loaded.rank(texts).scores, model.rank(texts).scores, atol=1e-6)


def test_learning_from_val_does_not_hurt(embedder: Embedder, clinc_slice: Dataset) -> None:
    clf = RedClassifier(embedder, ExpertSettings(subset_size=8)).fit(*clinc_slice.train)
    before, version = _accuracy(clf, clinc_slice), clf.model_version
    clf.learn(*clinc_slice.val)
    assert clf.model_version > version
    assert _accuracy(clf, clinc_slice) >= before - 0.01


def test_out_of_scope_texts_are_less_certain(model: RedClassifier, clinc_slice: Dataset) -> None:
    ins = model.rank(clinc_slice.test.texts[:100])
    oos = model.rank(clinc_slice.oos_test.texts)
    assert float(np.mean(oos.scores)) < float(np.mean(ins.scores))
