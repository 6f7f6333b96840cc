"""Hybrid full / sliding-window attention chosen at run time (``attention=`` / ``--attention JSON``).

``{"sliding_window": 2048, "full_layers": [3, 7, ...], "sink_tokens": 10, "full_attention_decode": false}``
puts every layer not in ``full_layers`` on a sliding window, with SWAA's semantics (arXiv 2512.10411):
a query sees itself and the ``sliding_window - 1`` tokens before it, plus the first ``sink_tokens``
tokens (its ``keep_first``); with ``full_attention_decode`` (its ``force_fa_decode``) the window holds
for prompt tokens only and generated tokens attend their whole context. The same JSON, or a file
holding it (``qwen3lab select-layers`` writes one, under its ``"attention"`` key), is accepted
wherever a model is loaded. Without it, a checkpoint's own ``layer_types`` / ``max_window_layers``
apply, as in transformers.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from .config import ModelConfig

KEYS = ("sliding_window", "full_layers", "sink_tokens", "full_attention_decode")


def parse(spec: str | dict | None) -> dict | None:
    """A dict, a JSON string or the path of a JSON file -> the checked settings dict (or None)."""
    if spec is None or isinstance(spec, dict):
        return _check(spec, "attention") if spec is not None else None
    text, source = spec, "--attention"
    if not spec.lstrip().startswith("{"):
        path = Path(spec)
        if not path.is_file():
            raise ValueError(f"--attention {spec!r}: neither a JSON object nor a file")
        text, source = path.read_text(), str(path)
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        raise ValueError(f"{source}: not JSON ({e.msg})") from None
    if isinstance(value, dict) and "attention" in value and isinstance(value["attention"], dict):
        value = value["attention"]  # a select-layers result file
    return _check(value, source)


def _check(spec, source: str) -> dict:
    if not isinstance(spec, dict):
        raise ValueError(f"{source}: expected a JSON object with keys {', '.join(KEYS)}")
    unknown = sorted(set(spec) - set(KEYS))
    if unknown:
        raise ValueError(f"{source}: unknown key(s) {', '.join(map(repr, unknown))}; known: {', '.join(KEYS)}")
    window = spec.get("sliding_window")
    if not isinstance(window, int) or isinstance(window, bool) or window <= 0:
        raise ValueError(f"{source}: 'sliding_window' must be a positive integer, found {window!r}")
    full = spec.get("full_layers", [])
    if not isinstance(full, list) or not all(isinstance(i, int) and not isinstance(i, bool) for i in full):
        raise ValueError(f"{source}: 'full_layers' must be a list of layer indices, found {full!r}")
    sinks = spec.get("sink_tokens", 0)
    if not isinstance(sinks, int) or isinstance(sinks, bool) or sinks < 0:
        raise ValueError(f"{source}: 'sink_tokens' must be an integer >= 0, found {sinks!r}")
    fa = spec.get("full_attention_decode", False)
    if not isinstance(fa, bool):
        raise ValueError(f"{source}: 'full_attention_decode' must be true or false, found {fa!r}")
    return {"sliding_window": window, "full_layers": sorted(set(full)), "sink_tokens": sinks,
            "full_attention_decode": fa}


def apply(config: ModelConfig, spec: dict | None, max_len: int | None = None) -> ModelConfig:
    """The config with the run-time layer types; ``max_len``: the context the engine will serve."""
    if spec is None:
        return config
    n = config.num_hidden_layers
    bad = [i for i in spec["full_layers"] if not 0 <= i < n]
    if bad:
        raise ValueError(f"attention: full_layers {bad} out of range; the model has layers 0..{n - 1}")
    context = max_len or config.max_position_embeddings
    if spec["sliding_window"] > context:
        raise ValueError(f"attention: sliding_window {spec['sliding_window']} is larger than the context "
                         f"({context} tokens), so no layer would slide; use a smaller window or full attention")
    full = set(spec["full_layers"])
    types = tuple("full_attention" if i in full else "sliding_attention" for i in range(n))
    return dataclasses.replace(config, layer_types=types, sliding_window=spec["sliding_window"],
                               sink_tokens=spec["sink_tokens"], full_attention_decode=spec["full_attention_decode"])


def describe(config: ModelConfig) -> str:
    full = [i for i, t in enumerate(config.layer_types) if t == "full_attention"]
    if len(full) == len(config.layer_types):
        return "full attention on every layer"
    text = (f"sliding window {config.sliding_window} on {len(config.layer_types) - len(full)} of "
            f"{len(config.layer_types)} layers, full attention on {full}")
    if config.sink_tokens:
        text += f", {config.sink_tokens} sink tokens"
    if config.full_attention_decode:
        text += ", generated tokens attend fully"
    return text


def set_layout(llm, config: ModelConfig) -> None:
    """Switch a loaded ``LLM`` to ``config``'s layer types, window and sinks in place (what layer
    selection does between its runs). The KV pools are built anew for the new layer types (the sliding
    layers' own pool follows them), so cached prefixes go too: every later layer's keys depend on the
    earlier layers' attention."""
    if llm.engine.has_unfinished():
        raise RuntimeError("cannot change the attention layout while requests are running")
    llm.config = llm.model.config = llm.engine.runner.config = config
    for layer in llm.model.model.layers:
        layer.self_attn.set_layer_type(config)
    llm.engine.build_cache(config)
