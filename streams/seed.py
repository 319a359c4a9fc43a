"""What a fresh worker collects from the learning log before its first fit (no checkpoint yet)."""

from __future__ import annotations

from collections.abc import Sequence

from driftlabel.streams.messages import ControlMessage, TrainingMessage

__all__ = ["SeedSet"]


class SeedSet:
    """What a fresh worker collects from ``training`` and ``control`` before its first fit."""

    def __init__(self) -> None:
        self.texts: list[str] = []
        self.labels: list[str] = []
        self.negatives: list[TrainingMessage] = []
        self.descriptions: dict[str, str] = {}
        self.removed: set[str] = set()

    def add_training(self, records: Sequence[TrainingMessage]) -> None:
        for r in records:
            if r.valid:
                self.texts.append(r.text)
                self.labels.append(r.label)
                self.removed.discard(r.label)
            else:
                self.negatives.append(r)

    def add_control(self, msg: ControlMessage) -> None:
        if msg.op == "add_class":
            self.removed.discard(msg.label)
            for e in msg.examples or ():
                self.texts.append(e)
                self.labels.append(msg.label)
            if msg.description:
                self.descriptions[msg.label] = msg.description
        elif msg.op == "describe_class" and msg.description:
            self.descriptions[msg.label] = msg.description
        elif msg.op == "remove_class":
            self.removed.add(msg.label)

    def fit_data(self) -> tuple[list[str], list[str], dict[str, str]]:
        keep = [i for i, lab in enumerate(self.labels) if lab not in self.removed]
        texts = [self.texts[i] for i in keep]
        labels = [self.labels[i] for i in keep]
        known = set(labels)
        return texts, labels, {k: v for k, v in self.descriptions.items() if k in known}

    def texts_to_embed(self) -> list[str]:
        """Every text a fit on this run embeds: examples, descriptions, hard negatives."""
        texts, _, descriptions = self.fit_data()
        return texts + list(descriptions.values()) + [r.text for r in self.negatives]

    @property
    def n_labels(self) -> int:
        return len(set(self.labels) - self.removed)
