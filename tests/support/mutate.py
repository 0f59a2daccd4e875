"""Mutations of valid JSON objects for property tests of decoders that take
outside input (snapshot manifests, state files, control requests): a
hypothesis strategy that picks a place in the tree and replaces, deletes or
adds something there."""
import copy
import json

from hypothesis import strategies as st

NASTY = st.one_of(
    st.none(), st.booleans(), st.integers(-2, 2), st.integers(min_value=-(1 << 70), max_value=1 << 70),
    st.sampled_from([1 << 40, 1 << 64, (1 << 64) - 1, -1, 2 ** 63, 5000, 0.5, 1e300, -0.0,
                     "", "x" * 300, "\u0000", "%%%", "AAAA", [], {}, [[[[[]]]]], {"a": {"b": {}}}]),
    st.floats(allow_nan=False, allow_infinity=False), st.text(max_size=8),
    st.lists(st.integers(-3, 300), max_size=5))


def _paths(node, prefix=()):
    yield prefix
    if isinstance(node, dict):
        for k, v in node.items():
            yield from _paths(v, prefix + (k,))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from _paths(v, prefix + (i,))


@st.composite
def mutated(draw, valid):
    """``valid`` (a JSON-able object) with one mutation; never equal to it by accident."""
    doc = copy.deepcopy(valid)
    paths = [p for p in _paths(doc) if p]
    path = draw(st.sampled_from(paths))
    parent = doc
    for k in path[:-1]:
        parent = parent[k]
    key = path[-1]
    how = draw(st.sampled_from(["replace", "replace", "replace", "delete", "add", "nest"]))
    if how == "delete":
        del parent[key]
    elif how == "add" and isinstance(parent, dict):
        parent[draw(st.text(min_size=1, max_size=6))] = draw(NASTY)
    elif how == "nest":
        parent[key] = [parent[key]] if draw(st.booleans()) else {"x": parent[key]}
    else:
        parent[key] = draw(NASTY)
    return doc


def dumps(doc) -> bytes:
    return json.dumps(doc).encode()
