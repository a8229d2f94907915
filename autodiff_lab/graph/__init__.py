"""The shared intermediate representation: op table, symbolic tensor and tracing, Graph."""

from autodiff_lab.graph import custom
from autodiff_lab.graph.custom import define_op
from autodiff_lab.graph.graph import Graph, Spec, load, param, spec, trace
from autodiff_lab.graph.optable import OPS, Op, get_op
from autodiff_lab.graph.tensor import Tensor

__all__ = ["Graph", "OPS", "Op", "Spec", "Tensor", "custom", "define_op", "get_op", "load", "param",
           "spec", "trace"]
