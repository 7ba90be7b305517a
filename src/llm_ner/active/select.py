"""Choose the texts to label next. `uncertainty` ranks a pool of unlabelled texts by how sure the model is of its
whole tagging — the mean log-probability per word of the decoded tags (MNLP, Shen et al., ICLR 2018: normalised by
length, so long texts are not chosen only for being long) — and takes the least sure; `random` is the baseline it is
measured against. The chosen texts come with the model's pre-annotations, so an annotator corrects rather than starts
from zero. A text is known by the hash of its words (split as every path splits them, joined by single spaces):
texts already labelled — the model's own training data, and any `exclude` corpus — and repeats within the pool are
never chosen."""

from __future__ import annotations

import hashlib
import random
from collections.abc import Iterable, Sequence
from pathlib import Path

from .. import rundir
from ..config import load_config
from ..data import DataError, load_corpus, load_split
from ..data.words import split_words
from ..inference.engine import NERModel
from ..inference.outputs import Predictions
from ..modeling.align import texts_and_offsets

STRATEGIES = ("uncertainty", "random")


def text_key(text: str) -> str:
    """The content hash a text is known by: its words as the splitter finds them, joined by single spaces."""
    words = " ".join(text[a:b] for a, b in split_words(text))
    return hashlib.sha256(words.encode("utf-8")).hexdigest()


def labelled_keys(sources: Iterable[str]) -> set[str]:
    """The keys of every sentence of labelled corpora (files in any labelled format, or bundled names)."""
    return {text_key(t) for src in sources for t in texts_and_offsets(load_corpus(src))[0]}


def training_keys(model_dir: str | Path) -> set[str]:
    """The keys of the sentences the model was trained on, from its run's config.yaml (RUN/model -> RUN/config.yaml);
    none when the model dir is not inside a run dir (then say `exclude`)."""
    cfg_path = Path(model_dir).resolve().parent / rundir.CONFIG
    if not cfg_path.is_file():
        return set()
    try:
        sents = load_split(load_config(cfg_path), "train") or []
    except (DataError, FileNotFoundError) as e:
        raise DataError(f"{cfg_path}: the model's training data cannot be read to leave it out of the pool ({e}); run "
                        "from where it was trained, or name the labelled data with --exclude") from None
    return {text_key(t) for t in texts_and_offsets(sents)[0]}


def candidates(texts: Sequence[str], n: int, strategy: str, exclude: set[str], pool_name: str) -> list[str]:
    """The pool's texts that may be chosen — with words, first copy of each, none already labelled — checked against
    what is asked (before any model loads), or a one-line error saying why not."""
    if strategy not in STRATEGIES:
        raise DataError(f"--strategy {strategy!r}: use one of {', '.join(STRATEGIES)}")
    if not texts:
        raise DataError(f"{pool_name}: the pool holds no texts")
    seen, out = set(exclude), []
    for t in texts:
        if split_words(t) and (k := text_key(t)) not in seen:
            seen.add(k)
            out.append(t)
    if not out:
        raise DataError(f"{pool_name}: every text of the pool is empty or already labelled")
    if not 1 <= n <= len(out):
        raise DataError(f"--n {n}: the pool has {len(out)} texts that are new and not yet labelled (of "
                        f"{len(texts)}); ask for 1 to {len(out)}")
    return out


def select(ner: NERModel, pool: Sequence[str], n: int, strategy: str = "uncertainty", seed: int = 0,
           progress: bool = False) -> Predictions:
    """The `n` texts of `pool` (from `candidates`) to label next, most useful first, with pre-annotations and their
    sequence scores."""
    if strategy == "random":
        return ner.predict_texts_scored(random.Random(seed).sample(list(pool), n), progress)
    scored = ner.predict_texts_scored(pool, progress)
    order = sorted(range(len(pool)), key=lambda i: scored.scores[i])[:n]  # least sure first
    return Predictions([pool[i] for i in order], [scored.results[i] for i in order],
                       scores=[scored.scores[i] for i in order])
