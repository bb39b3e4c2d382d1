"""Regenerate every chapter's outputs-stripped .ipynb from its MyST .md (run by `make pair`).

Colab opens only .ipynb files, so each chapter ``book/<name>.md`` has a twin
``book/<name>.ipynb`` with the same cells and no outputs. The install cell of
every chapter names the repository of ``_config.yml`` (``repository.url``):
this script rewrites it there first, so that changing the repository in
``_config.yml`` and running ``make pair`` is all it takes.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import jupytext
import yaml

ROOT = Path(__file__).resolve().parents[1]
URL_PATTERN = re.compile(r"git\+https://[^\s\"'@]+")


def repository_url() -> str:
    """The book's repository URL from ``_config.yml``."""
    config = yaml.safe_load((ROOT / "_config.yml").read_text(encoding="utf-8"))
    return config["repository"]["url"].rstrip("/")


def pair(md: Path, url: str) -> None:
    """Point the install cell of ``md`` at ``url`` and write its stripped .ipynb twin."""
    text = md.read_text(encoding="utf-8")
    new_text = URL_PATTERN.sub(f"git+{url}", text)
    if new_text != text:
        md.write_text(new_text, encoding="utf-8")
    notebook = jupytext.read(md)
    ipynb = md.with_suffix(".ipynb")
    old_cells = jupytext.read(ipynb).cells if ipynb.exists() else []
    used: set[str] = set()
    for index, cell in enumerate(notebook.cells):
        if cell.cell_type == "code":
            cell.outputs = []
            cell.execution_count = None
        # Keep the ids of the existing notebook so that pairing again changes
        # only the cells that changed: the same cell first, else the same place.
        same = [
            c.get("id")
            for c in old_cells
            if (c.cell_type, c.source) == (cell.cell_type, cell.source)
        ]
        place = [old_cells[index].get("id")] if index < len(old_cells) else []
        for candidate in same + place:
            if candidate and candidate not in used:
                cell.id = candidate
                break
        used.add(cell.id)
    jupytext.write(notebook, ipynb)


def main(argv: list[str]) -> int:
    url = repository_url()
    chapters = [Path(a).resolve() for a in argv] or sorted((ROOT / "book").glob("*.md"))
    for md in chapters:
        if "jupytext" in md.read_text(encoding="utf-8")[:600]:
            pair(md, url)
            print(f"paired {md.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
