"""Runtime speed choices that change no numbers the user asked for: torch.compile of blocks, CPU kernels."""
