"""The conformance suite every versionstore backend must pass.

Subclass ``BackendConformance`` and provide a ``backend`` fixture; pytest
collects every check. It pins down the contract the engine relies on:
objects are write-once and idempotent, refs move only by compare-and-swap,
and the extra ref writes of a successful swap happen with it.
Needs pytest (the ``test`` extra).
"""

from __future__ import annotations

import threading

import attrs
import pytest

from versionstore.backend.protocol import Backend, SessionRule, WriteBatch
from versionstore.errors import MissingObjectsError
from versionstore.ids import ObjectId, hash_object

__all__ = ["BackendConformance"]


def _oid(n: int) -> ObjectId:
    return hash_object(1, str(n).encode())


class BackendConformance:
    """Checks of the backend contract; subclasses provide a ``backend`` fixture."""

    def test_is_a_backend(self, backend: Backend) -> None:
        assert isinstance(backend, Backend)

    def test_objects_round_trip_and_missing_is_none(self, backend: Backend) -> None:
        backend.put_objects([(_oid(1), b"one"), (_oid(2), b"")])
        assert backend.get_objects([_oid(2), _oid(3), _oid(1)]) == [b"", None, b"one"]
        assert backend.get_objects([]) == []

    def test_has_objects(self, backend: Backend) -> None:
        backend.put_objects([(_oid(1), b"one"), (_oid(2), b"")])
        assert backend.has_objects([_oid(2), _oid(3), _oid(1)]) == [True, False, True]
        assert backend.has_objects([]) == []
        backend.delete_objects([_oid(1)])
        assert backend.has_objects([_oid(1)]) == [False]

    def test_objects_are_write_once(self, backend: Backend) -> None:
        backend.put_objects([(_oid(1), b"first")])
        backend.put_objects([(_oid(1), b"first")])
        assert backend.get_objects([_oid(1)]) == [b"first"]

    def test_put_objects_with_refs(self, backend: Backend) -> None:
        backend.put_objects([(_oid(1), b"x")], {"a/1": b"v1", "a/2": b"v2"})
        assert backend.get_ref("a/1") == b"v1"
        backend.put_objects([], {"a/1": None})
        assert backend.get_ref("a/1") is None
        assert backend.get_ref("a/2") == b"v2"

    def test_list_refs_by_prefix_sorted_and_limited(self, backend: Backend) -> None:
        backend.put_objects([], {"b/2": b"2", "b/1": b"1", "b/10": b"10", "bb/1": b"x", "c": b"c"})
        assert list(backend.list_refs("b/")) == ["b/1", "b/10", "b/2"]
        assert backend.list_refs("b/", limit=1) == {"b/1": b"1"}
        assert backend.list_refs("zzz") == {}
        assert set(backend.list_refs("")) == {"b/1", "b/10", "b/2", "bb/1", "c"}

    def test_list_refs_except_skips_whole_prefixes_only(self, backend: Backend) -> None:
        refs = {"a": b"a", "branch/main": b"m", "ops": b"o", "ops/1": b"1", "ops/2": b"2",
                "ops0": b"0", "opsx/1": b"x", "stage/s/k": b"k", "tag/t": b"t",
                "tag/\u00e9": b"e"}
        backend.put_objects([], refs)
        listed = backend.list_refs_except(["ops/"])
        assert list(listed) == sorted(n for n in refs if not n.startswith("ops/"))
        assert listed == {n: v for n, v in refs.items() if not n.startswith("ops/")}
        assert backend.list_refs_except(["tag/", "ops/", "a"]) == {
            n: v for n, v in refs.items() if not n.startswith(("tag/", "ops/", "a"))}
        assert backend.list_refs_except(["zzz/"]) == backend.list_refs("")
        assert backend.list_refs_except([]) == backend.list_refs("")
        assert backend.list_refs_except([""]) == {}

    def test_get_objects_decoded_hands_each_stored_object_to_decode(
        self, backend: Backend
    ) -> None:
        backend.put_objects([(_oid(1), b"one"), (_oid(2), b"")])
        calls: list[ObjectId] = []

        def decode(object_id: ObjectId, data: bytes | memoryview) -> bytes:
            calls.append(object_id)
            return bytes(data)[::-1]  # a copy: ``data`` may be a view, valid only here

        wanted = [_oid(1), _oid(3), _oid(2), _oid(1)]
        assert backend.get_objects_decoded(wanted, decode) == [b"eno", None, b"", b"eno"]
        assert calls == [_oid(1), _oid(2), _oid(1)]
        with pytest.raises(ZeroDivisionError):  # what decode raises comes out unchanged
            backend.get_objects_decoded([_oid(1)], lambda i, d: 1 // 0)
        assert backend.get_objects([_oid(1)]) == [b"one"]

    def test_get_refs_and_objects_follows_the_refs_it_read(self, backend: Backend) -> None:
        backend.put_objects([(_oid(1), b"one"), (_oid(2), b"two")],
                            {"r/a": _oid(2), "r/b": b"not an id"})
        seen: list[list[bytes | None]] = []

        def follow(values: list[bytes | None]) -> list[ObjectId]:
            seen.append(values)
            return [ObjectId(v) for v in values[:1] if v is not None] + [_oid(3), _oid(1)]

        refs, objects = backend.get_refs_and_objects(["r/a", "r/missing", "r/b"], follow)
        assert refs == seen[0] == [_oid(2), None, b"not an id"]
        assert objects == [b"two", None, b"one"]
        assert backend.get_refs_and_objects(["r/missing"], lambda values: ()) == ([None], [])

    def test_get_refs_objects_and_listing_reads_all_three(self, backend: Backend) -> None:
        backend.put_objects([(_oid(1), b"one")],
                            {"r/a": _oid(1), "g/1": b"x", "g/2": b"y", "gg": b"z"})
        refs, objects, listed = backend.get_refs_objects_and_listing(
            ["r/a", "r/missing"], lambda values: [ObjectId(v) for v in values if v], "g/")
        assert (refs, objects, listed) == ([_oid(1), None], [b"one"],
                                           {"g/1": b"x", "g/2": b"y"})
        assert backend.get_refs_objects_and_listing([], lambda values: (), "none/") == (
            [], [], {})

    def test_scan_refs_visits_a_prefix_in_order(self, backend: Backend) -> None:
        backend.put_objects([], {"b/2": b"2", "b/1": b"1", "bb/1": b"x", "a": b"a"})
        seen: list[tuple[str, bytes]] = []
        backend.scan_refs("b/", lambda name, value: seen.append((name, value)))
        assert seen == [("b/1", b"1"), ("b/2", b"2")]
        backend.scan_refs("zzz", lambda name, value: seen.append((name, value)))
        assert len(seen) == 2

    def test_write_batch_conditions_and_session_rule(self, backend: Backend) -> None:
        base = _oid(1)
        backend.put_objects([(base, b"snapshot")], {"k": b"old"})
        rule = SessionRule(prefix="stage/s/", record="session/s", value=b"rec",
                           requires=[base])
        assert not backend.write(WriteBatch(expect={"k": b"other"}, refs={"stage/s/x": b"1"},
                                            session=rule))
        assert backend.list_refs("") == {"k": b"old"}  # nothing written
        assert backend.write(WriteBatch(refs={"stage/s/x": b"1"}, session=rule))
        assert backend.get_ref("session/s") == b"rec"  # created with the first staged ref
        assert backend.write(WriteBatch(delete_if_equal={"stage/s/x": b"stale"}, session=rule))
        assert backend.get_ref("stage/s/x") == b"1"  # a newer value is never deleted
        assert backend.write(WriteBatch(delete_if_equal={"stage/s/x": b"1"}, session=rule))
        # The rule never deletes a record: it outlives its staged refs until gc prunes it.
        assert backend.list_refs("") == {"k": b"old", "session/s": b"rec"}
        assert not backend.write(WriteBatch(delete_if_equal={"stage/s/x": b"1"}))  # gone: re-read
        moved = SessionRule(prefix="stage/s/", record="session/s", value=b"moved",
                            replace=True, requires=[base])
        assert backend.write(WriteBatch(session=moved))
        assert backend.get_ref("session/s") == b"moved"
        missing = SessionRule(prefix="stage/t/", record="session/t", value=b"r",
                              requires=[_oid(99)])
        with pytest.raises(MissingObjectsError):
            backend.write(WriteBatch(refs={"stage/t/x": b"1"}, session=missing))
        with pytest.raises(MissingObjectsError):
            backend.write(WriteBatch(requires=[_oid(98)], refs={"r": b"1"}))
        assert backend.list_refs("") == {"k": b"old", "session/s": b"moved"}
        assert backend.write(WriteBatch(objects=[(_oid(97), b"new")], requires=[_oid(97)]))

    def test_stage_is_a_one_ref_write_under_the_session_rule(self, backend: Backend) -> None:
        # ``stage`` (a lone staged set) must do exactly what the one-ref ``write`` does,
        # whichever shorter path the backend takes when the record exists.
        base = _oid(1)
        backend.put_objects([(base, b"snapshot")])
        rule = SessionRule(prefix="stage/s/", record="session/s", value=b"rec",
                           requires=[base])
        backend.stage("stage/s/x", b"1", rule)
        assert backend.list_refs("") == {"session/s": b"rec", "stage/s/x": b"1"}
        later = SessionRule(prefix="stage/s/", record="session/s", value=b"later",
                            requires=[_oid(99)])  # kept record: neither written nor required
        backend.stage("stage/s/x", b"2", later)
        backend.stage("stage/s/y", b"3", later)
        assert backend.list_refs("") == {"session/s": b"rec", "stage/s/x": b"2",
                                         "stage/s/y": b"3"}
        moved = SessionRule(prefix="stage/s/", record="session/s", value=b"moved",
                            replace=True, requires=[base])
        backend.stage("stage/s/x", b"4", moved)
        assert backend.get_refs(["session/s", "stage/s/x"]) == [b"moved", b"4"]
        missing = SessionRule(prefix="stage/t/", record="session/t", value=b"r",
                              requires=[_oid(98)])
        with pytest.raises(MissingObjectsError):
            backend.stage("stage/t/x", b"1", missing)
        assert backend.list_refs("stage/t/") == {}
        assert backend.get_ref("session/t") is None

    def test_a_rule_that_always_requires_checks_with_its_record_kept(
            self, backend: Backend) -> None:
        # A staging write of a session whose base was collected is refused, by ``stage``
        # and ``write`` alike, even though the session's record (naming another base) stays.
        base = _oid(1)
        backend.put_objects([(base, b"snapshot")])
        backend.stage("stage/s/x", b"1", SessionRule(prefix="stage/s/", record="session/s",
                                                     value=b"rec", requires=[base]))
        gone = SessionRule(prefix="stage/s/", record="session/s", value=b"other",
                           requires=[_oid(99)], always_requires=True)
        with pytest.raises(MissingObjectsError):
            backend.stage("stage/s/y", b"2", gone)
        with pytest.raises(MissingObjectsError):
            backend.write(WriteBatch(objects=[(_oid(2), b"chunk")],
                                     refs={"stage/s/z": b"3"}, session=gone))
        assert backend.list_refs("") == {"session/s": b"rec", "stage/s/x": b"1"}
        kept = attrs.evolve(gone, requires=[base])
        backend.stage("stage/s/y", b"2", kept)
        assert backend.write(WriteBatch(refs={"stage/s/z": b"3"}, session=kept))
        assert backend.get_refs(["session/s", "stage/s/y", "stage/s/z"]) == [b"rec", b"2", b"3"]

    def test_compare_and_swap(self, backend: Backend) -> None:
        assert backend.compare_and_swap_ref("r", None, b"1")
        assert not backend.compare_and_swap_ref("r", None, b"2")
        assert not backend.compare_and_swap_ref("r", b"0", b"2")
        assert backend.get_ref("r") == b"1"
        assert backend.compare_and_swap_ref("r", b"1", b"2")
        assert backend.compare_and_swap_ref("r", b"2", None)
        assert backend.get_ref("r") is None

    def test_swap_writes_its_companions_only_on_success(self, backend: Backend) -> None:
        backend.put_objects([], {"stage/x": b"staged"})
        assert not backend.compare_and_swap_ref("r", b"nope", b"1", {"stage/x": None})
        assert backend.get_ref("stage/x") == b"staged"
        assert backend.compare_and_swap_ref("r", None, b"1", {"stage/x": None, "other": b"o"})
        assert backend.get_ref("stage/x") is None and backend.get_ref("other") == b"o"

    def test_swap_writes_its_objects_only_on_success(self, backend: Backend) -> None:
        assert not backend.compare_and_swap_ref("r", b"nope", b"1", objects=[(_oid(5), b"5")])
        assert backend.get_objects([_oid(5)]) == [None]
        assert backend.compare_and_swap_ref("r", None, b"1", objects=[(_oid(5), b"5")])
        assert backend.get_objects([_oid(5)]) == [b"5"]

    def test_delete_and_iterate_objects(self, backend: Backend) -> None:
        backend.put_objects([(_oid(n), bytes([n])) for n in range(5)])
        assert backend.delete_objects([_oid(1), _oid(3), _oid(99)])
        assert set(backend.iter_object_ids()) == {_oid(0), _oid(2), _oid(4)}

    def test_delete_objects_only_if_refs_unchanged(self, backend: Backend) -> None:
        backend.put_objects([(_oid(1), b"1")], {"branch/x": b"a"})
        seen = backend.list_refs("")
        backend.put_objects([], {"stage/s/k": b"new ref since"})
        assert not backend.delete_objects([_oid(1)], if_refs_are=seen)
        assert backend.get_objects([_oid(1)]) == [b"1"]
        assert backend.delete_objects([_oid(1)], if_refs_are=backend.list_refs(""))
        assert backend.get_objects([_oid(1)]) == [None]

    def test_exactly_one_racing_swap_wins(self, backend: Backend) -> None:
        backend.compare_and_swap_ref("race", None, b"start")
        wins: list[int] = []
        barrier = threading.Barrier(8)

        def contender(n: int) -> None:
            barrier.wait()
            if backend.compare_and_swap_ref("race", b"start", str(n).encode()):
                wins.append(n)

        threads = [threading.Thread(target=contender, args=(n,)) for n in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert len(wins) == 1
        assert backend.get_ref("race") == str(wins[0]).encode()

    def test_consistent_reads_see_the_blocks_own_writes(self, backend: Backend) -> None:
        backend.put_objects([], {"v/a": b"1"})
        with backend.consistent_reads():
            assert backend.get_ref("v/a") == b"1"
            assert backend.compare_and_swap_ref("v/a", b"1", b"2")
            with backend.consistent_reads():  # nested: the same view
                assert backend.list_refs("v/") == {"v/a": b"2"}
            backend.put_objects([], {"v/b": b"3"})
            assert backend.get_refs(["v/a", "v/b"]) == [b"2", b"3"]
        assert backend.list_refs("v/") == {"v/a": b"2", "v/b": b"3"}

    def test_sync_is_callable(self, backend: Backend) -> None:
        backend.put_objects([(_oid(7), b"durable")])
        backend.sync()
        assert backend.get_objects([_oid(7)]) == [b"durable"]


