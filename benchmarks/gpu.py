"""GPU speed, side by side: tinyllama_ref on CuPy against HF transformers on torch (eager and sdpa), same GPU.

For each shape: prefill tokens/s (one forward over a 512-token prompt, best of 3) and decode
tokens/s (greedy, batch 1, 128 new tokens from the KV cache), plus the memory-bandwidth limit for decode: the weight
bytes read per token divided by the measured device-to-device copy bandwidth.

Shapes (random float16 weights generated on the device, identical for both implementations):
  llama2-7b      hidden 4096, 32 layers, 32 heads, intermediate 11008, vocab 32000
  tinyllama-1.1b hidden 2048, 22 layers, 32 heads / 4 kv heads, intermediate 5632
  smollm2-135m   hidden 576, 30 layers, 9 heads / 3 kv heads, intermediate 1536, vocab 49152, tied

    python benchmarks/gpu.py                              # all shapes, float16
    python benchmarks/gpu.py --shapes tinyllama-1.1b --new-tokens 32
    python benchmarks/gpu.py --cpu-smoke                  # tiny shapes on NumPy + torch CPU, to test the script

Needs cupy (pip install -e ".[gpu]") and torch + transformers (".[parity]").
"""
from __future__ import annotations

import argparse
import time

from timing import last_position, time_greedy  # benchmarks/timing.py, beside this script

SHAPES = {
    "llama2-7b": dict(vocab_size=32000, hidden_size=4096, intermediate_size=11008, num_hidden_layers=32,
                      num_attention_heads=32, num_key_value_heads=32, max_position_embeddings=4096),
    "tinyllama-1.1b": dict(vocab_size=32000, hidden_size=2048, intermediate_size=5632, num_hidden_layers=22,
                           num_attention_heads=32, num_key_value_heads=4, max_position_embeddings=2048),
    "smollm2-135m": dict(vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
                         num_attention_heads=9, num_key_value_heads=3, max_position_embeddings=8192,
                         rope_theta=100000.0, tie_word_embeddings=True),
    "smoke": dict(vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024),
}


def sync(xp):
    if xp.__name__ == "cupy":
        xp.cuda.Device().synchronize()


def bench_ours(config, tensors, backend, dtype, prompt_tokens, new_tokens):
    import numpy as np

    import tinyllama_ref as tl
    from tinyllama_ref.backend import to_numpy

    model = tl.build_model(config, tensors, backend=backend, dtype=dtype)
    xp = model.xp
    ids = xp.asarray((np.arange(prompt_tokens) * 7919 + 11) % config.vocab_size)[None]
    model(ids[:, :8])  # warm-up (kernel compilation, cuBLAS handles)
    sync(xp)
    prefill_s, decode_s, tokens, logits = time_greedy(
        lambda: last_position(model(ids, use_cache=True, logits_to_keep=1)),
        lambda token, cache: last_position(model(xp.asarray([[token]]), past_key_values=cache, use_cache=True)),
        new_tokens)
    return prompt_tokens / prefill_s, (new_tokens - 1) / decode_s, tokens, to_numpy(logits).astype(np.float32)


def bench_hf(config, tensors, attn, torch_dtype, device, prompt_tokens, new_tokens):
    import numpy as np
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    hf_config = LlamaConfig(**{k: v for k, v in config.to_dict().items() if k not in ("torch_dtype",)})
    hf_config._attn_implementation = attn
    with torch.device("meta"):
        model = LlamaForCausalLM(hf_config)
    model = model.to_empty(device=device).to(torch_dtype).eval()
    # to_empty leaves non-persistent buffers uninitialised: rebuild the rotary frequencies on the device
    model.model.rotary_emb = type(model.model.rotary_emb)(hf_config).to(device)
    state = {}
    for name, arr in tensors.items():
        t = torch.from_dlpack(arr) if hasattr(arr, "__dlpack__") and device != "cpu" else torch.from_numpy(
            np.asarray(arr))
        state[name] = t.to(device=device, dtype=torch_dtype)
    if config.tie_word_embeddings:
        state["lm_head.weight"] = state["model.embed_tokens.weight"]
    model.load_state_dict(state, strict=False, assign=True)
    model.tie_weights()
    ids = ((torch.arange(prompt_tokens) * 7919 + 11) % config.vocab_size)[None].to(device)

    def synchronize():
        if device != "cpu":
            torch.cuda.synchronize()

    with torch.inference_mode():
        model(ids[:, :8])
        synchronize()
        prefill_s, decode_s, tokens, logits = time_greedy(
            lambda: last_position(model(ids, use_cache=True, logits_to_keep=1)),
            lambda token, cache: last_position(model(torch.tensor([[token]], device=device), past_key_values=cache,
                                                     use_cache=True)),
            new_tokens)
    return prompt_tokens / prefill_s, (new_tokens - 1) / decode_s, tokens, logits.float().cpu().numpy()


def copy_bandwidth(xp, mib=1024):
    """Device memory bandwidth (GB/s) from a large device-to-device copy (reads + writes)."""
    a = xp.ones(mib * 2**20 // 4, dtype=xp.float32)
    b = xp.empty_like(a)
    b[...] = a
    sync(xp)
    best = float("inf")
    for _ in range(10):
        t0 = time.perf_counter()
        b[...] = a
        sync(xp)
        best = min(best, time.perf_counter() - t0)
    return 2 * a.nbytes / best / 1e9


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shapes", nargs="+", default=["llama2-7b", "tinyllama-1.1b", "smollm2-135m"])
    ap.add_argument("--dtype", default="float16", choices=["float16", "float32"])
    ap.add_argument("--prompt-tokens", type=int, default=512)
    ap.add_argument("--new-tokens", type=int, default=128)
    ap.add_argument("--cpu-smoke", action="store_true", help="run the tiny 'smoke' shape on NumPy/torch CPU")
    args = ap.parse_args()

    import numpy as np
    import torch

    import tinyllama_ref as tl
    from tinyllama_ref.backend import get_module
    from tinyllama_ref.formats.checkpoint import random_tensors

    if args.cpu_smoke:
        backend, device, shapes, dtype = "numpy", "cpu", ["smoke"], "float32"
        args.prompt_tokens, args.new_tokens = min(args.prompt_tokens, 64), min(args.new_tokens, 8)
    else:
        backend, device, shapes, dtype = "cupy", "cuda", args.shapes, args.dtype
    xp = get_module(backend)
    torch_dtype = getattr(torch, dtype)
    bw = copy_bandwidth(xp, 64 if args.cpu_smoke else 1024)
    name = "CPU" if args.cpu_smoke else xp.cuda.runtime.getDeviceProperties(0)["name"].decode()
    print(f"device: {name}; copy bandwidth {bw:.0f} GB/s; dtype {dtype}; prompt {args.prompt_tokens}, "
          f"decode {args.new_tokens} tokens")
    head = (f"{'shape':16s} {'impl':18s} {'prefill tok/s':>13s} {'decode tok/s':>12s} {'% of BW limit':>13s} "
            f"{'decode vs eager':>15s}")
    lines = []
    for shape in shapes:
        config = tl.LlamaConfig(**SHAPES[shape])
        tensors = random_tensors(config, dtype=getattr(xp, dtype), xp=xp)  # drawn on the device
        nbytes = sum(int(t.nbytes) for t in tensors.values())
        limit = bw * 1e9 / nbytes
        results = {"tinyllama_ref": bench_ours(config, tensors, backend, dtype, args.prompt_tokens,
                                               args.new_tokens)}
        for attn in ("eager", "sdpa"):
            results[f"transformers {attn}"] = bench_hf(config, tensors, attn, torch_dtype, device,
                                                       args.prompt_tokens, args.new_tokens)
        eager = results["transformers eager"][1]
        _, _, our_tokens, our_logits = results["tinyllama_ref"]
        for impl, (prefill, decode, tokens, logits) in results.items():
            agree = "" if impl == "tinyllama_ref" else (
                f"  max|Δlogits| {np.abs(logits - our_logits).max():.2g}, "
                + ("same greedy tokens" if tokens == our_tokens else "tokens differ"))
            lines.append(f"{shape:16s} {impl:18s} {prefill:13.0f} {decode:12.1f} {100 * decode / limit:12.0f}% "
                         f"{decode / eager:14.2f}x{agree}")
        del tensors
    print(head)
    print("\n".join(lines))
    print(f"BW limit = weight bytes / {bw:.0f} GB/s (device-to-device copy, read + write).")


if __name__ == "__main__":
    main()
