"""Models: local Hugging Face folders and the built-in default experiment model."""
