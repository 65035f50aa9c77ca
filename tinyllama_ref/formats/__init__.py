"""File formats, one module each: safetensors files, checkpoint directories, GGUF, Meta's .pth files.

    paths                what a path holds: an HF or Meta directory, a GGUF file, a tokenizer file
    safetensors          one .safetensors file: read (memory-mapped) and written (atomically)
    checkpoint           a checkpoint directory (sharded or not) and the parameter tree the model uses
    hf_writer            writing a checkpoint directory
    gguf_file            llama.cpp's GGUF container: metadata and tensor views
    ggml_quants          ggml's quantized blocks (Q4_0 .. Q6_K) decoded to float32
    qk_permutation       q/k rows between interleaved (Meta, GGUF) and rotate-half (HF) RoPE
    gguf                 a GGUF file's config and tensors in Hugging Face names and layouts
    torch_pickle         PyTorch .pth files (torch.save's zip archives) read without torch, running nothing
    meta                 Meta's original checkpoints (params.json + consolidated.*.pth) in Hugging Face terms
    peft_lora            PEFT's LoRA adapter directory (adapter_config.json, adapter_model.safetensors)
    protobuf             the protobuf wire format
    sentencepiece_file   SentencePiece's tokenizer.model: its fields, BOS/EOS ids

Nothing here imports `tinyllama_ref.tokenizer`, which reads its files with these modules;
`tinyllama_ref.convert` joins a model and its tokenizer into a Hugging Face directory.
"""
