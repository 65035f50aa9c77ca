"""tinyllama_ref: a pure-NumPy (and CuPy) reference implementation of the LLaMA family."""
__version__ = "0.1.0"
