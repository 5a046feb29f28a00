"""Evaluation: the one metrics module (`evaluation.metrics`) and the benchmark protocols
(`evaluation.protocols`) that the trainer, `mtpano inspect --gt`, `compare` and `evaluate` share.
docs/evaluation.md defines every figure."""
