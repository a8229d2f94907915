import numpy as np, time
from autodiff_lab.graph.optable import OPS
def t(f, n=5):
    f(); ts=[]
    for _ in range(n):
        s=time.perf_counter(); f(); ts.append(time.perf_counter()-s)
    return min(ts)*1e3
rng = np.random.default_rng(0)
for C, H in [(16, 256), (16, 128)]:
    x = rng.random((1, C, H, H)).astype(np.float32)
    w = rng.random((C, C, 3, 3)).astype(np.float32)
    w2 = rng.random((C, 2*C, 3, 3)).astype(np.float32)
    x2 = rng.random((1, 2*C, H, H)).astype(np.float32)
    conv = OPS["conv2d"]; 
    a = dict(stride=(1,1), padding=(1,1), dilation=(1,1), groups=1)
    y = conv.forward(x, w, **a)
    print(C, H, "conv fwd %.1f ms" % t(lambda: conv.forward(x, w, **a)),
          "bwd_in %.1f" % t(lambda: conv.vjp[0](y, y, x, w, **a)), "bwd_w %.1f" % t(lambda: conv.vjp[1](y, y, x, w, **a)),
          "conv 2C->C fwd %.1f" % t(lambda: conv.forward(x2, w2, **a)))
    xs = rng.random((1, C, H//2, H//2)).astype(np.float32)
    up = OPS["upsample_bilinear"]; nu = OPS["upsample"]
    ys = up.forward(xs, scale=(2,2))
    print("  bilinear fwd %.1f vjp %.1f ; nearest fwd %.1f vjp %.1f" % (t(lambda: up.forward(xs, scale=(2,2))), t(lambda: up.vjp[0](ys, ys, xs, scale=(2,2))),
          t(lambda: nu.forward(xs, scale=(2,2))), t(lambda: nu.vjp[0](ys, ys, xs, scale=(2,2)))))
    bn = OPS["batch_norm"]; g = np.ones(C, np.float32); b = np.zeros(C, np.float32)
    print("  bn fwd %.1f bwd %.1f" % (t(lambda: bn.forward(x, g, b)), t(lambda: bn.vjp[0](x, x, x, g, b))),
          "lrelu fwd %.1f bwd %.1f" % (t(lambda: OPS["leaky_relu"].forward(x, alpha=0.2)), t(lambda: OPS["leaky_relu"].vjp[0](x, x, x, alpha=0.2))),
          "concat %.1f" % t(lambda: OPS["concatenate"].forward(x, x, axis=-3)),
          "maxpool fwd %.1f bwd %.1f" % (t(lambda: OPS["max_pool2d"].forward(x, kernel=(2,2), stride=(2,2), padding=(0,0))), t(lambda: OPS["max_pool2d"].vjp[0](xs, xs, x, kernel=(2,2), stride=(2,2), padding=(0,0)))))
