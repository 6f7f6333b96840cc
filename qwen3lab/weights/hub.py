"""Resolve a model argument: a local folder, a .gguf file, or a Hugging Face repo id (downloaded)."""

from __future__ import annotations

import re
from pathlib import Path

# Only what the engine reads: no optimizer states or framework duplicates (.bin, .pt, .h5).
ALLOW_PATTERNS = ["*.json", "*.safetensors", "*.jinja", "tokenizer*", "*.txt"]


def resolve_model_path(model: str | Path) -> Path:
    path = Path(model).expanduser()
    if path.exists():
        return path
    text = str(model)
    if not re.fullmatch(r"[\w.\-]+/[\w.\-]+", text):
        raise FileNotFoundError(f"model {text!r} is neither an existing folder or .gguf file nor a Hugging Face "
                                "repo id like 'Qwen/Qwen3-4B'")
    from huggingface_hub import snapshot_download

    try:  # a cached copy first: works offline and skips a network round trip
        return Path(snapshot_download(text, allow_patterns=ALLOW_PATTERNS, local_files_only=True))
    except Exception:
        pass
    try:
        return Path(snapshot_download(text, allow_patterns=ALLOW_PATTERNS))
    except Exception as e:  # network, auth, unknown repo: one actionable message
        raise FileNotFoundError(
            f"could not download {text!r} from the Hugging Face Hub ({type(e).__name__}: {e}). Without network "
            f"access, fetch it elsewhere with `hf download {text} --local-dir DIR`, copy DIR here and pass "
            "--model DIR (a folder with config.json, *.safetensors and tokenizer.json) or a .gguf file"
        ) from e
