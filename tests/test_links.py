"""The documentation's links: every relative link and image in README.md and docs/*.md points at a file
that exists, and README.md links every docs/ page."""
from __future__ import annotations

import re
from pathlib import Path
from urllib.parse import unquote

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"

# Every inline link [text](target) and image ![alt](target) ends in "](target)", with an optional
# "title" after the target; matching that end alone also finds an image inside a link ([![alt](a.png)](b.md)).
# Code spans and fenced blocks are removed first.
LINK = re.compile(r"\]\(\s*<?([^()\s<>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
FENCE = re.compile(r"^(```|~~~).*?^\1", re.S | re.M)
CODE_SPAN = re.compile(r"`[^`\n]*`")
IMG_TAG = re.compile(r"<img\s[^>]*?\bsrc=\"([^\"]+)\"", re.I)  # HTML images (sized ones in tables)
EXTERNAL = re.compile(r"^(?:[a-z][a-z0-9+.-]*:|//)", re.I)  # http:, https:, mailto:, any scheme


def markdown_files() -> list[Path]:
    return [ROOT / "README.md", *sorted(DOCS.glob("*.md"))]


def links(path: Path) -> list[str]:
    """Every link and image target in a markdown file (HTML <img> included), outside code."""
    text = CODE_SPAN.sub("", FENCE.sub("", path.read_text(encoding="utf-8")))
    return [*LINK.findall(text), *IMG_TAG.findall(text)]


def relative_target(target: str) -> str | None:
    """The file part of a relative link, or None for external links and pure #anchors."""
    if EXTERNAL.match(target) or target.startswith("#"):
        return None
    return unquote(target.split("#", 1)[0].split("?", 1)[0]) or None


def test_link_parser_sees_links_and_images_and_skips_the_rest(tmp_path):
    page = tmp_path / "page.md"
    page.write_text(
        "[a](docs/a.md#part) ![b](assets/b.png) [c](https://x.org/c) [d](mailto:d@x.org) [e](#anchor)\n"
        '[`f`](f.md "title") `[g](not-a-link.md)`\n```\n[h](fenced.md)\n```\n[![i](i.png)](j.md)\n'
        '<img src="k.png" width="96"> <img alt="l" src="https://x.org/l.png">\n'
    )
    found = [t for t in map(relative_target, links(page)) if t]
    assert found == ["docs/a.md", "assets/b.png", "f.md", "i.png", "j.md", "k.png"]


def test_every_relative_link_and_image_exists():
    assert (ROOT / "README.md").is_file()
    broken = []
    for path in markdown_files():
        for target in links(path):
            file_part = relative_target(target)
            if file_part is not None and not (path.parent / file_part).exists():
                broken.append(f"{path.relative_to(ROOT)}: {target}")
    assert not broken, "broken links (file: target):\n" + "\n".join(broken)


def test_every_docs_page_is_linked_from_the_readme():
    readme = ROOT / "README.md"
    linked = {
        (readme.parent / t).resolve()
        for t in map(relative_target, links(readme))
        if t is not None
    }
    pages = sorted(DOCS.glob("*.md"))
    assert pages, "docs/ holds no pages"
    unlinked = [str(p.relative_to(ROOT)) for p in pages if p.resolve() not in linked]
    assert not unlinked, "docs pages not linked from README.md:\n" + "\n".join(unlinked)
