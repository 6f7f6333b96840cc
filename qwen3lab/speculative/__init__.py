"""Lossless speculative decoding: drafters propose, the target verifies in one forward pass.

A drafter has ``propose(seqs, budgets)`` (sets each sequence's ``spec_tokens`` and, for sampled
drafts, ``spec_probs``; for a token tree also ``spec_parents``), ``on_verified(seq, num_accepted,
path)`` (roll its own state back; ``path``: the accepted tree nodes, None for a chain) and
``release(seq)``. The engine feeds the drafts with the last real token, verifies them with
``verify`` (``verify_tree``), moves an accepted tree path's keys into consecutive slots and trims
the KV cache by lowering the sequence's computed count.
"""

from .ngram import NgramDrafter
from .verify import verify, verify_tree

__all__ = ["NgramDrafter", "verify", "verify_tree", "make_drafter"]


def make_drafter(spec: dict, target, max_model_len: int, max_num_seqs: int, dtype, device):
    """Build a drafter from ``{"method": "ngram"|"draft"|"eagle3", "model": ..., "num_tokens": k}``;
    ``"topk"`` > 1 drafts token trees (k nodes; EAGLE3 and draft models also take ``"num_steps"``, the depth)."""
    method = spec.get("method")
    k = int(spec.get("num_tokens", 4))
    if k < 1:
        raise ValueError(f"speculative num_tokens must be >= 1, got {k}")
    if method == "ngram":
        return NgramDrafter(k, max_ngram=int(spec.get("max_ngram", 4)), min_ngram=int(spec.get("min_ngram", 1)),
                            topk=int(spec.get("topk", 1)))
    if method == "draft":
        from ..weights.loader import load_checkpoint
        from .draft_model import DraftModelDrafter

        if not spec.get("model"):
            raise ValueError("speculative method 'draft' needs 'model': a smaller checkpoint with the same tokenizer")
        ckpt = load_checkpoint(spec["model"], dtype, device, cpu_kernels=True)  # the target's decode path
        if ckpt.config.vocab_size < target.config.vocab_size - 1024:
            raise ValueError(f"draft model {spec['model']} has vocab {ckpt.config.vocab_size}, the target "
                             f"{target.config.vocab_size}: a draft must share the target's tokenizer")
        steps = spec.get("num_steps")
        return DraftModelDrafter(ckpt.model, k, dtype, max_model_len, max_num_seqs,
                                 float(spec.get("kv_cache_memory_gb", 1.0)), device, topk=int(spec.get("topk", 1)),
                                 num_steps=int(steps) if steps is not None else None)
    if method == "eagle3":
        from .eagle3 import Eagle3Drafter

        return Eagle3Drafter.from_spec(spec, target, max_model_len, max_num_seqs, dtype, device)
    raise ValueError(f"speculative method {method!r} is not supported; use 'ngram', 'draft' or 'eagle3'")
