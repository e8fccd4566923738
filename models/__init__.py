"""The VQ-VAE network and its checkpoint format (imported by training and app; imports neither)."""
