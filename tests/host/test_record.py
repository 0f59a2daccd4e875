"""pyvmm._record: the records' ``__init__`` binds its arguments as the dataclass one would
(positional or by name, defaults, per-instance factories, frozen, ``__post_init__``) and
refuses a wrong call with Python's TypeError; tuple_record binds the same way."""
import pytest

from pyvmm._record import FrozenInstanceError, as_dict, field, record, replace, tuple_record


@record
class Plain:
    a: int
    b: str = "b"
    c: list = field(default_factory=list)


@record(frozen=True)
class Frozen:
    x: int
    y: int = 2


@record
class Checked:
    n: int

    def __post_init__(self):
        if self.n < 0:
            raise ValueError("negative")


def test_fields_bind_positionally_by_name_and_from_defaults():
    assert as_dict(Plain(1)) == {"a": 1, "b": "b", "c": []}
    assert as_dict(Plain(1, "x", [2])) == {"a": 1, "b": "x", "c": [2]}
    assert as_dict(Plain(c=[3], a=4)) == {"a": 4, "b": "b", "c": [3]}
    assert Plain(1).c is not Plain(1).c  # a factory per instance
    assert Plain(1, "x") == Plain(a=1, b="x") != Plain(2, "x")
    assert repr(Plain(1)) == "Plain(a=1, b='b', c=[])"
    assert replace(Plain(1), b="z") == Plain(1, "z")
    assert Plain.__init__.__qualname__ == "Plain.__init__" and "a" in Plain.__init__.__annotations__


@pytest.mark.parametrize("call,message", [
    (lambda: Plain(), r"Plain.__init__\(\) missing 1 required argument: 'a'"),
    (lambda: Frozen(), r"Frozen.__init__\(\) missing 1 required argument: 'x'"),
    (lambda: Plain(1, "b", [], 4), r"Plain.__init__\(\) takes 3 arguments but 4 were given"),
    (lambda: Plain(1, a=2), r"got multiple values for argument 'a'"),
    (lambda: Plain(1, "b", [], a=2), r"got multiple values for argument 'a'"),
    (lambda: Plain(1, d=2), r"got an unexpected keyword argument 'd'"),
], ids=["missing", "missing-frozen", "too-many", "twice", "twice-all-positional", "unknown"])
def test_a_wrong_call_is_a_type_error(call, message):
    with pytest.raises(TypeError, match=message):
        call()


def test_frozen_records_are_read_only_and_hashable_and_post_init_runs():
    f = Frozen(1)
    with pytest.raises(FrozenInstanceError):
        f.x = 3
    assert hash(f) == hash(Frozen(1, 2)) and f == Frozen(x=1, y=2)
    assert Checked(1).n == 1
    with pytest.raises(ValueError, match="negative"):
        Checked(-1)


def test_a_field_without_a_default_after_one_with_is_refused():
    with pytest.raises(TypeError, match="field 'b' without a default follows one with a default"):
        @record
        class Bad:
            a: int = 1
            b: int


def test_tuple_record_binds_like_a_namedtuple():
    Pair = tuple_record("Pair", "left right", defaults=(0,))
    assert Pair(1) == (1, 0) and Pair(right=2, left=1) == (1, 2) and Pair(1, 2).right == 2
    assert repr(Pair(1, 2)) == "Pair(left=1, right=2)"
    with pytest.raises(TypeError, match=r"Pair\(\) missing 1 required argument: 'left'"):
        Pair()
    with pytest.raises(TypeError, match="got an unexpected keyword argument 'x'"):
        Pair(1, x=2)
    with pytest.raises(TypeError, match=r"Pair\(\) takes 2 arguments but 3 were given"):
        Pair(1, 2, 3)
