"""Custom ops with adl.define_op: registered like built-in entries, read by every engine, refused
clearly where a form is missing, serialisable."""

import numpy as np
import pytest
import sympy as sp

import autodiff_lab as adl
from autodiff_lab.errors import NotDifferentiableError, OpDefinitionError, TraceError, UnknownOpError
from autodiff_lab.graph import custom
from autodiff_lab.graph.optable import OPS


@pytest.fixture(autouse=True)
def _clean_table():
    """Custom ops must not leak into the tests that sweep the whole op table."""
    before = set(OPS)
    yield
    for name in set(custom.CUSTOM_OPS):
        custom.remove_op(name)
    assert set(OPS) == before


def _softplus(**overrides):
    fields = dict(
        forward=lambda x: np.logaddexp(0, x) if not np.iscomplexobj(x) else np.log(1 + np.exp(x)),
        vjp=[lambda g, ans, x: g / (1 + np.exp(-x))],
        sympy=lambda x: sp.log(1 + sp.exp(x)),
        matrix=[lambda M, g, ans, x: g * M.sigmoid(x)],
        label="softplus", complex_safe=True, doc="log(1 + eˣ)")
    fields.update(overrides)
    return adl.define_op("softplus_t", **fields)


def _values():
    rng = np.random.default_rng(0)
    return {"w": rng.normal(size=3), "x": rng.normal(size=(4, 3))}


ENGINES = [("tape", {}), ("numeric", {"method": "central"}), ("numeric", {"method": "complex"}),
           ("symbolic", {}), ("symbolic", {"mode": "expanded"})]


def test_every_engine_reads_a_custom_op_from_the_table():
    softplus = _softplus()
    g = adl.trace(lambda w, x: adl.sum(softplus(x @ w)), w=adl.param((3,)), x=(4, 3))
    vals = _values()
    z = vals["x"] @ vals["w"]
    exact = vals["x"].T @ (1 / (1 + np.exp(-z)))
    for name, options in ENGINES:
        r = adl.gradient(g, vals, engine=name, **options)
        np.testing.assert_allclose(r.grads["w"], exact, rtol=1e-8, err_msg=f"{name} {options}")
        assert r.value == pytest.approx(np.logaddexp(0, z).sum())
    assert adl.gradcheck(g, vals).ok
    assert "σ" in str(adl.formula(g, wrt="w"))
    assert "softplus" in adl.render(g, values=vals, grads=True)


def test_eager_call_uses_the_forward_and_keeps_float32():
    softplus = _softplus()
    np.testing.assert_allclose(softplus(np.array([0.0, 1.0])), np.logaddexp(0, [0.0, 1.0]))
    assert softplus(np.ones(2, np.float32)).dtype == np.float32
    assert softplus.op is OPS["softplus_t"] and softplus.__name__ == "softplus_t"
    g = adl.trace(lambda x: adl.sum(softplus(x)), x=adl.spec((3,), "float32"))
    r = adl.gradient(g, {"x": np.ones(3, np.float32)})
    assert r.value.dtype == np.float32 and r.grads["x"].dtype == np.float32


def test_missing_forms_are_refused_naming_the_op_and_the_field():
    softplus = _softplus(sympy=None, matrix=None, complex_safe=False)
    g = adl.trace(lambda x: adl.sum(softplus(x)), x=(3,))
    vals = {"x": np.array([0.5, -1.0, 2.0])}
    assert adl.gradient(g, vals, engine="tape").grads["x"].shape == (3,)   # the tape needs only vjp
    with pytest.raises(NotDifferentiableError, match=r"softplus_t.*'matrix'"):
        adl.gradient(g, vals, engine="symbolic")
    with pytest.raises(NotDifferentiableError, match=r"softplus_t.*'sympy'"):
        adl.gradient(g, vals, engine="symbolic", mode="expanded")
    with pytest.raises(NotDifferentiableError, match=r"softplus_t.*complex_safe=False"):
        adl.gradient(g, vals, engine="numeric", method="complex")
    with pytest.raises(NotDifferentiableError, match="softplus_t"):
        adl.formula(g, wrt="x")


def test_built_in_ops_cannot_be_redefined_and_custom_ones_are_replaced():
    with pytest.raises(OpDefinitionError, match="'relu' is a built-in op"):
        adl.define_op("relu", forward=np.abs, vjp=[lambda g, ans, x: g])
    with pytest.raises(OpDefinitionError, match="not a custom op"):
        custom.remove_op("relu")
    double = adl.define_op("scale_t", forward=lambda x: 2 * x, vjp=[lambda g, ans, x: 2 * g],
                           matrix=[lambda M, g, ans, x: 2 * g])
    g = adl.trace(lambda x: adl.sum(double(x)), x=(2,))
    assert adl.gradient(g, {"x": np.ones(2)}, engine="symbolic").grads["x"].tolist() == [2, 2]
    adl.define_op("scale_t", forward=lambda x: 3 * x, vjp=[lambda g, ans, x: 3 * g],
                  matrix=[lambda M, g, ans, x: 3 * g])   # a notebook cell run again, changed
    r = adl.gradient(g, {"x": np.ones(2)}, engine="symbolic")   # compiled anew, not from the cache
    assert r.grads["x"].tolist() == [3, 3] and r.value == 6


@pytest.mark.parametrize("fields, fragment", [
    ({"vjp": lambda g, ans, x: g}, "'vjp' must be a list"),
    ({"vjp": []}, "'vjp' is empty"),
    ({"vjp": [None]}, "'vjp' has no rule"),
    ({"vjp": ["not a function"]}, "'vjp' must hold functions"),
    ({"forward": 3}, "'forward' must be a function"),
    ({"shape": "same"}, "'shape' must be a shape rule"),
    ({"matrix": [None, None]}, "'matrix' must be a list of 1 rule"),
    ({"matrix": lambda M, g, ans, x: g}, "'matrix' must be a list"),
    ({"sympy": "log(1 + exp(x))"}, "'sympy' must be a function"),
    ({"label": ""}, "'label' must be a non-empty string"),
    ({"complex_safe": "yes"}, "'complex_safe' must be True or False"),
    ({"kink": 0.0}, "'kink' must be a function or None"),
    ({"vjp_uses": ("inputs", "grads")}, "'vjp_uses' must be a set"),
    ({"attrs": {"1beta": 1.0}}, "'attrs' must be a dict"),
])
def test_malformed_definitions_name_the_field(fields, fragment):
    base = dict(forward=np.tanh, vjp=[lambda g, ans, x: g * (1 - ans * ans)])
    base.update(fields)
    with pytest.raises(OpDefinitionError, match=fragment):
        adl.define_op("tanh_t", **base)
    assert "tanh_t" not in OPS


@pytest.mark.parametrize("name", ["input", "constant", "2fast", "has space", 3])
def test_bad_names_are_refused(name):
    with pytest.raises(OpDefinitionError):
        adl.define_op(name, forward=np.tanh, vjp=[lambda g, ans, x: g])


def test_rules_that_break_their_promises_are_our_error():
    wrong_forward = adl.define_op("wf_t", forward=lambda x: x.sum(), vjp=[lambda g, ans, x: g])
    with pytest.raises(OpDefinitionError, match=r"'wf_t': forward returned shape \(\)"):
        wrong_forward(np.ones(3))
    wrong_vjp = adl.define_op("wv_t", forward=lambda x: 2 * x, vjp=[lambda g, ans, x: np.ones(5)])
    g = adl.trace(lambda x: adl.sum(wrong_vjp(x)), x=(3,))
    with pytest.raises(OpDefinitionError, match=r"'wv_t': vjp\[0\] returned a gradient of shape \(5,\)"):
        adl.gradient(g, {"x": np.ones(3)})


def test_binary_op_with_broadcasting_attributes_and_a_non_differentiable_input():
    # x^p scaled by a gate that is data, not differentiated (None rule)
    gated = adl.define_op(
        "gated_power_t",
        forward=lambda x, gate, p: gate * x ** p,
        vjp=[lambda g, ans, x, gate, p: g * gate * p * x ** (p - 1), None],
        matrix=[lambda M, g, ans, x, gate, p: g * gate * p * M.power(x, p - 1), None],
        sympy=lambda x, gate, p: gate * x ** p, attrs={"p": 2.0})
    g = adl.trace(lambda x, gate: adl.sum(gated(x, gate, p=3.0)), x=(2, 3), gate=(3,))
    vals = {"x": np.arange(1.0, 7.0).reshape(2, 3), "gate": np.array([1.0, 0.0, 2.0])}
    exact = vals["gate"] * 3 * vals["x"] ** 2
    for name, options in ENGINES[:2] + ENGINES[3:]:
        r = adl.gradient(g, vals, engine=name, wrt=["x"], **options)
        np.testing.assert_allclose(r.grads["x"], exact, rtol=1e-7, err_msg=name)
    with pytest.raises(NotDifferentiableError, match="gated_power_t"):
        adl.gradient(g, vals, engine="symbolic", wrt=["gate"])
    with pytest.raises(TraceError, match="no attribute"):
        gated(np.ones(3), np.ones(3), q=1.0)
    # the un-broadcast gradient of the gate's shape: a rule may return the output's shape
    scaled = adl.define_op("scaled_t", forward=lambda x, s: x * s,
                           vjp=[lambda g, ans, x, s: g * s, lambda g, ans, x, s: g * x])
    g2 = adl.trace(lambda x, s: adl.sum(scaled(x, s)), x=(2, 3), s=(3,))
    r = adl.gradient(g2, {"x": vals["x"], "s": np.ones(3)})
    np.testing.assert_allclose(r.grads["s"], vals["x"].sum(axis=0))


def test_graphs_with_a_custom_op_serialise_and_need_it_to_load(tmp_path):
    softplus = _softplus()
    g = adl.trace(lambda x: adl.sum(softplus(x)), x=(3,))
    assert '"op": "softplus_t"' in g.to_json()
    path = tmp_path / "g.json"
    g.save(path)
    loaded = adl.load(path)
    assert loaded == g
    np.testing.assert_allclose(adl.gradient(loaded, {"x": np.zeros(3)}).grads["x"], 0.5)
    custom.remove_op("softplus_t")
    with pytest.raises(UnknownOpError, match="unknown op 'softplus_t'.*adl.define_op"):
        adl.load(path)


def test_the_expanded_size_guard_measures_an_elementwise_custom_op():
    softplus = _softplus()
    g = adl.trace(lambda x: adl.sum(softplus(x)), x=(100,))
    estimate = adl.engine("symbolic", mode="expanded").compile(g).estimate
    # log(1 + exp(x)) holds x once and adds 3 operations: 4 per element, plus the sum
    assert estimate.output_tree_size == 401


def test_the_guard_measures_every_elementwise_op_it_has_no_cost_for(monkeypatch):
    """A new built-in element-wise op (made by the table's element-wise helpers) is measured
    too, instead of being treated as if every output depended on every input."""
    import dataclasses
    monkeypatch.setitem(OPS, "tanh", dataclasses.replace(OPS["tanh"], sympy=OPS["tanh"].sympy))
    from autodiff_lab.engines import symbolic_expanded as E
    monkeypatch.delitem(E._UNARY_COST, "tanh")
    g = adl.trace(lambda x: adl.sum(adl.tanh(x)), x=(300,))
    assert OPS["tanh"].elementwise
    assert adl.engine("symbolic", mode="expanded").compile(g).estimate.output_tree_size == 601   # as with its listed cost: 1 + 1 per element
