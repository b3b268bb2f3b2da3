"""cmcd-edge: cross-modal contrastive distillation to small, fast edge models."""

__version__ = "0.1.0"
