"""Choose the texts to label next. `uncertainty` ranks a pool of unlabelled texts by how sure the model is of its whole
tagging — the mean log-probability per word of the decoded tags (MNLP, Shen et al., ICLR 2018: normalised by length, so
long texts are not chosen only for being long) — and takes the least sure; `diverse` takes the least sure spread over
what they say (`diverse_pick`), so one template ("TOKYO 1996-08-23" datelines) does not fill the batch — the default, as
it measured best (scripts/simulate_al.py, 3 seeds); `random` is the baseline they are measured against. The chosen texts
come with the model's pre-annotations, so an annotator corrects rather than starts from zero. A text is known by the
hash of its words (split as every path splits them, joined by single spaces): texts already labelled — the model's own
training data, and any `exclude` corpus — and repeats within the pool are never chosen."""

from __future__ import annotations

import hashlib
import random
from collections.abc import Iterable, Sequence
from dataclasses import replace
from pathlib import Path

import torch
import torch.nn.functional as F

from .. import rundir
from ..data import DataError, load_corpus, read_texts
from ..data.words import split_words
from ..errors import UserError
from ..fsutil import atomic_write_text, refuse_overwrite
from ..inference.engine import NERModel
from ..inference.outputs import Predictions, check_output
from ..modeling.persistence import check_runtime
from ..modeling.processor import texts_and_offsets

STRATEGIES = ("diverse", "uncertainty", "random")  # the first is the default: the simulation's best (3 seeds)


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
    try:
        sents = rundir.trained_on(model_dir) or []
    except DataError as e:
        raise DataError(f"{e}; run from where it was trained, or name the labelled data with --exclude") from None
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


def text_vectors(ner: NERModel, texts: Sequence[str]) -> torch.Tensor:
    """(N, D) unit vectors: each text's mean input embedding over its subword tokens — a bag of subwords from the
    backbone's own table, no forward pass — so texts of one template ("TOKYO 1996-08-23", "BEIJING 1996-08-27")
    land close."""
    if ner.runtime != "torch":
        raise UserError(f"--strategy diverse reads the backbone's embedding table, which an {ner.runtime} export does "
                        "not hold: select with the PyTorch model dir it came from, or --strategy uncertainty")
    table = ner.model.backbone.get_input_embeddings().weight
    ids = ner.tokenizer(list(texts), add_special_tokens=False)["input_ids"]
    rows = [table[torch.tensor(i or [0], device=table.device)].float().mean(0) for i in ids]
    return F.normalize(torch.stack(rows).cpu(), dim=1)


def diverse_pick(doubt: torch.Tensor, vectors: torch.Tensor, n: int, seed: int = 0, beta: int = 10,
                 iters: int = 20) -> list[int]:
    """Diverse mini-batch active learning (Zhdanov, 2019): the `beta * n` least sure texts, cut into `n` groups by
    k-means weighted by doubt (k-means++ start, seeded); from each group the text nearest its centre. Indices into
    `doubt` (N,) (higher: less sure), most doubtful first. Hand-written (a few tensor lines) rather than a
    scikit-learn dependency for one weighted k-means."""
    top = torch.argsort(doubt, descending=True, stable=True)[: min(len(doubt), beta * n)]
    x, w = vectors[top], doubt[top].clamp(min=0) + 1e-6  # (M, D), (M,)
    g = torch.Generator().manual_seed(seed)
    centres = x[:1].clone()  # k-means++: the least sure, then each next centre far from those chosen
    for _ in range(1, n):
        d2 = torch.cdist(x, centres).min(1).values.square() * w
        centres = torch.cat([centres, x[torch.multinomial(d2 + 1e-12, 1, generator=g)]])
    for _ in range(iters):
        assign = torch.cdist(x, centres).argmin(1)  # (M,)
        sums = torch.zeros_like(centres).index_add_(0, assign, x * w[:, None])
        mass = torch.zeros(n).index_add_(0, assign, w)
        centres = torch.where(mass[:, None] > 0, sums / mass.clamp(min=1e-12)[:, None], centres)
    chosen: list[int] = []
    for k in range(n):  # the member nearest each centre; an empty group gives the least sure text left
        members = (assign == k).nonzero().flatten().tolist()
        members = [m for m in members if m not in chosen] or [m for m in range(len(top)) if m not in chosen][:1]
        chosen.append(min(members, key=lambda m: float((x[m] - centres[k]).norm())))
    return sorted((int(top[m]) for m in chosen), key=lambda i: -float(doubt[i]))


def select(ner: NERModel, pool: Sequence[str], n: int, strategy: str = STRATEGIES[0], seed: int = 0,
           progress: bool = False) -> Predictions:
    """The `n` texts of `pool` (from `candidates`) to label next, most useful first, with pre-annotations and their
    sequence scores."""
    if strategy == "random":
        return ner(random.Random(seed).sample(list(pool), n), scored=True, progress=progress)
    scored = ner(pool, scored=True, progress=progress)
    if strategy == "diverse":
        order = diverse_pick(-torch.tensor(scored.scores), text_vectors(ner, pool), n, seed)
    else:
        order = sorted(range(len(pool)), key=lambda i: scored.scores[i])[:n]  # least sure first
    return scored[order]


def select_file(model: str, pool: str, n: int, output: str, strategy: str = STRATEGIES[0], to: str = "label-studio",
                fmt: str = "auto", exclude: Sequence[str] = (), seed: int = 0, review: bool = False,
                progress: bool = True, **load) -> tuple[int, int]:
    """`llm-ner select`: choose `n` texts of `pool` (any format `predict` reads), never one the model was trained on
    or one of `exclude`, and write them pre-annotated to `output` in the shape `to`. Returns (chosen, texts in the
    pool). `load`: what NERModel.from_pretrained takes."""
    out = check_output(to, False, review)
    refuse_overwrite({"--output": output}, {"--pool": pool, **{f"--exclude {e}": e for e in exclude}})
    kind, items = read_texts(pool, fmt)
    texts = list(items) if kind == "text" else texts_and_offsets(items)[0]
    chosen_from = candidates(texts, n, strategy, training_keys(model) | labelled_keys(exclude), pool)
    if strategy == "diverse" and load.get("runtime", "auto") == "auto" and check_runtime(model, "auto") == "torch":
        load = {**load, "runtime": "torch"}  # it reads the PyTorch backbone's embeddings: not an export inside
    chosen = select(NERModel.from_pretrained(model, **load), chosen_from, n, strategy, seed, progress=progress)
    atomic_write_text(Path(output), replace(chosen, review=review).to(out.name,
                                                                      model=rundir.model_tag(rundir.model_identity(model))))
    return len(chosen.texts), len(texts)
