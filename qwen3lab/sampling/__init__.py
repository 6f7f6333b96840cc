from .params import SamplingParams
from .sampler import SampleResult, processed_probs, sample

__all__ = ["SamplingParams", "SampleResult", "processed_probs", "sample"]
