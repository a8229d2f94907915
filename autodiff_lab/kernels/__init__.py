"""Array kernels the op table calls: convolution, pooling and their adjoints.

The functions here are plain numpy and generic in dtype (float32, float64, complex for the
complex step, and ``object`` arrays of SymPy expressions for the expanded symbolic engine).
Engines that need speed register faster implementations for real floating dtypes; the op
table stays the single place that says *what* each op computes.
"""
