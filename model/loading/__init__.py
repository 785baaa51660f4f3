"""Checkpoint loading: the only code that opens weight files (safetensors only, never pickle)."""
