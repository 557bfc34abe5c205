"""Dataset distillation by bi-level optimization with implicit differentiation."""
