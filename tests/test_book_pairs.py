"""The book's chapters: every MyST notebook has its outputs-stripped .ipynb twin, in sync.

Colab opens only ``.ipynb`` files while the book is written in MyST markdown;
jupytext pairs the two. If a test here fails, run ``make pair`` (which
regenerates every ``.ipynb`` from its ``.md``) and commit both files.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

jupytext = pytest.importorskip("jupytext")
yaml = pytest.importorskip("yaml")

ROOT = Path(__file__).resolve().parents[1]
BOOK = ROOT / "book"
CHAPTERS = sorted(p for p in BOOK.glob("*.md") if "jupytext" in p.read_text(encoding="utf-8")[:600])


def _toc_files() -> list[str]:
    toc = yaml.safe_load((ROOT / "_toc.yml").read_text(encoding="utf-8"))
    return [toc["root"]] + [entry["file"] for entry in toc.get("chapters", [])]


def _repository_url() -> str:
    config = yaml.safe_load((ROOT / "_config.yml").read_text(encoding="utf-8"))
    return config["repository"]["url"].rstrip("/")


def _cells(notebook) -> list[tuple[str, str]]:
    return [(cell.cell_type, cell.source.strip()) for cell in notebook.cells]


def test_every_toc_entry_is_a_paired_chapter():
    for entry in _toc_files():
        md = ROOT / f"{entry}.md"
        assert md.exists(), f"_toc.yml lists {entry} but {md.name} is missing"
        assert md.with_suffix(".ipynb").exists(), f"{md.name} has no .ipynb twin: run `make pair`"


def test_no_orphan_notebooks():
    for ipynb in BOOK.glob("*.ipynb"):
        assert ipynb.with_suffix(".md").exists(), f"{ipynb.name} has no .md source"


@pytest.mark.parametrize("md", CHAPTERS, ids=lambda p: p.stem)
def test_pair_in_sync_and_stripped(md: Path):
    ipynb = md.with_suffix(".ipynb")
    from_md = jupytext.read(md)
    on_disk = jupytext.read(ipynb)
    assert _cells(from_md) == _cells(on_disk), (
        f"{ipynb.name} differs from {md.name}: run `make pair`"
    )
    for cell in on_disk.cells:
        if cell.cell_type == "code":
            assert not cell.get("outputs"), f"{ipynb.name} has outputs: run `make pair`"
            assert cell.get("execution_count") is None, f"{ipynb.name} has execution counts"
    assert on_disk.metadata.get("kernelspec", {}).get("name") == "python3"


@pytest.mark.parametrize("md", CHAPTERS, ids=lambda p: p.stem)
def test_first_cell_installs_from_configured_repository(md: Path):
    notebook = jupytext.read(md)
    first_code = next(cell for cell in notebook.cells if cell.cell_type == "code")
    assert "google.colab" in first_code.source, (
        f"{md.name}: the first code cell must be the Colab install cell"
    )
    urls = re.findall(r"git\+(https://[^\s\"'@]+)", first_code.source)
    assert urls == [_repository_url()], (
        f"{md.name}: install cell names {urls}, _config.yml names {_repository_url()}; "
        "run `make pair` after changing repository.url"
    )
    # An unreachable repository ends in one sentence that says what to change, not pip's traceback.
    source = first_code.source
    assert "capture_output=True" in source and "check=True" not in source, (
        f"{md.name}: the install cell must catch pip's failure itself"
    )
    assert "raise SystemExit(" in source, f"{md.name}: the install cell must stop with SystemExit"
    for words in (
        "Could not install {source}",
        "edit its URL",
        "in this cell",
        "repository.url in _config.yml",
    ):
        assert words in source, f"{md.name}: the install cell's failure message lacks {words!r}"


def test_install_cells_are_identical():
    cells = {
        md.name: next(cell for cell in jupytext.read(md).cells if cell.cell_type == "code").source
        for md in CHAPTERS
    }
    first = cells[CHAPTERS[0].name]
    differ = sorted(name for name, source in cells.items() if source != first)
    assert not differ, f"install cells of {differ} differ from {CHAPTERS[0].name}'s"


def test_every_chapter_keeps_its_cache_on_drive_before_choosing_its_mode():
    drive_cells = {}
    for md in CHAPTERS:
        code = [cell.source for cell in jupytext.read(md).cells if cell.cell_type == "code"]
        drive = [i for i, source in enumerate(code) if "keep_on_drive()" in source]
        mode = next(i for i, source in enumerate(code) if "detect_mode()" in source)
        assert len(drive) == 1, f"{md.name}: one Drive cell (asdflow.modes.keep_on_drive) is needed"
        assert 0 < drive[0] < mode, f"{md.name}: the Drive cell must come before the mode cell"
        drive_cells[md.name] = code[drive[0]]
    assert len(set(drive_cells.values())) == 1, "the Drive cells of the chapters differ"
