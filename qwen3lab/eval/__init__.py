"""``qwen3lab eval``: score a model on maths, structured extraction, multiple choice and perplexity.

Every sample runs through the engine's continuous batching (or through any OpenAI-compatible server,
``--server URL``), is written to ``samples.jsonl`` as it finishes (a rerun resumes), and the summary
(score, standard error, counts) goes to ``summary.json``. ``tasks.py`` reads task files, ``backends.py``
talks to the engine or a server, ``scoring.py`` holds the per-kind scores, ``run.py`` the loop and
``compare.py`` the paired comparison of two runs.
"""

from .run import evaluate

__all__ = ["evaluate"]
