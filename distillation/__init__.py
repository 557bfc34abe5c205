"""Dataset distillation: bi-level optimization, implicit differentiation."""
