import numpy as np
import pyarrow as pa
import pytest

from jobs.manifests.manifest import ConversationSpec, TurnSpec
from jobs.plan.order import Defaults, WorkItem, plan, settings_for, turn_seed


def conv(cid: str, *texts: str, given: tuple[int, ...] = ()) -> ConversationSpec:
    """A conversation whose turn i says texts[i]; turns in `given` are given (have audio)."""
    return ConversationSpec(cid, [TurnSpec(cid, i, i % 2, text, audio=f"/voices/{cid}-{i}.wav" if i in given else None)
                                  for i, text in enumerate(texts)])


# --- plan --------------------------------------------------------------------------------------------------------

def test_plan_skips_complete_conversations_and_counts_them():
    done = conv("done", "aaaa", "bbbb")
    given_only = conv("given-only", "a voice prompt", given=(0,))  # nothing to render: complete from the start
    todo = conv("todo", "x", "y")
    items, complete = plan([done, given_only, todo], {"done": {0, 1}})
    assert [w.conversation_id for w in items] == ["todo"]
    assert complete == 2
    assert items[0].committed == set()
    assert [t.turn_index for t in items[0].remaining] == [0, 1]


def test_plan_keeps_partly_done_conversations_with_their_committed_turns():
    partial = conv("partial", "voice", "one", "two", "three", given=(0,))
    items, complete = plan([partial], {"partial": {1, 2}, "not-in-manifest": {0}})
    assert complete == 0
    (item,) = items
    assert item.spec is partial
    assert item.committed == {1, 2}
    assert [t.turn_index for t in item.remaining] == [3]  # the given turn and committed turns are not remaining


def test_plan_with_nothing_committed_renders_every_non_given_turn():
    c = conv("c", "voice", "one", "two", given=(0,))
    (item,), complete = plan([c], {})
    assert complete == 0 and item.committed == set()
    assert [t.turn_index for t in item.remaining] == [1, 2]


def test_plan_orders_by_remaining_text_longest_first():
    # "committed-long": a long text, but already committed; "given-long": a long given turn. Only what remains
    # to be rendered counts.
    committed_long = conv("committed-long", "x" * 100, "abc")  # remaining 3 characters
    given_long = conv("given-long", "y" * 100, "abcd", given=(0,))  # remaining 4
    medium = conv("medium", "12345", "12345")  # remaining 10
    longest = conv("longest", "z" * 30)  # remaining 30
    tie_b = conv("tie-b", "abcd")  # remaining 4, ties with given-long: by conversation_id
    items, complete = plan([committed_long, tie_b, given_long, medium, longest], {"committed-long": {0}})
    assert complete == 0
    assert [w.conversation_id for w in items] == ["longest", "medium", "given-long", "tie-b", "committed-long"]
    assert [w.expected_cost for w in items] == [30, 10, 4, 4, 3]


def test_plan_does_not_share_the_committed_sets_it_was_given():
    committed = {"c": {0}}
    (item,), _ = plan([conv("c", "one", "two")], committed)
    item.committed.add(1)
    assert committed == {"c": {0}}


def test_work_item_remaining_follows_turn_order():
    item = WorkItem(conv("c", "a", "b", "c", "d"), committed={0, 2})
    assert [t.turn_index for t in item.remaining] == [1, 3]
    assert item.expected_cost == 2


# --- seeds -------------------------------------------------------------------------------------------------------

def test_turn_seed_is_deterministic():
    assert turn_seed(7, "kitchen", 3) == turn_seed(7, "kitchen", 3)


def test_turn_seed_differs_across_job_seeds_conversations_and_turns():
    seeds = [turn_seed(job, cid, idx) for job in (0, 1, 2) for cid in ("a", "b", "kitchen", "a1") for idx in range(10)]
    assert len(set(seeds)) == len(seeds)
    # The fields are separated: ("a1", 0) and ("a", 10) must not hash the same text, nor (1, "1a") and (11, "a").
    assert turn_seed(0, "a1", 0) != turn_seed(0, "a", 10)
    assert turn_seed(1, "1a", 0) != turn_seed(11, "a", 0)


@pytest.mark.parametrize("job_seed", [0, 1, 2**63 - 1, 2**64 + 5])
def test_turn_seed_fits_int64(job_seed):
    for cid in ("a", "b", "c"):
        for idx in range(50):
            s = turn_seed(job_seed, cid, idx)
            assert isinstance(s, int) and 0 <= s <= 2**63 - 1
            assert int(np.int64(s)) == s
            assert pa.array([s], pa.int64()).to_pylist() == [s]


# --- settings ----------------------------------------------------------------------------------------------------

def test_settings_for_uses_the_job_defaults_where_the_row_has_none():
    defaults = Defaults(temperature=0.8, top_k=40, max_audio_length_ms=5000, seed=9)
    turn = TurnSpec("c", 2, 0, "hi")
    assert settings_for(turn, defaults) == {"temperature": 0.8, "top_k": 40, "max_audio_length_ms": 5000,
                                            "seed": turn_seed(9, "c", 2)}


def test_settings_for_prefers_row_values():
    defaults = Defaults(temperature=0.8, top_k=40, max_audio_length_ms=5000, seed=9)
    turn = TurnSpec("c", 2, 0, "hi", temperature=1.5, top_k=3, max_audio_length_ms=240, seed=1234)
    assert settings_for(turn, defaults) == {"temperature": 1.5, "top_k": 3, "max_audio_length_ms": 240,
                                            "seed": 1234}


def test_settings_for_keeps_falsy_row_values_and_normalizes_types():
    # A row seed of 0 is a seed, not "unset"; an integer temperature becomes a float.
    turn = TurnSpec("c", 0, 0, "hi", temperature=1, seed=0)
    s = settings_for(turn, Defaults(seed=5))
    assert s["seed"] == 0
    assert s["temperature"] == 1.0 and isinstance(s["temperature"], float)
    assert all(isinstance(s[k], int) for k in ("top_k", "max_audio_length_ms", "seed"))


def test_settings_for_mixes_row_and_default_per_field():
    turn = TurnSpec("c", 0, 0, "hi", top_k=7)
    s = settings_for(turn, Defaults())
    assert (s["temperature"], s["top_k"], s["max_audio_length_ms"]) == (0.9, 7, 10_000)
    assert s["seed"] == turn_seed(0, "c", 0)


def test_defaults_as_dict_holds_every_setting():
    assert Defaults(0.5, 10, 2000, 3).as_dict() == {"temperature": 0.5, "top_k": 10, "max_audio_length_ms": 2000,
                                                    "seed": 3}
