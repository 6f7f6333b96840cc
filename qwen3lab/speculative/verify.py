"""Verification of draft tokens against the target's logits (one target forward for all of them).

Greedy: a draft token is accepted while it equals the target's argmax; the first mismatch is
replaced by the target's choice. Sampling (Leviathan et al. / Chen et al.): accept draft d with
probability min(1, p(d)/q(d)); on rejection draw from normalize(max(p - q, 0)). Either way one more
token comes from the target at the first unaccepted position, so the output distribution is the
target's exactly. Target probabilities go through the same penalties and warpers as plain sampling.

Trees (``verify_tree``): walking down from the last real token, the children of the current node
are tried in order. Greedy: the child equal to the target's argmax is accepted. Sampling: tree
drafts are deterministic (the draft's top tokens), i.e. each child is a proposal with q = one-hot,
so child d is accepted with probability p(d) and on rejection p becomes normalize(p with p(d) = 0)
before the next sibling is tried (SpecInfer's multi-candidate rule, as SGLang's target-only tree
sampling does); if every child is rejected, the token is drawn from what is left of p. Each step is
a rejection-sampling step whose residual is exactly the conditional, so the output is the target's.
"""

from __future__ import annotations

import torch

from ..sampling import SamplingParams, processed_probs
from ..sampling.sampler import apply_penalties


def verify(logits: torch.Tensor, drafts: list[int], draft_probs: torch.Tensor | None, params: SamplingParams,
           prompt_ids: list[int], output_ids: list[int], generator: torch.Generator,
           banned: list[int] | None = None, min_tokens: int = 0) -> tuple[list[int], int]:
    """logits: [k + 1, vocab] raw target logits at the last real token and each draft.

    Returns (tokens to append: accepted drafts then one target token, number of drafts accepted).
    """
    history = list(output_ids)
    out: list[int] = []
    for i in range(len(drafts) + 1):
        row = apply_penalties(logits[i: i + 1].clone(), [params], [prompt_ids], [history])
        if banned and len(history) < min_tokens:
            row[0, banned] = float("-inf")
        draft = drafts[i] if i < len(drafts) else None
        if params.temperature == 0:
            target = int(row[0].argmax())
            if draft is not None and draft == target:
                out.append(draft)
                history.append(draft)
                continue
            out.append(target)
            return out, i
        p = processed_probs(row, [params])[0]
        if draft is not None:
            q_row = draft_probs[i] if draft_probs is not None else None
            if q_row is not None and q_row.shape[0] != p.shape[0]:  # draft vocab padded differently
                q_row = torch.nn.functional.pad(q_row[: p.shape[0]], (0, max(0, p.shape[0] - q_row.shape[0])))
            q = float(q_row[draft]) if q_row is not None else 1.0
            u = torch.rand((), generator=generator).item()
            if q > 0 and u < min(1.0, float(p[draft]) / q):
                out.append(draft)
                history.append(draft)
                continue
            if q_row is None:
                q_row = torch.zeros_like(p)
                q_row[draft] = 1.0
            residual = (p - q_row.to(p.dtype)).clamp(min=0)
            # Rounding can leave nothing when p == q; p itself is then the right distribution.
            p = residual / residual.sum() if residual.sum() > 0 else p
        out.append(int(torch.multinomial(p, 1, generator=generator).item()))
        return out, i
    raise AssertionError("unreachable: the loop always returns")


def verify_tree(logits: torch.Tensor, drafts: list[int], parents: list[int], params: SamplingParams,
                prompt_ids: list[int], output_ids: list[int], generator: torch.Generator,
                banned: list[int] | None = None, min_tokens: int = 0) -> tuple[list[int], list[int]]:
    """logits: [1 + len(drafts), vocab] at the last real token (row 0) and at each node (row 1 + j).

    Returns (tokens to append: the accepted path then one target token, the accepted node indices).
    """
    children: dict[int, list[int]] = {}
    for j, p in enumerate(parents):
        children.setdefault(p, []).append(j)
    history = list(output_ids)
    out: list[int] = []
    path: list[int] = []
    node = -1
    while True:
        row = apply_penalties(logits[node + 1: node + 2].clone(), [params], [prompt_ids], [history])
        if banned and len(history) < min_tokens:
            row[0, banned] = float("-inf")
        kids = children.get(node, [])
        if params.temperature == 0:
            token = int(row[0].argmax())
            match = next((c for c in kids if drafts[c] == token), None)
        else:
            p = processed_probs(row, [params])[0].clone()
            match = None
            for c in kids:
                d = drafts[c]
                if torch.rand((), generator=generator).item() < float(p[d]):
                    match = c
                    break
                p[d] = 0  # the residual of a one-hot proposal
                total = p.sum()
                if total <= 0:  # only when p(d) was 1 up to rounding; then d is the answer
                    match = c
                    break
                p /= total
            token = drafts[match] if match is not None else int(torch.multinomial(p, 1, generator=generator).item())
        out.append(token)
        if match is None:
            return out, path
        history.append(token)
        path.append(match)
        node = match
