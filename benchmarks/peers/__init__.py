"""Adapters that drive prm_check and each peer library on the same model, data and loss."""
