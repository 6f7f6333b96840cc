"""bfcl-eval end to end against `qwen3lab serve`: BFCL generates through the server with its own
prompting handler (as it would against vLLM: `--backend vllm --skip-server-setup --local-model-path
DIR`, the model named by that path) and scores with its own checkers.

bfcl-eval pins packages of its own, so it lives in a separate environment:

  python3 -m venv /tmp/bfclenv && /tmp/bfclenv/bin/pip install bfcl-eval==2026.3.23 soundfile
  .venv/bin/python scripts/bench_bfcl.py --bfcl /tmp/bfclenv/bin/bfcl --per-category 20

The embedded SmolLM2-135M-Instruct is written out as a Hugging Face folder (BFCL reads its tokenizer
and config from there) and served under that folder's path; BFCL drives it with its Qwen3 prompting
handler (`Qwen/Qwen3-0.6B`), whose ChatML prompt is SmolLM2's own format. Prints BFCL's scores and
the wall time of generation and evaluation.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

CATEGORIES = ["simple_python", "multiple", "parallel", "irrelevance", "multi_turn_base"]


def _wait(url: str, proc: subprocess.Popen, timeout: float = 300) -> None:
    end = time.time() + timeout
    while time.time() < end:
        if proc.poll() is not None:
            raise RuntimeError(f"qwen3lab serve exited with {proc.returncode}")
        try:
            urllib.request.urlopen(url + "/v1/models", timeout=2)
            return
        except OSError:
            time.sleep(1)
    raise TimeoutError(f"no server at {url} after {timeout:.0f} s")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--bfcl", default="bfcl", help="the bfcl executable (default: bfcl on PATH)")
    p.add_argument("--work", default="/tmp/bfcl_run", help="BFCL project root: results and scores go here")
    p.add_argument("--categories", default=",".join(CATEGORIES), help="BFCL test categories")
    p.add_argument("--per-category", type=int, default=20, help="first N entries of each category")
    p.add_argument("--handler", default="Qwen/Qwen3-0.6B", help="BFCL model whose prompting handler is used")
    p.add_argument("--port", type=int, default=8123)
    p.add_argument("--max-tokens-limit", type=int, default=256,
                   help="the server's cap on each completion (BFCL asks up to 4096)")
    p.add_argument("--threads", type=int, default=16, help="BFCL's concurrent requests")
    p.add_argument("--fresh", action="store_true", help="regenerate every entry (default: a rerun resumes)")
    args = p.parse_args()

    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    model_dir = work / "SmolLM2-135M-Instruct"
    if not (model_dir / "config.json").exists():
        from qwen3lab.weights.default_model import smollm2_gguf_path

        subprocess.run([sys.executable, "-m", "qwen3lab.cli", "convert", "--model", str(smollm2_gguf_path()),
                        "--out", str(model_dir), "--outtype", "f32"], check=True)
    categories = args.categories.split(",")
    data = Path(subprocess.run([str(Path(args.bfcl).parent / "python"), "-c",
                                "import bfcl_eval, os; print(os.path.dirname(bfcl_eval.__file__))"],
                               capture_output=True, text=True, check=True).stdout.strip()) / "data"
    ids = {}
    for cat in categories:
        rows = [json.loads(line) for line in open(data / f"BFCL_v4_{cat}.json")]
        ids[cat] = [r["id"] for r in rows[:args.per_category]]
    (work / "test_case_ids_to_generate.json").write_text(json.dumps(ids, indent=1))

    url = f"http://127.0.0.1:{args.port}"
    server = subprocess.Popen([sys.executable, "-m", "qwen3lab.cli", "serve", "--model", str(model_dir), "--port",
                               str(args.port), "--dtype", "float32", "--max-tokens-limit", str(args.max_tokens_limit),
                               "--kv-cache-memory-gb", "1", "--log-level", "warning"])
    env = {**os.environ, "BFCL_PROJECT_ROOT": str(work), "LOCAL_SERVER_ENDPOINT": "127.0.0.1",
           "LOCAL_SERVER_PORT": str(args.port), "HF_HUB_OFFLINE": "1"}
    try:
        _wait(url, server)
        t0 = time.time()
        subprocess.run([args.bfcl, "generate", "--model", args.handler, "--run-ids", "--backend", "vllm",
                        "--skip-server-setup", "--local-model-path", str(model_dir), "--num-threads",
                        str(args.threads), *(["--allow-overwrite"] if args.fresh else [])], env=env, check=True,
                       cwd=work)
        generate_s = time.time() - t0
    finally:
        server.terminate()
        server.wait(30)
    t0 = time.time()
    subprocess.run([args.bfcl, "evaluate", "--model", args.handler, "--test-category", ",".join(categories),
                    "--partial-eval"], env=env, check=True, cwd=work)
    evaluate_s = time.time() - t0
    print(f"\nbfcl-eval against qwen3lab serve, SmolLM2-135M-Instruct f32, {args.per_category} entries per category")
    print(f"{'category':<20}{'accuracy':>10}{'correct':>9}{'total':>7}")
    scores = work / "score" / args.handler.replace("/", "_")
    for cat in categories:
        files = list(scores.rglob(f"BFCL_v4_{cat}_score.json"))
        if files:
            head = json.loads(files[0].read_text().splitlines()[0])
            print(f"{cat:<20}{head['accuracy']:10.3f}{head.get('correct_count', 0):9d}{head.get('total_count', 0):7d}")
        else:
            print(f"{cat:<20}{'(no score file)':>26}")
    print(f"generation {generate_s:.0f} s, evaluation {evaluate_s:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
