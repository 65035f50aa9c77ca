"""LoRA (`tinyllama_ref/lora.py`): PEFT's files both ways, `tl.load(..., adapter=DIR)`, the adapter's
gradients, and `tinyllama-ref finetune`.

Parity with PEFT 0.21: an adapter PEFT saved (B random, so not the identity) and loaded by
`PeftModel.from_pretrained` gives the logits of `tl.load(base, adapter=DIR)` within TOL_LOGITS; and an
adapter we write loads in PEFT with the same logits. GQA, a tied head and all seven target modules.
"""
from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest

import tinyllama_ref as tl
from conftest import needs_transformers, record_parity
from tinyllama_ref import lora
from tinyllama_ref.errors import CheckpointError
from tinyllama_ref.formats.checkpoint import flatten
from tinyllama_ref.formats.safetensors import read_safetensors, write_safetensors

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tools"))

TOL_LOGITS = 1e-4  # max |Δlogits|, float32: PEFT adds x·Aᵀ·Bᵀ·s beside x·Wᵀ, we merge W + s·B·A first
TINY = dict(vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, tie_word_embeddings=True, max_position_embeddings=64)
IDS = np.random.default_rng(0).integers(0, 64, (2, 9))

PEFT_CASES = {  # name: LoraConfig arguments
    "all7_gqa_tied": dict(r=4, lora_alpha=8, target_modules=list(lora.LINEARS)),
    "qv_rslora": dict(r=3, lora_alpha=5, target_modules=["q_proj", "v_proj"], use_rslora=True),
}


def needs_peft():
    torch, transformers = needs_transformers("comparing with PEFT")
    peft = pytest.importorskip("peft", reason="comparing with PEFT needs peft (pip install peft==0.21.2)")
    return torch, transformers, peft


def hf_base(tmp_path: Path):
    """A tiny transformers Llama (GQA, tied head, weights redrawn as the goldens draw them), saved; (model, dir)."""
    torch, transformers, _ = needs_peft()
    from make_golden import randomize_weights_

    cfg = transformers.LlamaConfig(**TINY)
    cfg._attn_implementation = "eager"
    model = transformers.LlamaForCausalLM(cfg).eval()
    randomize_weights_(model, 0)
    model.save_pretrained(tmp_path / "base")
    return model, tmp_path / "base"


def hf_fresh(path: Path):
    _, transformers, _ = needs_peft()
    return transformers.AutoModelForCausalLM.from_pretrained(path, attn_implementation="eager").eval()


def torch_logits(model) -> np.ndarray:
    torch, _, _ = needs_peft()
    with torch.no_grad():
        return model(torch.from_numpy(IDS)).logits.numpy()


@pytest.mark.parametrize("case", PEFT_CASES)
def test_a_peft_adapter_loads_with_peft_s_logits(case, tmp_path):
    torch, _, peft = needs_peft()
    hf, base = hf_base(tmp_path)
    torch.manual_seed(1)  # init_lora_weights=False: B random too, so the adapter changes the logits
    peft_model = peft.get_peft_model(hf, peft.LoraConfig(init_lora_weights=False, **PEFT_CASES[case])).eval()
    peft_model.save_pretrained(tmp_path / "adapter")
    theirs = torch_logits(peft.PeftModel.from_pretrained(hf_fresh(base), tmp_path / "adapter").eval())

    ours = np.asarray(tl.load(base, adapter=tmp_path / "adapter")(IDS).logits)
    plain = np.asarray(tl.load(base)(IDS).logits)
    d = float(np.abs(ours - theirs).max())
    record_parity(f"PEFT -> ours {case}", "max|Δlogits|", d, table="LoRA parity with PEFT")
    assert d <= TOL_LOGITS, f"{case}: max |Δlogits| = {d:.3g} > {TOL_LOGITS}"
    assert float(np.abs(plain - theirs).max()) > 100 * TOL_LOGITS  # the adapter does change the logits


@pytest.mark.parametrize("case", PEFT_CASES)
def test_our_adapter_loads_in_peft_with_our_logits(case, tmp_path):
    _, _, peft = needs_peft()
    _, base = hf_base(tmp_path)
    kw = PEFT_CASES[case]
    spec = lora.LoraSpec(r=kw["r"], lora_alpha=kw["lora_alpha"], target_modules=tuple(kw["target_modules"]),
                         use_rslora=kw.get("use_rslora", False))
    adapter = random_adapter(tl.load(base), spec)
    lora.save_adapter(tmp_path / "ours", adapter, spec, base_model_name_or_path=str(base))

    theirs = torch_logits(peft.PeftModel.from_pretrained(hf_fresh(base), tmp_path / "ours").eval())
    ours = np.asarray(tl.load(base, adapter=tmp_path / "ours")(IDS).logits)
    d = float(np.abs(ours - theirs).max())
    record_parity(f"ours -> PEFT {case}", "max|Δlogits|", d, table="LoRA parity with PEFT")
    assert d <= TOL_LOGITS, f"{case}: max |Δlogits| = {d:.3g} > {TOL_LOGITS}"
    # the merged params of the training path are the loaded ones
    merged = lora.merged_params(tl.load(base).params, adapter, spec.scaling)
    assert np.abs(np.asarray(tl.build_model(tl.load(base).config, flatten(merged))(IDS).logits) - ours).max() < 1e-6


def test_our_config_has_the_fields_peft_writes(tmp_path):
    """adapter_config.json: PEFT's fields, and PEFT reads back our values."""
    torch, _, peft = needs_peft()
    hf, base = hf_base(tmp_path)
    kw = PEFT_CASES["qv_rslora"]
    peft.get_peft_model(hf, peft.LoraConfig(task_type="CAUSAL_LM", **kw)).save_pretrained(tmp_path / "theirs")
    spec = lora.LoraSpec(r=3, lora_alpha=5, target_modules=("q_proj", "v_proj"), use_rslora=True)
    lora.save_adapter(tmp_path / "ours", lora.init_adapter(tl.load(base).params, spec), spec)
    ours = json.loads((tmp_path / "ours" / lora.CONFIG_NAME).read_text())
    theirs = json.loads((tmp_path / "theirs" / lora.CONFIG_NAME).read_text())
    assert ours.keys() == theirs.keys()
    assert {k: v for k, v in ours.items() if k != "target_modules"} == {
        k: v for k, v in theirs.items() if k != "target_modules"}  # PEFT writes its set of targets in any order
    assert sorted(ours["target_modules"]) == sorted(theirs["target_modules"])
    back = peft.LoraConfig.from_pretrained(tmp_path / "ours")
    assert (back.r, back.lora_alpha, back.use_rslora, set(back.target_modules)) == (3, 5, True, {"q_proj", "v_proj"})
    assert read_safetensors(tmp_path / "ours" / lora.WEIGHTS_NAME).keys() == read_safetensors(
        tmp_path / "theirs" / lora.WEIGHTS_NAME).keys()  # PEFT's key names


def random_adapter(model, spec, seed=2):
    """An adapter with B drawn too (not the identity), A as `init_adapter` draws it."""
    adapter = lora.init_adapter(model.params, spec, seed=seed)
    rng = np.random.default_rng(seed)
    for k, v in adapter.items():
        if ".lora_B." in k:
            adapter[k] = (0.1 * rng.standard_normal(v.shape)).astype(v.dtype)
    return adapter


# -- without torch ---------------------------------------------------------------------------------

def tiny_model(**overrides):
    config = tl.LlamaConfig(**{**TINY, **overrides})
    from tinyllama_ref.formats.checkpoint import random_tensors

    return tl.build_model(config, random_tensors(config, std=0.2))


def test_init_draws_pytorch_s_kaiming_uniform_and_zero_b():
    model = tiny_model(hidden_size=64, intermediate_size=96)
    spec = lora.LoraSpec(r=8, target_modules=("q_proj", "down_proj"))
    adapter = lora.init_adapter(model.params, spec, seed=0)
    assert sorted(adapter) == sorted(f"model.layers.{i}.{m}.lora_{p}.weight" for i in range(2)
                                     for m in ("self_attn.q_proj", "mlp.down_proj") for p in "AB")
    a_q, a_down = adapter["model.layers.0.self_attn.q_proj.lora_A.weight"], adapter[
        "model.layers.0.mlp.down_proj.lora_A.weight"]
    assert a_q.shape == (8, 64) and a_down.shape == (8, 96) and a_q.dtype == np.float32
    assert np.abs(a_q).max() <= 1 / math.sqrt(64) and np.abs(a_q).max() > 0.9 / math.sqrt(64)  # U(±1/sqrt(in))
    assert np.abs(a_down).max() <= 1 / math.sqrt(96)
    assert all(not v.any() for k, v in adapter.items() if ".lora_B." in k)
    assert all(np.array_equal(v, lora.init_adapter(model.params, spec, seed=0)[k]) for k, v in adapter.items())
    ids = np.arange(10)[None] % 64  # B = 0: the same logits
    merged = tl.build_model(model.config, flatten(lora.merged_params(model.params, adapter, spec.scaling)))
    assert np.array_equal(np.asarray(merged(ids).logits), np.asarray(model(ids).logits))


def test_merge_keeps_the_base_and_the_tie():
    model = tiny_model()
    spec = lora.LoraSpec(r=2, target_modules=lora.LINEARS)
    adapter = random_adapter(model, spec)
    before = {k: np.array(v) for k, v in flatten(model.params).items()}
    merged = lora.merged_params(model.params, adapter, spec.scaling)
    assert all(np.array_equal(v, before[k]) for k, v in flatten(model.params).items())
    assert merged["lm_head"]["weight"] is merged["model"]["embed_tokens"]["weight"]
    w = merged["model"]["layers"][1]["mlp"]["up_proj"]["weight"]
    a, b = (adapter[f"model.layers.1.mlp.up_proj.lora_{p}.weight"] for p in "AB")
    assert np.allclose(w, before["model.layers.1.mlp.up_proj.weight"] + spec.scaling * b @ a)


def saved_adapter(tmp_path, **spec_kw):
    model = tiny_model()
    spec = lora.LoraSpec(**{"r": 2, **spec_kw})
    return lora.save_adapter(tmp_path / "adapter", random_adapter(model, spec), spec), model


def save_base(tmp_path):
    model = tiny_model()
    return model.save_pretrained(tmp_path / "base")


def edit_config(adapter_dir, **fields):
    path = adapter_dir / lora.CONFIG_NAME
    path.write_text(json.dumps({**json.loads(path.read_text()), **fields}))


@pytest.mark.parametrize("fields, message", [
    ({"peft_type": "IA3"}, "peft_type is 'IA3'; only LoRA"),
    ({"use_dora": True}, "use_dora = True is not supported: DoRA"),
    ({"bias": "lora_only"}, "bias is 'lora_only'"),
    ({"modules_to_save": ["lm_head"]}, "modules_to_save = ['lm_head'] is not supported"),
    ({"rank_pattern": {"q_proj": 4}}, "rank_pattern"),
    ({"target_modules": ["q_proj", "c_attn"]}, "target module(s) 'c_attn': a Llama model has no such linear"),
    ({"r": 3}, "are not [r, in] and [out, r] with r = 3"),
])
def test_adapter_options_we_cannot_merge_are_refused_in_one_line(tmp_path, fields, message):
    adapter_dir, _ = saved_adapter(tmp_path)
    base = save_base(tmp_path)
    edit_config(adapter_dir, **fields)
    with pytest.raises(CheckpointError, match=r"adapter_config\.json|adapter_model") as e:
        tl.load(base, adapter=adapter_dir)
    assert message in str(e.value) and "\n" not in str(e.value)


def test_missing_files_and_foreign_keys_are_named(tmp_path):
    adapter_dir, model = saved_adapter(tmp_path, target_modules=("q_proj", "v_proj"))
    base = save_base(tmp_path)
    with pytest.raises(CheckpointError, match="is not a directory"):
        tl.load(base, adapter=tmp_path / "nowhere")
    weights = adapter_dir / lora.WEIGHTS_NAME
    tensors = read_safetensors(weights)
    key = "base_model.model.model.layers.1.self_attn.v_proj.lora_B.weight"

    write_safetensors(weights, {**tensors, key: np.zeros((5, 2), np.float32)})  # v_proj is [16, 32]
    with pytest.raises(CheckpointError, match=r"layers\.1\.self_attn\.v_proj: lora_B @ lora_A is \(5, 32\) but "
                                              r"the model's model\.layers\.1\.self_attn\.v_proj\.weight is \(16, 32\)"):
        tl.load(base, adapter=adapter_dir)
    write_safetensors(weights, {k: v for k, v in tensors.items() if k != key})
    with pytest.raises(CheckpointError, match=r"layers\.1\.self_attn\.v_proj has no lora_B\.weight"):
        tl.load(base, adapter=adapter_dir)
    extra = "base_model.model.model.layers.7.self_attn.q_proj"  # the model has 2 layers
    write_safetensors(weights, {**tensors, f"{extra}.lora_A.weight": np.zeros((2, 32), np.float32),
                                f"{extra}.lora_B.weight": np.zeros((32, 2), np.float32)})
    with pytest.raises(CheckpointError, match=r"layers\.7\.self_attn\.q_proj adapts a module this model does not"):
        tl.load(base, adapter=adapter_dir)
    write_safetensors(weights, {**tensors, "base_model.model.lm_head.lora_magnitude_vector": np.zeros(64, np.float32)})
    with pytest.raises(CheckpointError, match="lm_head.lora_magnitude_vector' is not a LoRA weight"):
        tl.load(base, adapter=adapter_dir)
    weights.unlink()
    with pytest.raises(CheckpointError, match="no adapter_model.safetensors"):
        tl.load(base, adapter=adapter_dir)
    (adapter_dir / lora.CONFIG_NAME).unlink()
    with pytest.raises(CheckpointError, match="no adapter_config.json"):
        tl.load(base, adapter=adapter_dir)


def test_loaded_adapter_equals_the_merged_params_and_survives_quantize_and_float64(tmp_path):
    adapter_dir, model = saved_adapter(tmp_path, target_modules=("q_proj", "up_proj"))
    base = tmp_path / "base"
    model.save_pretrained(base)
    spec, adapter = lora.read_adapter(adapter_dir)
    assert spec.target_modules == ("q_proj", "up_proj") and spec.scaling == 8 / 2
    merged = tl.build_model(model.config, flatten(lora.merged_params(model.params, adapter, spec.scaling)))
    want = np.asarray(merged(IDS).logits)
    got = np.asarray(tl.load(base, adapter=adapter_dir)(IDS).logits)
    assert np.abs(got - want).max() < 1e-6
    wide = np.asarray(tl.load(base, adapter=adapter_dir, dtype="float64")(IDS).logits)
    assert wide.dtype == np.float64 and np.abs(wide - want).max() < 1e-4
    assert tl.load(base, adapter=adapter_dir, quantize="int8")(IDS).logits.shape == want.shape


# -- gradients -------------------------------------------------------------------------------------

TOL_GRAD32 = 1e-4  # float32: max |Δ| / max |ref| per LoRA tensor, against torch autograd through PEFT
TOL_LOSS32 = 1e-6  # float32: relative |Δloss|


def peft_grads(peft_model, ids, labels):
    """torch autograd through PEFT: (loss, {our adapter key: gradient})."""
    torch, _, _ = needs_peft()
    peft_model.zero_grad()
    loss = peft_model(torch.from_numpy(ids), labels=torch.from_numpy(labels)).loss
    loss.backward()
    return loss.item(), {n.removeprefix(lora.PREFIX).replace(".default.", "."): p.grad.numpy().copy()
                         for n, p in peft_model.named_parameters() if p.requires_grad}


def test_adapter_gradients_equal_torch_autograd_through_peft(tmp_path):
    torch, _, peft = needs_peft()
    hf, base = hf_base(tmp_path)
    torch.manual_seed(3)
    peft_model = peft.get_peft_model(hf, peft.LoraConfig(init_lora_weights=False, r=4, lora_alpha=8,
                                                          target_modules=list(lora.LINEARS)))
    peft_model.save_pretrained(tmp_path / "adapter")
    spec, adapter = lora.read_adapter(tmp_path / "adapter")
    adapter = {k: np.array(v) for k, v in adapter.items()}
    ids = IDS
    labels = ids.copy()
    labels[0, :3] = -100

    loss_ref, ref = peft_grads(peft_model, ids, labels)
    model = tl.load(base)
    loss, grads = lora.value_and_grad(model, adapter, spec, ids, labels)
    assert ref.keys() == grads.keys() == adapter.keys()
    assert abs(float(loss) - loss_ref) <= TOL_LOSS32 * abs(loss_ref)
    worst = 0.0
    for k in ref:
        assert grads[k].shape == ref[k].shape and grads[k].dtype == np.float32, k
        err = float(np.abs(grads[k] - ref[k]).max() / np.abs(ref[k]).max())
        assert err <= TOL_GRAD32, f"{k}: max |Δ| / max |ref| = {err:.3g} > {TOL_GRAD32}"
        worst = max(worst, err)
    record_parity("gradients float32 (all 7 targets)", "max|Δ|/max|ref|", worst, table="LoRA parity with PEFT")


TOL_GRAD64, TOL_LOSS64 = 1e-8, 1e-10  # float64: the bounds for every gradient and the loss


def test_adapter_gradients_equal_float64_torch_autograd_through_peft(tmp_path):
    """float64 on both sides: transformers with the float64 steps of tests/torch_grad_reference.py, PEFT's
    LoRA layers in float64; left padding and ignored labels."""
    torch, _, peft = needs_peft()
    import torch_grad_reference as ref

    hf, base = hf_base(tmp_path)
    torch.manual_seed(8)
    peft.get_peft_model(hf, peft.LoraConfig(init_lora_weights=False, r=4, lora_alpha=8,
                                            target_modules=list(lora.LINEARS))).save_pretrained(tmp_path / "adapter")
    peft_model = peft.PeftModel.from_pretrained(ref.hf_causal_lm(base, "float64"), tmp_path / "adapter",
                                                is_trainable=True).double()
    mask = np.ones_like(IDS)
    mask[1, :3] = 0  # left padding
    labels = np.where(mask == 1, IDS, -100)
    loss_ref = ref.model_loss(peft_model, IDS, labels, mask)
    loss_ref.backward()
    theirs = {n.removeprefix(lora.PREFIX).replace(".default.", "."): p.grad.numpy()
              for n, p in peft_model.named_parameters() if p.requires_grad}

    spec, adapter = lora.read_adapter(tmp_path / "adapter")
    loss, grads = lora.value_and_grad(tl.load(base, dtype="float64"), {k: v.astype(np.float64) for k, v in
                                                                       adapter.items()}, spec, IDS, labels, mask)
    assert abs(float(loss) - loss_ref.item()) <= TOL_LOSS64 * abs(loss_ref.item())
    assert theirs.keys() == grads.keys()
    worst = max(float(np.abs(grads[k] - g).max() / np.abs(g).max()) for k, g in theirs.items())
    record_parity("gradients float64 (all 7 targets, left padding)", "max|Δ|/max|ref|", worst,
                  table="LoRA parity with PEFT")
    assert worst <= TOL_GRAD64, f"max |Δ| / max |ref| = {worst:.3g} > {TOL_GRAD64}"


def test_adamw_steps_on_the_adapter_follow_peft_and_torch_and_leave_the_base_alone(tmp_path):
    """Five AdamW steps on A and B, ours and torch.optim.AdamW on PEFT's: the same losses; base weights untouched."""
    torch, _, peft = needs_peft()
    from tinyllama_ref.optim import AdamW

    hf, base = hf_base(tmp_path)
    torch.manual_seed(4)
    peft_model = peft.get_peft_model(hf, peft.LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj",
                                                                                           "down_proj"]))
    peft_model.save_pretrained(tmp_path / "adapter")  # PEFT's own init: B = 0, so step 1 moves B alone
    spec, adapter = lora.read_adapter(tmp_path / "adapter")
    adapter = {k: np.array(v) for k, v in adapter.items()}
    model = tl.load(base)
    before = {k: np.array(v) for k, v in flatten(model.params).items()}
    ours_opt = AdamW(adapter, lr=1e-2, weight_decay=0.01)
    torch_opt = torch.optim.AdamW([p for p in peft_model.parameters() if p.requires_grad], lr=1e-2,
                                  weight_decay=0.01)
    batches = lora.windows(np.random.default_rng(5).integers(0, 64, 200), 12, 2, seed=6)
    ours, theirs = [], []
    for _ in range(5):
        ids, labels = next(batches)
        loss, grads = lora.value_and_grad(model, adapter, spec, ids, labels)
        ours_opt.step(grads)
        ours.append(float(loss))
        torch_opt.zero_grad()
        loss_t = peft_model(torch.from_numpy(ids), labels=torch.from_numpy(labels)).loss
        loss_t.backward()
        torch_opt.step()
        theirs.append(loss_t.item())
    d = max(abs(a - b) / abs(b) for a, b in zip(ours, theirs))
    record_parity("5 AdamW steps float32", "rel|Δloss|", d, table="LoRA parity with PEFT")
    assert d <= TOL_GRAD32, f"losses {ours} vs torch {theirs}"
    assert ours[-1] < ours[0] - 0.1  # it learns
    assert all(np.array_equal(v, before[k]) for k, v in flatten(model.params).items())  # frozen base
    for k, p in peft_model.named_parameters():
        if p.requires_grad:
            want = p.detach().numpy()
            got = adapter[k.removeprefix(lora.PREFIX).replace(".default.", ".")]
            assert np.abs(got - want).max() <= TOL_GRAD32 * np.abs(want).max(), k


# -- tinyllama-ref finetune ------------------------------------------------------------------------

TEXT = ("Twinkle, twinkle, little star, how I wonder what you are! Up above the world so high, like a diamond in "
        "the sky. When the blazing sun is gone, when he nothing shines upon, then you show your little light, "
        "twinkle, twinkle, all the night.\n") * 10


def test_finetune_cli_learns_writes_a_loadable_adapter_and_merges_to_the_same_logits(tmp_path, capsys):
    from tinyllama_ref import cli

    data = tmp_path / "stars.txt"
    data.write_text(TEXT)
    args = ["finetune", "--data", str(data), "--lora-rank", "4", "--steps", "12", "--seq-len", "32",
            "--batch-size", "2", "--lr", "1e-2", "--target-modules", "q_proj,v_proj,up_proj"]
    assert cli.main(args + ["--out", str(tmp_path / "adapter")]) == 0
    out, err = capsys.readouterr()
    losses = [float(line.rsplit(" ", 1)[1]) for line in err.splitlines() if line.startswith("step ")]
    assert len(losses) == 12 and out.splitlines()[-1] == f"loss: {losses[-1]:.4f}"
    assert losses[-1] < losses[0] - 1.0, losses  # it learns the rhyme
    config = json.loads((tmp_path / "adapter" / lora.CONFIG_NAME).read_text())
    assert (config["r"], config["lora_alpha"], sorted(config["target_modules"])) == (  # alpha: PEFT's default 8
        4, 8, ["q_proj", "up_proj", "v_proj"])

    bundled = cli.default_model_dir()
    ids = tl.load_tokenizer(bundled).encode("Twinkle, twinkle, little star")
    adapted = np.asarray(tl.load(bundled, adapter=tmp_path / "adapter")([ids]).logits)
    assert np.abs(adapted - np.asarray(tl.load(bundled)([ids]).logits)).max() > 0.1

    assert cli.main(args + ["--merge", "--out", str(tmp_path / "merged")]) == 0
    merged = tl.load(tmp_path / "merged")
    assert np.abs(np.asarray(merged([ids]).logits) - adapted).max() <= 1e-5  # the same seed, the same training
    assert tl.load_tokenizer(tmp_path / "merged").encode("Twinkle, twinkle") == tl.load_tokenizer(bundled).encode(
        "Twinkle, twinkle")
    assert cli.main(args + ["--out", str(tmp_path / "adapter")]) == 1  # not empty: refused without --force
    assert "is not empty" in capsys.readouterr().err


def test_adapter_gradients_equal_finite_differences_in_float64():
    """No torch: central differences of the float64 loss along a random direction in every A and B."""
    model = tiny_model()
    model = tl.build_model(model.config, {k: np.asarray(v) for k, v in flatten(model.params).items()
                                          if k != "lm_head.weight"}, dtype="float64")
    spec = lora.LoraSpec(r=3, lora_alpha=6, target_modules=lora.LINEARS)
    adapter = random_adapter(model, spec)
    assert all(v.dtype == np.float64 for v in adapter.values())
    ids = IDS
    labels = ids.copy()
    labels[1, :4] = -100
    loss, grads = lora.value_and_grad(model, adapter, spec, ids, labels)
    rng = np.random.default_rng(7)
    h = 1e-6
    for key in ("model.layers.0.self_attn.k_proj.lora_A.weight", "model.layers.1.mlp.down_proj.lora_B.weight",
                "model.layers.1.self_attn.o_proj.lora_A.weight", "model.layers.0.mlp.gate_proj.lora_B.weight"):
        direction = rng.standard_normal(adapter[key].shape)

        def loss_at(t):
            moved = {**adapter, key: adapter[key] + t * direction}
            merged = tl.build_model(model.config, flatten(lora.merged_params(model.params, moved, spec.scaling)),
                                    dtype="float64")
            return float(merged(ids, labels=labels).loss)

        numeric = (loss_at(h) - loss_at(-h)) / (2 * h)
        analytic = float((grads[key] * direction).sum())
        assert abs(numeric - analytic) <= 1e-6 * max(abs(analytic), 1e-3), (key, numeric, analytic)


def test_adapter_training_runs_on_the_cupy_double(double):
    """The same loss and adapter gradients on the CuPy double as on NumPy (arrays stay on the 'device')."""
    host = tiny_model()
    tensors = {k: np.asarray(v) for k, v in flatten(host.params).items() if k != "lm_head.weight"}
    device = tl.build_model(host.config, tensors, backend="cupy")
    spec = lora.LoraSpec(r=2, target_modules=("q_proj", "up_proj"))
    host_adapter = random_adapter(host, spec)
    device_adapter = {k: double.asarray(v) for k, v in host_adapter.items()}
    loss_h, grads_h = lora.value_and_grad(host, host_adapter, spec, IDS, IDS)
    loss_d, grads_d = lora.value_and_grad(device, device_adapter, spec, IDS, IDS)
    assert abs(float(loss_d) - float(loss_h)) <= 1e-5 * abs(float(loss_h))
    for k, g in grads_h.items():
        assert isinstance(grads_d[k], double.ndarray), k
        assert np.abs(double.asnumpy(grads_d[k]) - g).max() <= 1e-4 * np.abs(g).max(), k
