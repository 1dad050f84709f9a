"""The problem model validates its fields and prints short, distinct ids."""

from __future__ import annotations

import pytest

from attnsuite.problem import Mask, Problem, ProblemError


@pytest.mark.parametrize(
    "fields, fragment",
    [
        (dict(hq=3, hkv=2), "not a multiple"),
        (dict(lq=0), "lq must be a positive int"),
        (dict(dtype="float8"), "unknown dtype"),
        (dict(device="tpu"), "unknown device"),
        (dict(scale=-1.0), "scale must be positive"),
        (dict(d_model=64, lq=3, lk=5), "self-attention"),
        (dict(lk=10, mask=Mask("document", doc_lens=(3, 3))), "sum to 6"),
    ],
)
def test_impossible_problem_is_rejected_with_a_message_naming_the_field(fields, fragment):
    with pytest.raises(ProblemError, match=fragment):
        Problem(**fields)


def test_unknown_mask_kind_is_rejected():
    with pytest.raises(ProblemError, match="unknown mask kind 'diagonal'"):
        Mask("diagonal")


def test_ids_are_readable_and_distinct():
    a = Problem(batch=2, lq=97, lk=113, hq=4, hkv=2, dqk=64, dv=64, mask=Mask("causal", align="bottom_right"))
    assert a.id == "b2-q97k113-h4:2-d64-causal-br-fp32-cpu"
    variants = {a.id, a.with_(dtype="bfloat16").id, a.with_(mask=Mask("causal")).id, a.with_(scale=0.5).id,
                a.with_(alibi=True).id, a.with_(softcap=20.0).id, a.with_(seed=3).id}
    assert len(variants) == 7, variants


def test_problem_is_hashable_and_frozen():
    p = Problem()
    assert hash(p) == hash(Problem())
    with pytest.raises(Exception):
        p.lq = 5  # type: ignore[misc]
