"""The R.E.D. core: embeddings, label subsets, online experts, ranked candidates, drift.

Public surface (the contract in ``docs/interfaces.md``)::

    from driftlabel.models import RedClassifier, ExpertSettings, load_embedder
    clf = RedClassifier(load_embedder()).fit(texts, labels, descriptions)
    ranking = clf.rank(["where is my card?"], top_k=5)  # labels, scores, candidates, entropy, margin, oos
    clf.learn(texts, labels, valid=[True, False, ...])   # incremental; valid=False = hard negative
    clf.save("model/"); clf = RedClassifier.load("model/")

Heavy dependencies (torch, UMAP, river) are imported only when first used.
"""

from driftlabel.models.classifier import RESERVED_LABELS, RedClassifier, is_reserved_label
from driftlabel.models.combine import OUT_OF_SCOPE, CombinedExperts, Ranking, make_ranking
from driftlabel.models.drift import DriftEvent, DriftMonitor
from driftlabel.models.embeddings import Embedder, EmbedderSettings, load_embedder
from driftlabel.models.errors import (
    InvalidDataError,
    ModelError,
    ModelFileError,
    SolveStopped,
    UnknownLabelError,
)
from driftlabel.models.experts import (
    NOISE,
    Expert,
    ExpertSettings,
    RiverExpert,
    SoftmaxExpert,
    is_noise,
    make_expert,
    noise_class,
)
from driftlabel.models.persistence import FORMAT, FORMAT_VERSION, load_model, save_model
from driftlabel.models.store import ExampleStore
from driftlabel.models.subsets import greedy_subsets, label_embeddings, place_label, reduce_labels, similarity
from driftlabel.models.uncertainty import entropy, margin, normalized_entropy, softmax, top_k

__all__ = [
    "FORMAT",
    "FORMAT_VERSION",
    "NOISE",
    "OUT_OF_SCOPE",
    "RESERVED_LABELS",
    "CombinedExperts",
    "DriftEvent",
    "DriftMonitor",
    "Embedder",
    "EmbedderSettings",
    "ExampleStore",
    "Expert",
    "ExpertSettings",
    "InvalidDataError",
    "ModelError",
    "ModelFileError",
    "Ranking",
    "RedClassifier",
    "RiverExpert",
    "SoftmaxExpert",
    "SolveStopped",
    "UnknownLabelError",
    "entropy",
    "greedy_subsets",
    "is_noise",
    "is_reserved_label",
    "label_embeddings",
    "load_embedder",
    "load_model",
    "make_expert",
    "make_ranking",
    "margin",
    "noise_class",
    "normalized_entropy",
    "place_label",
    "reduce_labels",
    "save_model",
    "similarity",
    "softmax",
    "top_k",
]
