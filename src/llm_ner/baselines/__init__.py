"""Baselines compared with the transformed LLM on the same split and scorer: a fine-tuned encoder (encoder.py)."""
