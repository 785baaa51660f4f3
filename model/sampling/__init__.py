"""Sampling parts beside the denoising loop (model.sampler): update rules, seeded noise streams, previews,
seed variety. `catalog` is torch-free so the doors can list the choices without importing torch."""
