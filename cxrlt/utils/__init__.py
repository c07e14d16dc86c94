"""What every stage shares: atomic writes, progress bars, quiet TensorFlow start-up, CLI plumbing."""
