"""Tools around the language for the people writing it: the formatter (`blodsl fmt`), the
operator cheat sheet (`blodsl operators`) and the language server (`blodsl lsp`) with what it
knows of a program being edited. None of them imports torch."""
