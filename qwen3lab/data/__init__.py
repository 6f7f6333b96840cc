"""Synthetic task generators for fine-tuning demos and reports (seeded, no downloads)."""
