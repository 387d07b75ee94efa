"""One module per entry point; each reads like the table of contents of its step."""
