"""Device memory: placement data and policy, the manager that executes it, VRAM estimates, block streaming, fp8 storage."""
