"""Raw text -> words: the splitter every path shares (span-annotated data, prediction, the prompted baseline), so a
model is always fed the words it was trained on."""

from __future__ import annotations

import re

# Word splitter for raw text, written to match CoNLL-2003's (Penn Treebank-like) tokenisation, which the bundled models
# are trained on — a model scored on re-split text sees words it never saw (issue 13: with the old splitter 669 of the
# 3,453 test sentences joined by spaces came back split differently, now 28; benchmarks/run --only raw_text measures
# the F1 gap). No library tokenizer reproduces CoNLL's conventions (spaCy and NLTK split "1." / "3,000" / "U.S." in
# their own ways), so it stays a regex, tested on the bundled corpus. Alternatives, first match wins:
_ABBREV = ("Mr|Mrs|Ms|Dr|St|Jr|Sr|Co|Corp|Inc|Ltd|Gen|Gov|Sen|Rep|Mt|Ft|No|vs|Jan|Feb|Mar|Apr|Aug|Sep|Sept|Oct|Nov|"
           "Dec|Messrs|Prof|Lt|Col|Capt|Sgt|Bros|Rev|Calif|Fla")
WORD_RE = re.compile(
    # an e-mail address, whole; it may only start where a run of [\w.+-] starts (the lookbehind), else every
    # position of a long run like "a+a+a+…" would rescan the rest of it for an "@": quadratic time (issue 20)
    r"(?<![\w.+-])[\w.+-]+@[\w-]+(?:\.[\w-]+)+"
    r"|['’](?:[sSdDmM]|ll|LL|re|RE|ve|VE)\b|n['’]t\b"  # clitics on their own: 's 'S 'm 've 're 'll 'd n't
    r"|\w+(?=n['’]t\b)"  # do|n't
    r"|(?:[A-Za-z]\.){2,}"  # dotted acronyms: U.S. a.m. F.A.
    rf"|(?:{_ABBREV})\."  # common abbreviations keep their period
    r"|(?<![\w.])[A-Z]\.(?=\s)"  # an initial: M.
    r"|(?:^|(?<=\s))\d{1,3}\.(?=\s)"  # a list number: 1.
    r"|[A-Z]{0,3}\$"  # currencies: $ C$ US$
    r"|[+-]?(?:\d+|\.\d+)(?:[.,/:-]\d+)*[A-Za-z]*=?(?![\w&-])"  # 3,000 1/2 22/11/96 .500 +44 1,250M 10=
    r"|\w+&\w+"  # S&P
    r"|\w+(?:(?:['’](?![sSdDmM]\b|ll\b|re\b|ve\b)|[.\-])\w+)*"  # words, inner apostrophes / hyphens / dots kept
    r"|-{2,}|\.{2,}"  # -- ...
    r"|[^\w\s]",  # any other symbol alone
    re.UNICODE,
)


def split_words(text: str) -> list[tuple[int, int]]:
    """Raw text -> word (start, end) character offsets. Emails stay whole; punctuation is its own word."""
    return [m.span() for m in WORD_RE.finditer(text)]
