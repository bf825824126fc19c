"""Policy engine, pure side: the policy file model, its compiler to map entries, and the classifiers
that define what the data plane must do (see docs/policy-engine.md)."""
