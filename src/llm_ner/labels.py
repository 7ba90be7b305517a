"""LabelSet: the ordered IOB2 tag inventory of a model, id <-> tag, and which transitions IOB2 allows (for the CRF).

Tags are ordered O, B-T1, I-T1, B-T2, I-T2, ... with types sorted, so the same types always give the same ids.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from .data import DataError, Sentence, entity_types, spans

if TYPE_CHECKING:  # annotations only
    import torch


@dataclass(frozen=True)
class LabelSet:
    types: tuple[str, ...]
    # Optional human descriptions per type (a label schema file); travels with the saved model.
    descriptions: dict[str, str] = field(default_factory=dict, compare=False)

    @classmethod
    def from_types(cls, types: Iterable[str], descriptions: dict[str, str] | None = None) -> LabelSet:
        types = tuple(sorted(set(types)))
        for t in types:
            if not t or t == "O" or any(c.isspace() for c in t):
                raise ValueError(f"invalid entity type {t!r}")
        return cls(types, dict(descriptions or {}))

    @property
    def tags(self) -> list[str]:
        return ["O"] + [f"{p}-{t}" for t in self.types for p in ("B", "I")]

    @property
    def tag2id(self) -> dict[str, int]:
        return {t: i for i, t in enumerate(self.tags)}

    def __len__(self) -> int:
        return 1 + 2 * len(self.types)

    def encode(self, tags: Sequence[str]) -> list[int]:
        t2i = self.tag2id
        try:
            return [t2i[t] for t in tags]
        except KeyError as e:
            raise ValueError(f"tag {e.args[0]!r} is not in the label set {self.tags}") from None

    def decode(self, ids: Sequence[int]) -> list[str]:
        tags = self.tags
        return [tags[i] for i in ids]

    @property
    def continuation(self) -> list[int]:
        """Tag id -> the id of the tag that continues its entity (B-X and I-X -> I-X; O -> O)."""
        t2i = self.tag2id
        return [t2i[f"I-{t[2:]}"] if t != "O" else 0 for t in self.tags]

    def span_bounds(self, ids: Sequence[int]) -> list[tuple[int, int]]:
        """(first, last) word of each entity in a tag-id path (read like conlleval: an I-X after O starts one)."""
        return [(f, t) for _, f, t in spans(self.decode(ids))]

    def allowed_transitions(self) -> torch.Tensor:
        """(C, C) bool: allowed[i, j] is True if tag j may follow tag i in IOB2 (I-X only after B-X or I-X)."""
        tags = self.tags
        n = len(tags)
        import torch  # here, not at the top: reading a model dir's labels needs no torch

        allowed = torch.ones(n, n, dtype=torch.bool)
        for j, tj in enumerate(tags):
            if tj.startswith("I-"):
                typ = tj[2:]
                for i, ti in enumerate(tags):
                    allowed[i, j] = ti in (f"B-{typ}", f"I-{typ}")
        return allowed

    def allowed_starts(self) -> torch.Tensor:
        """(C,) bool: a sentence may not start with I-X."""
        import torch

        return torch.tensor([not t.startswith("I-") for t in self.tags])

    # -- schema file I/O -----------------------------------------------------------------------------------------
    def to_dict(self) -> dict:
        return {"types": list(self.types), "tags": self.tags, "scheme": "iob2", "descriptions": self.descriptions}

    @classmethod
    def from_dict(cls, d: dict) -> LabelSet:
        return cls.from_types(d["types"], d.get("descriptions"))

    @classmethod
    def load(cls, path: str | Path) -> LabelSet:
        """A schema file: JSON {"types": [...]} or {"types": [{"name", "description", "examples"}...]}; or YAML."""
        import yaml

        path = Path(path)
        if not path.is_file():
            raise DataError(f"{path}: label schema not found")
        text = path.read_text(encoding="utf-8")
        try:  # YAML is a superset of JSON: one parser reads both
            d = yaml.safe_load(text)
        except yaml.YAMLError as e:
            raise DataError(f"{path}: not valid JSON/YAML ({str(e).splitlines()[0]})") from None
        raw = d.get("types") if isinstance(d, dict) else None
        if not isinstance(raw, list) or not raw:
            raise DataError(f"{path}: a label schema needs a non-empty list 'types'")
        names, desc = [], {}
        for k, t in enumerate(raw):
            if isinstance(t, str):
                names.append(t)
            elif isinstance(t, dict) and isinstance(t.get("name"), str):
                names.append(t["name"])
                if t.get("description"):
                    desc[t["name"]] = str(t["description"])
            else:
                raise DataError(f"{path}: types[{k}] must be a name or {{'name': ..., 'description': ...}}")
        return cls.from_types(names, desc)


# What the common type abbreviations mean, in words a language model has read (head_init: names). A type not here is
# read as its own name, "_" and "-" as spaces ("creative-work" -> "creative work").
TYPE_WORDS = {"PER": "person", "PERSON": "person", "LOC": "location", "ORG": "organisation",
              "MISC": "other named entity", "GPE": "country or city", "NORP": "nationality or group",
              "FAC": "building or facility", "DATE": "date", "TIME": "time", "MONEY": "money"}


def type_phrase(labels: LabelSet, type_: str, describe: bool = False) -> str:
    """A type in words: its schema description (describe=True, where there is one), else its name spelled out."""
    if describe and labels.descriptions.get(type_):
        return labels.descriptions[type_]
    return TYPE_WORDS.get(type_.upper(), type_.replace("_", " ").replace("-", " ").lower())


def instruction(labels: LabelSet, how: str) -> str:
    """model.instruction's text for these labels ("" for "none"): the types in words, one line the words attend to."""
    if how == "none":
        return ""
    return "Entity types: " + "; ".join(type_phrase(labels, t, how == "descriptions") for t in labels.types) + "."


def label_set_for(train: Sequence[Sentence], schema: str | Path | None = None, train_name: str = "train") -> LabelSet:
    """A model's labels: the schema file's types if one is given (every training type must be in it), else the types
    found in the training data. The check `llm-ner validate --schema` runs too."""
    if schema:
        labels = LabelSet.load(schema)
        check_types(train, labels, f"the schema {schema}")
    else:
        labels = LabelSet.from_types(entity_types(train))
    if not labels.types:
        raise DataError(f"{train_name}: no entities in the training data")
    return labels


def check_types(sentences: Sequence[Sentence], labels: LabelSet, what: str) -> None:
    """Every entity type in `sentences` must be one of `labels`' types; the first sentence that breaks it is named."""
    allowed = set(labels.types)
    for s in sentences:
        bad = {t[2:] for t in s.tags if t != "O" and t[2:] not in allowed}
        if bad:
            raise DataError(f"{s.origin}: labels {sorted(bad)} are not in {what} ({', '.join(labels.types)})")
