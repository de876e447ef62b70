"""Notebook views: HTML/SVG that parses, escapes user text, and shows what changed."""

from __future__ import annotations

import os
import shutil
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
import zarr

import versionstore as vs
from versionstore.notebook import chunk_grid_svg

EVIL = '<script>alert("x")</script>&<b>'


class _Tree(HTMLParser):
    """Collects start tags and text, and checks that every element is closed in order."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.tags: list[str] = []
        self.text: list[str] = []
        self.stack: list[str] = []
        self.attrs: list[dict[str, str | None]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)
        self.attrs.append(dict(attrs))
        self.stack.append(tag)

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)
        self.attrs.append(dict(attrs))

    def handle_endtag(self, tag: str) -> None:
        assert self.stack and self.stack[-1] == tag, (tag, self.stack)
        self.stack.pop()

    def handle_data(self, data: str) -> None:
        self.text.append(data)


def _parse(markup: str) -> _Tree:
    tree = _Tree()
    tree.feed(markup)
    tree.close()
    assert tree.stack == [], tree.stack
    assert "script" not in tree.tags and "style" not in tree.tags
    assert not any(name.startswith("on") for a in tree.attrs for name in a)
    return tree


@pytest.fixture
def repo() -> vs.Repository:
    repo = vs.Repository.create(vs.in_memory_storage())
    session = repo.writable_session()
    array = zarr.create_array(session.store, name="grid", shape=(40, 30), chunks=(10, 10),
                              dtype="i4")
    array[:] = 0
    session.commit(EVIL, metadata={"note": EVIL})
    repo.create_tag("v1", repo.lookup_branch("main"))
    repo.create_branch("dev", repo.lookup_branch("main"))
    session = repo.writable_session()
    zarr.open_array(session.store, path="grid")[0:15, 25:30] = 1
    session.commit("edit a corner")
    return repo


def test_repository_view_escapes_and_lists_refs(repo: vs.Repository) -> None:
    tree = _parse(repo._repr_html_())
    text = "".join(tree.text)
    assert EVIL in text  # shown as text, never as markup
    assert "dev" in text and "main" in text and "tag: v1" in text
    assert "svg" in tree.tags and tree.tags.count("circle") == 3


def test_history_view_is_a_table_and_a_graph_and_still_iterates(repo: vs.Repository) -> None:
    history = repo.ancestry()
    tree = _parse(history._repr_html_())
    assert tree.tags.count("tr") == 1 + 3 and tree.tags.count("circle") == 3
    assert tree.tags.count("line") == 2  # each snapshot to its parent
    assert "edit a corner" in repr(history)
    assert [i.message for i in history] == ["edit a corner", EVIL, "Repository initialized"]
    assert next(repo.ancestry()).message == "edit a corner"


def _merged(repo: vs.Repository) -> str:
    """Merge a change on ``dev`` into ``main``'s edit: a snapshot with two parents."""
    session = repo.writable_session("dev")
    zarr.open_array(session.store, path="grid")[39, 0] = 7
    session.commit("fix the last row on dev")
    return repo.merge("dev", "main", message="merge dev")


def test_history_view_draws_merges_and_names_refs(repo: vs.Repository) -> None:
    merge = _merged(repo)
    history = repo.ancestry(all_parents=True)
    tree = _parse(history._repr_html_())
    # merge, edit a corner, fix on dev, EVIL, initial: one line per parent edge.
    assert tree.tags.count("circle") == 5
    assert tree.tags.count("line") == 2 + 1 + 1 + 1
    xs = {a.get("cx") for tag, a in zip(tree.tags, tree.attrs, strict=True) if tag == "circle"}
    assert len(xs) == 2  # the merged branch gets a lane of its own
    text = "".join(tree.text)
    assert "[main]" in text and "[dev]" in text and "[tag: v1]" in text
    assert [i.id for i in history][0] == merge  # still iterates from the newest
    info_text = "".join(_parse(repo.lookup_snapshot(merge)._repr_html_()).text)
    assert all(p in info_text for p in repo.lookup_snapshot(merge).parent_ids)


def test_snapshot_view(repo: vs.Repository) -> None:
    info = repo.lookup_snapshot(repo.lookup_tag("v1"))
    text = "".join(_parse(info._repr_html_()).text)
    assert EVIL in text and info.id in text and "note" in text


def test_diff_and_status_views_draw_the_chunk_grid(repo: vs.Repository) -> None:
    diff = repo.diff(from_tag="v1", to_branch="main")
    assert diff.chunk_grids == {"/grid": (4, 3)}
    tree = _parse(diff._repr_html_())
    fills = [a.get("fill") for tag, a in zip(tree.tags, tree.attrs, strict=True)
             if tag == "rect"]
    assert len(fills) == 12 and fills.count("#dd8452") == 2  # chunks (0, 2) and (1, 2)
    # The array was all fill value (zeros: no chunk stored), so both chunks are new.
    assert "2 chunk(s) changed (2 added, 0 rewritten, 0 removed)" in "".join(tree.text)
    session = repo.writable_session()
    zarr.open_array(session.store, path="grid")[39, 0] = 5
    status = session.status()
    fills = [a.get("fill") for tag, a in zip(*(lambda t: (t.tags, t.attrs))(
        _parse(status._repr_html_())), strict=True) if tag == "rect"]
    assert fills.count("#dd8452") == 1
    assert "no changes" in vs.Diff()._repr_html_()
    assert str(diff).startswith("updated_chunks /grid: 2 chunk(s)")


def test_keys_and_paths_are_escaped_in_diffs() -> None:
    repo = vs.Repository.create(vs.in_memory_storage())
    session = repo.writable_session()
    session.store.storage.set("a<b>/x", b"1")
    markup = session.status()._repr_html_()
    assert "a&lt;b&gt;/x" in markup
    assert "a<b>/x" in "".join(_parse(markup).text)


def test_chunk_grid_pictures_for_one_to_three_dimensions() -> None:
    one = _parse(chunk_grid_svg((5,), [(1,), (4,)]))
    assert one.tags.count("rect") == 5
    three = _parse(chunk_grid_svg((2, 3, 4), [(1, 2, 3)]))
    assert three.tags.count("rect") == 24
    binned = _parse(chunk_grid_svg((1000,), [(999,)]))
    assert binned.tags.count("rect") == 40
    assert chunk_grid_svg((2, 2, 2, 2), []) == ""


@pytest.mark.skipif(shutil.which("chromium") is None and shutil.which("chromium-browser") is None,
                    reason="headless Chromium is not installed on this machine; the HTML is "
                    "checked by parsing it in the tests above")
def test_renders_in_headless_chromium(repo: vs.Repository, tmp_path: Path) -> None:
    import subprocess

    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    assert browser is not None
    page = tmp_path / "views.html"
    diff = repo.diff(from_tag="v1", to_branch="main")
    merge = _merged(repo)
    page.write_text("<html><body>" + repo._repr_html_() + diff._repr_html_()
                    + "<div><strong>repo.ancestry(all_parents=True)</strong></div>"
                    + repo.ancestry(all_parents=True)._repr_html_()
                    + repo.lookup_snapshot(merge)._repr_html_() + "</body></html>")
    shot = tmp_path / "views.png"
    subprocess.run([browser, "--headless", "--disable-gpu", "--no-sandbox",
                    f"--screenshot={shot}", "--window-size=900,900", page.as_uri()],
                   check=True, timeout=120, capture_output=True)
    assert shot.stat().st_size > 1000
    if os.environ.get("VS_UPDATE_SCREENSHOTS") == "1":  # docs/notebook.md's picture
        docs = Path(__file__).resolve().parents[1] / "docs" / "images"
        docs.mkdir(exist_ok=True)
        shutil.copy(shot, docs / "notebook-views.png")
    np.testing.assert_array_equal(np.frombuffer(shot.read_bytes()[:8], "u1"),
                                  np.frombuffer(b"\x89PNG\r\n\x1a\n", "u1"))


class _Printer:
    """IPython's pretty printer, as far as ``_repr_pretty_`` uses it."""

    def __init__(self) -> None:
        self.out: list[str] = []

    def text(self, value: str) -> None:
        self.out.append(value)


def test_plain_text_views_for_a_terminal(repo: vs.Repository) -> None:
    text = str(repo)
    assert "branch dev" in text and "branch main" in text and "tag v1" in text
    assert "edit a corner" in text and EVIL in text  # plain text: nothing to escape
    printer = _Printer()
    repo._repr_pretty_(printer, False)
    assert printer.out == [text]
    diff = repo.diff(from_tag="v1", to_branch="main")
    printer = _Printer()
    diff._repr_pretty_(printer, False)
    assert printer.out == ["updated_chunks /grid: 2 chunk(s)"]
    assert "edit a corner" in repr(repo.ancestry())
    # A forgotten commit: print(repo) says staged changes wait, and where.
    assert "uncommitted" not in text
    forgotten = repo.writable_session("dev")
    forgotten.store.storage.set("note", b"not committed")
    repo.writable_session("main").store.storage.set("note", b"nor this")
    lines = str(repo).splitlines()
    assert lines[-2] == ("  uncommitted: 2 writable session(s) with staged changes "
                         "(1 on dev, 1 on main)")
    assert "writable_session(resume=id)" in lines[-1]
    forgotten.discard_changes()
    assert "(1 on main)" in str(repo)
    repo.close()
    assert str(repo).startswith(repr(repo))  # closed: says so, does not raise
