"""The smallest image scored anywhere, in a module of its own so that the service's settings (read by the light
``--workers`` supervisor too) need not import scikit-image to know it."""

# The service's default VQVAE_MIN_SIZE, and the floor for training and evaluation images, so that a figure from
# vqvae-eval is one the service could also have given. Under 8 pixels a side an image is less than one code of the
# default model's grid, and SSIM's window shrinks to a few pixels.
MIN_SIDE = 8
