"""Models built on vector-quantized tokens, such as autoencoders and priors over token ids."""
