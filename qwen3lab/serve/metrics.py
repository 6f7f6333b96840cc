"""Server metrics in the Prometheus text format (version 0.0.4), without a client library.

Owns: the counters and histograms the engine driver updates (tokens, time to first token,
inter-token latency, requests by outcome) and the rendering of them plus the engine's ``stats()``
taken at scrape time (waiting / running requests, KV-cache use, prefix-cache hit rate, drafts, LoRA).
Counters are written by the driver thread only and read by the event loop; single int/float
updates are atomic under the GIL, so no lock is needed.
"""

from __future__ import annotations

import bisect

from ..engine.stats import EngineStats

PREFIX = "qwen3lab"

TTFT_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
ITL_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


class Histogram:
    def __init__(self, buckets: tuple[float, ...]):
        self.buckets = buckets
        self.counts = [0] * (len(buckets) + 1)  # the last one is +Inf
        self.sum = 0.0
        self.count = 0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.buckets, value)] += 1
        self.sum += value
        self.count += 1

    def lines(self, name: str, labels: str) -> list[str]:
        out, total = [], 0
        for bound, n in zip((*self.buckets, float("inf")), self.counts):
            total += n
            le = "+Inf" if bound == float("inf") else repr(bound)
            out.append(f'{name}_bucket{{{labels},le="{le}"}} {total}')
        out += [f"{name}_sum{{{labels}}} {self.sum}", f"{name}_count{{{labels}}} {self.count}"]
        return out


class Metrics:
    def __init__(self, model_name: str):
        self.model_name = model_name
        self.prompt_tokens = 0
        self.generation_tokens = 0
        self.requests = {"stop": 0, "length": 0, "abort": 0, "error": 0}
        self.ttft = Histogram(TTFT_BUCKETS)
        self.itl = Histogram(ITL_BUCKETS)

    def finished(self, reason: str | None) -> None:
        key = reason if reason in self.requests else "stop"
        self.requests[key] += 1

    def render(self, stats: EngineStats) -> str:
        """The exposition text of these counters and the engine's ``stats()`` snapshot."""
        labels = f'model_name="{self.model_name}"'
        lines: list[str] = []

        def metric(name: str, kind: str, help_text: str, samples: list[str]) -> None:
            lines.extend([f"# HELP {PREFIX}:{name} {help_text}", f"# TYPE {PREFIX}:{name} {kind}", *samples])

        def one(name: str, kind: str, help_text: str, value) -> None:
            metric(name, kind, help_text, [f"{PREFIX}:{name}{{{labels}}} {value}"])

        one("num_requests_waiting", "gauge", "Sequences waiting to be scheduled.", stats.num_waiting)
        one("num_requests_running", "gauge", "Sequences in the running batch.", stats.num_running)
        one("kv_cache_usage_perc", "gauge", "Fraction of KV-cache blocks in use (1 = full).", stats.kv_cache_usage)
        one("prefix_cache_hit_rate", "gauge", "Prompt tokens served from the prefix cache / tokens looked up.",
            stats.prefix_cache_hit_rate)
        one("prefix_cache_queries_total", "counter", "Prompt tokens looked up in the prefix cache.",
            stats.prefix_cache_queried_tokens)
        one("prefix_cache_hits_total", "counter", "Prompt tokens found in the prefix cache.",
            stats.prefix_cache_hit_tokens)
        one("spec_decode_num_drafts_total", "counter", "Speculative verification steps.", stats.spec_steps)
        one("spec_decode_num_draft_tokens_total", "counter", "Draft tokens proposed.", stats.spec_drafted)
        one("spec_decode_num_accepted_tokens_total", "counter", "Draft tokens accepted.", stats.spec_accepted)
        if stats.lora_adapters:  # as vLLM's lora_requests_info: which adapters have sequences running / waiting
            metric("lora_requests_info", "gauge", "LoRA adapters with running and waiting sequences; the value "
                   "counts the running ones.",
                   [f'{PREFIX}:lora_requests_info{{{labels},'
                    f'running_lora_adapters="{",".join(stats.running_lora_adapters)}",'
                    f'waiting_lora_adapters="{",".join(stats.waiting_lora_adapters)}",'
                    f'max_lora="{len(stats.lora_adapters)}"}} {len(stats.running_lora_adapters)}'])
        one("prompt_tokens_total", "counter", "Prompt tokens of accepted requests.", self.prompt_tokens)
        one("generation_tokens_total", "counter", "Generated tokens.", self.generation_tokens)
        metric("request_success_total", "counter", "Finished requests by finish reason.",
               [f'{PREFIX}:request_success_total{{{labels},finished_reason="{k}"}} {v}'
                for k, v in self.requests.items()])
        metric("time_to_first_token_seconds", "histogram", "Time from request arrival to its first token.",
               self.ttft.lines(f"{PREFIX}:time_to_first_token_seconds", labels))
        metric("inter_token_latency_seconds", "histogram", "Time between two tokens of one sequence.",
               self.itl.lines(f"{PREFIX}:inter_token_latency_seconds", labels))
        return "\n".join(lines) + "\n"
