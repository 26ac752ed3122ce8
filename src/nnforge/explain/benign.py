"""Benign shifts: the same content written differently — casing, punctuation, line breaks, spelling.

An out-of-distribution detector exists to flag inputs the model was not built for; one that also flags a
passage because it was lower-cased or its line breaks moved is as useless as one that misses real change.
Each shift here keeps the words' meaning and changes only their form, so a detector's false-positive rate on
them should stay near its nominal rate (1 − recall at its threshold). Shifts are registered by name.

    from nnforge.explain.benign import BENIGN_SHIFTS, shift_texts
    shift_texts(["Call'd thee, o'er the hill,\\nMy lord!"], "spelling")   # ['Called thee, over the hill,\\nMy lord!']
"""

from __future__ import annotations

import re
from collections.abc import Callable

from nnforge.registry import Registry

__all__ = ["BENIGN_SHIFTS", "shift_texts"]

BENIGN_SHIFTS: Registry[Callable[[str], str]] = Registry("benign shift")

# Early-modern spellings and their modern forms (the same words, spelled as a modern edition prints them)
_SPELLING = {"o'er": "over", "e'er": "ever", "ne'er": "never", "e'en": "even", "'tis": "it is", "'twas": "it was",
             "'twere": "it were", "i'the": "in the", "o'the": "of the", "th'": "the ", "an't": "and it",
             "whate'er": "whatever", "howe'er": "however", "where'er": "wherever", "betwixt": "between",
             "murther": "murder", "vild": "vile", "burthen": "burden"}
_SPELL_RE = re.compile(r"(?<![\w'])(" + "|".join(re.escape(k) for k in sorted(_SPELLING, key=len, reverse=True))
                       + r")(?![\w])", re.IGNORECASE)
_ED_RE = re.compile(r"\b(\w+)'d\b")  # call'd -> called, lov'd -> loved


def _match_case(original: str, new: str) -> str:
    return new[:1].upper() + new[1:] if original.lstrip("'")[:1].isupper() else new


@BENIGN_SHIFTS.register("lowercase")
def lowercase(text: str) -> str:
    return text.lower()


@BENIGN_SHIFTS.register("uppercase")
def uppercase(text: str) -> str:
    return text.upper()


@BENIGN_SHIFTS.register("no-punctuation")
def no_punctuation(text: str) -> str:
    """Sentence punctuation removed (apostrophes inside words kept: they are spelling)."""
    return re.sub(r"[ \t]+", " ", re.sub(r"[.,;:!?\"()\[\]\-—]", "", text)).strip()


@BENIGN_SHIFTS.register("line-breaks")
def line_breaks(text: str) -> str:
    """The verse lines joined into one line (prose layout)."""
    return " ".join(line.strip() for line in text.splitlines() if line.strip())


@BENIGN_SHIFTS.register("spelling")
def spelling(text: str) -> str:
    """Modern spelling of early-modern forms: o'er → over, 'tis → it is, call'd → called."""
    text = _SPELL_RE.sub(lambda m: _match_case(m.group(0), _SPELLING[m.group(0).lower()]), text)
    return _ED_RE.sub(lambda m: m.group(1) + ("d" if m.group(1).endswith("e") else "ed"), text)


def shift_texts(texts: list[str], shift: str) -> list[str]:
    """``texts`` rewritten by the registered ``shift``."""
    fn = BENIGN_SHIFTS.get(shift, where="benign shift")
    return [fn(t) for t in texts]
