"""Reading and writing EAGLE3 draft folders (``config.json`` + safetensors) in the published layout.

The layout is the one SpecForge and AngelSlim publish and vLLM / SGLang load: tensor names as in
``eagle3_model.py`` with no prefix, ``d2t`` int64, ``t2d`` bool, ``lm_head`` [draft_vocab, hidden],
config a one-layer ``LlamaForCausalLMEagle3`` with ``draft_vocab_size``. Shapes are checked against
the config before anything is copied, and a mismatch names the tensor and both shapes.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from ..config import read_json
from ..model.packed import pack_state, unpack_state
from ..model.plan import ModelPlan
from .eagle3_model import Eagle3Config, Eagle3Model

ARCHITECTURE = "LlamaForCausalLMEagle3"


def _tensor_files(folder: Path) -> list[Path]:
    index = folder / "model.safetensors.index.json"
    if index.exists():
        return sorted({folder / f for f in read_json(index, "safetensors index")["weight_map"].values()})
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"{folder}: no *.safetensors file; an EAGLE3 draft folder holds config.json "
                                "and its weights (fc, midlayer.*, norm, lm_head, d2t, t2d)")
    return files


def load_eagle3(path: str | Path, dtype: torch.dtype = torch.float32, device="cpu") -> Eagle3Model:
    folder = Path(path)
    if not (folder / "config.json").exists():
        raise FileNotFoundError(f"{folder}: no config.json; give the folder of an EAGLE3 draft checkpoint")
    config = Eagle3Config.from_dict(read_json(folder / "config.json", "EAGLE3 config"), str(folder / "config.json"))
    tensors: dict[str, torch.Tensor] = {}
    for f in _tensor_files(folder):
        with safe_open(str(f), framework="pt") as fh:
            for name in fh.keys():
                key = name.removeprefix("model.")  # some exports prefix the draft's names
                tensors[key] = fh.get_tensor(name)
    fc = tensors.get("fc.weight")
    if fc is not None and fc.shape[1] != config.num_aux_layers * config.base.hidden_size:
        raise ValueError(f"{folder}: fc.weight is {tuple(fc.shape)}; expected [hidden, {config.num_aux_layers} x "
                         f"hidden] = [{config.base.hidden_size}, {config.num_aux_layers * config.base.hidden_size}] "
                         "(three fused target layers; other counts need eagle_aux_hidden_state_layer_ids)")
    plan = ModelPlan.for_device(device, dtype) if dtype == torch.bfloat16 else ModelPlan()
    model = Eagle3Model(config, own_embeddings="embed_tokens.weight" in tensors, plan=plan)
    expected = unpack_state(model, model.state_dict())  # under the checkpoint's (unpacked) names
    missing = [n for n in expected if n not in tensors and n != "t2d"]
    if missing:
        raise ValueError(f"{folder}: EAGLE3 tensors missing: {', '.join(missing)}")
    unknown = sorted(set(tensors) - set(expected))
    if unknown:
        raise ValueError(f"{folder}: unexpected tensors {', '.join(unknown[:8])}: not the SpecForge/AngelSlim "
                         "EAGLE3 layout (fc, midlayer.*, norm, lm_head, d2t, t2d, optional embed_tokens)")
    for name, ref in expected.items():
        if name in tensors and tuple(tensors[name].shape) != tuple(ref.shape):
            raise ValueError(f"{folder}: tensor {name} has shape {tuple(tensors[name].shape)}, the config "
                             f"implies {tuple(ref.shape)}")
    if "t2d" not in tensors:  # derivable from d2t
        t2d = torch.zeros(config.base.vocab_size, dtype=torch.bool)
        t2d[torch.arange(config.draft_vocab_size) + tensors["d2t"].long()] = True
        tensors["t2d"] = t2d
    tensors["d2t"], tensors["t2d"] = tensors["d2t"].long(), tensors["t2d"].bool()
    model.load_state_dict(pack_state(model, tensors), strict=True)
    return model.to(device=device, dtype=dtype).eval()


def save_eagle3(model: Eagle3Model, path: str | Path, extra_config: dict | None = None) -> Path:
    """Write ``config.json`` and ``model.safetensors`` (float weights as they are, d2t int64, t2d bool)."""
    folder = Path(path)
    folder.mkdir(parents=True, exist_ok=True)
    c, base = model.config, model.config.base
    cfg = {
        "architectures": [ARCHITECTURE], "model_type": "llama", "hidden_act": "silu",
        "hidden_size": base.hidden_size, "intermediate_size": base.intermediate_size,
        "num_attention_heads": base.num_attention_heads, "num_key_value_heads": base.num_key_value_heads,
        "head_dim": base.head_dim, "num_hidden_layers": 1, "rms_norm_eps": base.rms_norm_eps,
        "max_position_embeddings": base.max_position_embeddings, "rope_theta": base.rope.theta,
        "rope_scaling": None, "tie_word_embeddings": False, "vocab_size": base.vocab_size,
        "draft_vocab_size": c.draft_vocab_size, "attention_bias": base.qkv_bias, "mlp_bias": base.mlp_bias,
        "torch_dtype": str(next(model.parameters()).dtype).removeprefix("torch."),
    }
    if c.aux_layer_ids is not None:
        cfg["eagle_config"] = {"eagle_aux_hidden_state_layer_ids": list(c.aux_layer_ids)}
    cfg.update(extra_config or {})
    (folder / "config.json").write_text(json.dumps(cfg, indent=2) + "\n")
    tensors = {k: v.detach().contiguous().cpu() for k, v in unpack_state(model, model.state_dict()).items()}
    save_file(tensors, str(folder / "model.safetensors"), metadata={"format": "pt"})
    return folder
