"""The networks: S3-DiT transformer (attention, RoPE, config), Qwen3 prompt encoding, Flux VAE (and its tiling)."""
