"""The project stands alone: its files cite only what a clone of it has.

- No file names the reference notes kept outside the repository (their folder, or their
  file names: the event format, the vendor notes, the Celery notes...), and none speaks of
  an issue by number: a reader of the code cannot follow either. What the code relies on
  from the vendors is stated in docs/vendors.md, with the vendors' public pages.
- Every relative link of README.md and docs/*.md reaches a file, and a ``#anchor`` a
  heading of it.
- Every ``docs/X.md`` (with its ``#anchor``) named in code, tests, messages or config exists.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from functools import cache
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"
SKIPPED_DIRS = {".git", ".venv", "venv", "node_modules", "build", "dist", "__pycache__"}
TEXT_SUFFIXES = {".py", ".md", ".yml", ".yaml", ".toml", ".json", ".cfg", ".ini", ".txt", ".sh"}
TEXT_NAMES = {"Makefile", "Dockerfile", "run", ".env.example", ".dockerignore", ".gitignore"}

#: The file names of the reference notes that live outside the repository. No page of ours
#: takes one of these names: a reader (or a tool) could not tell the two apart.
REFERENCE_NOTES = ("events", "braze", "sendinblue", "celery", "connectors", "two-way")
REFERENCE_NOTES += ("architecture", "ingress")
NOTE = re.compile(rf"(?<![\w-])(docs/)?({'|'.join(REFERENCE_NOTES)})\.md\b")
OUTSIDE = re.compile(r"\.\./shared\b|\bshared/reference\b|\bdocs/reference\b")
ISSUE = re.compile(r"\b[Ii]ssues?\s+#?\d+|(?:^|[\s(\[])#\d+\b(?![\w-])")
DOC_PAGE = re.compile(r"(?<![\w./-])docs/([\w.-]+\.md)(?:#([\w-]+))?")
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
FENCE = re.compile(r"^(```|~~~).*?^\1[^\n]*$", re.M | re.S)


def text_files() -> Iterator[Path]:
    """The repository's text files: code, tests, docs, configuration, CI."""
    for path in sorted(ROOT.rglob("*")):
        parts = path.relative_to(ROOT).parts
        if any(part in SKIPPED_DIRS or part.endswith(".egg-info") for part in parts[:-1]):
            continue
        if path == Path(__file__).resolve() or not path.is_file():
            continue
        if path.suffix in TEXT_SUFFIXES or path.name in TEXT_NAMES:
            yield path


def lines_of(path: Path) -> Iterator[tuple[int, str]]:
    yield from enumerate(path.read_text(encoding="utf-8").splitlines(), start=1)


def where(path: Path, number: int, line: str) -> str:
    return f"{path.relative_to(ROOT)}:{number}: {line.strip()}"


def slug(heading: str) -> str:
    """A heading's anchor as GitHub makes it: lower case, punctuation dropped, each space a
    hyphen (so ``python -m`` gives ``python--m``)."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


@cache
def anchors(path: Path) -> frozenset[str]:
    """The anchors of a Markdown file: its headings (outside code blocks; a repeated one
    gets ``-1``, ``-2``... as on GitHub) and any explicit ``id``/``name``."""
    text = FENCE.sub("", path.read_text(encoding="utf-8"))
    seen: dict[str, int] = {}
    found: set[str] = set(re.findall(r"<a\s+(?:id|name)=\"([^\"]+)\"", text))
    for heading in re.findall(r"^#{1,6}\s+(.+?)\s*#*\s*$", text, flags=re.M):
        base = slug(heading)
        count = seen.get(base, 0)
        seen[base] = count + 1
        found.add(base if count == 0 else f"{base}-{count}")
    return frozenset(found)


def markdown_pages() -> list[Path]:
    return [ROOT / "README.md", *sorted(DOCS.glob("*.md"))]


def test_there_are_files_and_pages_to_check() -> None:
    files = list(text_files())
    assert len(files) > 50 and ROOT / "Makefile" in files and ROOT / "README.md" in files
    assert ROOT / "docker-compose.yml" in files and ROOT / "worker" / "__init__.py" in files
    assert len(markdown_pages()) > 5


def test_no_page_of_ours_takes_a_reference_notes_name() -> None:
    taken = sorted(f"docs/{name}.md" for name in REFERENCE_NOTES if (DOCS / f"{name}.md").exists())
    assert taken == []


def test_no_file_cites_the_reference_notes_outside_the_repository() -> None:
    found = [
        where(path, number, line)
        for path in text_files()
        for number, line in lines_of(path)
        if OUTSIDE.search(line) or NOTE.search(line)
    ]
    assert found == [], "name docs/vendors.md (or state the fact) instead:\n" + "\n".join(found)


def test_no_file_speaks_of_an_issue_by_number() -> None:
    found = [
        where(path, number, line)
        for path in text_files()
        for number, line in lines_of(path)
        if ISSUE.search(line)
    ]
    assert found == [], "say what the thing is instead:\n" + "\n".join(found)


@pytest.mark.parametrize("page", markdown_pages(), ids=lambda page: page.name)
def test_relative_links_reach_a_file_and_a_heading(page: Path) -> None:
    text = FENCE.sub("", page.read_text(encoding="utf-8"))
    broken = []
    for target in LINK.findall(text):
        if re.match(r"[a-z][a-z+.-]*:", target):  # https:, mailto:
            continue
        name, _, anchor = target.partition("#")
        linked = (page.parent / name).resolve() if name else page
        if not linked.exists():
            broken.append(f"{target}: no such file")
        elif anchor and linked.suffix == ".md" and anchor not in anchors(linked):
            broken.append(f"{target}: no such heading in {linked.relative_to(ROOT)}")
    assert broken == [], f"{page.relative_to(ROOT)}:\n" + "\n".join(broken)


def test_every_docs_page_named_in_the_repository_exists() -> None:
    missing = []
    for path in text_files():
        for number, line in lines_of(path):
            for name, anchor in DOC_PAGE.findall(line):
                page = DOCS / name
                if not page.is_file() or (anchor and anchor not in anchors(page)):
                    missing.append(f"{where(path, number, line)} [docs/{name}#{anchor}]")
    assert missing == [], "a docs page or heading that does not exist:\n" + "\n".join(missing)


def test_the_slugs_are_githubs() -> None:
    assert slug("See it work: `make demo`") == "see-it-work-make-demo"
    assert slug("The ingress (`python -m bench.ingress`)") == "the-ingress-python--m-benchingress"
    assert slug("A person's state") == "a-persons-state"
    assert slug("Brevo (Sendinblue)") == "brevo-sendinblue"


#: A repository path a page or a message names: `examples/...json`, `tests/fakes/x.py`...
NAMED_FILE = re.compile(
    r"(?<![\w./-])((?:examples|tests|worker|bench|docs|\.ci)/[\w./-]*\w\.(?:py|json|md|env|lua))\b"
)
#: Words that date a page: true the day they were written, wrong a release later.
SELF_DATING = re.compile(
    r"\b(?:this|the previous|an older|the older) release\b|\brelease before\b|\(was [\d.]+\)"
    r"|\bis planned\b|\bcoming soon\b",
    re.I,
)


def test_every_repository_file_a_page_or_message_names_exists() -> None:
    missing = []
    for path in [*markdown_pages(), *sorted((ROOT / "worker").rglob("*.py"))]:
        for number, line in lines_of(path):
            for name in NAMED_FILE.findall(line):
                if not (ROOT / name).exists() and not any(ch in name for ch in "*{<"):
                    missing.append(f"{where(path, number, line)} [{name}]")
    assert missing == [], "a file that does not exist:\n" + "\n".join(missing)


def test_no_page_dates_itself() -> None:
    found = [
        where(page, number, line)
        for page in markdown_pages()
        for number, line in lines_of(page)
        if SELF_DATING.search(line)
    ]
    assert found == [], "say what is, not when it changed:\n" + "\n".join(found)
