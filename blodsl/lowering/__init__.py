"""Stage 3, lowering: the checked program turned into a Python module."""
