"""Stage 2, semantics: names resolved, the pipeline composed, the whole program checked."""
