"""SGD with momentum as in Caffe (and so the reference FCN solvers), Adam, and learning-rate schedules.

For each parameter w with gradient g, learning-rate multiplier m_lr and decay multiplier m_decay:

    g  <- g + weight_decay * m_decay * w          (L2 weight decay)
    v  <- momentum * v + lr * m_lr * g
    w  <- w - v

The reference nets give biases twice the learning rate and no weight decay (lr_mult 2,
decay_mult 0), weights (1, 1); frozen parameters (the fixed bilinear upsampling) are never touched.
The updates happen in place, so the arrays inside the net change. Every FLUSH_EVERY steps the weights
and the optimiser's state are flushed of subnormal numbers (backend.flush_subnormals: on a CPU they make
every step slower, and they are zero in all but name); every step would cost the tiny net 4% of its step.
"""
import numpy as np

from .backend import flush_subnormals, to_device, to_numpy


FLUSH_EVERY = 10


def decayed_gradient(opt, key, grads):
    """(w, g + weight_decay * m_decay * w, m_lr) for parameter `key`: the part every optimiser shares."""
    if key not in grads:
        raise KeyError(f"{type(opt).__name__}.step: no gradient for {key!r}; run net.backward first, "
                       "or freeze the parameter")
    w, g = opt.params[key], grads[key]
    lr_mult, decay_mult = opt.multipliers[key]
    if opt.weight_decay and decay_mult:
        g = g + (opt.weight_decay * decay_mult) * w
    return w, g, lr_mult


def default_multipliers(key):
    """(lr_mult, decay_mult) for a parameter key "<layer>.W" / "<layer>.b", as in the reference nets."""
    return (2.0, 0.0) if key.endswith(".b") else (1.0, 1.0)


class SGD:
    def __init__(self, params, lr, momentum=0.9, weight_decay=5e-4, frozen=(), multipliers=default_multipliers):
        """params: dict key -> array (updated in place); frozen: keys to leave alone. The defaults (momentum 0.9)
        suit the mean loss with lr ~1e-4..1e-2; the reference's summed loss pairs with lr 1e-10 and momentum 0.99."""
        self.params = params
        self.lr, self.momentum, self.weight_decay = lr, momentum, weight_decay
        self.frozen = set(frozen)
        self.multipliers = {k: multipliers(k) for k in params}
        self.velocity = {k: None for k in params if k not in self.frozen}
        self.t = 0                                              # steps taken (when to flush subnormals)

    def step(self, grads, lr=None):
        """One update from `grads` (dict key -> array, same keys as params; frozen keys may be absent)."""
        lr = self.lr if lr is None else lr
        self.t += 1
        for key, v in self.velocity.items():
            w, g, lr_mult = decayed_gradient(self, key, grads)
            if v is None:                                       # v starts at 0
                v = self.velocity[key] = g * (lr * lr_mult)
            else:                                               # in place: fc6 alone is 411 MB
                v *= self.momentum
                v += g * (lr * lr_mult)
            w -= v
            if self.t % FLUSH_EVERY == 0:
                flush_subnormals(w)
                flush_subnormals(v)

    def state_dict(self):
        """Velocities as NumPy arrays (keys 'velocity/<param key>') and the step count 'sgd_t', for checkpoints."""
        return {"sgd_t": np.array(self.t), **{f"velocity/{k}": to_numpy(v) for k, v in self.velocity.items()
                                               if v is not None}}

    def load_state_dict(self, state, device="cpu"):
        self.t = int(np.asarray(state.get("sgd_t", 0)))
        for k in self.velocity:
            if f"velocity/{k}" in state:
                self.velocity[k] = to_device(np.asarray(state[f"velocity/{k}"]), device)


class Adam:
    """Adam (Kingma & Ba 2015), with the same interface and multipliers as SGD; not the paper's solver,
    but it learns the small from-scratch nets much faster per iteration. For each parameter w:

        g  <- g + weight_decay * m_decay * w          (L2 weight decay, as in SGD)
        m  <- beta1 * m + (1 - beta1) * g              (first moment)
        s  <- beta2 * s + (1 - beta2) * g^2            (second moment)
        w  <- w - lr * m_lr * (m / (1 - beta1^t)) / (sqrt(s / (1 - beta2^t)) + eps)

    t counts the steps taken (bias correction), and is saved with m and s so a resumed run continues exactly.
    """

    def __init__(self, params, lr, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0, frozen=(),
                 multipliers=default_multipliers):
        self.params = params
        self.lr, (self.beta1, self.beta2), self.eps, self.weight_decay = lr, betas, eps, weight_decay
        self.frozen = set(frozen)
        self.multipliers = {k: multipliers(k) for k in params}
        self.m = {k: None for k in params if k not in self.frozen}
        self.s = {k: None for k in params if k not in self.frozen}
        self.t = 0

    def step(self, grads, lr=None):
        """One update from `grads` (dict key -> array, same keys as params; frozen keys may be absent)."""
        lr = self.lr if lr is None else lr
        self.t += 1
        c1, c2 = 1 - self.beta1 ** self.t, 1 - self.beta2 ** self.t
        for key in self.m:
            w, g, lr_mult = decayed_gradient(self, key, grads)
            m, s = self.m[key], self.s[key]
            m = (1 - self.beta1) * g if m is None else self.beta1 * m + (1 - self.beta1) * g   # m, s start at 0
            s = (1 - self.beta2) * g * g if s is None else self.beta2 * s + (1 - self.beta2) * g * g
            self.m[key], self.s[key] = m, s
            w -= (lr * lr_mult) * (m / c1) / ((s / c2) ** 0.5 + self.eps)
            if self.t % FLUSH_EVERY == 0:
                for a in (w, m, s):
                    flush_subnormals(a)

    def state_dict(self):
        """Moments as NumPy arrays (keys 'adam_m/<key>', 'adam_s/<key>') and the step count 'adam_t'."""
        state = {"adam_t": np.array(self.t)}
        for k in self.m:
            if self.m[k] is not None:
                state[f"adam_m/{k}"], state[f"adam_s/{k}"] = to_numpy(self.m[k]), to_numpy(self.s[k])
        return state

    def load_state_dict(self, state, device="cpu"):
        if "adam_t" in state:
            self.t = int(np.asarray(state["adam_t"]))
        for k in self.m:
            if f"adam_m/{k}" in state:
                self.m[k] = to_device(np.asarray(state[f"adam_m/{k}"]), device)
                self.s[k] = to_device(np.asarray(state[f"adam_s/{k}"]), device)


def learning_rate(base_lr, iteration, policy="fixed", max_iter=None, power=0.9, step=None, gamma=0.1, warmup=0):
    """The learning rate at `iteration`: 'fixed' (the reference), 'poly' (base * (1 - it/max)^power)
    or 'step' (base * gamma^(it // step)); times (it + 1) / warmup for the first `warmup` iterations
    (a linear ramp: Adam's first steps are full-sized whatever the gradient, see train.DEFAULT_WARMUP)."""
    ramp = min(1.0, (iteration + 1) / warmup) if warmup else 1.0
    if policy == "fixed":
        return base_lr * ramp
    if policy == "poly":
        return base_lr * ramp * (1 - min(iteration, max_iter) / max_iter) ** power
    if policy == "step":
        return base_lr * ramp * gamma ** (iteration // step)
    raise ValueError(f"unknown learning-rate policy {policy!r}: use 'fixed', 'poly' or 'step'")
