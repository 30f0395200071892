"""Stage 1, syntax: source text, positions, located messages, the parser and its tree."""
