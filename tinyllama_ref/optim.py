r"""The optimiser: AdamW, gradient clipping and the learning-rate schedule, as PyTorch computes them.

One training step of volume 2, with the settings that trained the bundled model:

    opt = AdamW(model.params, lr=3e-3, betas=(0.9, 0.95), weight_decay=0.1,
                no_decay=lambda name, a: a.ndim < 2)           # RMSNorm weights: no decay
    for step in range(steps):
        loss, grads = tl.value_and_grad(model, ids, labels)    # backprop.py
        clip_grad_norm(grads, 1.0)                              # the whole gradient at most 1.0 long
        opt.lr = cosine_with_warmup(step, steps, 80, 3e-3, 3e-4)
        opt.step(grads)                                         # model.params change in place

AdamW and clipping follow `torch.optim.AdamW` and `torch.nn.utils.clip_grad_norm_` operation by
operation, so float64 runs agree to rounding (tests/test_optim.py). Parameters and gradients are
the model's nested trees (dicts and lists of arrays). A tied head is one array under two names: it
has one gradient and is updated once. Arrays come from NumPy or CuPy (`xp_of`); the state has the
parameter's dtype and lives beside it.
"""
from __future__ import annotations

import math

import numpy as np

from .backend import xp_of
from .formats.checkpoint import flatten


def leaves(tree, prefix: str = ""):
    """(dotted name, container, key) for every array of a nested dict/list tree, so it can be replaced:
    `{"a": [x, y]}` -> `("a.0", [x, y], 0), ("a.1", [x, y], 1)`."""
    for key, value in enumerate(tree) if isinstance(tree, list) else tree.items():
        if isinstance(value, (dict, list)):
            yield from leaves(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}", tree, key


def adamw_update(p, g, m, v, step: int, lr: float, betas: tuple[float, float], eps: float,
                 weight_decay: float) -> None:
    r"""One AdamW step (Loshchilov & Hutter 2019) for one array, in place, in torch's order of operations.

    With gradient $g$, moments $m, v$ (zeros before step 1), step count $t = 1, 2, \dots$ and
    learning rate $\eta$:

    $$p \leftarrow p\,(1 - \eta\lambda)$$
    $$m \leftarrow \beta_1 m + (1-\beta_1)\,g, \qquad v \leftarrow \beta_2 v + (1-\beta_2)\,g^2$$
    $$p \leftarrow p - \frac{\eta}{1-\beta_1^t}\cdot\frac{m}{\sqrt{v}\,/\sqrt{1-\beta_2^t} + \epsilon}$$

    Decoupled weight decay: $p$ shrinks by $\eta\lambda$ of itself, apart from the gradient
    (Adam with L2 would add $\lambda p$ to $g$, and the division by $\sqrt{v}$ would weaken it
    where gradients are large). The moments are averages that start at zero, so at step $t$ they
    are too small by the factor $1-\beta^t$; dividing by it (bias correction) removes that. Then
    each coordinate moves by about $\eta$ whatever its gradient's scale. $\epsilon$ is added to the
    corrected root $\sqrt{v/(1-\beta_2^t)}$, not under it, as in torch.
    """
    beta1, beta2 = betas
    if weight_decay != 0:
        p *= 1 - lr * weight_decay
    m += (1 - beta1) * (g - m)  # torch's exp_avg.lerp_(g, 1 - beta1)
    v *= beta2
    v += (1 - beta2) * g * g
    denom = xp_of(v).sqrt(v) / (1 - beta2 ** step) ** 0.5 + eps
    p += -(lr / (1 - beta1 ** step)) * m / denom


class AdamW:
    """`torch.optim.AdamW` on a params tree: `opt = AdamW(model.params, lr=1e-3); opt.step(grads)`.

    `lr`, `betas`, `eps` and `weight_decay` are attributes: a schedule sets `opt.lr` before a step,
    as torch code sets `group["lr"]`. `no_decay(name, array) -> bool` picks the arrays trained
    without weight decay by dotted name ("model.norm.weight") and array; `lambda name, a: a.ndim < 2`
    is what tools/train_bundled_model.py does with its two param groups (no decay for RMSNorm).

    Read-only arrays (float32 weights memory-mapped from safetensors) are replaced in the tree by
    writable copies here, once, so the model sees every update; a tied array stays one shared array.
    `state[name]` holds, per distinct array under its first name, the array (`param`), `exp_avg`,
    `exp_avg_sq`, its `step` count and whether it `decay`s.
    """

    def __init__(self, params, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 0.01, no_decay=None):
        self.lr, self.betas, self.eps, self.weight_decay = lr, betas, eps, weight_decay
        slots = list(leaves(params))
        arrays = {id(node[key]): node[key] for _, node, key in slots}  # keeps the originals alive: ids stay unique
        for name, node, key in slots:
            a = node[key]
            if not hasattr(a, "dtype") or a.dtype.kind != "f":
                raise TypeError(f"AdamW trains float arrays; parameter {name} is {type(a).__name__} "
                                f"{getattr(a, 'dtype', '')} (load the model without quantize)")
        copies = {i: np.array(a) for i, a in arrays.items() if isinstance(a, np.ndarray) and not a.flags.writeable}
        self.tied = {}  # second name of an array -> its first name
        self.state = {}
        first = {}  # id of each distinct array -> its first name
        for name, node, key in slots:
            a = node[key] = copies.get(id(node[key]), node[key])
            if id(a) in first:
                self.tied[name] = first[id(a)]
                continue
            first[id(a)] = name
            xp = xp_of(a)
            self.state[name] = dict(param=a, exp_avg=xp.zeros_like(a), exp_avg_sq=xp.zeros_like(a), step=0,
                                    decay=no_decay is None or not no_decay(name, a))

    def step(self, grads) -> None:
        """Update every distinct array once, in place, from `grads` (a tree shaped like the params).

        A tied array's gradient is one array under both names (the sum of both uses). A gradient of
        None leaves its array and state alone, as torch skips a parameter whose `.grad` is None.
        """
        flat = flatten(grads)
        missing, unknown = sorted(set(self.state) - set(flat)), sorted(set(flat) - set(self.state) - set(self.tied))
        if missing or unknown:
            raise ValueError(f"grads must have the params' names: missing {missing[:3]}, unknown {unknown[:3]}")
        for second, first in self.tied.items():
            if flat.get(second) is not flat[first]:
                raise ValueError(f"grads[{second!r}] is not the array grads[{first!r}]: a tied weight has one "
                                 f"gradient, the sum of both uses")
        for name, s in self.state.items():
            g = flat[name]
            if g is None:
                continue
            if g.shape != s["param"].shape:
                raise ValueError(f"the gradient of {name} has shape {tuple(g.shape)}, the parameter "
                                 f"{tuple(s['param'].shape)}")
            s["step"] += 1
            wd = self.weight_decay if s["decay"] else 0.0
            adamw_update(s["param"], g, s["exp_avg"], s["exp_avg_sq"], s["step"], self.lr, self.betas, self.eps, wd)


def clip_grad_norm(grads, max_norm: float, eps: float = 1e-6) -> float:
    r"""Scale all gradients by one factor so that their joint 2-norm is at most `max_norm`, in place.

    $$\|g\| = \sqrt{\textstyle\sum_k \|g_k\|^2}, \qquad
      g_k \leftarrow g_k \cdot \min\Bigl(1, \frac{c}{\|g\| + 10^{-6}}\Bigr)$$

    over every distinct array $g_k$ (a tied gradient once). One factor for all keeps the direction of
    the step and caps only its length: a rare huge gradient cannot throw the weights far. As
    `torch.nn.utils.clip_grad_norm_`: the norm of the per-array norms, always multiplied (by 1.0
    when under the cap, which costs no device sync). Returns $\|g\|$ before clipping, as a float
    (on CuPy the one sync). `None` gradients are skipped.
    """
    arrays = list({id(g): g for g in flatten(grads).values() if g is not None}.values())
    if not arrays:
        return 0.0
    xp = xp_of(*arrays)
    norms = xp.stack([xp.sqrt(xp.vdot(g.ravel(), g.ravel())) for g in arrays])  # ‖g_k‖ for each array
    total = xp.sqrt(xp.vdot(norms, norms))
    scale = xp.minimum(max_norm / (total + eps), 1.0)
    for g in arrays:
        g *= scale
    return float(total)


def cosine_with_warmup(step: int, total_steps: int, warmup_steps: int, lr: float, min_lr: float = 0.0) -> float:
    r"""The learning rate at `step` (0, 1, ..., `total_steps` - 1): a linear warmup, then half a cosine.

    With $W$ warmup steps and $T$ steps in all:

    $$\eta_t = \eta\,\frac{t+1}{W} \quad (t < W), \qquad
      \eta_t = \eta_{\min} + \tfrac12(\eta - \eta_{\min})\Bigl(1 + \cos\frac{\pi\,(t - W)}{\max(1,\,T-1-W)}\Bigr)
      \quad (t \ge W)$$

    Step 0 already moves (by $\eta/W$), steps $W-1$ and $W$ use the full $\eta$, and the last step
    $T-1$ uses exactly $\eta_{\min}$. Warmup keeps the first steps small while Adam's $v$ is still
    a poor estimate; the cosine then anneals. This is `lr_at` of tools/train_bundled_model.py.

    transformers' `get_cosine_schedule_with_warmup` (no $\eta_{\min}$) is defined differently: its
    warmup is $\eta\,t/W$ (zero at step 0), and its cosine $\frac{\eta}{2}(1 + \cos\frac{\pi(t-W)}{T-W})$
    reaches zero at step $T$, one past the last. Our warmup is theirs one step later ($\eta_t$ =
    their $\eta_{t+1}$ for $t < W$); after it the two differ.
    """
    if step < warmup_steps:
        return lr * (step + 1) / warmup_steps
    progress = (step - warmup_steps) / max(1, total_steps - 1 - warmup_steps)
    return min_lr + 0.5 * (lr - min_lr) * (1 + math.cos(math.pi * progress))
