"""The docs cannot drift from the code: every Python block in README.md and docs/ is a marked snippet.

A Python block on a page is preceded by a line naming its source and marker::

    <!-- snippet: example_dags/carerix_event_driven.py howto_event_driven_dag -->
    ```python
    ...
    ```

and equals the (dedented) lines between ``# [START howto_event_driven_dag]`` and ``# [END ...]`` of that file,
which is an example DAG or a test, so the code shown runs in the suite. After changing a marked source, rewrite
the pages' copies with::

    .venv/bin/python tests/test_docs.py --write
"""

from __future__ import annotations

import re
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]

_FENCE = re.compile(r"^```(?P<lang>[\w+-]*)\s*$")
_SNIPPET = re.compile(r"^<!-- snippet: (?P<path>\S+) (?P<name>[\w.-]+) -->$")
_MARK = re.compile(r"#\s*\[(?P<kind>START|END) (?P<name>[\w.-]+)\]\s*$")
_LINK = re.compile(r"\]\((?P<target>[^)#\s]+)(?:#[^)]*)?\)")


@dataclass
class Block:
    page: Path
    line: int  # 1-based line of the opening fence
    lang: str
    body: str
    source: str | None  # "path name" from the snippet comment
    start: int  # index of the first body line
    end: int  # index of the closing fence


def blocks(page: Path) -> list[Block]:
    lines = page.read_text().splitlines()
    found: list[Block] = []
    i = 0
    while i < len(lines):
        m = _FENCE.match(lines[i])
        if not m:
            i += 1
            continue
        j = i + 1
        while j < len(lines) and lines[j].rstrip() != "```":
            j += 1
        if j == len(lines):
            raise AssertionError(f"{page.name}:{i + 1}: code block never closed")
        previous = next((lines[k] for k in range(i - 1, -1, -1) if lines[k].strip()), "")
        snippet = _SNIPPET.match(previous.strip())
        found.append(
            Block(
                page=page,
                line=i + 1,
                lang=m["lang"],
                body="\n".join(lines[i + 1 : j]),
                source=f"{snippet['path']} {snippet['name']}" if snippet else None,
                start=i + 1,
                end=j,
            )
        )
        i = j + 1
    return found


def snippets(path: Path) -> dict[str, str]:
    """Every marked block of a source file, dedented; unbalanced or repeated markers are errors."""
    result: dict[str, str] = {}
    open_at: dict[str, int] = {}
    lines = path.read_text().splitlines()
    for number, line in enumerate(lines):
        m = _MARK.search(line)
        if not m:
            continue
        name = m["name"]
        if m["kind"] == "START":
            if name in open_at or name in result:
                raise AssertionError(f"{path.relative_to(ROOT)}:{number + 1}: marker {name} repeated")
            open_at[name] = number
        else:
            if name not in open_at:
                raise AssertionError(f"{path.relative_to(ROOT)}:{number + 1}: [END {name}] without START")
            # Marker lines of other (overlapping) snippets inside this one are not part of it.
            inner = [text for text in lines[open_at.pop(name) + 1 : number] if not _MARK.search(text)]
            body = "\n".join(inner)
            result[name] = textwrap.dedent(body).strip("\n")
    if open_at:
        raise AssertionError(f"{path.relative_to(ROOT)}: [START] without END: {sorted(open_at)}")
    return result


def expected(block: Block) -> str:
    assert block.source is not None
    rel, name = block.source.split(" ")
    path = ROOT / rel
    if not path.is_file():
        raise AssertionError(f"{block.page.name}:{block.line}: snippet source {rel} does not exist")
    marked = snippets(path)
    if name not in marked:
        raise AssertionError(f"{block.page.name}:{block.line}: {rel} has no [START {name}]/[END {name}]")
    return marked[name]


def _id(block: Block) -> str:
    return f"{block.page.name}:{block.line}"


ALL_BLOCKS = [b for page in PAGES for b in blocks(page)]
PYTHON_BLOCKS = [b for b in ALL_BLOCKS if b.lang in ("python", "py")]


def test_the_docs_show_python_code() -> None:
    assert len(PYTHON_BLOCKS) >= 5, [_id(b) for b in PYTHON_BLOCKS]


@pytest.mark.parametrize("block", PYTHON_BLOCKS, ids=_id)
def test_python_block_equals_its_marked_source(block: Block) -> None:
    assert block.source, (
        f"{_id(block)}: a Python block must come from an example DAG or a tested file: put "
        "'<!-- snippet: PATH NAME -->' above it and '# [START NAME]'/'# [END NAME]' around the code in PATH"
    )
    assert block.body.strip("\n") == expected(block), (
        f"{_id(block)} differs from {block.source}: run `.venv/bin/python tests/test_docs.py --write`"
    )


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_local_links_resolve(page: Path) -> None:
    text = page.read_text()
    broken = []
    for m in _LINK.finditer(text):
        target = m["target"]
        if re.match(r"^[a-z]+:", target):
            continue
        if not (page.parent / target).exists():
            broken.append(target)
    assert not broken, f"{page.name}: links to missing files: {broken}"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_no_build_notes_in_the_docs(page: Path) -> None:
    text = page.read_text()
    notes = re.findall(r"(?i)\bissue \d+|\bCONTRACTS\.md|not explained yet", text)
    assert not notes, f"{page.name}: {notes}"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_no_test_counts_that_go_stale(page: Path) -> None:
    """A count of passed tests was true once; each test added makes it false. The commands print them."""
    # pytest's summary always has "N passed"; "26 failed" alone may be a measurement (deployment.md's inserts).
    counts = re.findall(r"\b\d[\d,]* passed\b(?:, \d[\d,]* \w+)*", page.read_text())
    assert not counts, f"{page.name}: {counts}"


def test_the_readme_says_what_make_test_installs() -> None:
    """Running the tests as root may install system packages: the README's testing line says which, and how."""
    from tests.test_ui import CHROMIUM_PACKAGES

    text = (ROOT / "README.md").read_text()
    [paragraph] = [p for p in text.split("\n\n") if p.startswith("`make test` ")]
    paragraph = " ".join(paragraph.split())
    assert "as root" in paragraph and "apt-get" in paragraph and "says so" in paragraph, paragraph
    for package in CHROMIUM_PACKAGES:
        assert f"`{package}`" in paragraph, (package, paragraph)


def write() -> int:
    """Rewrite every snippet block of the pages from its source; returns the number of blocks changed."""
    changed = 0
    for page in PAGES:
        lines = page.read_text().splitlines()
        for block in reversed([b for b in blocks(page) if b.source]):
            new = expected(block).splitlines()
            if lines[block.start : block.end] != new:
                lines[block.start : block.end] = new
                changed += 1
        page.write_text("\n".join(lines) + "\n")
    return changed


if __name__ == "__main__":
    if sys.argv[1:] != ["--write"]:
        sys.exit(f"usage: {sys.argv[0]} --write   (rewrites the docs' snippet blocks from their sources)")
    print(f"{write()} snippet block(s) rewritten")
