"""File formats, one module each: safetensors files, checkpoint directories, GGUF, Meta's .pth files.

    safetensors          one .safetensors file: read (memory-mapped) and written (atomically)
    checkpoint           a checkpoint directory (sharded or not) and the parameter tree the model uses
    gguf_file            llama.cpp's GGUF container: metadata and tensor views
    ggml_quants          ggml's quantized blocks (Q4_0 .. Q6_K) decoded to float32
    gguf                 a GGUF file as a Hugging Face checkpoint: config, tensors, tokenizer.json
    gguf_pretokenizers   llama.cpp's pre-tokenizers, shared by `gguf` and the tokenizer
    torch_pickle         PyTorch .pth files (torch.save's zip archives) read without torch, running nothing
    meta                 Meta's original checkpoints (params.json + consolidated.*.pth) as a Hugging Face checkpoint
"""
