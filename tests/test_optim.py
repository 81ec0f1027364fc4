"""SGD as in Caffe: momentum, weight decay on weights only, biases at twice the rate, frozen untouched."""
import numpy as np
import pytest

from minifcn.optim import FLUSH_EVERY, SGD, Adam, learning_rate


def test_two_steps_by_hand():
    params = {"fc6.W": np.array([1.0, -2.0]), "fc6.b": np.array([0.5]), "upscore.W": np.array([3.0])}
    opt = SGD(params, lr=0.1, momentum=0.9, weight_decay=0.01, frozen={"upscore.W"})
    g = {"fc6.W": np.array([0.2, 0.4]), "fc6.b": np.array([1.0])}
    opt.step(g)
    v_w = 0.1 * (np.array([0.2, 0.4]) + 0.01 * np.array([1.0, -2.0]))
    np.testing.assert_allclose(params["fc6.W"], [1.0, -2.0] - v_w)
    np.testing.assert_allclose(params["fc6.b"], [0.5 - 2 * 0.1 * 1.0])          # lr x2, no decay
    w1 = params["fc6.W"].copy()
    opt.step(g)
    v_w2 = 0.9 * v_w + 0.1 * (np.array([0.2, 0.4]) + 0.01 * w1)
    np.testing.assert_allclose(params["fc6.W"], w1 - v_w2)
    assert params["upscore.W"][0] == 3.0


MAKERS = {"sgd": lambda params: SGD(params, lr=0.05), "adam": lambda params: Adam(params, lr=0.05, weight_decay=1e-3)}


@pytest.mark.parametrize("name", MAKERS)
def test_state_round_trip_continues_identically(name):
    """Stop after 3 steps, rebuild the optimiser from its state_dict, take 2 more: equal to 5 in one go."""
    make = MAKERS[name]

    def run(steps, resume_at=None):
        params = {"a.W": np.ones(3), "a.b": np.zeros(3)}
        opt = make(params)
        grads = [{"a.W": rng_i.standard_normal(3), "a.b": rng_i.standard_normal(3)}
                 for rng_i in (np.random.default_rng(i) for i in range(steps))]
        for i, g in enumerate(grads):
            if i == resume_at:
                state = {k: v.copy() for k, v in params.items()}, opt.state_dict()
                params = {k: v.copy() for k, v in state[0].items()}
                opt = make(params)
                opt.load_state_dict(state[1])
            opt.step(g)
        return params
    a, b = run(5), run(5, resume_at=3)
    for k in a:
        np.testing.assert_array_equal(a[k], b[k])


@pytest.mark.parametrize("name", MAKERS)
def test_missing_gradient_is_a_clear_error(name):
    opt = MAKERS[name]({"a.W": np.ones(2)})
    with pytest.raises(KeyError, match=r"no gradient for 'a.W'"):
        opt.step({})


def test_schedules():
    assert learning_rate(0.1, 50, "fixed") == 0.1
    assert learning_rate(0.1, 50, "poly", max_iter=100, power=1.0) == pytest.approx(0.05)
    assert learning_rate(0.1, 25, "step", step=10, gamma=0.5) == pytest.approx(0.025)
    with pytest.raises(ValueError, match=r"unknown learning-rate policy"):
        learning_rate(0.1, 1, "cosine")


def test_warmup_ramps_linearly_then_hands_over_to_the_schedule():
    ramp = [learning_rate(0.1, it, "fixed", warmup=4) for it in range(6)]
    assert ramp == pytest.approx([0.025, 0.05, 0.075, 0.1, 0.1, 0.1])
    for it in (0, 3, 10, 99):                          # the ramp multiplies whatever the schedule gives
        want = learning_rate(0.1, it, "poly", max_iter=100) * min(1, (it + 1) / 8)
        assert learning_rate(0.1, it, "poly", max_iter=100, warmup=8) == pytest.approx(want)
    assert learning_rate(0.1, 25, "step", step=10, gamma=0.5, warmup=5) == pytest.approx(0.025)


def test_adam_two_steps_by_hand():
    params = {"fc6.W": np.array([1.0, -2.0]), "fc6.b": np.array([0.5]), "upscore.W": np.array([3.0])}
    opt = Adam(params, lr=0.1, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.01, frozen={"upscore.W"})
    g = {"fc6.W": np.array([0.2, 0.4]), "fc6.b": np.array([1.0])}
    opt.step(g)
    # step 1: m = 0.1 g, s = 0.001 g^2; bias-corrected m / sqrt(s) = g / |g| = sign(g): a step of lr * lr_mult
    gw1 = np.array([0.2, 0.4]) + 0.01 * np.array([1.0, -2.0])                  # weight decay on weights
    np.testing.assert_allclose(params["fc6.W"], [1.0, -2.0] - 0.1 * np.sign(gw1) * np.abs(gw1) / (np.abs(gw1) + 1e-8))
    np.testing.assert_allclose(params["fc6.b"], [0.5 - 2 * 0.1], rtol=1e-7)   # lr x2, no decay
    w1 = params["fc6.W"].copy()
    opt.step(g)
    gw2 = np.array([0.2, 0.4]) + 0.01 * w1
    m = 0.9 * 0.1 * gw1 + 0.1 * gw2
    s = 0.999 * 0.001 * gw1 ** 2 + 0.001 * gw2 ** 2
    m_hat, s_hat = m / (1 - 0.9 ** 2), s / (1 - 0.999 ** 2)
    np.testing.assert_allclose(params["fc6.W"], w1 - 0.1 * m_hat / (np.sqrt(s_hat) + 1e-8))
    np.testing.assert_allclose(params["fc6.b"], [0.5 - 2 * 0.1 - 2 * 0.1], rtol=1e-7)  # constant g: steps of lr
    assert params["upscore.W"][0] == 3.0
    assert opt.t == 2


def test_poly_raises_the_remaining_fraction_to_power():
    # the default power 0.9 (train's poly schedule), not 1.0 where any exponent agrees
    assert learning_rate(0.1, 50, "poly", max_iter=100) == pytest.approx(0.1 * 0.5 ** 0.9)
    assert learning_rate(0.1, 75, "poly", max_iter=100, power=2.0) == pytest.approx(0.1 * 0.25 ** 2)


def test_adam_adds_eps_to_the_square_root_not_under_it():
    params = {"a.W": np.array([1.0])}
    opt = Adam(params, lr=0.1, eps=0.1, weight_decay=0.0)
    opt.step({"a.W": np.array([0.2])})
    # step 1: m_hat = g, sqrt(s_hat) = |g|; w -= lr * g / (|g| + eps)
    np.testing.assert_allclose(params["a.W"], [1.0 - 0.1 * 0.2 / (0.2 + 0.1)])


def test_flush_subnormals_zeroes_only_the_subnormal_entries():
    from minifcn.backend import flush_subnormals
    for dtype in (np.float32, np.float64):
        tiny = np.finfo(dtype).tiny
        a = np.array([1.0, -2.5, tiny, -tiny, tiny / 4, -tiny / 1000, 0.0, np.nan, np.inf], dtype)
        want = a.copy()
        want[4:6] = 0                                           # the two subnormals, of either sign
        np.testing.assert_array_equal(flush_subnormals(a.copy()), want)
        big = np.tile(a, 50).reshape(10, 45)                    # in chunks of 7 entries, and not contiguous
        np.testing.assert_array_equal(flush_subnormals(big.copy(), chunk=7), np.tile(want, 50).reshape(10, 45))
        strided = big.copy()[:, ::2]
        np.testing.assert_array_equal(flush_subnormals(strided, chunk=7), np.tile(want, 50).reshape(10, 45)[:, ::2])


@pytest.mark.parametrize("name", ["sgd", "adam"])
def test_the_optimisers_leave_no_subnormal_weight_or_state(name):
    """Weight decay drives unused weights through the subnormal range, where a CPU computes many times slower:
    every FLUSH_EVERY steps the optimisers set such numbers to zero."""
    tiny = np.finfo(np.float32).tiny
    w = np.array([tiny / 8, 1.0, -tiny / 3, 0.5], np.float32)
    params = {"fc6.W": w}
    opt = (SGD(params, lr=0.0, momentum=0.9, weight_decay=0.0) if name == "sgd" else
           Adam(params, lr=0.0, weight_decay=0.0))                # lr 0: only the flush changes w
    g = np.array([tiny / 2, 1.0, 0.0, 0.0], np.float32)        # a subnormal gradient too: the state would keep it
    for _ in range(FLUSH_EVERY - 1):
        opt.step({"fc6.W": g})
    assert w[0] != 0                                            # not yet
    opt.step({"fc6.W": g})
    state = [a for k, a in opt.state_dict().items() if k != "adam_t"]
    for a in [w, *state]:
        assert not np.any((a != 0) & (np.abs(a) < tiny)), a
    assert w[0] == 0 and w[2] == 0 and w[1] != 0


@pytest.mark.parametrize("name", ["sgd", "adam"])
def test_a_step_takes_the_rate_it_is_given_not_the_base_rate(name):
    """train passes the schedule's rate to every step: opt.lr is only the default."""
    params = {"a.W": np.array([1.0, -1.0])}
    opt = SGD(params, lr=0.1, weight_decay=0.0) if name == "sgd" else Adam(params, lr=0.1, weight_decay=0.0)
    g = np.array([0.5, -2.0])
    for _ in range(2):
        opt.step({"a.W": g}, lr=0.01)
    # SGD: v1 = lr g, v2 = 0.9 v1 + lr g; Adam, g constant: two steps of lr * sign(g) (m_hat / sqrt(s_hat) = g / |g|)
    want = [1.0, -1.0] - (0.01 + 0.019) * g if name == "sgd" else [1.0 - 0.02, -1.0 + 0.02]
    np.testing.assert_allclose(params["a.W"], want, rtol=1e-6)


@pytest.mark.parametrize("name", ["sgd", "adam"])
def test_the_optimiser_state_is_flushed_of_subnormals_too(name):
    """The velocities (SGD) and both moments (Adam) can hold subnormals of their own, from subnormal gradients
    (SGD's velocity, Adam's m) or from squares of tiny ones (Adam's s); the flush clears them with the weights."""
    tiny = np.finfo(np.float32).tiny
    params = {"fc6.W": np.ones(3, np.float32)}
    opt = (SGD(params, lr=1.0, momentum=0.5, weight_decay=0.0) if name == "sgd" else
           Adam(params, lr=1e-3, weight_decay=0.0))
    g = {"fc6.W": np.array([tiny / 2, 1e-20, 1.0], np.float32)}   # 1e-20 ** 2 / 1000 is subnormal in float32

    def subnormal(a):
        return bool(np.any((a != 0) & (np.abs(a) < tiny)))
    for _ in range(FLUSH_EVERY - 1):
        opt.step(g)
    state = {k: a for k, a in opt.state_dict().items() if k not in ("sgd_t", "adam_t")}
    assert state and all(subnormal(a) for a in state.values())   # each array holds one before the flush
    opt.step(g)
    for k, a in opt.state_dict().items():
        assert not subnormal(a), k


@pytest.mark.parametrize("name", ["sgd", "adam"])
def test_a_resumed_optimiser_flushes_on_the_same_steps(name):
    """The step count travels in the state: resumed after 7 steps, the flush still comes at step FLUSH_EVERY."""
    tiny = np.finfo(np.float32).tiny
    params = {"fc6.W": np.array([tiny / 8, 1.0], np.float32)}

    def make():
        return (SGD(params, lr=0.0, weight_decay=0.0) if name == "sgd" else Adam(params, lr=0.0, weight_decay=0.0))
    g = {"fc6.W": np.zeros(2, np.float32)}
    opt = make()
    for _ in range(7):
        opt.step(g)
    state = opt.state_dict()
    opt = make()
    opt.load_state_dict(state)
    for _ in range(FLUSH_EVERY - 8):
        opt.step(g)
    assert params["fc6.W"][0] != 0                                  # step 9: not yet
    opt.step(g)
    assert params["fc6.W"][0] == 0 and params["fc6.W"][1] == 1.0


def test_the_warmup_ramps_the_step_policy_too():
    assert learning_rate(0.1, 1, "step", step=10, gamma=0.5, warmup=4) == pytest.approx(0.05)
    assert learning_rate(0.1, 1, "poly", max_iter=100, power=1.0, warmup=4) == pytest.approx(0.05 * 0.99)
