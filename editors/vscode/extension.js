// The intro extension: TextMate highlighting comes from package.json; everything else comes from the
// language server, `intro lsp`, started over stdio with the command in the `intro.server.command` setting.
"use strict";

const vscode = require("vscode");
const { LanguageClient, TransportKind } = require("vscode-languageclient/node");

let client;

function activate(context) {
  const [command, ...args] = vscode.workspace.getConfiguration("intro").get("server.command", ["intro", "lsp"]);
  const server = { command, args, transport: TransportKind.stdio };
  client = new LanguageClient(
    "intro",
    "intro language server",
    { run: server, debug: server },
    { documentSelector: [{ scheme: "file", language: "intro" }, { scheme: "untitled", language: "intro" }] }
  );
  context.subscriptions.push(client);
  return client.start();
}

function deactivate() {
  return client ? client.stop() : undefined;
}

module.exports = { activate, deactivate };
