"""`blodsl lsp`: the language server, over stdio, on pygls.

It publishes the checker's errors and warnings (their notes and fixes as related information,
a "did you mean" as a quick fix) when a program is opened and on every change, and answers
hover, completion, go-to-definition and formatting from blodsl.tooling.document and
blodsl.tooling.format. A program being typed is mostly broken: every handler turns an
exception into no answer (logged to the editor), so the server outlives anything typed.
Like `blodsl check`, it never imports torch.
"""

from __future__ import annotations

import functools
import re
import traceback
from pathlib import Path

from lsprotocol import types as lsp
from pygls.lsp.server import LanguageServer
from pygls.uris import to_fs_path

from .. import __version__
from ..syntax.diagnostics import BloError, Diagnostic
from ..syntax.source import Source, Span
from .document import Document
from .format import format_source

SEVERITY = {"error": lsp.DiagnosticSeverity.Error, "warning": lsp.DiagnosticSeverity.Warning}
KINDS = {"operator": lsp.CompletionItemKind.Operator, "parameter": lsp.CompletionItemKind.Property,
         "function": lsp.CompletionItemKind.Function, "metric": lsp.CompletionItemKind.Function,
         "initialiser": lsp.CompletionItemKind.Function, "layer": lsp.CompletionItemKind.Class,
         "optimiser": lsp.CompletionItemKind.Class, "scheduler": lsp.CompletionItemKind.Class,
         "data source": lsp.CompletionItemKind.Module, "field": lsp.CompletionItemKind.Field,
         "name": lsp.CompletionItemKind.Variable, "setting": lsp.CompletionItemKind.Property,
         "value": lsp.CompletionItemKind.Value}
DID_YOU_MEAN = re.compile(r"did you mean '([^']+)'\?")


def serve():
    _server().start_io()


def _server() -> LanguageServer:
    server = LanguageServer("blodsl", __version__)
    documents: dict[str, Document] = {}

    def safely(handler):
        """An exception in a handler is logged to the editor and answered with no result."""
        @functools.wraps(handler)
        def guarded(params):
            try:
                return handler(params)
            except Exception:
                server.window_log_message(lsp.LogMessageParams(lsp.MessageType.Error,
                                                               f"blodsl: {traceback.format_exc()}"))
                return None

        return guarded

    def document(uri: str) -> Document:
        text = server.workspace.get_text_document(uri).source
        if uri not in documents or documents[uri].text != text:
            path = to_fs_path(uri) if uri.startswith("file:") else None
            documents[uri] = Document(path or uri, text, Path(path).parent if path else None)
        return documents[uri]

    def to_range(uri: str, span: Span | None) -> lsp.Range:
        if span is None:
            return lsp.Range(lsp.Position(0, 0), lsp.Position(0, 0))
        text = server.workspace.get_text_document(uri)
        lines = text.lines
        last = max(0, len(lines) - 1)
        chars = lsp.Range(lsp.Position(min(span.line - 1, last), span.col - 1),
                          lsp.Position(min(span.end_line - 1, last), span.end_col - 1))
        return text.position_codec.range_to_client_units(lines, chars)

    def position(uri: str, at: lsp.Position) -> tuple[int, int]:
        text = server.workspace.get_text_document(uri)
        found = text.position_codec.position_from_client_units(text.lines, at)
        return found.line, found.character

    def diagnostic(uri: str, found: Diagnostic, doc: Document) -> lsp.Diagnostic:
        here = to_range(uri, found.span)
        related = [lsp.DiagnosticRelatedInformation(lsp.Location(uri, to_range(uri, span)), note)
                   for span, note in found.notes]
        if found.fix:
            related.append(lsp.DiagnosticRelatedInformation(lsp.Location(uri, here), f"fix: {found.fix}"))
        guess = DID_YOU_MEAN.match(found.fix or "")
        written = Source(doc.path, doc.text).text_of(found.span) if found.span else ""
        data = {"replace": guess.group(1)} if guess and re.fullmatch(r"\w+", written) else None
        return lsp.Diagnostic(here, found.message, severity=SEVERITY.get(found.severity), source="blodsl",
                              related_information=related or None, data=data)

    def publish(uri: str):
        doc = document(uri)
        found = [diagnostic(uri, d, doc) for d in doc.problems()]
        server.text_document_publish_diagnostics(lsp.PublishDiagnosticsParams(uri, found))

    @server.feature(lsp.TEXT_DOCUMENT_DID_OPEN)
    @safely
    def opened(params: lsp.DidOpenTextDocumentParams):
        publish(params.text_document.uri)

    @server.feature(lsp.TEXT_DOCUMENT_DID_CHANGE)
    @safely
    def changed(params: lsp.DidChangeTextDocumentParams):
        publish(params.text_document.uri)

    @server.feature(lsp.TEXT_DOCUMENT_DID_CLOSE)
    @safely
    def closed(params: lsp.DidCloseTextDocumentParams):
        documents.pop(params.text_document.uri, None)
        server.text_document_publish_diagnostics(lsp.PublishDiagnosticsParams(params.text_document.uri, []))

    @server.feature(lsp.TEXT_DOCUMENT_HOVER)
    @safely
    def hover(params: lsp.HoverParams):
        uri = params.text_document.uri
        found = document(uri).hover(*position(uri, params.position))
        if found is None:
            return None
        markdown, span = found
        return lsp.Hover(lsp.MarkupContent(lsp.MarkupKind.Markdown, markdown), to_range(uri, span))

    @server.feature(lsp.TEXT_DOCUMENT_COMPLETION, lsp.CompletionOptions(trigger_characters=[".", "(", ",", ">", " "]))
    @safely
    def complete(params: lsp.CompletionParams):
        uri = params.text_document.uri
        items = [lsp.CompletionItem(item.label, kind=KINDS.get(item.kind, lsp.CompletionItemKind.Keyword),
                                    detail=item.detail or None, insert_text=item.insert,
                                    sort_text=f"{0 if item.first else 1}{i:04d}")   # the order given
                 for i, item in enumerate(document(uri).complete(*position(uri, params.position)))]
        return lsp.CompletionList(is_incomplete=False, items=items)

    @server.feature(lsp.TEXT_DOCUMENT_DEFINITION)
    @safely
    def definition(params: lsp.DefinitionParams):
        uri = params.text_document.uri
        span = document(uri).definition(*position(uri, params.position))
        return lsp.Location(uri, to_range(uri, span)) if span else None

    @server.feature(lsp.TEXT_DOCUMENT_CODE_ACTION,
                    lsp.CodeActionOptions(code_action_kinds=[lsp.CodeActionKind.QuickFix]))
    @safely
    def code_actions(params: lsp.CodeActionParams):
        uri = params.text_document.uri
        return [lsp.CodeAction(f"Replace with '{d.data['replace']}'", kind=lsp.CodeActionKind.QuickFix,
                               diagnostics=[d], is_preferred=True,
                               edit=lsp.WorkspaceEdit(changes={uri: [lsp.TextEdit(d.range, d.data["replace"])]}))
                for d in params.context.diagnostics if isinstance(d.data, dict) and "replace" in d.data]

    @server.feature(lsp.TEXT_DOCUMENT_FORMATTING)
    @safely
    def formatting(params: lsp.DocumentFormattingParams):
        uri = params.text_document.uri
        doc = document(uri)
        try:
            formatted = format_source(Source(doc.path, doc.text))
        except BloError:
            return None   # a program that does not parse is left as it is
        if formatted == doc.text:
            return []
        end = lsp.Position(len(doc.lines), 0)
        return [lsp.TextEdit(lsp.Range(lsp.Position(0, 0), end), formatted)]

    return server
