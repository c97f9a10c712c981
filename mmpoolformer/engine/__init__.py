"""Training-loop pieces: runner hooks and optimizer wrappers."""
