"""The repository explains itself: every citation of the method points into docs/METHOD.md.

(a) Every `METHOD §N` or `METHOD §N.M` in the repository's text files (and every bare `§N` inside
    docs/METHOD.md) names a section or subsection that docs/METHOD.md has as a heading.
(b) No text cites the two outside documents the method was once written down in (their names are the
    patterns in OLD_CITATION): a clone cannot read them. In Python files only comments and strings are
    searched, so a variable that happens to share the name is no citation.
(c) Every code file that tags a reading of the paper ([interp]) is named in METHOD §12.

The files are those git knows, tracked or new but not ignored (*.py, *.md, *.sh, *.toml, Makefile).
Every failure names file and line.
"""

from __future__ import annotations

import io
import os
import re
import subprocess
import tokenize
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
METHOD = ROOT / "docs" / "METHOD.md"
SELF = Path(__file__).resolve().relative_to(ROOT).as_posix()
SUFFIXES = (".py", ".md", ".sh", ".toml")
SKIP_DIRS = (".venv", "runs", ".git")

HEADING = re.compile(r"^#{2,3} (\d+(?:\.\d+)?)\.?\s")
CITATION = re.compile(r"METHOD §")
SECTION = re.compile(r"§(\d+(?:\.\d+)?)(?:-(\d+(?:\.\d+)?))?")
OLD_CITATION = re.compile(r"\bSPEC\b|SPEC\.md|\bFORMATS\b|FORMATS\.md")
# Words that match OLD_CITATION without citing anything: a command line's placeholder argument.
NOT_A_CITATION = re.compile(r"--child SPEC\b")
INTERP = re.compile(r"\[interp\b")


def text_files() -> list[str]:
    """Repository-relative paths of the text files the checks read."""
    try:
        out = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                             capture_output=True, text=True, check=True).stdout.split("\n")
    except (OSError, subprocess.CalledProcessError):  # not a git checkout: walk the tree
        out = []
        for folder, dirs, names in os.walk(ROOT):
            dirs[:] = [d for d in dirs if d not in SKIP_DIRS]
            out += [(Path(folder) / n).relative_to(ROOT).as_posix() for n in names]
    return sorted({p for p in out if p and (p.endswith(SUFFIXES) or Path(p).name == "Makefile")
                   and not p.startswith(SKIP_DIRS) and (ROOT / p).is_file()})


def read(path: str) -> str:
    return (ROOT / path).read_text(encoding="utf-8", errors="replace")


def method_sections(text: str) -> set[str]:
    """The numbers of the `## N.` and `### N.M` headings of a METHOD.md text."""
    return {m.group(1) for line in text.split("\n") if (m := HEADING.match(line))}


def method_section(text: str, number: str) -> str:
    """The text of section `## number.` of a METHOD.md text, up to the next `## ` heading."""
    m = re.search(rf"^## {re.escape(number)}\.\s.*?(?=^## |\Z)", text, flags=re.MULTILINE | re.DOTALL)
    return m.group(0) if m else ""


def unresolved_citations(path: str, text: str, sections: set[str]) -> list[str]:
    """`path:line: §X` for every section cited in `text` that is not among `sections`. In METHOD.md
    itself every `§N` counts; elsewhere the ones from the first `METHOD §` of a line on."""
    bad = []
    own = path == "docs/METHOD.md"
    for lineno, line in enumerate(text.split("\n"), 1):
        start = 0 if own else (m.start() if (m := CITATION.search(line)) else -1)
        if start < 0:
            continue
        for m in SECTION.finditer(line, start):
            bad += [f"{path}:{lineno}: §{n} is no heading of docs/METHOD.md"
                    for n in m.groups() if n is not None and n not in sections]
    return bad


def searched_parts(path: str, text: str) -> list[tuple[int, str]]:
    """(first line, text) of the parts of a file the old-citation check reads: in Python its comments
    and strings, elsewhere the whole text."""
    if not path.endswith(".py"):
        return [(1, text)]
    kinds = {tokenize.COMMENT, tokenize.STRING} | ({tokenize.FSTRING_MIDDLE} if hasattr(tokenize, "FSTRING_MIDDLE")
                                                   else set())
    try:
        return [(tok.start[0], without_fields(tok.string) if tok.type == tokenize.STRING else tok.string)
                for tok in tokenize.generate_tokens(io.StringIO(text).readline) if tok.type in kinds]
    except (tokenize.TokenError, SyntaxError, IndentationError):
        return [(1, text)]


def without_fields(literal: str) -> str:
    """A string literal with an f-string's replacement fields blanked (they are code, not text), its
    line breaks kept so that line numbers still count."""
    prefix = re.match(r"[A-Za-z]*", literal).group(0)
    if "f" not in prefix.lower():
        return literal
    blank = literal.replace("{{", "  ").replace("}}", "  ")
    return re.sub(r"\{[^{}]*\}", lambda m: re.sub(r"[^\n]", " ", m.group(0)), blank)


def old_citations(path: str, text: str) -> list[str]:
    """`path:line: <the line>` for every citation of the outside documents in `text`."""
    bad, lines = [], text.split("\n")
    for first, part in searched_parts(path, text):
        for m in OLD_CITATION.finditer(part):
            lineno = first + part.count("\n", 0, m.start())
            line = lines[lineno - 1] if lineno <= len(lines) else part
            if NOT_A_CITATION.search(line):
                continue
            bad.append(f"{path}:{lineno}: {line.strip()}")
    return list(dict.fromkeys(bad))


def unnamed_interp_files(files: dict[str, str], readings: str) -> list[str]:
    """`path:line` of the first [interp] tag of every code file that the readings text does not name."""
    bad = []
    for path, text in files.items():
        if path.endswith(".md") or path in readings:
            continue
        for lineno, line in enumerate(text.split("\n"), 1):
            if INTERP.search(line):
                bad.append(f"{path}:{lineno}: tags a reading ([interp]) but METHOD §12 does not name {path}")
                break
    return bad


# ---- the repository ---------------------------------------------------------------------------------

def test_method_has_the_fixed_sections():
    sections = method_sections(read("docs/METHOD.md"))
    assert {str(n) for n in range(1, 13)} <= sections
    assert {"11.1", "11.2", "11.3", "11.4", "11.5", "12.1"} <= sections


def test_every_method_citation_names_a_heading():
    sections = method_sections(read("docs/METHOD.md"))
    bad = [b for p in text_files() if p != SELF for b in unresolved_citations(p, read(p), sections)]
    assert bad == [], "\n" + "\n".join(bad)


def test_nothing_cites_the_outside_documents():
    bad = [b for p in text_files() if p != SELF for b in old_citations(p, read(p))]
    assert bad == [], "\n" + "\n".join(bad)


def test_every_file_with_a_reading_is_named_in_section_12():
    readings = method_section(read("docs/METHOD.md"), "12")
    assert readings, "docs/METHOD.md has no section 12"
    files = {p: read(p) for p in text_files() if p != SELF and not p.endswith(".md")}
    bad = unnamed_interp_files(files, readings)
    assert bad == [], "\n" + "\n".join(bad)


# ---- the checks see what they are for ----------------------------------------------------------------

def test_the_checks_see_a_bad_citation():
    sections = method_sections("## 1. Input\n### 1.1 Crops\n## 2. Network\n")
    assert sections == {"1", "1.1", "2"}
    assert unresolved_citations("a.py", "x  # METHOD §1.1, §2 and METHOD §3\n# §9 alone\n", sections) == [
        "a.py:1: §3 is no heading of docs/METHOD.md"]
    assert unresolved_citations("a.md", "see METHOD §1-4", sections) == ["a.md:1: §4 is no heading of docs/METHOD.md"]
    assert unresolved_citations("docs/METHOD.md", "as in §7", sections) == [
        "docs/METHOD.md:1: §7 is no heading of docs/METHOD.md"]


def test_the_checks_see_an_old_citation_and_pass_a_variable():
    old = "SP" + "EC"  # spelt apart, so that this file holds no citation of its own
    fmt = "FOR" + "MATS"
    code = (f'"""Doc ({old} 5)."""\n{fmt} = ("a",)\nx = {fmt}  # as {fmt}.md says\ny = "--child {old}"\n'
            f'z = f"choose from {{{fmt}}} ({old} 6)"\n')
    assert old_citations("a.py", code) == [f'a.py:1: """Doc ({old} 5)."""', f"a.py:3: x = {fmt}  # as {fmt}.md says",
                                           f'a.py:5: z = f"choose from {{{fmt}}} ({old} 6)"']
    assert old_citations("a.md", f"line\n({old}.md section 2)\n") == [f"a.md:2: ({old}.md section 2)"]


def test_the_checks_see_an_unnamed_reading():
    tag = "[" + "interp]"
    files = {"m/a.py": f"x = 1\n# {tag} a reading\n", "m/b.py": f"# {tag}\n", "Makefile": f"# {tag}\n",
             "c.py": "x = 2\n"}
    assert unnamed_interp_files(files, "### 12.1 ...\n- File: `m/b.py`, `Makefile`.\n") == [
        "m/a.py:2: tags a reading ([interp]) but METHOD §12 does not name m/a.py"]
    assert method_section("## 11. A\nx\n## 12. B\ny\n### 12.1 C\nz\n", "12") == "## 12. B\ny\n### 12.1 C\nz\n"
