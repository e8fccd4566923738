"""Offline training, evaluation and figures for the VQ-VAE (never imported by the service)."""
