from __future__ import annotations

import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

import versionstore as vs
from versionstore.cli import EXIT_BROKEN_PIPE, cli, main


@pytest.fixture
def repo_path(tmp_path: Path) -> str:
    path = tmp_path / "repo"
    repo = vs.Repository.create(vs.lmdb_storage(path))
    session = repo.writable_session("main")
    session.store.storage.set("a", b"1")
    first = session.commit("first", metadata={"run": 1})
    repo.create_tag("v1", snapshot_id=first)
    repo.create_branch("dev", snapshot_id=first)
    session = repo.writable_session("main")
    session.store.storage.set("b", b"2")
    session.commit("second")
    repo.close()
    return str(path)


def test_log_branches_tags(repo_path: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["log", repo_path]) == 0
    out = capsys.readouterr().out.splitlines()
    assert [line.split("  ", 2)[2] for line in out] == ["second", 'first  {"run": 1}',
                                                          "Repository initialized"]
    assert main(["log", repo_path, "--tag", "v1", "--limit", "1"]) == 0
    assert "first" in capsys.readouterr().out
    assert main(["branches", repo_path]) == 0
    assert [line.split()[0] for line in capsys.readouterr().out.splitlines()] == ["dev", "main"]
    assert main(["tags", repo_path]) == 0
    assert capsys.readouterr().out.startswith("v1  ")


def test_diff_verify_gc_sessions(repo_path: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["diff", repo_path, "v1", "main"]) == 0
    assert "updated_keys: b" in capsys.readouterr().out
    assert main(["verify", repo_path]) == 0
    assert "0 problem(s)" in capsys.readouterr().out
    assert main(["gc", repo_path]) == 0
    assert "would delete 0" in capsys.readouterr().out
    assert main(["sessions", repo_path]) == 0


@pytest.mark.parametrize("args", [["gc", "--older-than", "1000000d"],
                                  ["expire", "--older-than", "1000000d"],
                                  ["sessions", "--discard-older-than", "99999999999d"],
                                  ["gc", "--older-than", "9" * 5000 + "d"]],
                         ids=["gc", "expire", "sessions", "digits"])
def test_a_time_too_far_back_is_a_usage_error(repo_path: str, args: list[str],
                                              capsys: pytest.CaptureFixture[str]) -> None:
    assert main([args[0], repo_path, *args[1:]]) == 2  # click's usage error, no traceback
    err = capsys.readouterr().err
    assert "before the year 1" in err and "Traceback" not in err


def test_json_output_is_strict_json_with_non_finite_metadata(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    repo = vs.Repository.create(vs.lmdb_storage(tmp_path / "r"))
    session = repo.writable_session("main")
    session.store.storage.set("k", b"1")
    metrics = {"loss": float("nan"), "best": float("inf"), "worst": [float("-inf"), 1.5]}
    session.commit("metrics", metadata=metrics)
    repo.close()

    def refuse(name: str) -> None:
        raise AssertionError(f"not JSON (RFC 8259): {name}")

    assert main(["log", str(tmp_path / "r"), "--json"]) == 0
    newest = json.loads(capsys.readouterr().out, parse_constant=refuse)[0]
    assert newest["metadata"] == {"loss": "NaN", "best": "Infinity",
                                  "worst": ["-Infinity", 1.5]}


def test_log_shows_metadata_keys_json_has_no_spelling_for(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # Nested keys msgpack keeps but JSON has not (NaN, a tuple, bytes) broke log and show.
    repo = vs.Repository.create(vs.lmdb_storage(tmp_path / "r"))
    session = repo.writable_session("main")
    session.store.storage.set("k", b"1")
    session.commit("keys", metadata={"by": {float("nan"): 1, (1, 2): "pair", b"raw": 3, 2: 4}})
    repo.close()
    assert main(["log", str(tmp_path / "r"), "--json"]) == 0
    newest = json.loads(capsys.readouterr().out)[0]
    assert newest["metadata"] == {"by": {"NaN": 1, "(1, 2)": "pair", "b'raw'": 3, "2": 4}}
    assert main(["log", str(tmp_path / "r")]) == 0
    assert "(1, 2)" in capsys.readouterr().out


def test_errors_are_reported_not_raised(tmp_path: Path, repo_path: str,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["log", str(tmp_path / "missing")]) == 1
    err = capsys.readouterr().err
    assert "no repository" in err and len(err.strip().splitlines()) == 1
    assert main(["diff", repo_path, "nope", "main"]) == 1
    assert "not a branch, a tag or a snapshot id" in capsys.readouterr().err
    assert main(["log", repo_path, "--branch", "nope"]) == 1
    assert "nope" in capsys.readouterr().err
    assert main(["log"]) == 2  # usage error: click's message
    assert "Missing argument" in capsys.readouterr().err
    assert main(["frobnicate", repo_path]) == 2
    capsys.readouterr()
    # A URL where an LMDB directory goes: said so, with the command that does take one.
    assert main(["log", "s3://bucket/era5"]) == 1
    err = capsys.readouterr().err
    assert "'s3://bucket/era5' is a URL" in err and "versionstore clone s3://bucket/era5" in err


# -- as a real process in a pipe --------------------------------------------------------


def _cli(*args: str, **kwargs: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "versionstore.cli", *args], text=True,
                          timeout=120, check=False, **kwargs)


def _damaged(tmp_path: Path, repo_path: str, kind: str) -> str:
    """A directory that is not a usable repository, made as ``kind`` says."""
    path = tmp_path / kind
    if kind == "a file":
        path.write_bytes(b"not a repository")
        return str(path)
    path.mkdir()
    data = (Path(repo_path) / "data.mdb").read_bytes()
    if kind == "truncated data.mdb":
        (path / "data.mdb").write_bytes(data[:4096])
    elif kind == "garbage data.mdb":
        (path / "data.mdb").write_bytes(bytes(range(256)) * 64)
    elif kind == "empty data.mdb":
        (path / "data.mdb").write_bytes(b"")
    elif kind == "data.mdb a directory":
        (path / "data.mdb").mkdir()
    return str(path)


_DAMAGE = ["a file", "truncated data.mdb", "garbage data.mdb", "empty data.mdb",
           "data.mdb a directory", "empty directory"]


@pytest.mark.parametrize("kind", _DAMAGE)
@pytest.mark.parametrize("command", [["log", "{repo}"], ["verify", "{repo}"],
                                     ["gc", "{repo}", "--delete"], ["compact", "{repo}"],
                                     ["sessions", "{repo}"], ["branch", "list", "{repo}"],
                                     ["du", "{repo}"]])
def test_hostile_repository_paths_give_one_line_and_status_1(
        tmp_path: Path, repo_path: str, capsys: pytest.CaptureFixture[str], kind: str,
        command: list[str]) -> None:
    path = _damaged(tmp_path, repo_path, kind)
    data = Path(path) / "data.mdb"
    before = data.read_bytes() if data.is_file() else None
    assert main([arg.replace("{repo}", path) for arg in command]) == 1
    err = capsys.readouterr().err
    assert err.startswith("versionstore: error: ") and len(err.strip().splitlines()) == 1, err
    if before:  # a damaged file is left as it was (LMDB initialises an empty one)
        assert data.read_bytes() == before


@pytest.mark.parametrize("args", [
    ["show", "{repo}", "zzzz"], ["show", "{repo}", ""], ["show", "{repo}", "0" * 32],
    ["log", "{repo}", "--snapshot", "../../etc"], ["log", "{repo}", "--tag", "nope"],
    ["diff", "{repo}", "main", "no/such"], ["status", "{repo}", "nope"],
    ["sessions", "{repo}", "--discard", "nope"], ["du", "{repo}", "--snapshot", "abc"],
    ["branch", "create", "{repo}", "../x", "main"], ["branch", "create", "{repo}", "", "main"],
    ["branch", "create", "{repo}", "a b", "main"], ["branch", "create", "{repo}", "x..y", "main"],
    ["branch", "create", "{repo}", "nul\0", "main"], ["branch", "create", "{repo}", "b", "nope"],
    ["branch", "delete", "{repo}", "nope"], ["branch", "delete", "{repo}", "main"],
    ["tag", "create", "{repo}", "v1", "main"], ["tag", "delete", "{repo}", "nope"],
    ["merge", "{repo}", "nope"], ["cherry-pick", "{repo}", "zzzz"],
    ["purge", "{repo}", "/", "--yes"], ["squash", "{repo}", "--since", "zzzz"],
])
def test_hostile_ids_and_names_give_one_line_and_status_1(
        repo_path: str, capsys: pytest.CaptureFixture[str], args: list[str]) -> None:
    assert main([arg.replace("{repo}", repo_path) for arg in args]) == 1
    err = capsys.readouterr().err
    assert err.startswith("versionstore: error: ") and len(err.strip().splitlines()) == 1, err


@pytest.mark.skipif(not hasattr(os, "geteuid"), reason="permissions are POSIX here")
def test_an_unreadable_directory_gives_one_line_and_status_1(repo_path: str) -> None:
    # root reads any directory; without CAP_DAC_OVERRIDE (setpriv) it is refused as
    # any user is.
    prefix: list[str] = []
    if os.geteuid() == 0:
        setpriv = shutil.which("setpriv")
        if setpriv is None:
            pytest.skip("running as root, and setpriv (util-linux) is missing to drop root's "
                        "right to read any directory")
        prefix = [setpriv, "--bounding-set", "-dac_override,-dac_read_search"]
    os.chmod(repo_path, 0)
    try:
        for args in (["log", repo_path], ["compact", repo_path]):
            done = subprocess.run([*prefix, sys.executable, "-m", "versionstore.cli", *args],
                                  capture_output=True, text=True, timeout=120, check=False)
            assert done.returncode == 1, done.stderr
            assert done.stderr.startswith("versionstore: error: cannot read the directory")
            assert len(done.stderr.strip().splitlines()) == 1, done.stderr
    finally:
        os.chmod(repo_path, 0o755)


def test_version(tmp_path: Path) -> None:
    result = _cli("--version", capture_output=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"versionstore {vs.__version__}"
    assert vs.__version__ and vs.__version__ != "0+unknown"


def test_a_reader_that_goes_away_ends_quietly_like_git(repo_path: str) -> None:
    read_end, write_end = os.pipe()
    os.close(read_end)  # the reader is gone before the first line: every write fails
    try:
        result = _cli("log", repo_path, stdout=write_end, stderr=subprocess.PIPE)
    finally:
        os.close(write_end)
    assert result.stderr == ""
    assert result.returncode == EXIT_BROKEN_PIPE == 128 + signal.SIGPIPE


def test_log_piped_to_head(tmp_path: Path) -> None:
    path = tmp_path / "long"
    with vs.Repository.create(path) as repo:
        for number in range(300):
            session = repo.writable_session("main")
            session.store.storage.set("k", str(number).encode())
            session.commit(f"commit {number}")
    command = (f"set -o pipefail; {shlex.quote(sys.executable)} -m versionstore.cli "
               f"log {shlex.quote(str(path))} | head -1")
    result = subprocess.run(["bash", "-c", command], capture_output=True, text=True,
                            timeout=120, check=False)
    assert result.stdout.splitlines()[0].endswith("commit 299")
    assert len(result.stdout.splitlines()) == 1
    assert "Traceback" not in result.stderr and "BrokenPipe" not in result.stderr
    assert result.stderr == ""
    assert result.returncode in (0, EXIT_BROKEN_PIPE)  # 141 when the reader left first


# -- every command through click's runner ------------------------------------------------

COMMANDS = ["log", "show", "diff", "status", "sessions", "branch", "tag", "du", "expire", "gc",
            "compact", "verify", "purge", "merge", "cherry-pick", "revert", "squash", "ops-log",
            "clone", "push", "fetch"]


def _run(*args: str, input: str | None = None) -> Any:
    return CliRunner().invoke(cli, list(args), input=input, catch_exceptions=False)


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_has_help_with_an_example(command: str) -> None:
    result = _run(command, "--help")
    assert result.exit_code == 0
    assert "Example: versionstore " + command in result.output


def test_branch_and_tag_subcommands_have_examples() -> None:
    for kind in ("branch", "tag"):
        for sub in ("list", "create", "delete", *(("reset",) if kind == "branch" else ())):
            result = _run(kind, sub, "--help")
            assert result.exit_code == 0 and f"Example: versionstore {kind} {sub}" in \
                result.output


def test_log_show_json(repo_path: str) -> None:
    result = _run("log", repo_path, "--json")
    entries = json.loads(result.output)
    assert [e["message"] for e in entries] == ["second", "first", "Repository initialized"]
    assert entries[1]["metadata"] == {"run": 1}
    assert json.loads(_run("log", repo_path, "--json", "--limit", "1").output)[0]["message"] \
        == "second"
    shown = json.loads(_run("show", repo_path, entries[0]["id"], "--json").output)
    assert shown["parent_id"] == entries[1]["id"] and shown["changes"]["updated_keys"] == ["b"]
    text = _run("show", repo_path, "v1").output
    assert "message   first" in text and "updated_keys: a" in text
    assert _run("log", repo_path, "--branch", "main", "--tag", "v1").exit_code == 2


def test_diff_json_per_array(tmp_path: Path) -> None:
    import zarr

    path = tmp_path / "arrays"
    with vs.Repository.create(path) as repo:
        session = repo.writable_session()
        array = zarr.create_array(session.store, name="t", shape=(40,), chunks=(10,),
                                  dtype="i4", fill_value=0)
        array[:30] = 1  # chunks 0-2 stored; chunk 3 is all fill value: not stored
        session.commit("create")
        repo.create_tag("before", repo.lookup_branch("main"))
        session = repo.writable_session()
        array = zarr.open_array(session.store, path="t")
        array[:10] = 2    # chunk 0 changed
        array[10:20] = 0  # chunk 1 back to the fill value: removed
        array[30:] = 5    # chunk 3 written for the first time: added
        session.commit("edit")
    document = json.loads(_run("diff", str(path), "before", "main", "--json").output)
    assert document["updated_chunks"] == {"/t": [[0], [1], [3]]}
    assert document["chunks"] == {"/t": {"added": [[3]], "changed": [[0]], "removed": [[1]]}}
    table = _run("diff", str(path), "before", "main").output
    assert "chunks added" in table and "removed" in table
    [row] = [line for line in table.splitlines() if "/t" in line]
    assert [cell.strip() for cell in row.split("│")[1:5]] == ["/t", "1", "1", "1"]


def test_branch_tag_create_list_delete(repo_path: str) -> None:
    assert _run("branch", "create", repo_path, "feature", "v1").exit_code == 0
    names = [b["name"] for b in json.loads(_run("branch", "list", repo_path, "--json").output)]
    assert names == ["dev", "feature", "main"]
    assert _run("branch", "delete", repo_path, "feature").exit_code == 0
    assert "feature" not in _run("branch", "list", repo_path).output
    assert _run("tag", "create", repo_path, "v2", "main").exit_code == 0
    assert [t["name"] for t in json.loads(_run("tag", "list", repo_path, "--json").output)] == \
        ["v1", "v2"]
    assert _run("tag", "delete", repo_path, "v2").exit_code == 0
    assert main(["tag", "create", repo_path, "v2", "main"]) == 1  # a deleted tag name
    assert main(["branch", "delete", repo_path, "main"]) == 1


def test_branch_reset_moves_the_branch_and_refuses_a_stale_from(repo_path: str) -> None:
    log = json.loads(_run("log", repo_path, "--json").output)
    second, first = log[0]["id"], log[1]["id"]
    assert main(["branch", "reset", repo_path, "main", "v1", "--from", "dev"]) == 1  # main moved
    assert _run("branch", "reset", repo_path, "main", "v1", "--from", second).exit_code == 0
    with vs.Repository.open(repo_path) as repo:
        assert repo.lookup_branch("main") == first
    assert _run("branch", "reset", repo_path, "main", second[:10]).exit_code == 0  # a prefix
    assert main(["branch", "reset", repo_path, "main", "no-such-version"]) == 1
    assert main(["branch", "reset", repo_path, "nobranch", "main"]) == 1
    with vs.Repository.open(repo_path) as repo:
        assert repo.lookup_branch("main") == second


def test_status_without_an_id_takes_the_only_session(repo_path: str) -> None:
    assert main(["status", repo_path]) == 1  # nothing staged: one line saying so
    ids = []
    with vs.Repository.open(repo_path) as repo:
        for key in ("one", "two"):
            session = repo.writable_session()
            session.store.storage.set(key, b"x")
            ids.append(session.session_id)
            if key == "one":
                status = json.loads(_run("status", repo_path, "--json").output)
                assert status["updated_keys"] == ["one"]
    result = _run("status", repo_path)
    assert result.exit_code == 2 and all(i in result.output for i in ids)


def test_sessions_status_and_discard(repo_path: str) -> None:
    with vs.Repository.open(repo_path) as repo:
        session = repo.writable_session()
        session.store.storage.set("staged", b"x" * 2000)
        session_id = session.session_id
        assert session_id is not None
    listed = json.loads(_run("sessions", repo_path, "--json").output)
    assert listed == [{"session_id": session_id, "branch": "main"}]
    status = json.loads(_run("status", repo_path, session_id, "--json").output)
    assert status["updated_keys"] == ["staged"]
    assert "discarded" in _run("sessions", repo_path, "--discard", session_id).output
    assert json.loads(_run("sessions", repo_path, "--json").output) == []
    assert main(["status", repo_path, session_id]) == 1
    assert _run("sessions", repo_path, "--discard-older-than", "0s").exit_code == 0
    assert main(["sessions", repo_path, "--discard-older-than", "yesterday"]) == 2


def test_du_expire_gc_compact_verify(repo_path: str) -> None:
    usage = json.loads(_run("du", repo_path, "--json").output)
    assert usage["keys"] == 2 and usage["file_bytes"] > 0
    assert "total" in _run("du", repo_path).output
    history = json.loads(_run("du", repo_path, "--history", "--json").output)
    assert [h["message"] for h in history] == ["second", "first", "Repository initialized"]
    assert "only here" in _run("du", repo_path, "--history").output
    assert _run("branch", "delete", repo_path, "dev").exit_code == 0
    assert _run("tag", "delete", repo_path, "v1").exit_code == 0
    expired = json.loads(_run("expire", repo_path, "--older-than", "0s", "--json").output)
    assert len(expired["expired"]) == 1  # "first": not a tip any more, not tagged
    dry = json.loads(_run("gc", repo_path, "--json").output)
    assert dry["dry_run"] and dry["deleted"] > 0
    assert (expired["gc_would_delete"], expired["gc_would_free_bytes"]) == (
        dry["deleted"], dry["bytes_freed"])  # expire says what gc then frees
    assert "--delete" in _run("gc", repo_path).output
    done = json.loads(_run("gc", repo_path, "--delete", "--json").output)
    assert not done["dry_run"] and done["deleted"] == dry["deleted"]
    full = json.loads(_run("gc", repo_path, "--delete", "--full", "--json").output)
    assert full["deleted"] == 0 and full["reachable"] == done["reachable"]
    compacted = json.loads(_run("compact", repo_path, "--json").output)
    assert compacted["bytes_after"] <= compacted["bytes_before"]
    assert "returned" in _run("compact", repo_path).output
    checked = json.loads(_run("verify", repo_path, "--json").output)
    assert checked["problems"] == []
    assert main(["expire", repo_path]) == 2  # --older-than is required


def test_purge_asks_then_rewrites(repo_path: str) -> None:
    with vs.Repository.open(repo_path) as repo:
        session = repo.writable_session()
        session.store.storage.set("secret/x", b"s" * 1000)
        session.commit("secret")
    aborted = _run("purge", repo_path, "/secret", input="n\n")
    assert aborted.exit_code == 1
    result = _run("purge", repo_path, "/secret", input="y\n")
    assert result.exit_code == 0 and "rewrote 1 snapshot" in result.output
    with vs.Repository.open(repo_path) as repo:
        assert repo.readonly_session().store.storage.get("secret/x") is None
        session = repo.writable_session()
        session.store.storage.set("more/x", b"m" * 1000)
        tip = session.commit("more")
    document = json.loads(_run("purge", repo_path, "/more", "--yes", "--json").output)
    assert list(document["rewritten"]) == [tip] and document["deleted"] > 0
    with vs.Repository.open(repo_path) as repo:
        assert document["rewritten"][tip] == repo.lookup_branch("main")
    assert main(["purge", repo_path, "/", "--yes"]) == 1
    # A mistyped path erases nothing, and says so with status 1 (a consent withdrawal
    # must not look done).
    typo = _run("purge", repo_path, "/mroe", "--yes")
    assert typo.exit_code == 1 and "rewrote 0 snapshot" in typo.output
    assert "no snapshot of any branch or tag holds /mroe" in typo.output


def test_verify_reports_problems_with_status_1(repo_path: str) -> None:
    with vs.Repository.open(repo_path) as repo:
        repo.backend.put_objects([], refs={"junk/ref": b"x"})
    result = _run("verify", repo_path)
    assert result.exit_code == 1 and "unknown kind of ref" in result.output


def test_real_process_commands(repo_path: str) -> None:
    for args, status in [(["gc", repo_path, "--json"], 0), (["du", repo_path], 0),
                         (["branch", "list", repo_path], 0), (["log", "/nonexistent"], 1),
                         (["log"], 2)]:
        result = _cli(*args, capture_output=True)
        assert result.returncode == status, (args, result.stderr)
        assert "Traceback" not in result.stderr
def test_merge_cherry_pick_revert_squash_ops_log_and_graph(
        repo_path: str, capsys: pytest.CaptureFixture[str]) -> None:
    with vs.Repository.open(vs.lmdb_storage(repo_path)) as repo:
        session = repo.writable_session("dev")
        session.store.storage.set("d", b"dev")
        picked = session.commit("on dev")
        session = repo.writable_session("dev")
        session.store.storage.set("b", b"dev's b")
        session.commit("dev changes b")
        since = repo.lookup_branch("main")
    assert main(["merge", repo_path, "dev"]) == 1
    err = capsys.readouterr().err
    assert "conflicts" in err and "conflict  key  /  b" in err
    assert main(["merge", repo_path, "dev", "--on-conflict", "theirs"]) == 0
    merged = capsys.readouterr().out.strip()
    assert main(["log", repo_path, "--graph"]) == 0
    graph = capsys.readouterr().out.splitlines()
    assert graph[0].startswith("*  " + merged)
    assert graph[1] == "|\\"
    assert graph[2].startswith("| *") and "dev changes b" in graph[2]
    assert "|/" in graph
    assert graph[-1].startswith("*  ") and graph[-1].endswith("Repository initialized")
    assert main(["revert", repo_path, picked, "--message", "no d"]) == 0
    assert main(["cherry-pick", repo_path, picked]) == 0
    assert main(["squash", repo_path, "--since", since, "--message", "all in one"]) == 0
    capsys.readouterr()
    assert main(["log", repo_path, "--limit", "2"]) == 0
    assert [line.split("  ", 2)[2] for line in capsys.readouterr().out.splitlines()] == [
        "all in one", "second"]
    assert main(["ops-log", repo_path, "--limit", "4"]) == 0
    kinds = [line.split("  ")[1] for line in capsys.readouterr().out.splitlines()]
    assert kinds == ["squash", "cherry_pick", "revert", "merge"]
    assert main(["squash", repo_path, "--since", picked]) == 1
    assert "not an earlier snapshot" in capsys.readouterr().err


def test_the_cli_works_without_obstore(repo_path: str) -> None:
    # The base install (``pip install versionstore``, what scripts/demo makes) has no
    # obstore; the commands the demo prints ran into ModuleNotFoundError at import.
    code = textwrap.dedent(f"""
        import sys
        sys.modules["obstore"] = None  # as in an environment without the remote extra
        from versionstore.cli import main
        assert main(["log", {repo_path!r}]) == 0
        assert main(["verify", {repo_path!r}]) == 0
        sys.exit(main(["clone", "s3://bucket/prefix", {repo_path + "-copy"!r}]))
    """)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        filter(None, [str(Path(__file__).resolve().parents[1] / "src"),
                      os.environ.get("PYTHONPATH")]))}
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                            text=True, timeout=120, check=False)
    assert result.returncode != 0, result.stdout
    assert "Traceback" not in result.stderr, result.stderr
    assert "object storage is not available in this build" in result.stderr
    assert "pip install '/path/to/versionstore[remote]'" in result.stderr


def test_the_examples_in_docs_cli_md_run_on_the_demo_repository(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import re

    page = (Path(__file__).resolve().parents[1] / "docs" / "cli.md").read_text()
    blocks = [b for b in re.findall(r"^```bash\n(.*?)^```", page, re.DOTALL | re.MULTILINE)
              if "my-repo" in b]
    assert len(blocks) >= 2
    subprocess.run([sys.executable, "-m", "versionstore.demo", "my-repo"], cwd=tmp_path,
                   check=True, capture_output=True, timeout=300)
    monkeypatch.chdir(tmp_path)
    for block in blocks:
        for line in block.splitlines():
            words = shlex.split(line, comments=True)
            assert words[0] == "versionstore", line
            assert main(words[1:]) == 0, (line, capsys.readouterr().err)
    capsys.readouterr()
    assert main(["ops-log", "my-repo", "--json"]) == 0
    entries = [e for e in json.loads(capsys.readouterr().out)
               if e["ref_type"] != "repository"]  # the maintenance block's gc run
    assert [e["kind"] for e in entries][:5] == ["squash", "revert", "cherry_pick", "merge",
                                               "create_branch"]
    assert entries[3]["name"] == "main" and entries[3]["ref_type"] == "branch"
    assert entries[2]["source"] is not None  # the cherry-picked snapshot
    assert main(["log", "my-repo", "--json", "--limit", "1"]) == 0
    [merge] = json.loads(capsys.readouterr().out)
    assert merge["message"] == "merge the experiment" and len(merge["parent_ids"]) == 2
    assert main(["show", "my-repo", merge["id"]]) == 0
    assert f"merged    {merge['parent_ids'][1]}" in capsys.readouterr().out


@pytest.mark.parametrize(("args", "label"), [
    (["gc"], "collecting garbage"), (["verify"], "verifying"), (["du"], "sizing"),
    (["du", "--history"], "sizing"), (["expire", "--older-than", "1000d"], "expiring"),
    (["compact"], "compacting"), (["purge", "/nothing", "--yes"], "purging"),
])
def test_long_commands_draw_a_progress_bar_on_a_terminal(repo_path: str, args: list[str],
                                                          label: str) -> None:
    # rich draws bars only on a terminal; TTY_COMPATIBLE=1 makes stderr count as one.
    env = {**os.environ, "TTY_COMPATIBLE": "1"}
    result = _cli(args[0], repo_path, *args[1:], capture_output=True, env=env)
    # A purge of a path no snapshot holds erases nothing: status 1, after its bar.
    assert result.returncode == (1 if args[0] == "purge" else 0), result.stderr
    assert label in result.stderr and "\x1b[" in result.stderr  # drawn, then erased


def test_python_dash_m_versionstore_is_the_command(repo_path: str) -> None:
    # The form a user tries first, as for pip and venv: the same command, same status.
    shown = subprocess.run([sys.executable, "-m", "versionstore", "log", repo_path],
                           capture_output=True, text=True, timeout=120, check=False)
    assert shown.returncode == 0, shown.stderr
    assert "Repository initialized" in shown.stdout
    missing = subprocess.run([sys.executable, "-m", "versionstore", "log", repo_path + "-x"],
                             capture_output=True, text=True, timeout=120, check=False)
    assert missing.returncode == 1 and "versionstore: error: no repository" in missing.stderr


def test_ctrl_c_ends_with_one_line_and_status_130(tmp_path: Path) -> None:
    # ``show --json`` of 10,000 changed chunks prints about 1 MB: once its first byte
    # has arrived and nobody reads on, it cannot finish before SIGINT (a full pipe
    # blocks it), wherever the signal lands in its work.
    import zarr

    repo = vs.Repository.create(tmp_path / "repo")
    session = repo.writable_session("main")
    zarr.create_array(session.store, name="x", shape=(100, 100), chunks=(1, 1), dtype="i1",
                      fill_value=0)[:] = 1
    session.commit("ten thousand chunks")
    repo.close()
    shown = subprocess.Popen(
        [sys.executable, "-m", "versionstore", "show", str(tmp_path / "repo"), "main", "--json"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        # A job started in the background inherits SIGINT ignored; a terminal's Ctrl-C
        # reaches a process that has the default.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    assert shown.stdout is not None and shown.stdout.read(1)  # it is running
    shown.send_signal(signal.SIGINT)
    _, err = shown.communicate(timeout=120)
    assert shown.returncode == 130, err
    assert err.decode().strip() == "versionstore: interrupted"
