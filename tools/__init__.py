"""Command-line tools (absl flags); the library never reads flags."""
