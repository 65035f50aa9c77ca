"""Train the small LLaMA that ships inside the package (tinyllama_ref/assets/kjv-llama/).

The model is a real Hugging Face `LlamaForCausalLM` with grouped-query attention and a
sentencepiece BPE tokenizer with byte fallback (LLaMA's tokenizer settings), trained from
scratch on the King James Bible. Everything it needs comes from a Debian package, so
anyone can rebuild the same files:

    apt-get install bible-kjv          # Debian bookworm: bible-kjv 4.38 + bible-kjv-text 4.38
    OMP_NUM_THREADS=2 python3 tools/train_bundled_model.py      # 12 min on 2 idle CPU cores (up to ~40 when shared)
    python3 tools/train_bundled_model.py --golden-only          # rewrite the test golden only
    python3 tools/train_bundled_model.py --smoke --out /tmp/smoke/kjv-llama   # 1-2 minute check of the pipeline
    OMP_NUM_THREADS=2 python3 tools/train_bundled_model.py --engine numpy --out /tmp/np/kjv-llama  # the same in NumPy

With the same packages and 2 threads, two runs write byte-identical files (checked with --smoke);
other CPUs or thread counts may round differently.

Stages (each one a function below):
    1. kjv_chapters()     `bible gen1:1-rev22:21` -> 1189 chapters of verses (verse numbers dropped)
    2. train_tokenizer()  sentencepiece BPE, LLaMA settings, 2048 pieces -> tokenizer.model
    3. encode_corpus()    each chapter becomes [<s>] verse verse ... [</s>]; 1 chapter in 50 is held out
    4. train()            AdamW, linear warmup then cosine decay, fp32 on CPU, fixed seeds
    5. save_checkpoint()  config.json, model.safetensors (float32), generation_config.json,
                          tokenizer.model, tokenizer_config.json; kjv-llama.training_log.json beside it
    6. write_golden()     transformers' logits and greedy continuations -> tests/fixtures/bundled_golden.npz

Needs torch (CPU build), transformers 5.x, sentencepiece and safetensors; the package itself
never imports this file.
"""
import argparse
import hashlib
import json
import math
import os
import platform
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
DEFAULT_OUT = REPO / "tinyllama_ref" / "assets" / "kjv-llama"
DEFAULT_GOLDEN = REPO / "tests" / "fixtures" / "bundled_golden.npz"
sys.path.insert(0, str(REPO))  # this checkout's package, installed or not
from tinyllama_ref.fetch import cache_root  # noqa: E402

DEFAULT_WORK = cache_root() / "bundled_train"  # $TINYLLAMA_CACHE moves it, as every cached file

# The whole corpus as `bible` prints it (bible-kjv 4.38); checked so that a different text is noticed.
KJV_RAW_SHA256 = "6f74f5589333c56c263963e6347dba662bae2d96861302e690aaae0b4a855eda"

SEED = 0
VOCAB_SIZE = 2048
SEQ_LEN = 256  # tokens the model predicts per training window (plus the leading <s>)
HELD_OUT_EVERY = 50  # chapter i is validation data when i % 50 == 7

MODEL_CONFIG = dict(
    vocab_size=VOCAB_SIZE,
    hidden_size=192,
    intermediate_size=512,  # LLaMA's rule: 8/3 x hidden
    num_hidden_layers=4,
    num_attention_heads=6,
    num_key_value_heads=2,  # grouped-query attention: 3 query heads share each k/v head
    head_dim=32,
    max_position_embeddings=SEQ_LEN,
    rms_norm_eps=1e-5,
    rope_theta=10000.0,
    hidden_act="silu",
    initializer_range=0.02,
    tie_word_embeddings=False,
    attention_bias=False,
    mlp_bias=False,
    bos_token_id=1,
    eos_token_id=2,
    pad_token_id=None,
)

TRAIN = dict(
    steps=1600,  # 1600 x 8 x 256 = 3.28M tokens, ~3 passes over the training chapters
    batch_size=8,  # small batches: at this budget more updates beat bigger ones
    lr=3e-3,
    min_lr=3e-4,
    warmup_steps=80,
    weight_decay=0.1,
    betas=(0.9, 0.95),
    grad_clip=1.0,
    eval_every=200,
    eval_batches=16,
)

SMOKE_TRAIN = dict(TRAIN, steps=30, warmup_steps=5, eval_every=15, eval_batches=2)

GENERATION_CONFIG = dict(
    do_sample=True,
    temperature=0.8,
    top_k=40,
    top_p=0.95,
    repetition_penalty=1.1,
    max_new_tokens=64,
    bos_token_id=1,
    eos_token_id=2,
)

GOLDEN_PROMPTS = [
    "Once upon a time",
    "In the beginning God created",
    "And the LORD said unto Moses, Speak unto the children of Israel",
    "Psalm 23:1 The LORD is my shepherd; I shall not want. Caf\u00e9 \u2603!",  # digits, byte fallback
]
GOLDEN_NEW_TOKENS = 40


# ---------------------------------------------------------------- 1. the text


def kjv_chapters():
    """Run Debian's `bible` program and return [(title, [verse, ...]), ...] for all 1189 chapters.

    `bible` prints a heading per chapter and one verse per line when the line width is large:
        "Genesis 1"  /  "  1 In the beginning God created ..."  ->  ("Genesis 1", ["In the beginning ..."])
    """
    if shutil.which("bible") is None:
        sys.exit("the `bible` program is missing: run `apt-get install bible-kjv` (Debian package, KJV text)")
    raw = subprocess.run(
        ["bible", "-l1000000", "gen1:1-rev22:21"],
        check=True,
        capture_output=True,
        text=True,
        env=dict(os.environ, COLUMNS="1000000"),
    ).stdout
    digest = hashlib.sha256(raw.encode()).hexdigest()
    if KJV_RAW_SHA256 is not None and digest != KJV_RAW_SHA256:
        sys.exit(f"`bible` printed a different text (sha256 {digest}, expected {KJV_RAW_SHA256})")
    chapters = []
    for line in raw.splitlines():
        if not line.strip():
            continue
        verse = re.match(r"^\s+(\d+) (.*)$", line)
        if verse:
            chapters[-1][1].append(verse.group(2).strip())
        else:  # a heading such as "Song of Solomon 3"
            chapters.append((line.strip(), []))
    n_verses = sum(len(verses) for _, verses in chapters)
    if len(chapters) != 1189 or n_verses != 31102:
        sys.exit(f"expected 1189 chapters and 31102 verses from `bible`, got {len(chapters)} and {n_verses}")
    return chapters, digest


# ---------------------------------------------------------------- 2. the tokenizer


def train_tokenizer(chapters, work):
    """Train a sentencepiece BPE tokenizer with LLaMA's settings; returns the path of tokenizer.model.

    One verse per line is the training input, so '\\n' never becomes a piece and is written with
    byte fallback (<0x0A>), as in LLaMA. Ids: <unk>=0, <s>=1, </s>=2, <0x00>..<0xFF>=3..258.
    """
    import sentencepiece as spm

    work.mkdir(parents=True, exist_ok=True)
    text_path = work / "kjv_verses.txt"
    text_path.write_text("".join(v + "\n" for _, verses in chapters for v in verses), encoding="utf-8")
    prefix = work / "tokenizer"
    spm.SentencePieceTrainer.train(
        input=str(text_path),
        model_prefix=str(prefix),
        model_type="bpe",
        vocab_size=VOCAB_SIZE,
        character_coverage=0.99995,
        byte_fallback=True,
        normalization_rule_name="identity",
        add_dummy_prefix=True,
        remove_extra_whitespaces=False,
        split_digits=True,
        allow_whitespace_only_pieces=True,
        unk_id=0,
        bos_id=1,
        eos_id=2,
        pad_id=-1,
        input_sentence_size=0,  # use every verse, so no sampling and no randomness
        shuffle_input_sentence=False,
        num_threads=1,
        minloglevel=2,
    )
    return prefix.with_suffix(".model")


# ---------------------------------------------------------------- 3. the token stream


def encode_corpus(chapters, tokenizer_path):
    """Encode every chapter as [<s>] + verses + [</s>] and split train/validation by chapter.

    Returns, for each split, the flat token stream (int64) and the offsets where verses start;
    verses are encoded one by one, which equals encoding the joined chapter because no piece
    crosses a space: "A B" -> ["▁A", "▁B"] == encode("A") + encode("B").
    """
    import sentencepiece as spm

    sp = spm.SentencePieceProcessor(model_file=str(tokenizer_path))
    splits = {"train": ([], []), "val": ([], [])}
    for i, (_, verses) in enumerate(chapters):
        stream, starts = splits["val" if i % HELD_OUT_EVERY == 7 else "train"]
        stream.append(sp.bos_id())
        for ids in sp.encode(verses):
            starts.append(len(stream))
            stream.extend(ids)
        stream.append(sp.eos_id())
    out = {}
    for name, (stream, starts) in splits.items():
        stream = np.array(stream, dtype=np.int64)
        starts = np.array(starts, dtype=np.int64)
        out[name] = (stream, starts[starts + SEQ_LEN <= len(stream)])
    return out


def sample_batch(stream, starts, batch_size, rng):
    """Windows that begin at a verse, prefixed with <s> like a prompt: returns (inputs, targets), each [B, SEQ_LEN]."""
    chosen = rng.choice(starts, size=batch_size)
    rows = np.stack([np.concatenate([[1], stream[s : s + SEQ_LEN]]) for s in chosen])  # [B, SEQ_LEN+1]
    return rows[:, :-1], rows[:, 1:]


# ---------------------------------------------------------------- 4. training


def lr_at(step, t):
    """Linear warmup to t['lr'], then cosine decay to t['min_lr'] at the last step."""
    if step < t["warmup_steps"]:
        return t["lr"] * (step + 1) / t["warmup_steps"]
    progress = (step - t["warmup_steps"]) / max(1, t["steps"] - 1 - t["warmup_steps"])
    return t["min_lr"] + 0.5 * (t["lr"] - t["min_lr"]) * (1 + math.cos(math.pi * progress))


def train(data, t, threads):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(SEED)
    torch.set_num_threads(threads)
    model = LlamaForCausalLM(LlamaConfig(**MODEL_CONFIG)).float()
    n_params = sum(p.numel() for p in model.parameters())
    print(f"parameters: {n_params:,}", flush=True)

    decay = [p for n, p in model.named_parameters() if p.dim() >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.dim() < 2]  # RMSNorm weights
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": t["weight_decay"]}, {"params": no_decay, "weight_decay": 0.0}],
        lr=t["lr"],
        betas=t["betas"],
    )
    rng = np.random.default_rng(SEED)
    val_rng = np.random.default_rng(SEED + 1)
    val_batches = [sample_batch(*data["val"], t["batch_size"], val_rng) for _ in range(t["eval_batches"])]

    def loss_of(inputs, targets):
        logits = model(input_ids=torch.from_numpy(inputs)).logits  # [B, T, vocab]
        return torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), torch.from_numpy(targets).reshape(-1))

    def val_loss():
        model.eval()
        with torch.no_grad():
            value = float(np.mean([loss_of(x, y).item() for x, y in val_batches]))
        model.train()
        return value

    log = {"steps": [], "train_loss": [], "lr": [], "val": [], "tokens_per_step": t["batch_size"] * SEQ_LEN}
    start = time.time()
    model.train()
    recent = []
    for step in range(t["steps"]):
        for group in opt.param_groups:
            group["lr"] = lr_at(step, t)
        inputs, targets = sample_batch(*data["train"], t["batch_size"], rng)
        loss = loss_of(inputs, targets)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), t["grad_clip"])
        opt.step()
        record_step(log, recent, step, loss.item(), lr_at(step, t), t, start, val_loss)
    finish_log(log, start, n_params, t)
    return model, log


def record_step(log, recent, step, loss, lr, t, start, val_loss):
    """Log one step (every 10th printed, with tokens/s) and, every eval_every steps, the validation loss."""
    recent.append(loss)
    log["steps"].append(step)
    log["train_loss"].append(round(loss, 4))
    log["lr"].append(lr)
    if step % 10 == 0 or step == t["steps"] - 1:
        elapsed = time.time() - start
        tok_s = (step + 1) * log["tokens_per_step"] / elapsed
        print(f"step {step:5d}  loss {np.mean(recent):.4f}  lr {lr:.2e}  {elapsed:7.1f}s  {tok_s:6.0f} tok/s", flush=True)
        recent.clear()
    if (step + 1) % t["eval_every"] == 0 or step == t["steps"] - 1:
        v = val_loss()
        log["val"].append({"step": step, "val_loss": round(v, 4)})
        print(f"step {step:5d}  val loss {v:.4f}", flush=True)


def finish_log(log, start, n_params, t):
    log["train_seconds"] = round(time.time() - start, 1)
    log["final_train_loss_last50_mean"] = round(float(np.mean(log["train_loss"][-50:])), 4)
    log["final_val_loss"] = log["val"][-1]["val_loss"]
    log["n_params"] = n_params
    log["tokens_seen"] = t["steps"] * log["tokens_per_step"]


def train_numpy(data, t, threads):
    """`train` with tinyllama_ref's NumPy backward passes and AdamW instead of PyTorch: the same batches (the
    same generator and seeds), schedule, clipping, weight decay rule and validation batches. `threads` threads
    share each batch, with one BLAS thread each, where torch runs `threads` intra-op threads."""
    import tinyllama_ref as tl
    from tinyllama_ref.config import LlamaConfig as ConfigOfOurs
    from tinyllama_ref.backend import keep_freed_memory
    from tinyllama_ref.train import TrainSettings, fit, initial_tensors, mean_loss

    keep_freed_memory()
    config = ConfigOfOurs.from_dict(dict(MODEL_CONFIG, architectures=["LlamaForCausalLM"], model_type="llama"))
    model = tl.build_model(config, initial_tensors(config, SEED))
    n_params = model.num_parameters()
    print(f"parameters: {n_params:,} (NumPy: {threads} threads share each batch)", flush=True)
    settings = TrainSettings(**{k: t[k] for k in ("steps", "batch_size", "lr", "min_lr", "warmup_steps", "weight_decay",
                                                  "betas", "grad_clip")}, seq_len=SEQ_LEN, seed=SEED)
    rng = np.random.default_rng(SEED)
    val_rng = np.random.default_rng(SEED + 1)
    whole = lambda x, y: np.concatenate([x, y[:, -1:]], axis=1)  # noqa: E731  [B, SEQ_LEN + 1]: y[i] = x[i + 1]
    val_batches = [whole(*sample_batch(*data["val"], t["batch_size"], val_rng)) for _ in range(t["eval_batches"])]
    log = {"steps": [], "train_loss": [], "lr": [], "val": [], "tokens_per_step": t["batch_size"] * SEQ_LEN}
    start, recent = time.time(), []
    fit(model, lambda: whole(*sample_batch(*data["train"], t["batch_size"], rng)), settings,
        lambda step, loss, lr: record_step(log, recent, step, loss, lr, t, start, lambda: mean_loss(model, val_batches)),
        workers=threads)  # `threads` threads share each batch, one BLAS thread each (train.value_and_grad_threads)
    finish_log(log, start, n_params, t)
    return model, log


# ---------------------------------------------------------------- 5. the checkpoint


def save_checkpoint(model, tokenizer_path, out, log, meta):
    from transformers import GenerationConfig

    out.mkdir(parents=True, exist_ok=True)
    model.generation_config = GenerationConfig(**GENERATION_CONFIG)
    model.save_pretrained(out, safe_serialization=True)
    shutil.copyfile(tokenizer_path, out / "tokenizer.model")
    tokenizer_config = {
        "tokenizer_class": "LlamaTokenizer",
        "bos_token": "<s>",
        "eos_token": "</s>",
        "unk_token": "<unk>",
        "pad_token": None,
        "add_bos_token": True,
        "add_eos_token": False,
        "legacy": True,
        "add_prefix_space": True,
        "clean_up_tokenization_spaces": False,
        "model_max_length": SEQ_LEN,
    }
    (out / "tokenizer_config.json").write_text(json.dumps(tokenizer_config, indent=2) + "\n")
    log = dict(log, **meta)
    (out.parent / f"{out.name}.training_log.json").write_text(json.dumps(log) + "\n")
    for name in sorted(os.listdir(out)):
        print(f"  {name:28s} {os.path.getsize(out / name):>10,d} bytes")


# ---------------------------------------------------------------- 6. the golden for the tests


def write_golden(out, golden_path):
    """Record what transformers computes from the shipped files, for tests that run without torch.

    Saved arrays (prompt k = 0..3): ids_k [n] (with <s>), logits_k [n, vocab] float32 at every
    prompt position, greedy_k [n + 40] (prompt then 40 greedy tokens); a json beside it
    lists the prompts, the decoded continuations and the sha256 of model.safetensors.
    """
    import sentencepiece as spm
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(SEED)
    model = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    tok = AutoTokenizer.from_pretrained(out)
    sp = spm.SentencePieceProcessor(model_file=str(out / "tokenizer.model"))
    arrays, records = {}, []
    for k, prompt in enumerate(GOLDEN_PROMPTS):
        ids = tok(prompt)["input_ids"]
        sp_ids = [sp.bos_id()] + sp.encode(prompt)
        if ids != sp_ids:
            sys.exit(f"transformers and sentencepiece tokenize {prompt!r} differently:\n{ids}\n{sp_ids}")
        x = torch.tensor([ids])
        with torch.no_grad():
            logits = model(input_ids=x).logits[0].float().numpy()  # [n, vocab]
            greedy = model.generate(
                x,
                attention_mask=torch.ones_like(x),
                do_sample=False,
                repetition_penalty=1.0,
                temperature=None,
                top_k=None,
                top_p=None,
                max_new_tokens=GOLDEN_NEW_TOKENS,
                min_new_tokens=GOLDEN_NEW_TOKENS,  # never stop at </s>, so every row has 40 tokens
            )[0].numpy()
        arrays[f"ids_{k}"] = np.array(ids, dtype=np.int64)
        arrays[f"logits_{k}"] = logits.astype(np.float32)
        arrays[f"greedy_{k}"] = greedy.astype(np.int64)
        continuation = tok.decode(greedy[len(ids) :].tolist(), skip_special_tokens=False)
        records.append({"prompt": prompt, "ids": ids, "greedy_new_ids": greedy[len(ids) :].tolist(), "greedy_text": continuation})
        print(f"{prompt!r} -> {continuation!r}")
    golden_path.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(golden_path, **arrays)
    weights_sha = hashlib.sha256((out / "model.safetensors").read_bytes()).hexdigest()
    meta = {
        "made_by": "tools/train_bundled_model.py --golden-only",
        "transformers": __import__("transformers").__version__,
        "torch": torch.__version__,
        "model_dir": str(out.relative_to(REPO)) if out.is_relative_to(REPO) else str(out),
        "model_safetensors_sha256": weights_sha,
        "greedy_new_tokens": GOLDEN_NEW_TOKENS,
        "greedy_settings": "do_sample=False, repetition_penalty=1.0, min_new_tokens=max_new_tokens=40 (no stop at </s>)",
        "prompts": records,
    }
    golden_path.with_suffix(".json").write_text(json.dumps(meta, indent=2, ensure_ascii=False) + "\n")
    print(f"wrote {golden_path} ({os.path.getsize(golden_path):,d} bytes)")


def show_samples(out):
    """Greedy and seeded sampling from "Once upon a time", as transformers writes them."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    tok = AutoTokenizer.from_pretrained(out)
    x = tok("Once upon a time", return_tensors="pt")
    greedy = model.generate(**x, do_sample=False, repetition_penalty=1.0, max_new_tokens=64)
    print("greedy :", tok.decode(greedy[0], skip_special_tokens=True))
    torch.manual_seed(0)
    sampled = model.generate(**x)  # generation_config.json's defaults
    print("sampled:", tok.decode(sampled[0], skip_special_tokens=True))


def side_by_side(args):
    """PyTorch, then NumPy, on the same batches and schedule, each in a fresh process with the same threads;
    both logs and the comparison written to args.side_by_side (JSON)."""
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), OPENBLAS_NUM_THREADS=str(args.threads))
    logs = {}
    for engine in ("torch", "numpy"):
        out = args.work / "side_by_side" / engine / "kjv-llama"
        cmd = [sys.executable, __file__, "--engine", engine, "--out", str(out), "--work", str(args.work),
               "--threads", str(args.threads), "--no-golden"] + (["--steps", str(args.steps)] if args.steps else [])
        print("$", " ".join(cmd), flush=True)
        subprocess.run(cmd, env=env, check=True)
        logs[engine] = json.loads((out.parent / f"{out.name}.training_log.json").read_text())
    keep = ("train_loss", "val", "train_seconds", "final_val_loss", "final_train_loss_last50_mean", "tokens_seen")
    record = {engine: {k: log[k] for k in keep} for engine, log in logs.items()}
    for engine, log in record.items():
        log["tokens_per_second"] = round(log["tokens_seen"] / log["train_seconds"], 1)
    record["threads"] = args.threads
    record["machine"] = f"{os.cpu_count()} CPUs, {platform.processor() or platform.machine()}"
    record["wall_time_ratio_numpy_over_torch"] = round(record["numpy"]["train_seconds"] / record["torch"]["train_seconds"], 3)
    record["val_loss_difference_numpy_minus_torch"] = round(record["numpy"]["final_val_loss"] - record["torch"]["final_val_loss"], 4)
    args.side_by_side.parent.mkdir(parents=True, exist_ok=True)
    args.side_by_side.write_text(json.dumps(record) + "\n")
    for engine in ("torch", "numpy"):
        r = record[engine]
        print(f"{engine:6s} validation loss {r['final_val_loss']:.4f}  {r['train_seconds']:7.1f} s  "
              f"{r['tokens_per_second']:7.0f} tokens/s")
    print(f"wall time numpy/torch: {record['wall_time_ratio_numpy_over_torch']:.3f}; wrote {args.side_by_side}")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT, help="checkpoint directory to write")
    ap.add_argument("--golden", type=Path, default=DEFAULT_GOLDEN, help="test golden to write (.npz)")
    ap.add_argument("--work", type=Path, default=DEFAULT_WORK, help="scratch directory (corpus, tokenizer)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--steps", type=int, default=None, help="override the number of training steps")
    ap.add_argument("--smoke", action="store_true", help="30 steps, to check the pipeline in a minute or two")
    ap.add_argument("--golden-only", action="store_true", help="only rewrite the golden from --out")
    ap.add_argument("--no-golden", action="store_true", help="train and save only: no golden, no samples")
    ap.add_argument("--engine", choices=["torch", "numpy"], default="torch", help="train with PyTorch (the shipped "
                    "model) or with tinyllama_ref's NumPy backward passes (same data, config and schedule)")
    ap.add_argument("--side-by-side", type=Path, metavar="JSON", help="train with both engines, one after the "
                    "other, each in its own process, into --work; write both logs and the comparison to JSON "
                    "(docs/data/kjv_training_side_by_side.json draws the guide's loss curves)")
    args = ap.parse_args()
    if args.side_by_side:
        side_by_side(args)
        return
    out = args.out.resolve()
    if (args.smoke or args.engine == "numpy") and out == DEFAULT_OUT:
        sys.exit("--smoke and --engine numpy would overwrite the shipped model: pass --out elsewhere, "
                 "e.g. /tmp/smoke/kjv-llama")

    if not args.golden_only:
        t = dict(SMOKE_TRAIN if args.smoke else TRAIN)
        if args.steps is not None:
            t["steps"] = args.steps
        chapters, digest = kjv_chapters()
        print(f"KJV: {len(chapters)} chapters, sha256 of `bible` output {digest}")
        tokenizer_path = train_tokenizer(chapters, args.work)
        data = encode_corpus(chapters, tokenizer_path)
        for name, (stream, starts) in data.items():
            print(f"{name}: {len(stream):,d} tokens, {len(starts):,d} window starts")
        model, log = (train if args.engine == "torch" else train_numpy)(data, t, args.threads)
        meta = {
            "kjv_sha256": digest,
            "train_tokens": int(len(data["train"][0])),
            "val_tokens": int(len(data["val"][0])),
            "train_config": {k: v for k, v in t.items()},
            "model_config": MODEL_CONFIG,
            "torch_threads": args.threads,
            "engine": args.engine,
        }
        if args.engine == "numpy":  # our checkpoint writer; the log beside it; no golden (that is torch's job)
            from tinyllama_ref.formats.hf_writer import save_pretrained

            save_pretrained(model, out, copies={"tokenizer.model": tokenizer_path})
            (out.parent / f"{out.name}.training_log.json").write_text(json.dumps(dict(log, **meta)) + "\n")
            print(f"wrote {out}; final validation loss {log['final_val_loss']}, {log['train_seconds']} s")
            return
        save_checkpoint(model, tokenizer_path, out, log, meta)
    if args.no_golden:
        return
    if args.smoke and args.golden == DEFAULT_GOLDEN:
        args.golden = out / "bundled_golden.npz"  # a smoke run never overwrites the real golden
    write_golden(out, args.golden)
    show_samples(out)


if __name__ == "__main__":
    main()
