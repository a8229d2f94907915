"""Graph identity, malformed graph files, and numpy functions called while tracing."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import autodiff_lab as adl
from autodiff_lab import examples as E
from autodiff_lab.errors import GraphError, TraceError

# --- hash agrees with == ------------------------------------------------------------------


def test_equal_graphs_hash_alike():
    g1 = adl.trace(lambda x: adl.sum(adl.exp(x)), x=(3,))
    g2 = adl.trace(lambda x: adl.sum(adl.exp(x)), x=(3,))  # another line: same content
    g3 = adl.trace(lambda x: adl.sum(adl.sin(x)), x=(3,))
    assert g1 == g2 and hash(g1) == hash(g2) and len({g1, g2}) == 1
    assert g1 != g3 and len({g1, g3}) == 2
    assert {g1: "a"}[g2] == "a"
    assert adl.Graph.from_json(g1.to_json()) in {g1}


# --- malformed graph descriptions ---------------------------------------------------------

def _valid() -> dict:
    """A graph with every kind of node: inputs, parameters, constants (scalar and array),
    ops with attributes and with several operands."""
    def f(x, w):
        h = adl.conv2d(x, w, padding=1) * 2.0 + np.arange(4.0).reshape(1, 1, 2, 2)
        return adl.sum(adl.relu(h))
    return adl.trace(f, x=(1, 1, 2, 2), w=adl.param((1, 1, 3, 3))).to_dict()


WRONG = [None, True, 5, -1, 2.5, "x", "", [], {}, [1, "a"], [[1], [2, 3]], {"a": 1}]


def _variants() -> list[tuple[str, dict]]:
    base = _valid()
    out: list[tuple[str, dict]] = []

    def variant(label: str, change) -> None:
        data = copy.deepcopy(base)
        change(data)
        out.append((label, data))

    for key in list(base):
        variant(f"drop {key}", lambda d, key=key: d.pop(key))
        for bad in WRONG:
            variant(f"{key}={bad!r}", lambda d, key=key, bad=bad: d.__setitem__(key, bad))
    for k, node in enumerate(base["nodes"]):
        for field in list(node) + ["inputs", "value", "attrs", "name"]:
            if field in node:
                variant(f"node {k} drop {field}", lambda d, k=k, f=field: d["nodes"][k].pop(f))
            for bad in WRONG:
                variant(f"node {k} {field}={bad!r}",
                        lambda d, k=k, f=field, bad=bad: d["nodes"][k].__setitem__(f, bad))
        # wrong sizes
        variant(f"node {k} longer shape", lambda d, k=k: d["nodes"][k]["shape"].append(2))
        if node["shape"]:
            variant(f"node {k} shorter shape", lambda d, k=k: d["nodes"][k]["shape"].pop())
        if node["role"] == "constant":
            variant(f"node {k} value one too many",
                    lambda d, k=k: d["nodes"][k].__setitem__(
                        "value", np.append(np.ravel(d["nodes"][k]["value"]), 1.0).tolist()))
            variant(f"node {k} value empty", lambda d, k=k: d["nodes"][k].__setitem__("value", []))
        if node.get("inputs"):
            variant(f"node {k} extra input", lambda d, k=k: d["nodes"][k]["inputs"].append(0))
            variant(f"node {k} missing input", lambda d, k=k: d["nodes"][k]["inputs"].pop())
            variant(f"node {k} input to itself",
                    lambda d, k=k: d["nodes"][k]["inputs"].__setitem__(0, d["nodes"][k]["id"]))
        variant(f"node {k} duplicate id",
                lambda d, k=k: d["nodes"][k].__setitem__("id", d["nodes"][k - 1]["id"]))
        variant(f"node {k} as a list", lambda d, k=k: d["nodes"].__setitem__(k, [1, 2]))
    variant("output to a missing node", lambda d: d["outputs"].__setitem__("out", 99))
    variant("output to a list", lambda d: d["outputs"].__setitem__("out", [1]))
    variant("no nodes", lambda d: d.__setitem__("nodes", []))
    return out


VARIANTS = _variants()


def test_the_fuzz_covers_many_variants():
    assert len(VARIANTS) > 500


@pytest.mark.parametrize("label,data", VARIANTS, ids=[label for label, _ in VARIANTS])
def test_a_malformed_description_is_a_graph_error(label, data):
    try:
        adl.Graph.from_dict(data)
    except GraphError as exc:
        assert str(exc), label
    # anything else (TypeError, KeyError, ValueError from numpy ...) fails the test
    # some variants are harmless (a dropped 'loc', another input name): those load


@pytest.mark.parametrize("change,fragment", [
    (lambda d: d.__setitem__("nodes", 5), "field 'nodes' must be a list"),
    (lambda d: d["nodes"][3].__setitem__("value", [1.0, 2.0, 3.0]),
     r"node 3 'constant'.*field 'value' holds 3 number\(s\), but shape \(\) needs 1"),
    (lambda d: d["nodes"][1].__setitem__("shape", "abc"), "node 1 'parameter'.*field 'shape'"),
    (lambda d: d["nodes"][4].pop("dtype"), "node 4 has no field 'dtype'"),
    (lambda d: d["nodes"][4].__setitem__("dtype", "banana"), "node 4 'mul'.*field 'dtype'"),
    (lambda d: d["nodes"][4].__setitem__("inputs", [2, 42]), "node 4 .*refers to node 42"),
    (lambda d: d["nodes"][8]["attrs"].__setitem__("axes", "abc"), "node 8 'sum'.*attributes"),
    (lambda d: d["nodes"][4]["shape"].append(3), "node 4 'mul'.*recorded shape"),
    (lambda d: d["outputs"].__setitem__("out", "x"), "output 'out' must be a node id"),
])
def test_messages_name_the_node_and_the_field(change, fragment):
    data = _valid()
    change(data)
    with pytest.raises(GraphError, match=fragment):
        adl.Graph.from_dict(data)


def test_a_constant_of_the_wrong_size_in_an_array_constant():
    data = _valid()
    k = next(i for i, n in enumerate(data["nodes"]) if n["role"] == "constant" and n["shape"])
    data["nodes"][k]["value"] = [1.0, 2.0, 3.0]
    with pytest.raises(GraphError, match=rf"node {data['nodes'][k]['id']} 'constant'.*holds 3"):
        adl.Graph.from_dict(data)


@pytest.mark.parametrize("text", ["", "not json", "{", "[1, 2]", "5", "null", '{"format": 1}',
                                  b"\xff\xfe\x00"])
def test_text_that_is_not_a_graph_is_a_graph_error(text):
    with pytest.raises(GraphError):
        adl.Graph.from_json(text)


def test_a_file_that_is_not_json_names_the_file(tmp_path):
    (tmp_path / "g.json").write_text("hello")
    with pytest.raises(GraphError, match="g.json.*not JSON"):
        adl.load(tmp_path / "g.json")
    (tmp_path / "b.json").write_bytes(b"\x89PNG\r\n\x1a\n\xff\xff")
    with pytest.raises(GraphError, match="b.json.*not text"):
        adl.load(tmp_path / "b.json")


JSON_VALUES = st.recursive(st.none() | st.booleans() | st.integers(-3, 10)
                           | st.floats(allow_nan=False) | st.text(max_size=5),
                           lambda inner: st.lists(inner, max_size=3)
                           | st.dictionaries(st.text(max_size=4), inner, max_size=3),
                           max_leaves=6)


@settings(max_examples=150, deadline=None, derandomize=True)
@given(node=st.integers(0, 6), field=st.sampled_from(
    ["id", "op", "role", "shape", "dtype", "attrs", "inputs", "value", "name", "loc"]),
    value=JSON_VALUES)
def test_random_json_in_any_field_is_a_graph_error_or_loads(node, field, value):
    data = _valid()
    data["nodes"][node % len(data["nodes"])][field] = value
    try:
        adl.Graph.from_dict(json.loads(json.dumps(data)))
    except GraphError:
        pass


def test_a_saved_graph_still_round_trips():
    ex = E.dncnn(batch=2, size=8, channels=4, depth=3)
    g = adl.Graph.from_json(ex.graph.to_json())
    assert g == ex.graph
    np.testing.assert_array_equal(g.evaluate(ex.values)["out"], ex.graph.evaluate(ex.values)["out"])


# --- numpy functions on traced tensors ----------------------------------------------------

def _ops(g: adl.Graph) -> list[str]:
    return [g.node(v)["op"] for v in g.order if g.node(v)["role"] == "op"]


@pytest.mark.parametrize("fn,op,reference", [
    (lambda x: np.sum(x), "sum", np.sum),
    (lambda x: np.sum(x, axis=0, keepdims=True), "sum", lambda x: np.sum(x, 0, keepdims=True)),
    (lambda x: np.mean(x, axis=1), "mean", lambda x: np.mean(x, 1)),
    (lambda x: np.max(x), "max", np.max),
    (lambda x: np.amax(x, axis=0), "max", lambda x: np.amax(x, 0)),
    (lambda x: np.exp(x), "exp", np.exp),
    (lambda x: np.tanh(x), "tanh", np.tanh),
    (lambda x: np.matmul(x, x.T), "matmul", lambda x: x @ x.T),
    (lambda x: np.dot(x, x.T), "matmul", lambda x: x @ x.T),
    (lambda x: np.transpose(x), "transpose", np.transpose),
    (lambda x: np.reshape(x, (3, 2)), "reshape", lambda x: x.reshape(3, 2)),
    (lambda x: np.ravel(x), "reshape", np.ravel),
    (lambda x: np.expand_dims(x, 0), "reshape", lambda x: x[None]),
    (lambda x: np.squeeze(np.expand_dims(x, 0)), "reshape", lambda x: x),
    (lambda x: np.concatenate([x, x], axis=1), "concatenate",
     lambda x: np.concatenate([x, x], 1)),
    (lambda x: np.broadcast_to(x, (4, 2, 3)), "broadcast_to", lambda x: np.broadcast_to(x, (4, 2, 3))),
    (lambda x: np.square(x), "pow", np.square),
    (lambda x: np.power(x, 3), "pow", lambda x: x ** 3),
    (lambda x: np.abs(x), "abs", np.abs),
    (lambda x: np.maximum(x, 0.5), "maximum", lambda x: np.maximum(x, 0.5)),
])
def test_numpy_functions_with_an_op_record_it(fn, op, reference):
    g = adl.trace(fn, x=(2, 3))
    assert op in _ops(g)
    x = np.arange(6.0).reshape(2, 3) / 7
    np.testing.assert_allclose(g.evaluate({"x": x})["out"], reference(x))


def test_numpy_shape_queries_answer_from_the_trace():
    seen = []
    adl.trace(lambda x: seen.append((np.shape(x), np.ndim(x), np.size(x))) or x, x=(2, 3))
    assert seen == [((2, 3), 2, 6)]


def _line_of(fn) -> str:
    return f"test_graph_defects.py:{fn.__code__.co_firstlineno}"


CLIP = lambda x: np.clip(x, 0, 1)  # noqa: E731
CUMSUM = lambda x: np.cumsum(x)  # noqa: E731
NORM = lambda x: np.linalg.norm(x)  # noqa: E731
SUM_OUT = lambda x: np.sum(x, out=np.zeros(()))  # noqa: E731
REDUCE = lambda x: np.add.reduce(x)  # noqa: E731
SIGN = lambda x: np.sign(x)  # noqa: E731
ASARRAY = lambda x: np.asarray(x) + 1  # noqa: E731


@pytest.mark.parametrize("fn,name", [
    (CLIP, "numpy.clip"), (CUMSUM, "numpy.cumsum"), (NORM, "numpy.linalg.norm"),
    (SUM_OUT, "numpy.sum: argument\\(s\\) out="), (REDUCE, "numpy.add.reduce"),
    (SIGN, "numpy.sign"), (ASARRAY, "numpy array"),
])
def test_other_numpy_functions_raise_a_trace_error_at_the_users_line(fn, name):
    with pytest.raises(TraceError, match=name) as info:
        adl.trace(fn, x=(3,))
    assert _line_of(fn) in str(info.value)
    assert "fromnumeric" not in str(info.value)


# --- the render package and adl.render ----------------------------------------------------

def test_render_is_callable_and_its_submodules_import():
    import autodiff_lab.render.backend
    from autodiff_lab.render import backend, dot

    g = adl.trace(lambda x: x * 2.0, x=())
    assert adl.render(g).startswith("// autodiff_lab graph")
    assert autodiff_lab.render.backend is backend and dot.build_dot
    assert adl.render.render(g) == adl.render(g)
