"""What a program can name without declaring it, as rows of data: operators, their
parameters and rules, and the built-in functions, layers, data sources and optimisers.
Nothing here imports torch."""
