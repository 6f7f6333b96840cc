"""One generated token into a sequence's output: stop conditions, incremental text, stop strings.

Owns: the order of the checks (stop token, eos, length), detokenizing, and holding text back while
it could still become a stop string. Leaves out: choosing the token (sampling, verification) and
freeing the sequence's blocks once it finished (the engine).
"""

from __future__ import annotations

from .outputs import StreamDelta
from .sequence import Sequence


def append_token(seq: Sequence, token: int, logprob: dict[int, float] | None, eos_token_ids: set[int]) -> StreamDelta:
    seq.output_token_ids.append(token)
    if seq.constraint is not None:
        seq.constraint.advance(token)
    if logprob is not None:
        seq.logprobs.append(logprob)
    p = seq.params
    if token in p.stop_token_ids:
        seq.finish("stop", token)
    elif token in eos_token_ids and not p.ignore_eos:
        seq.finish("stop")
    piece = "" if seq.is_finished else seq.detok.step(token)
    if not seq.is_finished and len(seq.output_token_ids) >= seq.max_tokens:
        seq.finish("length")
    if seq.is_finished:
        piece += seq.detok.flush()
    text = emit_text(seq, piece)
    seq.text += text
    return StreamDelta(seq.request_id, seq.index, text, [token], seq.is_finished, seq.finish_reason,
                       seq.stop_reason, [logprob] if logprob is not None else None)


def emit_text(seq: Sequence, piece: str) -> str:
    """Return the text that can be emitted now; hold back a tail that might start a stop string."""
    stops = seq.params.stop
    if not stops:
        return piece
    buf = seq.pending_text + piece
    hits = [(buf.find(s), s) for s in stops if s in buf]
    if hits:
        idx, stop = min(hits)
        seq.pending_text = ""
        if not seq.is_finished or seq.finish_reason == "length":
            seq.finish("stop", stop)
        return buf[: idx + (len(stop) if seq.params.include_stop_str_in_output else 0)]
    if seq.is_finished:
        seq.pending_text = ""
        return buf
    keep = max(len(s) for s in stops) - 1
    cut = max(len(buf) - keep, 0)
    seq.pending_text = buf[cut:]
    return buf[:cut]
