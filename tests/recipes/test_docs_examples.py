"""Every ```python block of README.md and docs/*.md runs, in order, one namespace per document; every
``nnforge …`` command of their shell blocks names a real command with real options.

A block that cannot run here says so on the line above its fence: ``<!-- docs-test: skip: <reason> -->``
(the reason is required). Examples that use a finished run get the small quickstart run of this session
(a copy, in a fresh folder): the run ids and the artifact prefix the documents print stand for it. A document
whose examples name neither runs in an empty folder.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import re
import shlex
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
DOCUMENTS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
BLOCK = re.compile(r"^```python\n(.*?)^```", re.S | re.M)
SHELL = re.compile(r"^```(?:bash|sh|console)\n(.*?)^```", re.S | re.M)
SKIP = re.compile(r"<!-- docs-test: skip(?:: (?P<reason>.*?))? -->\s*$")
# the run ids and the artifact prefix shown in the documents, standing for the test's own run
RUN_IDS = ("<run-id>", "20261122-140000-1a2b3c", "20261128-053421-148a00")
ARTIFACT_PREFIX = "af7a7f32"


def blocks(path: Path) -> list[tuple[int, str, str | None]]:
    """``(line, code, skip reason or None)`` per python block of ``path``."""
    text = path.read_text(encoding="utf-8")
    out = []
    for m in BLOCK.finditer(text):
        line = text.count("\n", 0, m.start()) + 1
        before = text[:m.start()].rstrip("\n").rsplit("\n", 1)[-1]
        skip = SKIP.match(before)
        if skip and not (skip.group("reason") or "").strip():
            raise AssertionError(f"{path.name}:{line}: a docs-test skip marker needs a reason")
        out.append((line, m.group(1), skip.group("reason").strip() if skip else None))
    return out


def test_every_document_has_examples_and_few_are_skipped():
    found = {p.name: blocks(p) for p in DOCUMENTS}
    assert all(found.values()), [n for n, b in found.items() if not b]
    skipped = [(n, line) for n, bs in found.items() for line, _, reason in bs if reason]
    assert len(skipped) <= 3, skipped


def uses_the_run(path: Path) -> bool:
    """Whether an example of ``path`` that runs names the run (one of its ids or the artifact prefix)."""
    return any(name in code for _, code, reason in blocks(path) if not reason for name in (*RUN_IDS, ARTIFACT_PREFIX))


@pytest.mark.parametrize("document", DOCUMENTS, ids=lambda p: p.name)
def test_document_examples_run(document, request, tmp_path, monkeypatch):
    if uses_the_run(document):  # the examples may write to the copy's runs/ and .nnforge/
        _, run_dir = request.getfixturevalue("small_run_copy")
        names = {run_id: run_dir.name for run_id in RUN_IDS}
        names[ARTIFACT_PREFIX] = hashlib.sha256((run_dir / "model-int8.safetensors").read_bytes()).hexdigest()[:8]
    else:  # an empty working folder: no quickstart run made for it (a worker of make test's may need none)
        monkeypatch.chdir(tmp_path)
        names = {}
    namespace: dict = {"__name__": "__docs__"}
    for line, code, reason in blocks(document):
        if reason:
            continue
        for shown, real in names.items():
            code = code.replace(shown, real)
        try:
            exec(compile(code, f"{document.name}:{line}", "exec"), namespace)  # noqa: S102 - our own documents
        except Exception as exc:
            raise AssertionError(f"the example at {document.name}:{line} fails: {type(exc).__name__}: {exc}") from exc


def commands(path: Path) -> list[tuple[int, list[str]]]:
    """``(line, argv after "nnforge")`` for each ``nnforge`` command in the shell blocks of ``path``
    (comments dropped, ``&&``/``|`` chains split, ``VAR=value`` prefixes skipped)."""
    text = path.read_text(encoding="utf-8")
    out = []
    for m in SHELL.finditer(text):
        first = text.count("\n", 0, m.start()) + 2
        for i, line in enumerate(m.group(1).splitlines()):
            argv: list[str] = []
            for tok in [*shlex.split(line, comments=True), "&&"]:
                if tok not in ("&&", "||", ";", "|"):
                    argv.append(tok)
                    continue
                while argv and re.match(r"^[A-Z_]+=", argv[0]):
                    argv.pop(0)
                if argv and argv[0] == "nnforge":
                    out.append((first + i, argv[1:]))
                argv = []
    return out


def test_document_commands_name_real_commands_and_options(monkeypatch):
    import typer.main

    from nnforge.cli import app, main

    # every main() call has typer build click's command tree from the functions' signatures (about 0.2 s of the
    # 0.25 s a --help takes); build it once: the same click command parses every command line below
    built, build = typer.main.get_command(app), typer.main.get_command
    monkeypatch.setattr(typer.main, "get_command", lambda t: built if t is app else build(t))
    found = [(p.name, line, argv) for p in DOCUMENTS for line, argv in commands(p)]
    assert len(found) >= 40, len(found)
    bad = []
    for name, line, argv in found:
        err = io.StringIO()
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(err):
            rc = main([*argv, "--help"])  # parses every option before the help: unknown ones are errors
        if rc:
            bad.append(f"{name}:{line}: nnforge {' '.join(argv)} -> {err.getvalue().strip().splitlines()[-1:]}")
    assert not bad, "\n".join(bad)


def test_the_suite_shown_in_the_evaluation_guide_is_the_shipped_one():
    guide = (ROOT / "docs" / "evaluate.md").read_text(encoding="utf-8")
    shown = re.search(r"^```yaml\n(name: quickstart\n.*?)^```", guide, re.S | re.M)
    shipped = (ROOT / "src" / "nnforge" / "evaluate" / "suites" / "quickstart.yaml").read_text(encoding="utf-8")
    assert shown is not None
    assert shown.group(1) == shipped[shipped.index("name: quickstart"):]  # the file minus its header comments
