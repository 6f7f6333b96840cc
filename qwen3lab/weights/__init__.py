# GGUF checkpoints (llama.cpp files) and the small real model the tests use.
from .default_model import smollm2_gguf_path
from .gguf_loader import GGUFCheckpoint, load_gguf
from .gguf_tokenizer import build_tokenizer, load_gguf_tokenizer
