"""optim.py against PyTorch: AdamW, gradient clipping, and the learning-rate schedule.

float64 on both sides, so the only differences are rounding: AdamW after 5 steps within 1e-12 of
`torch.optim.AdamW`, clipping within 1e-12 of `torch.nn.utils.clip_grad_norm_`. The schedule is
checked against the bundled model's training script (exactly) and against transformers' cosine
schedule (where the docstring says they agree).
"""
import hashlib
import math

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

import tinyllama_ref as tl
from tinyllama_ref.backend import to_numpy
from tinyllama_ref.formats.checkpoint import flatten, nest
from tinyllama_ref.optim import AdamW, clip_grad_norm, cosine_with_warmup
from conftest import REPO, load_module, needs_transformers, record_parity

TOL_ADAMW = 1e-12  # max |Δparam| after 5 float64 steps, params and grads of order 1
TOL_CLIP = 1e-12  # max |Δ| of the total norm (relative) and of the clipped grads (float64)
TOL_ADAMW_F32 = 1e-6  # float32: max |Δparam| after 5 steps (float32 rounding of updates of size ~lr)
BUNDLED = REPO / "tinyllama_ref" / "assets" / "kjv-llama"
TABLE = "optimiser parity"


def tree(rng, dims, tied: bool, dtype=np.float64) -> dict:
    """A small params tree shaped like a model's: an embedding, a list of layers, a norm, a head."""
    v, d, f = dims
    embed = rng.standard_normal((v, d)).astype(dtype)
    return {"model": {"embed_tokens": {"weight": embed},
                      "layers": [{"mlp": {"up_proj": {"weight": rng.standard_normal((f, d)).astype(dtype)}}}],
                      "norm": {"weight": rng.standard_normal(d).astype(dtype)}},
            "lm_head": {"weight": embed if tied else rng.standard_normal((v, d)).astype(dtype)}}


def distinct(params) -> list:
    return list({id(a): a for a in flatten(params).values()}.values())


def grads_like(params, rng, skip=()):
    """Random gradients, one per distinct array (a tied array's shared); names in `skip` get None."""
    one = {id(a): rng.standard_normal(a.shape).astype(a.dtype) for a in distinct(params)}
    flat = {name: None if name in skip else one[id(a)] for name, a in flatten(params).items()}
    return nest(flat)


def adamw_error(torch, params, rng, lrs, no_decay, skip_step=-1, **kw) -> float:
    """Steps of our AdamW and torch's (two param groups, as the training script) with the same random
    gradients and a new lr each step (the norm's gradient None at `skip_step`); max |Δparam| at the end."""
    first = {}
    for name, a in flatten(params).items():
        first.setdefault(id(a), (name, a))
    tensors = {name: torch.tensor(a, requires_grad=True) for name, a in first.values()}
    groups = [{"params": [tensors[n] for n, a in first.values() if not no_decay(n, a)]},
              {"params": [tensors[n] for n, a in first.values() if no_decay(n, a)], "weight_decay": 0.0}]
    ref = torch.optim.AdamW([g for g in groups if g["params"]], lr=lrs[0], **kw)
    opt = AdamW(params, lr=lrs[0], no_decay=no_decay, **kw)
    for step, lr in enumerate(lrs):
        grads = flatten(grads_like(params, rng, ("model.norm.weight",) if step == skip_step else ()))
        opt.lr = lr
        opt.step(nest(grads))
        for group in ref.param_groups:
            group["lr"] = lr
        for name, t in tensors.items():
            t.grad = None if grads[name] is None else torch.tensor(grads[name])
        ref.step()
    assert all(s["exp_avg"].dtype == s["param"].dtype == s["exp_avg_sq"].dtype for s in opt.state.values())
    return float(max(np.abs(flatten(params)[n] - t.detach().numpy()).max() for n, t in tensors.items()))


NO_DECAY = {"ndim": lambda n, a: a.ndim < 2, "none": lambda n, a: False, "embed": lambda n, a: "embed" in n}


@settings(max_examples=15, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), dims=st.tuples(*[st.integers(1, 7)] * 3), tied=st.booleans(),
       lrs=st.lists(st.floats(1e-4, 1e-1), min_size=5, max_size=5),
       betas=st.tuples(st.floats(0.5, 0.99), st.floats(0.9, 0.9999)), eps=st.sampled_from([1e-8, 1e-6, 1e-3]),
       weight_decay=st.sampled_from([0.0, 0.01, 0.1, 1.0]), decay_rule=st.sampled_from(sorted(NO_DECAY)),
       skip_step=st.integers(-1, 4))
def test_adamw_equals_torch_float64(seed, dims, tied, lrs, betas, eps, weight_decay, decay_rule, skip_step):
    """5 steps with a new lr each step, decay per param via no_decay (torch: two param groups), a tied
    array updated once, and in one step the norm's gradient None (torch skips it)."""
    torch, _ = needs_transformers("comparing AdamW with torch")
    rng = np.random.default_rng(seed)
    params = tree(rng, dims, tied)
    err = adamw_error(torch, params, rng, lrs, NO_DECAY[decay_rule], skip_step, betas=betas, eps=eps,
                      weight_decay=weight_decay)
    assert (params["lm_head"]["weight"] is params["model"]["embed_tokens"]["weight"]) == tied
    record_parity("AdamW, 5 steps, float64", "max|Δparam|", err, TABLE)
    assert err <= TOL_ADAMW, err


def test_adamw_equals_torch_float32():
    """float32 params: the state is float32 and 5 steps stay within float32 rounding of torch."""
    torch, _ = needs_transformers("comparing AdamW with torch")
    rng = np.random.default_rng(1)
    params = tree(rng, (11, 6, 9), tied=True, dtype=np.float32)
    err = adamw_error(torch, params, rng, [1e-2] * 5, NO_DECAY["ndim"], betas=(0.9, 0.95), weight_decay=0.1)
    assert flatten(params)["model.norm.weight"].dtype == np.float32
    record_parity("AdamW, 5 steps, float32", "max|Δparam|", err, TABLE)
    assert err <= TOL_ADAMW_F32, err


def test_the_torch_check_catches_a_planted_error(monkeypatch):
    """Negative control: with ε under the root (a common slip) the float64 comparison misses by far."""
    import tinyllama_ref.optim as optim

    def eps_under_the_root(p, g, m, v, step, lr, betas, eps, weight_decay):
        beta1, beta2 = betas
        p *= 1 - lr * weight_decay
        m += (1 - beta1) * (g - m)
        v *= beta2
        v += (1 - beta2) * g * g
        p -= lr / (1 - beta1 ** step) * m / np.sqrt(v / (1 - beta2 ** step) + eps)

    torch, _ = needs_transformers("comparing AdamW with torch")
    monkeypatch.setattr(optim, "adamw_update", eps_under_the_root)
    rng = np.random.default_rng(6)
    assert adamw_error(torch, tree(rng, (3, 4, 5), True), rng, [1e-2] * 5, NO_DECAY["ndim"], eps=1e-3) > 1e6 * TOL_ADAMW


@pytest.mark.parametrize("max_norm", [0.5, 1e3], ids=["clips", "does_not_clip"])
@pytest.mark.parametrize("tied", [True, False], ids=["tied", "untied"])
def test_clip_grad_norm_equals_torch(max_norm, tied):
    torch, _ = needs_transformers("comparing clipping with torch")
    rng = np.random.default_rng(2)
    grads = grads_like(tree(rng, (13, 5, 7), tied), rng)
    ref = [torch.zeros(g.shape, dtype=torch.float64, requires_grad=True) for g in distinct(grads)]
    for t, g in zip(ref, distinct(grads)):
        t.grad = torch.tensor(g)
    want = float(torch.nn.utils.clip_grad_norm_(ref, max_norm))
    total = clip_grad_norm(grads, max_norm)
    assert (total > max_norm) == (max_norm == 0.5)
    err = max(abs(total - want) / want, max(np.abs(g - t.grad.numpy()).max() for t, g in zip(ref, distinct(grads))))
    record_parity("clip_grad_norm, float64", "max|Δ|", err, TABLE)
    assert err <= TOL_CLIP, err
    assert math.isclose(math.sqrt(sum(float((g * g).sum()) for g in distinct(grads))), min(want, max_norm),
                        rel_tol=1e-6)  # the clipped gradient has length max_norm (less the 1e-6 in the divisor)


@settings(max_examples=30, deadline=None)
@given(total=st.integers(1, 300), warmup=st.integers(0, 300), lr=st.floats(1e-5, 1.0), min_frac=st.floats(0, 1))
def test_schedule_is_the_training_scripts(total, warmup, lr, min_frac):
    """Exactly `lr_at` of tools/train_bundled_model.py, at every step."""
    script = load_module("train_bundled_model", REPO / "tools" / "train_bundled_model.py")
    t = dict(steps=total, warmup_steps=warmup, lr=lr, min_lr=lr * min_frac)
    assert [cosine_with_warmup(s, total, warmup, lr, lr * min_frac) for s in range(total)] == \
           [script.lr_at(s, t) for s in range(total)]


def test_schedule_against_transformers():
    """transformers' cosine schedule is another definition: ours is theirs one step later during warmup;
    ours ends at min_lr on the last step, theirs one step after it (as the docstring says)."""
    torch, transformers = needs_transformers("comparing the schedule with transformers")
    total, warmup, lr = 50, 8, 3e-3
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=lr)
    sched = transformers.get_cosine_schedule_with_warmup(opt, warmup, total)
    theirs = []
    for _ in range(total + 1):
        theirs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    ours = [cosine_with_warmup(s, total, warmup, lr) for s in range(total + 1)]
    assert all(math.isclose(ours[s], theirs[s + 1], rel_tol=1e-12) for s in range(warmup))
    assert theirs[0] == 0 and ours[0] == lr / warmup
    assert ours[total - 1] == 0 and theirs[total - 1] > 0 and theirs[total] == 0
    assert max(abs(a - b) for a, b in zip(ours[warmup:total], theirs[warmup:total])) > 1e-6


def test_adamw_trains_the_bundled_model():
    """Memory-mapped float32 weights become writable copies in model.params, the file is untouched,
    and one step changes the model's output."""
    sha = hashlib.sha256((BUNDLED / "model.safetensors").read_bytes()).hexdigest()
    model = tl.load(BUNDLED)
    before = flatten(model.params)
    assert not all(a.flags.writeable for a in before.values())  # memory-mapped: nothing may write to the file
    ids = [[1, 450, 1001, 77, 9, 300]]
    logits = model(ids).logits
    opt = AdamW(model.params, lr=1e-3, weight_decay=0.1, no_decay=lambda n, a: a.ndim < 2)
    after = flatten(model.params)
    assert all(a.flags.writeable and a.dtype == np.float32 for a in after.values())
    assert all(np.array_equal(before[n], after[n]) for n in before)
    assert [n for n, s in opt.state.items() if not s["decay"]] == [n for n, a in after.items() if a.ndim == 1]
    opt.step(grads_like(model.params, np.random.default_rng(3)))
    moved = max(np.abs(after[n] - before[n]).max() for n in before)
    assert 0.5e-3 < moved < 1.5e-3  # Adam's first step moves each coordinate by about lr
    assert np.abs(model(ids).logits - logits).max() > 1e-3
    assert hashlib.sha256((BUNDLED / "model.safetensors").read_bytes()).hexdigest() == sha


def test_runs_on_the_cupy_double(double):
    """The same steps on device arrays: equal to NumPy's bit for bit (the double is NumPy inside),
    AdamW with no host-device transfer, clipping with one (the float it returns)."""
    rng = np.random.default_rng(4)
    host = tree(rng, (9, 4, 6), tied=True)
    grads = [grads_like(host, rng) for _ in range(3)]

    def up(t):
        return nest({n: double.asarray(a) for n, a in flatten(t).items()})

    device = up(host)
    device["lm_head"]["weight"] = device["model"]["embed_tokens"]["weight"]  # tied on the device too
    opts = [AdamW(p, lr=1e-2, no_decay=lambda n, a: a.ndim < 2) for p in (host, device)]
    for g in grads:
        dg = up(g)
        dg["lm_head"]["weight"] = dg["model"]["embed_tokens"]["weight"]
        double.transfers.reset()
        total = clip_grad_norm(dg, 1.0)
        assert (double.transfers.to_device, double.transfers.to_host) == (0, 1), double.transfers.report()
        opts[1].step(dg)
        assert (double.transfers.to_device, double.transfers.to_host) == (0, 1), double.transfers.report()
        assert total == clip_grad_norm(g, 1.0)
        opts[0].step(g)
    assert all(np.array_equal(to_numpy(flatten(device)[n]), a) for n, a in flatten(host).items())


def test_bad_grads_are_named():
    rng = np.random.default_rng(5)
    params = tree(rng, (4, 3, 2), tied=True)
    opt = AdamW(params)
    grads = grads_like(params, rng)
    del grads["model"]["norm"]
    with pytest.raises(ValueError, match=r"missing \['model.norm.weight'\]"):
        opt.step(grads)
    grads = grads_like(params, rng)
    grads["lm_head"]["weight"] = grads["lm_head"]["weight"].copy()
    with pytest.raises(ValueError, match="grads\\['lm_head.weight'\\] is not the array"):
        opt.step(grads)
    with pytest.raises(TypeError, match="parameter model.norm.weight is ndarray int64"):
        AdamW({"model": {"norm": {"weight": np.arange(3)}}})



def test_a_training_loop_fits_one_batch():
    """value_and_grad -> clip_grad_norm -> schedule -> AdamW.step on a tiny tied float64 model: the
    loss on the batch it trains on falls from 5.9 to under 0.1 in 30 steps."""
    from tinyllama_ref.formats.checkpoint import random_tensors

    config = tl.LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                            num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True)
    model = tl.build_model(config, random_tensors(config, std=0.3), dtype="float64")
    ids = np.random.default_rng(0).integers(0, 64, (2, 16))
    opt = AdamW(model.params, no_decay=lambda n, a: a.ndim < 2)
    losses = []
    for step in range(30):
        loss, grads = tl.value_and_grad(model, ids, ids)
        clip_grad_norm(grads, 1.0)
        opt.lr = cosine_with_warmup(step, 30, 3, 1e-2, 1e-3)
        opt.step(grads)
        losses.append(float(loss))
    assert losses[0] > 5 and losses[-1] < 0.1, losses
    assert float(model(ids, labels=ids).loss) < 0.1
