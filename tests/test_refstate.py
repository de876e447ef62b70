"""``RefState``: refs in memory with lazily sorted names, checked against a ``dict`` model."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from versionstore.backend.refstate import RefState

_names = st.text(alphabet="ab/", min_size=1, max_size=4)
_effects = st.dictionaries(_names, st.none() | st.binary(min_size=1, max_size=3), max_size=6)
_steps = st.lists(st.tuples(_effects, st.text(alphabet="ab/", max_size=2)), max_size=12)


@given(initial=st.dictionaries(_names, st.binary(min_size=1, max_size=3), max_size=5),
       steps=_steps)
def test_writes_and_prefix_reads_match_a_dict(initial: dict[str, bytes],
                                              steps: list[tuple[dict[str, bytes | None], str]]
                                              ) -> None:
    state, model = RefState(initial), dict(initial)
    for effect, prefix in steps:
        state.apply(effect)
        for name, value in effect.items():
            if value is None:
                model.pop(name, None)
            else:
                model[name] = value
        expected = {name: model[name] for name in sorted(model) if name.startswith(prefix)}
        assert list(state.under(prefix).items()) == list(expected.items())
        assert list(state.under(prefix, limit=1)) == list(expected)[:1]
        skipped = [prefix, *prefix[:1]] if prefix else ["a/"]  # overlapping prefixes too
        outside = {name: model[name] for name in sorted(model)
                   if not name.startswith(tuple(skipped))}
        assert list(state.outside(skipped).items()) == list(outside.items())
        assert len(state) == len(model)
        assert state.nbytes == sum(len(name) + len(value) for name, value in model.items())
    assert list(state.items()) == sorted(model.items())


def test_a_name_deleted_and_set_again_is_listed_once() -> None:
    state = RefState({"a": b"1", "b": b"2"})
    state.apply({"a": None})
    state.apply({"a": b"3", "c": b"4"})
    state.apply({"c": None})
    state.apply({"c": b"5"})
    assert list(state.items()) == [("a", b"3"), ("b", b"2"), ("c", b"5")]
