"""LoRA: file formats to canonical low-rank deltas (formats), applying and removing them exactly (manager)."""
