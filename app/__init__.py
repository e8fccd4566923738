"""The REST service: encode, decode and reconstruct brain-MRI slices with the VQ-VAE checkpoint."""
