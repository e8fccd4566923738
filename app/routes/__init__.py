"""One router per concern: codec (encode/decode/reconstruct), health, model metadata, metrics."""
