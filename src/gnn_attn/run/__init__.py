"""Orchestration: build, fit/select/test, evaluate, DDP launch, the entry wrapper."""
