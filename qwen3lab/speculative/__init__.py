"""Lossless speculative decoding: drafters propose, the target verifies in one forward pass.

Every drafter follows ``Drafter`` (``drafter.py``): ``propose`` sets each sequence's ``draft``,
``observe`` sees the target's hidden layers (EAGLE3), ``on_verified`` rolls its own state back,
``release`` drops it. The engine feeds the drafts with the last real token, verifies them with
``verify`` (``verify_tree``), moves an accepted tree path's keys into consecutive slots and trims
the KV cache by lowering the sequence's computed count. Settings: ``SpeculativeConfig``.
"""

from .config import SpeculativeConfig
from .drafter import Drafter
from .ngram import NgramDrafter
from .verify import verify, verify_tree

__all__ = ["Drafter", "NgramDrafter", "SpeculativeConfig", "verify", "verify_tree", "make_drafter"]


def make_drafter(spec: SpeculativeConfig, target, engine, dtype, device) -> Drafter:
    """Build the drafter of ``spec`` for ``target`` under ``engine`` (an ``EngineConfig``: its sequences,
    context and block size size the drafter's own KV pool)."""
    max_model_len = engine.context_len(target.config.max_position_embeddings)
    if spec.method == "ngram":
        return NgramDrafter(spec.num_tokens, max_ngram=spec.max_ngram, min_ngram=spec.min_ngram, topk=spec.topk)
    if spec.method == "draft":
        from ..weights.loader import load_checkpoint
        from .draft_model import DraftModelDrafter

        ckpt = load_checkpoint(spec.model, dtype, device, cpu_kernels=True)  # the target's decode path
        if ckpt.config.vocab_size < target.config.vocab_size - 1024:
            raise ValueError(f"draft model {spec.model} has vocab {ckpt.config.vocab_size}, the target "
                             f"{target.config.vocab_size}: a draft must share the target's tokenizer")
        return DraftModelDrafter(ckpt.model, spec.num_tokens, dtype, max_model_len, engine.max_num_seqs,
                                 spec.kv_cache_memory_gb, device, block_size=engine.block_size, topk=spec.topk,
                                 num_steps=spec.num_steps)
    from .eagle3 import Eagle3Drafter  # SpeculativeConfig admits no other method

    return Eagle3Drafter.from_spec(spec, target, engine, dtype, device)
