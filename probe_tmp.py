import numpy as np, time
import autodiff_lab as adl
from autodiff_lab import nn
from autodiff_lab.graph import functions as F
m = nn.UNet(1, 1, depth=2, width=2, up='bilinear', rng=0).double()
rng = np.random.default_rng(0)
X = rng.random((2,1,8,8)); Y = rng.random((2,1,8,8))
t=time.perf_counter()
g = adl.trace(lambda x, y: F.mse_loss(m(x), y, reduction="sum"), x=X, y=Y)
print("trace", time.perf_counter()-t, len(g)); t=time.perf_counter()
names = [p.name for p in m.parameters()]
vals = {**m.state_dict(), "x": X, "y": Y}
r = adl.engine("tape").compile(g, wrt=names)(vals); print("tape", time.perf_counter()-t); t=time.perf_counter()
p = adl.engine("symbolic", mode="matrix").compile(g, wrt=names); print("sym compile", time.perf_counter()-t); t=time.perf_counter()
s = p(vals); print("sym run", time.perf_counter()-t); t=time.perf_counter()
q = adl.engine("numeric", method="central").compile(g, wrt=names); print("num compile", time.perf_counter()-t); t=time.perf_counter()
v = {n: rng.standard_normal(np.shape(vals[n])) for n in names}
d = q.directional(vals, v); print("dir", time.perf_counter()-t, d, sum(np.sum(r.grads[n]*v[n]) for n in names))
