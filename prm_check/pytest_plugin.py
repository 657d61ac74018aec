"""pytest plugin entry point (grows in the plugin issue). Imports nothing heavy."""
