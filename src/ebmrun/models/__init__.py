"""Models: ``nn.Module``s only, one file per family; each exposes ``energy(x) -> (B,)``."""
