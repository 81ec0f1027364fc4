"""SGD with momentum as in Caffe (and so the reference FCN solvers), and learning-rate schedules.

For each parameter w with gradient g, learning-rate multiplier m_lr and decay multiplier m_decay:

    g  <- g + weight_decay * m_decay * w          (L2 weight decay)
    v  <- momentum * v + lr * m_lr * g
    w  <- w - v

The reference nets give biases twice the learning rate and no weight decay (lr_mult 2,
decay_mult 0), weights (1, 1); frozen parameters (the fixed bilinear upsampling) are never touched.
The updates happen in place, so the arrays inside the net change.
"""
import numpy as np

from .backend import to_device, to_numpy


def default_multipliers(key):
    """(lr_mult, decay_mult) for a parameter key "<layer>.W" / "<layer>.b", as in the reference nets."""
    return (2.0, 0.0) if key.endswith(".b") else (1.0, 1.0)


class SGD:
    def __init__(self, params, lr, momentum=0.9, weight_decay=5e-4, frozen=(), multipliers=default_multipliers):
        """params: dict key -> array (updated in place); frozen: keys to leave alone."""
        self.params = params
        self.lr, self.momentum, self.weight_decay = lr, momentum, weight_decay
        self.frozen = set(frozen)
        self.multipliers = {k: multipliers(k) for k in params}
        self.velocity = {k: None for k in params if k not in self.frozen}

    def step(self, grads, lr=None):
        """One update from `grads` (dict key -> array, same keys as params; frozen keys may be absent)."""
        lr = self.lr if lr is None else lr
        for key, v in self.velocity.items():
            if key not in grads:
                raise KeyError(f"SGD.step: no gradient for {key!r}; run net.backward first, or freeze the parameter")
            w, g = self.params[key], grads[key]
            lr_mult, decay_mult = self.multipliers[key]
            if self.weight_decay and decay_mult:
                g = g + (self.weight_decay * decay_mult) * w
            step = g * (lr * lr_mult)
            self.velocity[key] = step if v is None else v * self.momentum + step   # v starts at 0
            w -= self.velocity[key]

    def state_dict(self):
        """Velocities as NumPy arrays (keys 'velocity/<param key>'), for checkpoints."""
        return {f"velocity/{k}": to_numpy(v) for k, v in self.velocity.items() if v is not None}

    def load_state_dict(self, state, device="cpu"):
        for k in self.velocity:
            if f"velocity/{k}" in state:
                self.velocity[k] = to_device(np.asarray(state[f"velocity/{k}"]), device)


def learning_rate(base_lr, iteration, policy="fixed", max_iter=None, power=0.9, step=None, gamma=0.1):
    """The learning rate at `iteration`: 'fixed' (the reference), 'poly' (base * (1 - it/max)^power)
    or 'step' (base * gamma^(it // step))."""
    if policy == "fixed":
        return base_lr
    if policy == "poly":
        return base_lr * (1 - min(iteration, max_iter) / max_iter) ** power
    if policy == "step":
        return base_lr * gamma ** (iteration // step)
    raise ValueError(f"unknown learning-rate policy {policy!r}: use 'fixed', 'poly' or 'step'")
