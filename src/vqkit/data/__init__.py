"""Datasets and data loading for training and evaluating vqkit models."""
