"""Tokenizers that turn images, audio and other data into discrete token ids and back."""
