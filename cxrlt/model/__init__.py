"""Model: backbones + heads (factory), safe model files and weights, losses, optimizers."""
