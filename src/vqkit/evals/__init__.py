"""Evaluations of vqkit models. By convention they write their results under results/, which git ignores."""
