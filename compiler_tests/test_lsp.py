"""`blodsl lsp`, driven over its real protocol: JSON-RPC with Content-Length framing on the
stdio of `python -m blodsl lsp`, on good, bad and half-typed programs."""

import json
import os
import queue
import subprocess
import sys
import threading

import pytest

from conftest import BAD, PROGRAMS, ROOT, run_cli

pytest.importorskip("pygls")

HYPER_CLEANING = ROOT / "programs" / "hyper_cleaning.blo"


class Client:
    """Speaks to a server process: requests wait for their answer, notifications are kept."""

    def __init__(self, *python_flags: str):
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        self.process = subprocess.Popen([sys.executable, *python_flags, "-m", "blodsl", "lsp"], cwd=ROOT, env=env,
                                        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        self.messages: queue.Queue = queue.Queue()
        self.notifications: list[dict] = []
        self.next_id = 0
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        stream = self.process.stdout
        while True:
            headers = {}
            while (line := stream.readline().decode()) not in ("\r\n", ""):
                name, _, value = line.partition(":")
                headers[name.strip().lower()] = value.strip()
            if not headers:
                return
            self.messages.put(json.loads(stream.read(int(headers["content-length"]))))

    def send(self, message: dict):
        body = json.dumps({"jsonrpc": "2.0", **message}).encode()
        self.process.stdin.write(b"Content-Length: %d\r\n\r\n" % len(body) + body)
        self.process.stdin.flush()

    def notify(self, method: str, params: dict | None = None):
        self.send({"method": method, "params": params or {}})

    def request(self, method: str, params: dict | None = None):
        self.next_id += 1
        self.send({"id": self.next_id, "method": method, "params": params or {}})
        while True:
            message = self.messages.get(timeout=20)
            if message.get("id") == self.next_id and "method" not in message:
                assert "error" not in message, message["error"]
                return message.get("result")
            self.notifications.append(message)

    def diagnostics(self, uri: str) -> list[dict]:
        """The diagnostics published last for `uri`, waiting for them when none came yet."""
        while True:
            found = [n for n in self.notifications if n.get("method") == "textDocument/publishDiagnostics"
                     and n["params"]["uri"] == uri]
            if found:
                self.notifications = [n for n in self.notifications if n not in found]
                return found[-1]["params"]["diagnostics"]
            self.notifications.append(self.messages.get(timeout=20))

    def open(self, uri: str, text: str) -> list[dict]:
        self.notify("textDocument/didOpen", {"textDocument": {"uri": uri, "languageId": "blo", "version": 1,
                                                              "text": text}})
        return self.diagnostics(uri)

    def change(self, uri: str, text: str, version: int) -> list[dict]:
        self.notify("textDocument/didChange", {"textDocument": {"uri": uri, "version": version},
                                               "contentChanges": [{"text": text}]})
        return self.diagnostics(uri)

    def at(self, method: str, uri: str, line: int, character: int):
        return self.request(method, {"textDocument": {"uri": uri}, "position": {"line": line, "character": character}})

    def close(self) -> tuple[int, str]:
        self.request("shutdown")
        self.notify("exit")
        status = self.process.wait(timeout=20)
        return status, self.process.stderr.read().decode()


def start() -> Client:
    client = Client("-X", "importtime")   # on stderr, every module imported, whenever it is
    capabilities = client.request("initialize", {"processId": None, "rootUri": None, "capabilities": {}})
    client.notify("initialized")
    client.capabilities = capabilities["capabilities"]
    return client


@pytest.fixture(scope="module")
def server():
    """One server for the module; the last test shuts it down and reads what it imported."""
    client = start()
    yield client
    if client.process.poll() is None:
        client.process.kill()


def where(text: str, line_text: str, word: str, offset: int = 0) -> tuple[int, int]:
    """(line, character) of `word` in the first line of code that contains `line_text`."""
    lines = text.split("\n")
    line = next(i for i, t in enumerate(lines) if line_text in t and not t.lstrip().startswith("#"))
    return line, lines[line].index(word, lines[line].index(line_text)) + offset


def labels(completion: dict) -> list[str]:
    return [item["label"] for item in sorted(completion["items"], key=lambda i: i["sortText"])]


def test_capabilities(server):
    caps = server.capabilities
    assert caps["hoverProvider"] and caps["definitionProvider"] and caps["documentFormattingProvider"]
    assert "." in caps["completionProvider"]["triggerCharacters"]
    assert caps["codeActionProvider"]["codeActionKinds"] == ["quickfix"]


def test_a_good_program(server):
    uri, text = HYPER_CLEANING.as_uri(), HYPER_CLEANING.read_text()
    assert server.open(uri, text) == []

    hover = server.at("textDocument/hover", uri, *where(text, "hypergradient = RAD", "RAD", 1))
    assert hover["contents"]["kind"] == "markdown"
    assert hover["contents"]["value"].startswith("**RAD** (hypergradient): exact reverse mode through all inner steps")
    assert "- `checkpoint`: an integer >= 0, default 0" in hover["contents"]["value"]
    assert "paper: Franceschi, Donini, Frasconi, Pontil, ICML 2017" in hover["contents"]["value"]
    line, col = where(text, "hypergradient = RAD", "RAD")
    assert hover["range"] == {"start": {"line": line, "character": col}, "end": {"line": line, "character": col + 3}}

    declared = server.at("textDocument/hover", uri, *where(text, "objective = cross_entropy(net(val.x)", "net"))
    assert declared["contents"]["value"] == ("```blo\nmodel net = Linear(train.features, train.classes)\n```\n"
                                             f"model of the lower level, declared on line {where(text, 'model net', 'net')[0] + 1}")
    builtin = server.at("textDocument/hover", uri, *where(text, "train, val, test = digits", "digits"))
    assert builtin["contents"]["value"].startswith("**digits** (data source)")
    assert "fields x, y, y_clean, noisy; sizes n, features, classes" in builtin["contents"]["value"]
    field = server.at("textDocument/hover", uri, *where(text, "f1(sigmoid(w) < 0.5, train.noisy)", "noisy"))
    assert field["contents"]["value"] == "`train.noisy`: a tensor of dataset train (digits)"
    assert server.at("textDocument/hover", uri, 0, 3) is None   # in a comment

    line, col = where(text, "mean(sigmoid(w)", "w)")
    target = server.at("textDocument/definition", uri, line, col)
    assert target == {"uri": uri, "range": {"start": {"line": where(text, "var w", "w")[0], "character": 8},
                                            "end": {"line": where(text, "var w", "w")[0], "character": 9}}}
    assert server.at("textDocument/definition", uri, *where(text, "hypergradient = RAD", "RAD")) is None

    fields = server.at("textDocument/completion", uri, *where(text, "accuracy(net(test.x)", "x"))
    assert labels(fields) == ["x", "y", "y_clean", "noisy", "n", "features", "classes"]
    assert server.request("textDocument/formatting", {"textDocument": {"uri": uri},
                                                      "options": {"tabSize": 4, "insertSpaces": True}}) == []


def test_a_bad_program_with_a_quick_fix(server):
    path = BAD / "operator_lowercase.blo"
    uri, text = path.as_uri(), path.read_text()
    first, found = server.open(uri, text)
    line, col = where(text, "hypergradient =", "-> rad", 3)
    assert first["message"] == "unknown operator 'ptt'"
    assert found["message"] == "unknown operator 'rad'" and found["severity"] == 1 and found["source"] == "blodsl"
    assert found["range"] == {"start": {"line": line, "character": col}, "end": {"line": line, "character": col + 3}}
    assert found["relatedInformation"][-1]["message"] == "fix: did you mean 'RAD'? Operator names are upper case."
    actions = server.request("textDocument/codeAction", {"textDocument": {"uri": uri}, "range": found["range"],
                                                         "context": {"diagnostics": [found]}})
    assert [a["title"] for a in actions] == ["Replace with 'RAD'"]
    assert actions[0]["edit"]["changes"][uri] == [{"range": found["range"], "newText": "RAD"}]


def test_notes_and_warnings(server):
    path = BAD / "pipeline_duplicate.blo"
    uri = path.as_uri()
    (found,) = server.open(uri, path.read_text())
    assert found["message"] == "PTT appears twice in the pipeline"
    assert [r["message"] for r in found["relatedInformation"]] == ["first written here", "fix: keep one"]
    text = PROGRAMS[0].read_text().replace("outer_steps = 300", "outer_steps = 300\n    seed = 0") + "\n"
    warned = server.open("untitled:warned.blo", text.replace("model linear", "model linear").replace(
        "optimizer = SGD(lr=0.1)", "optimizer = SGD(lr=0.1, momentum=0.9)"))
    assert [(d["severity"], d["message"]) for d in warned] == [
        (2, "momentum has no effect with one inner step: the optimiser's state starts at zero every outer step, "
            "so its first step does not depend on it")]


def test_half_typed_programs(server):
    uri = "untitled:typing.blo"
    text = HYPER_CLEANING.read_text()
    cut = text.replace("hypergradient = RAD", "hypergradient = PTT -> RA")
    found = server.open(uri, cut)
    assert [d["message"] for d in found] == ["unknown operator 'RA'"]
    line, col = where(cut, "hypergradient", "RA", 2)
    operators = labels(server.at("textDocument/completion", uri, line, col))
    assert operators[:9] == ["FOA", "RGT", "IAD", "RAD", "FD", "IGA", "CG", "NS", "NYSTROM"]   # what may follow PTT
    assert set(operators[9:]) == {"GDA", "DI", "NGD", "DM", "PTT", "VSO", "VFO", "MESO", "PGDO", "ALTO", "GAFFO",
                                  "SOBA", "StocBiO", "AmIGO", "F2SA"}

    opened = text.replace("hypergradient = RAD", "hypergradient = CG(k=3, ")
    found = server.change(uri, opened, 2)
    assert found and found[0]["severity"] == 1
    line = where(opened, "hypergradient", "CG")[0]
    params = server.at("textDocument/completion", uri, line, len(opened.split("\n")[line]))
    assert labels(params) == ["tol"] and params["items"][0]["insertText"] == "tol="

    midway = text.replace("    start = warm", "    start = warm\n    objective2 = mean(train.")
    assert server.change(uri, midway, 3)[0]["message"] == "'(' opened here is not closed"
    line, col = where(midway, "objective2", "train.", 6)
    assert labels(server.at("textDocument/completion", uri, line, col))[:2] == ["x", "y"]
    hover = server.at("textDocument/hover", uri, *where(midway, "model net", "Linear"))
    assert hover["contents"]["value"].startswith("**Linear** (layer)")
    target = server.at("textDocument/definition", uri, *where(midway, "objective = cross_entropy(net(val.x)", "net"))
    assert target["range"]["start"]["line"] == where(midway, "model net", "net")[0]

    starts = labels(server.at("textDocument/completion", uri, where(midway, "steps = 20", "steps")[0], 4))
    assert {"objective", "optimizer", "steps", "start", "var", "model"} <= set(starts)
    values = server.at("textDocument/completion", uri, *where(midway, "start = warm", "warm"))
    assert labels(values)[:3] == ["warm", "reinit", "from"]


def test_nothing_typed_crashes_the_server(server):
    uri = "untitled:junk.blo"
    for version, junk in enumerate(["", "\x00\x01", "data {{{{ ((( [[[", "hypergradient = ->->(", "😋" * 5,
                                    "run {\n metric m = f(x,\n", "import 'x' as", "a.b.c.d ="], start=1):
        (server.open if version == 1 else lambda u, t: server.change(u, t, version))(uri, junk)
        for line in range(3):
            for col in (0, 3, 50):
                server.at("textDocument/hover", uri, line, col)
                server.at("textDocument/completion", uri, line, col)
                server.at("textDocument/definition", uri, line, col)
    assert server.process.poll() is None
    assert server.at("textDocument/hover", HYPER_CLEANING.as_uri(), 32, 17)["contents"]["value"].startswith("**RAD**")


def test_positions_count_utf16_units(server):
    uri = "untitled:emoji.blo"
    text = 'import "😋.m:f" as loss\n' + HYPER_CLEANING.read_text()
    server.open(uri, text)
    hover = server.at("textDocument/hover", uri, 0, len('import "😋.m:f" as l') + 1)   # the emoji is 2 UTF-16 units
    assert hover["contents"]["value"].startswith('```blo\nimport "😋.m:f" as loss\n```\nimport')
    assert hover["range"]["start"] == {"line": 0, "character": len('import "😋.m:f" as ') + 1}


def test_shutdown_and_no_torch(server):
    """Last: ends the server every test above used."""
    status, stderr = server.close()
    assert status == 0
    imported = [line.rsplit("|", 1)[-1].strip() for line in stderr.splitlines() if line.startswith("import time:")]
    assert "blodsl.tooling.lsp" in imported and "pygls" in imported and "blodsl.frontend" in imported
    assert not [name for name in imported if name.split(".")[0] == "torch"]
    assert "Traceback" not in stderr


def test_without_pygls_the_command_says_how_to_install_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "lsprotocol", None)   # as if they were not installed
    monkeypatch.setitem(sys.modules, "pygls", None)
    monkeypatch.delitem(sys.modules, "blodsl.tooling.lsp", raising=False)
    assert run_cli("lsp") == (2, "", 'blodsl: error: the language server needs pygls: pip install "blodsl[lsp]"\n')
