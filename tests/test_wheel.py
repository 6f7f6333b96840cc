"""The built wheel, installed in a fresh virtual environment, carries every file qwen3lab reads at run time.

An editable install reads the repository, so it cannot notice package data missing from pyproject.toml;
a kernel source or header left out of the wheel makes a regular install fall back to PyTorch's slower
ops without failing. This test builds the wheel, installs it with ``--no-deps`` into a new venv that
sees this interpreter's site-packages through a .pth file (torch and the rest without a download), and
compiles the CPU kernels there from the installed files into a private extension cache.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
KERNEL_FLAGS = ("avx512f", "avx512bw", "avx512vl", "avx512_bf16", "avx512_vnni")

# Runs in the new venv. It checks that qwen3lab is the installed copy, that its data files are there,
# and that the kernel build (qwen3lab.kernels.compiled: build once, cache, return the module or None)
# compiled and loaded the module from the installed sources.
SNIPPET = r"""
import logging, os, sys
from importlib import resources
from pathlib import Path

logging.basicConfig(level=logging.INFO, stream=sys.stderr)  # the loader says why a build failed
import qwen3lab
import qwen3lab.kernels as kernels
from qwen3lab.quant.quality import CORPUS

venv = Path(sys.prefix).resolve()
assert Path(qwen3lab.__file__).resolve().is_relative_to(venv), f"qwen3lab imported from {qwen3lab.__file__}"
assert CORPUS.is_file(), f"{CORPUS} is missing from the wheel"
assert resources.files("qwen3lab.serve").joinpath("static/chat.html").is_file(), "static/chat.html is missing"

module = kernels.compiled()
assert module is not None, "the CPU kernels did not build from the installed files (see the log above)"
cache = Path(os.environ["TORCH_EXTENSIONS_DIR"]).resolve()
assert Path(module.__file__).resolve().is_relative_to(cache), f"kernels loaded from {module.__file__}"
print("ok", Path(module.__file__).name)
"""


def cpu_flags() -> set[str]:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def run(cmd: list, **kw) -> subprocess.CompletedProcess:
    cmd = [str(c) for c in cmd]
    proc = subprocess.run(cmd, capture_output=True, text=True, **kw)
    shown = " ".join(c if "\n" not in c else "<snippet>" for c in cmd)
    assert proc.returncode == 0, f"{shown} exited {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    return proc


@pytest.mark.slow  # compiles the kernels from scratch: about a minute
def test_wheel_installs_and_builds_kernels(tmp_path):
    missing = [f for f in KERNEL_FLAGS if f not in cpu_flags()]
    if missing:
        pytest.skip(f"this CPU lacks {', '.join(missing)}: the kernels do not apply, nothing to build")
    if shutil.which(os.environ.get("CXX", "c++")) is None:
        pytest.skip("no C++ compiler: the kernels cannot be built here")

    # Build from a copy of the build's inputs, so that setuptools' build/ and egg-info stay out of the repo.
    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, src / name)
    shutil.copytree(REPO / "qwen3lab", src / "qwen3lab", ignore=shutil.ignore_patterns("__pycache__", "*.so"))
    dist = tmp_path / "dist"
    run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "--no-index",
         "--disable-pip-version-check", "-w", dist, src])
    (wheel,) = dist.glob("qwen3lab-*.whl")

    venv = tmp_path / "venv"
    # Without pip: ensurepip's older setuptools would shadow the one torch's extension builder imports.
    run([sys.executable, "-m", "venv", "--without-pip", venv])
    python = venv / "bin" / "python"
    run([sys.executable, "-m", "pip", "--python", python, "install", "-q", "--no-deps", "--no-index",
         "--disable-pip-version-check", wheel])
    # Only after the install: pip would otherwise see this environment's (editable) qwen3lab as installed.
    # A plain path line appends the folder to sys.path without running its .pth files (the editable finder).
    site = Path(run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"]).stdout.strip())
    (site / "outer_site_packages.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")

    env = dict(os.environ, TORCH_EXTENSIONS_DIR=str(tmp_path / "torch_extensions"), QWEN3LAB_CPU_KERNELS="1")
    # ninja is a dependency installed with this interpreter's scripts; the new venv's own bin comes first.
    env["PATH"] = os.pathsep.join([str(venv / "bin"), str(Path(sys.executable).parent), env.get("PATH", "")])
    # -I: neither PYTHONPATH nor the working directory can put the repository's qwen3lab on sys.path.
    proc = run([python, "-I", "-c", SNIPPET], env=env, cwd=tmp_path, timeout=1200)
    assert proc.stdout.startswith("ok"), proc.stdout + proc.stderr
