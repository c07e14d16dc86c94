"""Stage 2, model: backbones + heads (factory), safe model files and weights, losses, optimizers."""
