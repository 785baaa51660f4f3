"""Command-line tools (setup, weights, tiny model, benchmarks, smoke run); importable for the tests."""
