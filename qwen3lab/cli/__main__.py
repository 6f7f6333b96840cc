"""`python -m qwen3lab.cli ...`: the same as the `qwen3lab` command."""

from .main import main

raise SystemExit(main())
