"""The local listing walks a folder a folder at a time, already in sorted path order, so the planner can cut
mini-batches while the rest is still being listed: its order must be exactly the order of sorting the whole
listing (the output's order and the mini-batch numbering depend on it), and its refusals must still come."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from airflow_parallel_run.core import FileDataset
from airflow_parallel_run.core.errors import InputError
from airflow_parallel_run.core.inputs.listing import iter_input, list_input
from airflow_parallel_run.core.plan import iter_plan, plan_inputs


def _reference(root: Path) -> list[tuple[str, int]]:
    """Every visible file under root (no part of its path relative to root starts with '.' or '_'),
    sorted by the full path string: what the engine listed before it streamed."""
    found = []
    for folder, dirs, files in os.walk(root):
        dirs[:] = [d for d in dirs if not d.startswith((".", "_"))]
        for name in files:
            if not name.startswith((".", "_")):
                path = os.path.join(folder, name)
                found.append((path, os.path.getsize(path)))
    return sorted(found)


# names whose order is tricky: '.' and '-' sort before '/', digits and case, non-ASCII, spaces
NAME = st.sampled_from(
    ["a", "a.txt", "a-b", "a b", "ab", "A", "b", "0", "10", "9", "é", "z~", "_x", ".y", "a0"]
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(tree=st.lists(st.lists(NAME, min_size=1, max_size=3), min_size=1, max_size=25))
def test_walk_order_is_the_sorted_order_of_the_whole_listing(tmp_path_factory, tree) -> None:  # type: ignore[no-untyped-def]
    root = tmp_path_factory.mktemp("tree")
    for parts in tree:
        folder = root.joinpath(*parts[:-1])
        target = folder / parts[-1]
        if any(p.is_file() for p in [folder, *folder.parents] if p != root and root in p.parents):
            continue  # a file already holds this folder's name
        if target.is_dir():
            continue
        folder.mkdir(parents=True, exist_ok=True)
        target.write_bytes(b"x" * len(parts))
    expected = _reference(root)
    if not expected:
        with pytest.raises(InputError, match="matched no files"):
            list_input(str(root), {})
        return
    _root, refs = list_input(str(root), {})
    assert [(r.url, r.size) for r in refs] == expected


def test_files_and_sub_folders_sharing_a_prefix(tmp_path: Path) -> None:
    """'a.txt' sorts before 'a/x' ('.' < '/'), 'a-b' too, 'a0' after: the walk must not list folder 'a'
    first because its name is shorter."""
    for rel in ("a/x", "a.txt", "a-b", "a0", "a/b/c", "ab/d"):
        path = tmp_path / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(rel)
    _root, refs = list_input(str(tmp_path), {})
    names = [os.path.relpath(r.url, tmp_path) for r in refs]
    assert names == sorted(names) == ["a-b", "a.txt", "a/b/c", "a/x", "a0", "ab/d"]


def test_planning_starts_before_the_walk_reaches_the_last_folder(tmp_path: Path) -> None:
    """The first mini-batch is cut while later folders are not listed yet: a folder that becomes bad
    after the first mini-batch was planned is still refused when the walk reaches it."""
    for folder in ("a", "b"):
        (tmp_path / folder).mkdir()
        for i in range(3):
            (tmp_path / folder / f"{i}.txt").write_text("x")
    _root, refs = iter_input(str(tmp_path), {})
    first = next(refs)
    assert first.url == str(tmp_path / "a" / "0.txt")
    os.symlink(tmp_path / "missing", tmp_path / "b" / "dangling")  # not listed yet: the walk is lazy
    with pytest.raises(InputError, match="dangling symlink"):
        list(refs)


def test_plan_of_a_streamed_folder_matches_the_listing_in_batches(tmp_path: Path) -> None:
    for i in range(23):
        (tmp_path / f"d{i % 4}").mkdir(exist_ok=True)
        (tmp_path / f"d{i % 4}" / f"f{i:02d}").write_text("x")
    planned = plan_inputs([FileDataset.from_files(str(tmp_path))], 5)
    _root, refs = list_input(str(tmp_path), {})
    assert [f for mb in planned for f in mb.files] == refs
    assert [mb.items for mb in planned] == [5, 5, 5, 5, 3]
    assert [mb.index for mb in planned] == list(range(5))


def test_an_empty_folder_is_still_refused(tmp_path: Path) -> None:
    (tmp_path / "_SUCCESS").write_text("")
    with pytest.raises(InputError, match="matched no files"):
        plan_inputs([FileDataset.from_files(str(tmp_path))], 5)


def test_iter_plan_yields_before_the_later_folders_are_listed(tmp_path: Path) -> None:
    """The plan's first mini-batch exists while the walk has not reached the second folder: a file
    added there afterwards is still planned, in its sorted place."""
    for folder in ("a", "b"):
        (tmp_path / folder).mkdir()
        for i in range(4):
            (tmp_path / folder / f"{i}.txt").write_text("x")
    kind, batches = iter_plan([FileDataset.from_files(str(tmp_path))], 2)
    first = next(batches)
    assert kind == "file" and [f.url for f in first.files] == [
        str(tmp_path / "a" / f"{i}.txt") for i in (0, 1)
    ]
    (tmp_path / "b" / "00.txt").write_text("late")
    rest = list(batches)
    assert [mb.index for mb in rest] == [1, 2, 3, 4]
    assert [f.url for f in rest[1].files] == [str(tmp_path / "b" / "0.txt"), str(tmp_path / "b" / "00.txt")]


def test_check_local_input_refuses_what_the_listing_refuses_without_listing(tmp_path: Path) -> None:
    """A streaming plan checks every local input before it claims the output folder: the messages are the
    listing's own, for a path that does not exist (a dangling symlink given by name too) or holds no
    visible file; anything else is left to the listing."""
    from airflow_parallel_run.core.inputs.listing import check_local_input

    (tmp_path / "empty" / "sub" / ".hidden").mkdir(parents=True)
    (tmp_path / "empty" / "_SUCCESS").write_text("")
    (tmp_path / "deep" / "a" / "b").mkdir(parents=True)
    (tmp_path / "deep" / "a" / "b" / "x.txt").write_text("x")
    os.symlink(tmp_path / "nowhere", tmp_path / "dangling")
    for name in ("missing", "dangling", "empty"):
        path = str(tmp_path / name)
        with pytest.raises(InputError) as listed:
            list_input(path, {})
        with pytest.raises(InputError) as checked:
            check_local_input(path, {})
        assert str(checked.value) == str(listed.value)
    check_local_input(str(tmp_path / "deep"), {})
    check_local_input(str(tmp_path / "deep" / "a" / "b" / "x.txt"), {})
    check_local_input(str(tmp_path / "empty" / "*.txt"), {})  # a glob: its listing decides
