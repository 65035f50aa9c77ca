"""Dump every intermediate of a Hugging Face `transformers` forward pass under the parity kit's names.

    python tools/dump_hf.py --model DIR --prompt "In the beginning" --out hf.safetensors
    tinyllama-ref dump      --model DIR --prompt "In the beginning" --out ours.safetensors
    tinyllama-ref compare ours.safetensors hf.safetensors          # names the first tensor that differs

The model runs as `AutoModelForCausalLM` in float32 with eager attention (the one that returns the
attention probabilities). Forward hooks record each module's input or output; the names and
layouts are those of `tinyllama_ref/parity.py`:

    embed_tokens                  output of model.embed_tokens (Open-Llama: of embed_layer_norm)
    layers.N.input_layernorm      output of the layer's input_layernorm
    layers.N.self_attn.q / k / v  output of q_proj / k_proj / v_proj, reshaped [b, s, n*d] -> [b, n, s, d]
    layers.N.self_attn.q_rope/k_rope  HF's own apply_rotary_pos_emb applied to those q and k, with the
                                  cos/sin the attention module received (Llama) or made (Open-Llama)
    layers.N.self_attn.probs      outputs.attentions[N] (output_attentions=True)
    layers.N.self_attn.context    input of o_proj; layers.N.self_attn.o_proj its output
    layers.N.attn_residual        input of post_attention_layernorm
    layers.N.mlp.act_mul          input of down_proj; gate_proj / up_proj / down_proj their outputs
    layers.N.output               output of the decoder layer
    norm, logits                  output of model.norm; outputs.logits

Needs torch and transformers (Llama: transformers 5.x; Open-Llama: 4.57, in its own environment).
The package never imports this file.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np


def _np(t) -> np.ndarray:
    return t.detach().to("cpu").float().numpy().copy() if t.is_floating_point() else t.detach().cpu().numpy().copy()


def _first(x):
    return x[0] if isinstance(x, (tuple, list)) else x


def load_hf_model(model_dir: str | Path):
    """The checkpoint as a float32 transformers model with eager attention, in eval mode."""
    import torch
    from transformers import AutoModelForCausalLM

    try:
        model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32, attn_implementation="eager")
    except TypeError:  # transformers 4.x spells it torch_dtype
        model = AutoModelForCausalLM.from_pretrained(str(model_dir), torch_dtype=torch.float32,
                                                     attn_implementation="eager")
    if getattr(model.config, "use_memory_efficient_attention", False):
        model.config.use_memory_efficient_attention = False  # Open-Llama: xformers returns no probabilities
        for layer in model.model.layers:
            if hasattr(layer.self_attn, "config"):
                layer.self_attn.config.use_memory_efficient_attention = False
    return model.eval()


def hf_trace(model, input_ids) -> dict[str, np.ndarray]:
    """Run `model` on input_ids [batch, seq] and return every named intermediate (float32 NumPy)."""
    import torch

    modeling = sys.modules[type(model).__module__]  # modeling_llama or modeling_open_llama
    cfg = model.config
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    trace: dict[str, np.ndarray] = {}
    raw: dict[str, torch.Tensor] = {}  # q, k, v and the rope inputs, kept as tensors for apply_rotary_pos_emb
    handles = []

    def out_hook(name, heads=None):
        def hook(module, args, output):
            t = _first(output)
            if heads is not None:  # [b, s, n*d] -> [b, n, s, d], as HF's attention reshapes it
                b, s, _ = t.shape
                t = t.view(b, s, -1, head_dim).transpose(1, 2)
                raw[name] = t
            trace[name] = _np(t)
        return hook

    def in_hook(name):
        def hook(module, args):
            trace[name] = _np(args[0])
        return hook

    def attn_kwargs_hook(prefix):
        def hook(module, args, kwargs):
            raw[prefix + "kwargs"] = kwargs
        return hook

    inner = model.model
    stable = getattr(inner, "embed_layer_norm", None)
    handles.append((stable or inner.embed_tokens).register_forward_hook(out_hook("embed_tokens")))
    for i, layer in enumerate(inner.layers):
        pre, attn, mlp = f"layers.{i}.", layer.self_attn, layer.mlp
        handles += [
            layer.input_layernorm.register_forward_hook(out_hook(pre + "input_layernorm")),
            attn.register_forward_pre_hook(attn_kwargs_hook(pre), with_kwargs=True),
            attn.q_proj.register_forward_hook(out_hook(pre + "self_attn.q", heads=True)),
            attn.k_proj.register_forward_hook(out_hook(pre + "self_attn.k", heads=True)),
            attn.v_proj.register_forward_hook(out_hook(pre + "self_attn.v", heads=True)),
            attn.o_proj.register_forward_pre_hook(in_hook(pre + "self_attn.context")),
            attn.o_proj.register_forward_hook(out_hook(pre + "self_attn.o_proj")),
            layer.post_attention_layernorm.register_forward_pre_hook(in_hook(pre + "attn_residual")),
            layer.post_attention_layernorm.register_forward_hook(out_hook(pre + "post_attention_layernorm")),
            mlp.gate_proj.register_forward_hook(out_hook(pre + "mlp.gate_proj")),
            mlp.up_proj.register_forward_hook(out_hook(pre + "mlp.up_proj")),
            mlp.down_proj.register_forward_pre_hook(in_hook(pre + "mlp.act_mul")),
            mlp.down_proj.register_forward_hook(out_hook(pre + "mlp.down_proj")),
            layer.register_forward_hook(out_hook(pre + "output")),
        ]
    handles.append(inner.norm.register_forward_hook(out_hook("norm")))
    ids = torch.as_tensor(np.asarray(input_ids), dtype=torch.long)
    try:
        with torch.no_grad():
            out = model(input_ids=ids, output_attentions=True, use_cache=False)
            for i, layer in enumerate(inner.layers):
                pre = f"layers.{i}."
                missing = [n for n in ("self_attn.q", "self_attn.k", "self_attn.v") if pre + n not in raw]
                if missing:
                    raise RuntimeError(f"{pre}{missing[0]} was never computed by a q/k/v_proj module call "
                                       f"(pretraining_tp > 1 in transformers 4.x bypasses them): cannot dump")
                q, k, v = raw[pre + "self_attn.q"], raw[pre + "self_attn.k"], raw[pre + "self_attn.v"]
                kwargs = raw[pre + "kwargs"]
                if kwargs.get("position_embeddings") is not None:  # Llama: cos/sin made once per forward
                    cos, sin = kwargs["position_embeddings"]
                    q_rope, k_rope = modeling.apply_rotary_pos_emb(q, k, cos, sin)
                else:  # Open-Llama (transformers 4.x): the attention module makes them itself
                    cos, sin = layer.self_attn.rotary_emb(v, seq_len=q.shape[2])
                    q_rope, k_rope = modeling.apply_rotary_pos_emb(q, k, cos, sin, kwargs["position_ids"])
                trace[pre + "self_attn.q_rope"] = _np(q_rope)
                trace[pre + "self_attn.k_rope"] = _np(k_rope)
                if out.attentions is None or out.attentions[i] is None:
                    raise RuntimeError(f"transformers returned no attention probabilities for layer {i}: "
                                       f"the model must run with attn_implementation='eager'")
                trace[pre + "self_attn.probs"] = _np(out.attentions[i])
    finally:
        for h in handles:
            h.remove()
    trace["input_ids"] = ids.numpy().astype(np.int64)
    trace["logits"] = _np(out.logits)
    from tinyllama_ref.parity import forward_order_key

    return {k: trace[k] for k in sorted(trace, key=forward_order_key)}


def save_dump(path: str | Path, tensors: dict[str, np.ndarray], metadata: dict | None = None) -> Path:
    """Write the dump as .safetensors (forward order in the metadata, as `tinyllama-ref dump` does) or .npz."""
    path = Path(path)
    tensors = {k: np.ascontiguousarray(v) for k, v in tensors.items()}
    if path.suffix == ".npz":
        np.savez(path, **tensors)
    else:
        from safetensors.numpy import save_file

        save_file(tensors, str(path), metadata={"order": json.dumps(list(tensors)), **(metadata or {})})
    return path


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", required=True, help="a Hugging Face checkpoint directory")
    ap.add_argument("--prompt", help="text, encoded with the checkpoint's tokenizer (AutoTokenizer)")
    ap.add_argument("--ids", help="token ids instead of a prompt, comma-separated: 1,450,3186")
    ap.add_argument("--out", required=True, help="output .safetensors or .npz file")
    args = ap.parse_args(argv)
    if (args.prompt is None) == (args.ids is None):
        ap.error("give exactly one of --prompt and --ids")
    try:
        import torch
        import transformers
    except ImportError as e:
        print(f"dump_hf: needs torch and transformers ({e}); pip install -e '.[parity]'", file=sys.stderr)
        return 1
    torch.manual_seed(0)
    if args.ids is not None:
        try:
            ids = [[int(t) for t in args.ids.split(",") if t.strip()]]
        except ValueError:
            ap.error(f"--ids must be comma-separated integers, got {args.ids!r}")
    else:
        from transformers import AutoTokenizer

        ids = [AutoTokenizer.from_pretrained(args.model).encode(args.prompt)]
    model = load_hf_model(args.model)
    tensors = hf_trace(model, ids)
    meta = {"producer": f"transformers {transformers.__version__}", "model": str(args.model)}
    if args.prompt is not None:
        meta["prompt"] = args.prompt
    path = save_dump(args.out, tensors, meta)
    print(f"wrote {len(tensors)} tensors to {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
