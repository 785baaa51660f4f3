"""Web app: settings, the one generation queue, Gradio UI, REST/OpenAI routes and `python -m app`."""

__version__ = "0.1.0"
