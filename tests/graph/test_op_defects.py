"""Regression tests for classes of op defects: labels out of range, bad attributes of the
convolution / pooling / up-sampling ops, and the transpose convolution's output padding.

Each error must be ours (LabelError or ShapeError), name the node and the offending value,
and come as early as possible: at trace time for what the code writes (constant labels,
attributes), when a graph is loaded, and in eager mode; at the input check for values.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

import autodiff_lab as adl
from autodiff_lab.engines import tape
from autodiff_lab.errors import InputError, LabelError, ShapeError
from autodiff_lab.graph.evaluate import run_forward
from autodiff_lab.graph.graph import Graph
from autodiff_lab.graph.optable import OPS
from autodiff_lab.kernels import softmax_ce_fast

RNG = np.random.default_rng(2)
K = 4
BAD_LABELS = [K, -1, 10 ** 8]


# --------------------------------------------------------------------------------------
# class labels
# --------------------------------------------------------------------------------------

def _label_graph():
    return adl.trace(lambda z, y: adl.softmax_cross_entropy(z, y), z=(2, K), y=np.array([0, 1]))


def _assert_names_label(exc: BaseException, label: int) -> None:
    text = str(exc)
    assert isinstance(exc, LabelError) and isinstance(exc, InputError)
    assert f"class label {label}" in text and f"K = {K}" in text, text


@pytest.mark.parametrize("label", BAD_LABELS)
@pytest.mark.parametrize("engine,options", [("tape", {}), ("tape", {"anomaly": False}),
                                            ("numeric", {}), ("symbolic", {"mode": "matrix"})])
def test_out_of_range_labels_are_refused_by_every_engine(engine, options, label):
    g = _label_graph()
    program = adl.engine(engine, **options).compile(g, wrt=["z"])
    with pytest.raises(LabelError) as info:
        program({"z": RNG.standard_normal((2, K)), "y": np.array([0, label])})
    _assert_names_label(info.value, label)
    assert "input 'y'" in str(info.value) and "'softmax_cross_entropy'" in str(info.value)


@pytest.mark.parametrize("label", BAD_LABELS)
def test_out_of_range_labels_in_eager_mode(label):
    with pytest.raises(LabelError) as info:
        adl.softmax_cross_entropy(RNG.standard_normal((2, K)), np.array([0, label]))
    _assert_names_label(info.value, label)


def test_constant_labels_are_checked_at_trace_time():
    with pytest.raises(LabelError) as info:
        adl.trace(lambda z: adl.softmax_cross_entropy(z, np.array([3, 12])), z=(2, K))
    _assert_names_label(info.value, 12)
    assert "node" in str(info.value) and "test_op_defects.py" in str(info.value)


def test_constant_labels_are_checked_when_a_graph_is_loaded():
    g = adl.trace(lambda z: adl.softmax_cross_entropy(z, np.array([3, 1])), z=(2, K))
    data = json.loads(g.to_json())
    for item in data["nodes"]:
        if item["role"] == "constant":
            item["value"] = [3, -1]
    with pytest.raises(LabelError) as info:
        Graph.from_dict(data)
    _assert_names_label(info.value, -1)


@pytest.mark.parametrize("label", BAD_LABELS)
def test_the_op_rules_and_the_kernels_check_labels_themselves(label):
    op = OPS["softmax_cross_entropy"]
    z = RNG.standard_normal((2, K))
    y = np.array([0, label])
    for call in (lambda: op.forward(z, y), lambda: op.vjp_for(0)(np.float64(1.0), None, z, y),
                 lambda: op.batched(1, z[None], y[None]),
                 # the Numba kernels index the logits with the labels: never out of bounds
                 lambda: softmax_ce_fast.softmax_cross_entropy_forward(z, y, "mean"),
                 lambda: softmax_ce_fast.softmax_cross_entropy_backward(np.float64(1.0), z, y,
                                                                        "mean")):
        with pytest.raises(LabelError, match=f"class label {label}"):
            call()


def test_labels_must_be_integers_in_eager_mode():
    with pytest.raises(LabelError, match="integers"):
        adl.softmax_cross_entropy(RNG.standard_normal((2, K)), np.array([0.5, 1.0]))


def test_an_error_a_forward_raises_names_its_node(monkeypatch):
    # what the engines do when a rule refuses values their input checks let through
    g = _label_graph()
    arrays = {"z": RNG.standard_normal((2, K)), "y": np.array([0, K])}
    with pytest.raises(LabelError, match=r"node 2 'softmax_cross_entropy'.*class label 4"):
        run_forward(g, arrays)
    monkeypatch.setattr(tape, "check_values", lambda graph, values, **kw: dict(values))
    with pytest.raises(LabelError, match=r"node 2 'softmax_cross_entropy'.*class label 4"):
        adl.engine("tape").compile(g, wrt=["z"])(arrays)


def test_valid_labels_still_work_on_every_engine():
    g = _label_graph()
    vals = {"z": RNG.standard_normal((2, K)), "y": np.array([0, K - 1])}
    want = adl.gradient(g, vals, engine="tape", wrt=["z"])
    for engine in ("numeric", "symbolic"):
        got = adl.gradient(g, vals, engine=engine, wrt=["z"])
        np.testing.assert_allclose(got.grads["z"], want.grads["z"], atol=1e-6)


def test_index_keys_from_a_graph_file_are_checked():
    g = adl.trace(lambda x: adl.sum(x[1]), x=(3, 2))
    data = json.loads(g.to_json())
    for bad in (["int", 1.5], ["int", True], ["slice", 0, 2, 0], ["slice", "a", None, None]):
        for item in data["nodes"]:
            if item["op"] == "index":
                item["attrs"]["key"] = [bad]
        with pytest.raises(ShapeError, match="bad index item"):
            Graph.from_dict(data)


# --------------------------------------------------------------------------------------
# attributes of the convolution, pooling and up-sampling ops
# --------------------------------------------------------------------------------------

X4 = (1, 4, 6, 6)
OP_CALLS = {  # op -> (function of (x, w) and attributes, shapes of x and w)
    "conv2d": (lambda x, w, **a: adl.conv2d(x, w, **a), X4, (6, 4, 3, 3)),
    "conv_transpose2d": (lambda x, w, **a: adl.conv_transpose2d(x, w, **a), X4, (4, 3, 3, 3)),
    "max_pool2d": (lambda x, w, **a: adl.max_pool2d(x, **{"kernel": 2, **a}), X4, None),
    "avg_pool2d": (lambda x, w, **a: adl.avg_pool2d(x, **{"kernel": 2, **a}), X4, None),
    "upsample": (lambda x, w, **a: adl.upsample(x, **a), X4, None),
    "upsample_bilinear": (lambda x, w, **a: adl.upsample(x, mode="bilinear", **a), X4, None),
}
BAD_VALUES = {"stride": [0, -1, 1.5, True, "2", (1, 2, 3)],
              "padding": [-1, 1.5, False],
              "dilation": [0, -2, 2.5, True],
              "groups": [0, -1, 1.5, True, "2", 3],
              "output_padding": [-1, 1.5, True],
              "kernel": [0, -2, 1.5, True],
              "scale": [0, -1, 1.5, True, "2"]}
ATTRS = {"conv2d": ["stride", "padding", "dilation", "groups"],
         "conv_transpose2d": ["stride", "padding", "output_padding", "dilation", "groups"],
         "max_pool2d": ["kernel", "stride", "padding"],
         "avg_pool2d": ["kernel", "stride", "padding"],
         "upsample": ["scale"], "upsample_bilinear": ["scale"]}
ATTR_CASES = [(op, attr, value) for op, attrs in ATTRS.items() for attr in attrs
              for value in BAD_VALUES[attr]]


def _trace(op, **attrs):
    fn, xs, ws = OP_CALLS[op]
    if ws is None:
        return adl.trace(lambda x: fn(x, None, **attrs), x=xs)
    return adl.trace(lambda x, w: fn(x, w, **attrs), x=xs, w=ws)


def _eager(op, **attrs):
    fn, xs, ws = OP_CALLS[op]
    return fn(RNG.standard_normal(xs), None if ws is None else RNG.standard_normal(ws), **attrs)


def _assert_names(exc: BaseException, attr: str, value) -> None:
    text = str(exc)
    assert f"{attr}=" in text and repr(value) in text, text


@pytest.mark.parametrize("op,attr,value", ATTR_CASES, ids=[f"{o}-{a}={v!r}" for o, a, v in ATTR_CASES])
def test_bad_attributes_are_shape_errors_at_trace_time(op, attr, value):
    with pytest.raises(ShapeError) as info:
        _trace(op, **{attr: value})
    _assert_names(info.value, attr, value)
    assert f"'{op}'" in str(info.value)  # the node is named
    with pytest.raises(ShapeError) as info:
        _eager(op, **{attr: value})
    _assert_names(info.value, attr, value)


@pytest.mark.parametrize("op,attr,value", ATTR_CASES, ids=[f"{o}-{a}={v!r}" for o, a, v in ATTR_CASES])
def test_bad_attributes_are_shape_errors_when_a_graph_is_loaded(op, attr, value):
    data = json.loads(_trace(op).to_json())
    for item in data["nodes"]:
        if item["op"] == op:
            item["attrs"][attr] = list(value) if isinstance(value, tuple) else \
                value if isinstance(value, str) or attr == "groups" else [value, value]
    with pytest.raises(ShapeError) as info:
        Graph.from_dict(data)
    assert attr in str(info.value) and f"'{op}'" in str(info.value)


def test_the_reported_max_pool_with_negative_padding():
    x = np.ones((1, 1, 4, 4))
    with pytest.raises(ShapeError, match=r"padding must be at least 0.*padding=\(-1, -1\)"):
        adl.trace(lambda x: adl.max_pool2d(x, 2, 2, -1), x=x.shape)
    with pytest.raises(ShapeError, match="padding"):
        adl.max_pool2d(x, 2, 2, -1)


@pytest.mark.parametrize("op,attrs,fragment", [
    ("conv2d", dict(), "does not fit"),                              # kernel 7 > padded input 6
    ("max_pool2d", dict(kernel=8), "does not fit"),
    ("avg_pool2d", dict(kernel=7, padding=0), "does not fit"),
    ("max_pool2d", dict(kernel=3, padding=2), "at most half the kernel"),
    ("avg_pool2d", dict(kernel=(2, 4), padding=(1, 3)), "at most half the kernel"),
    ("conv_transpose2d", dict(stride=1, output_padding=1), "output_padding"),
    ("conv_transpose2d", dict(stride=2, dilation=2, output_padding=2), "output_padding"),
    ("conv_transpose2d", dict(stride=1, dilation=2, output_padding=(1, 2)), "output_padding"),
    ("conv_transpose2d", dict(padding=10), "output would be"),
])
def test_attributes_that_do_not_fit_the_shapes(op, attrs, fragment):
    fn, xs, ws = OP_CALLS[op]
    if op == "conv2d":
        ws = (6, 4, 7, 7)
    with pytest.raises(ShapeError, match=fragment):
        if ws is None:
            adl.trace(lambda x: fn(x, None, **attrs), x=xs)
        else:
            adl.trace(lambda x, w: fn(x, w, **attrs), x=xs, w=ws)


@pytest.mark.parametrize("op,w", [("conv2d", (6, 4, 0, 3)), ("conv2d", (0, 4, 3, 3)),
                                  ("conv_transpose2d", (4, 3, 3, 0)),
                                  ("conv2d", (6, 4, 3, 3)), ("conv_transpose2d", (4, 2, 3, 3))])
def test_empty_kernels_and_channels_not_divisible_by_groups(op, w):
    groups = 3 if w in ((6, 4, 3, 3), (4, 2, 3, 3)) else 1
    with pytest.raises(ShapeError, match="empty|divisible"):
        adl.trace(lambda x, w: OP_CALLS[op][0](x, w, groups=groups), x=X4, w=w)


def test_output_padding_below_max_of_stride_and_dilation_is_accepted():
    # PyTorch's rule, per axis: output_padding < max(stride, dilation)
    g = adl.trace(lambda x, w: adl.conv_transpose2d(x, w, stride=(1, 2), dilation=(2, 1),
                                                    output_padding=(1, 1)),
                  x=(1, 4, 5, 5), w=(4, 3, 3, 3))
    assert g.node(g.output)["shape"] == (1, 3, 10, 12)


def test_convolution_gradient_kernels_refuse_a_gradient_of_the_wrong_shape():
    from autodiff_lab.kernels import dispatch
    x = RNG.standard_normal((1, 2, 5, 5))
    w = RNG.standard_normal((3, 2, 3, 3))
    g = RNG.standard_normal((1, 3, 4, 4))  # the convolution of x has shape (1, 3, 3, 3)
    for dtype in (np.float32, np.float64, np.complex128):
        with pytest.raises(ShapeError, match="upstream gradient"):
            dispatch.conv2d_backward_input(g.astype(dtype), w.astype(dtype), x.shape, (1, 1),
                                           (0, 0), (1, 1))
        with pytest.raises(ShapeError, match="upstream gradient"):
            dispatch.conv2d_backward_weight(g.astype(dtype), x.astype(dtype), w.shape, (1, 1),
                                            (0, 0), (1, 1))
