"""The Gradio page: layout (page), event handlers, UI strings, LoRA slots, size presets, exported API code."""
