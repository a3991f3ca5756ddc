"""MISC's captioners: the answer table, and the OpenAI-compatible client against a fake chat
server on 127.0.0.1."""

from __future__ import annotations

import base64
import http.server
import io
import json
import threading

import numpy as np
import pytest
from PIL import Image

from test_misc_parts import ANSWER
from ulbc.errors import ConfigError, InputError
from ulbc.misc.answer import parse_answer
from ulbc.misc.captioners import PROMPT, get_captioner

IMAGE = (np.arange(12 * 16 * 3) % 251).astype(np.uint8).reshape(12, 16, 3)


def test_a_csv_table_answers_by_item_name_or_stem(tmp_path):
    path = tmp_path / "answers.csv"
    with open(path, "w", newline="", encoding="utf-8") as fh:
        fh.write('item,answer\nkodim21,"' + ANSWER.replace('"', '""') + '"\n')
    captioner = get_captioner("table", path=str(path))
    expected = parse_answer(ANSWER, "x")
    assert captioner.describe(IMAGE, "kodim21") == expected
    assert captioner.describe(IMAGE, "kodak/kodim21.png") == expected
    with pytest.raises(InputError, match="kodim22: no answer in the caption table"):
        captioner.describe(IMAGE, "kodim22")


def test_a_json_table_and_its_bad_rows(tmp_path):
    good = tmp_path / "answers.json"
    good.write_text(json.dumps({"a": ANSWER}))
    assert get_captioner("table", path=str(good)).describe(IMAGE, "a").objects[0] == "Lighthouse"
    cases = {
        "bad.json": ("[1, 2]", "expected a JSON object"),
        "short.csv": ('item,answer\nb,"A, B, C.\nOne."\n', "line 2 (item b): the answer has 2 non-empty line(s)"),
        "columns.csv": ("name,text\nb,x\n", "needs the columns item and answer"),
        "twice.csv": ('item,answer\nb,"' + ANSWER + '"\nb,"' + ANSWER + '"\n', "item b appears twice"),
    }
    for name, (content, problem) in cases.items():
        path = tmp_path / name
        path.write_text(content)
        with pytest.raises(InputError) as info:
            get_captioner("table", path=str(path))
        assert problem in str(info.value) and "\n" not in str(info.value), name
    with pytest.raises(InputError, match="cannot read the caption table"):
        get_captioner("table", path=str(tmp_path / "absent.csv"))
    with pytest.raises(ConfigError, match="needs path"):
        get_captioner("table")
    with pytest.raises(ConfigError, match="unknown captioner 'gpt5'"):
        get_captioner("gpt5")


class FakeChat:
    """A chat-completions endpoint on 127.0.0.1 that records requests and replies as told."""

    def __init__(self, reply=None, status: int = 200):
        self.requests: list[dict] = []
        self.reply, self.status = reply, status
        state = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                state.requests.append({"path": self.path, "auth": self.headers.get("Authorization"), "body": body})
                payload = state.reply if isinstance(state.reply, bytes) else json.dumps(state.reply).encode()
                self.send_response(state.status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/v1"

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()


def completion(text):
    return {"id": "x", "object": "chat.completion", "choices": [{"index": 0, "message": {"role": "assistant",
                                                                                          "content": text}}]}


def test_the_openai_compatible_captioner_sends_the_image_and_parses_the_answer(monkeypatch):
    monkeypatch.setenv("ULBC_TEST_KEY", "sk-test")
    with FakeChat(completion(ANSWER)) as chat:
        captioner = get_captioner("openai-compatible", url=chat.url, model="vlm-1", api_key_env="ULBC_TEST_KEY")
        answer = captioner.describe(IMAGE, "kodim21")
    assert answer == parse_answer(ANSWER, "x")
    (request,) = chat.requests
    assert request["path"] == "/v1/chat/completions" and request["auth"] == "Bearer sk-test"
    body = request["body"]
    assert body["model"] == "vlm-1" and body["temperature"] == 0.0
    text_part, image_part = body["messages"][0]["content"]
    assert text_part == {"type": "text", "text": PROMPT}
    url = image_part["image_url"]["url"]
    assert url.startswith("data:image/png;base64,")
    sent = np.asarray(Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1]))))
    assert np.array_equal(sent, IMAGE)  # lossless: the model sees the original pixels


def test_content_parts_and_no_key(monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    parts = [{"type": "text", "text": ANSWER[:40]}, {"type": "text", "text": ANSWER[40:]}]
    with FakeChat(completion(parts)) as chat:
        answer = get_captioner("openai-compatible", url=chat.url + "/", model="m").describe(IMAGE, "a")
    assert answer.objects == ("Lighthouse", "Rocky shore", "Sailing boat") and chat.requests[0]["auth"] is None


@pytest.mark.parametrize("reply, status, problem", [
    ({"error": "overloaded"}, 503, "answered HTTP 503"),
    (b"<html>not json</html>", 200, "did not send a chat completion"),
    ({"choices": []}, 200, "did not send a chat completion"),
    (completion("I cannot help with that."), 200, "the answer has 1 non-empty line(s)"),
])
def test_endpoint_failures_are_one_line_errors_naming_the_item(reply, status, problem):
    with FakeChat(reply, status) as chat:
        captioner = get_captioner("openai-compatible", url=chat.url, model="m", timeout=10)
        with pytest.raises(InputError) as info:
            captioner.describe(IMAGE, "kodim05")
    message = str(info.value)
    assert message.startswith("kodim05") and problem in message and "\n" not in message


def test_an_unreachable_endpoint_is_one_line():
    import socket

    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    captioner = get_captioner("openai-compatible", url=f"http://127.0.0.1:{port}/v1", model="m", timeout=5)
    with pytest.raises(InputError, match=r"^kodim05: captioner .* is not reachable"):
        captioner.describe(IMAGE, "kodim05")
