// Starts `blodsl lsp` (the setting blodsl.command) for every .blo file the editor opens.
const vscode = require("vscode");
const { LanguageClient, TransportKind } = require("vscode-languageclient/node");

let client;

function activate(context) {
  const [command, ...args] = vscode.workspace.getConfiguration("blodsl").get("command", ["blodsl", "lsp"]);
  client = new LanguageClient(
    "blodsl",
    "blodsl",
    { command, args, transport: TransportKind.stdio },
    { documentSelector: [{ scheme: "file", language: "blo" }, { scheme: "untitled", language: "blo" }] },
  );
  context.subscriptions.push(client);
  return client.start();
}

function deactivate() {
  return client ? client.stop() : undefined;
}

module.exports = { activate, deactivate };
