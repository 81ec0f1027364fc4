"""PyTorch as the oracle: each FCN written again in torch.nn.functional, with the reference's crop
offsets typed in, loaded with minifcn's random non-zero weights, must give the same scores and the
same gradient for every parameter and for the input (float32, <= 1e-4 relative).

Max pooling and ReLU are not differentiable at ties and at 0: where two values of a window differ by
less than float32 rounding, the two implementations may route a gradient differently, and that is
not a bug in either. The seeds below keep the input clear of such near-ties (about 1 random input
in 40 is not); the errors seen are 2e-6 .. 1e-5.
"""
import numpy as np
import pytest

from minifcn.models import build

torch = pytest.importorskip("torch")
F = torch.nn.functional

NAMES = ["fcn32s", "fcn16s", "fcn8s", "fcn8s-atonce"]
BLOCKS = ((1, 2), (2, 2), (3, 3), (4, 3), (5, 3))


def randomize(net, seed=0):
    """Every parameter random and non-zero (score layers and upsampling too), float32."""
    rng = np.random.default_rng(seed)
    for k, v in net.params.items():
        if k.endswith(".b"):
            new = 0.1 * rng.standard_normal(v.shape)
        elif k.startswith("upscore"):
            new = rng.standard_normal(v.shape) / np.sqrt(4 * v.shape[0])
        else:
            new = rng.standard_normal(v.shape) * np.sqrt(2.0 / v[0].size)
        net.params[k] = new.astype(np.float32)
    return net


def torch_fcn(name, p, x):
    """The reference net in torch: p maps "<layer>.W"/"<layer>.b" to leaf tensors, x is (N, 3, H, W)."""
    h, pools = x, {}
    for block, convs in BLOCKS:
        for i in range(1, convs + 1):
            key = f"conv{block}_{i}"
            h = F.relu(F.conv2d(h, p[f"{key}.W"], p[f"{key}.b"], padding=100 if key == "conv1_1" else 1))
        h = pools[block] = F.max_pool2d(h, 2, 2, ceil_mode=True)
    h = F.relu(F.conv2d(h, p["fc6.W"], p["fc6.b"]))
    h = F.relu(F.conv2d(h, p["fc7.W"], p["fc7.b"]))
    score = F.conv2d(h, p["score_fr.W"], p["score_fr.b"])

    def crop(a, offset, like):
        return a[:, :, offset:offset + like.shape[2], offset:offset + like.shape[3]]

    if name == "fcn32s":
        return crop(F.conv_transpose2d(score, p["upscore.W"], stride=32), 19, x)
    pool4, pool3 = pools[4], pools[3]
    if name == "fcn8s-atonce":
        pool4, pool3 = pool4 * 0.01, pool3 * 0.0001
    up = F.conv_transpose2d(score, p["upscore2.W"], stride=2)
    fuse = up + crop(F.conv2d(pool4, p["score_pool4.W"], p["score_pool4.b"]), 5, up)
    if name == "fcn16s":
        return crop(F.conv_transpose2d(fuse, p["upscore16.W"], stride=16), 27, x)
    up = F.conv_transpose2d(fuse, p["upscore_pool4.W"], stride=2)
    fuse = up + crop(F.conv2d(pool3, p["score_pool3.W"], p["score_pool3.b"]), 9, up)
    return crop(F.conv_transpose2d(fuse, p["upscore8.W"], stride=8), 31, x)


def close(ours, theirs, what, rtol=1e-4):
    """Largest difference relative to the largest entry of the oracle's tensor."""
    theirs = theirs.detach().numpy()
    err = np.abs(ours - theirs).max() / max(np.abs(theirs).max(), 1e-12)
    assert err <= rtol, f"{what}: relative difference {err:.2e}"


@pytest.mark.parametrize("name", NAMES)
def test_same_scores_and_gradients_as_torch(name):
    net = randomize(build(name, num_classes=5, backbone="vgg16-tiny", dropout=0, learnable_upsampling=True), seed=0)
    rng = np.random.default_rng(100)
    x = rng.standard_normal((2, 3, 37, 23)).astype(np.float32)          # odd, non-square, a batch of 2
    scores = net.forward(x, train=True)
    dscores = rng.standard_normal(scores.shape).astype(np.float32)
    dx = net.backward(dscores)

    p = {k: torch.tensor(v, requires_grad=True) for k, v in net.params.items()}
    xt = torch.tensor(x, requires_grad=True)
    st = torch_fcn(name, p, xt)
    (st * torch.tensor(dscores)).sum().backward()

    assert scores.shape == tuple(st.shape) == (2, 5, 37, 23)
    close(scores, st, "scores")
    close(dx, xt.grad, "dx")
    assert set(net.grads) == set(p)
    for k, t in p.items():
        close(net.grads[k], t.grad, k)
