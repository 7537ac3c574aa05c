"""Weight resolution and download, against a real HTTP server on 127.0.0.1."""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from rtpose.errors import ModelNotFoundError, WeightsError
from rtpose.models import weights as weights_module
from rtpose.models.spec import ModelSpec, WeightSource
from rtpose.models.weights import download_file, resolve_weights, sha256_file, sha256_matches

PAYLOAD = bytes(range(256)) * 1000  # 256 kB, several read chunks
PAYLOAD_SHA = hashlib.sha256(PAYLOAD).hexdigest()


@dataclass
class Route:
    body: bytes = PAYLOAD
    #: "ok", "truncate" (Content-Length larger than the body, then close), "404", "slow"
    mode: str = "ok"


@dataclass
class Server:
    base_url: str
    routes: dict[str, Route] = field(default_factory=dict)
    hits: list[str] = field(default_factory=list)

    def url(self, name: str) -> str:
        return f"{self.base_url}/{name}"


@pytest.fixture
def server() -> Iterator[Server]:
    state = Server(base_url="")

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            name = self.path.lstrip("/")
            state.hits.append(name)
            route = state.routes.get(name)
            if route is None or route.mode == "404":
                self.send_error(404, "Not Found")
                return
            if route.mode == "slow":
                time.sleep(1.0)
            self.send_response(200)
            declared = len(route.body) + (4096 if route.mode == "truncate" else 0)
            self.send_header("Content-Length", str(declared))
            self.end_headers()
            try:
                self.wfile.write(route.body)
                self.wfile.flush()
            except (BrokenPipeError, ConnectionResetError):  # the client gave up: expected in some tests
                pass
            self.close_connection = True

        def log_message(self, format: str, *args: object) -> None:  # keep test output quiet
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.daemon_threads = True
    state.base_url = f"http://127.0.0.1:{httpd.server_address[1]}"
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
    thread.start()
    yield state
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture(autouse=True)
def no_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("RTPOSE_CACHE", raising=False)
    monkeypatch.delenv("RTPOSE_OFFLINE_DIR", raising=False)


def make_spec(
    url: str | None, sha: str | None = PAYLOAD_SHA[:8], offline_names: tuple[str, ...] = ()
) -> ModelSpec:
    source = WeightSource(
        filename="tiny-weights.pth", format="pth", url=url, sha256=sha, offline_names=offline_names
    )
    return ModelSpec(
        name="tiny-test", task="detector", family="tiny", arch="tiny", input_size=(32, 32),
        mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0), channel_order="BGR", build=lambda: None, weights=(source,),
    )  # fmt: skip


def files_in(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


# --- download_file --------------------------------------------------------------------------------


def test_good_download(server: Server, tmp_path: Path) -> None:
    server.routes["w.pth"] = Route()
    dest = download_file(server.url("w.pth"), tmp_path / "cache" / "w.pth", PAYLOAD_SHA[:8], progress=False)
    assert dest.read_bytes() == PAYLOAD
    assert files_in(tmp_path / "cache") == ["w.pth"]


def test_full_digest_is_accepted(server: Server, tmp_path: Path) -> None:
    server.routes["w.pth"] = Route()
    download_file(server.url("w.pth"), tmp_path / "w.pth", PAYLOAD_SHA.upper(), progress=False)
    assert sha256_file(tmp_path / "w.pth") == PAYLOAD_SHA


def test_truncated_download_leaves_nothing(server: Server, tmp_path: Path) -> None:
    server.routes["w.pth"] = Route(mode="truncate")
    with pytest.raises(WeightsError, match=f"truncated: got {len(PAYLOAD)} of {len(PAYLOAD) + 4096} bytes"):
        download_file(server.url("w.pth"), tmp_path / "w.pth", PAYLOAD_SHA[:8], progress=False)
    assert files_in(tmp_path) == []


def test_corrupted_download_names_both_digests_and_leaves_nothing(server: Server, tmp_path: Path) -> None:
    corrupt = bytearray(PAYLOAD)
    corrupt[1000] ^= 0xFF
    server.routes["w.pth"] = Route(body=bytes(corrupt))
    with pytest.raises(WeightsError) as info:
        download_file(server.url("w.pth"), tmp_path / "w.pth", PAYLOAD_SHA[:8], progress=False)
    assert PAYLOAD_SHA[:8] in str(info.value) and hashlib.sha256(corrupt).hexdigest() in str(info.value)
    assert files_in(tmp_path) == []


def test_http_404_is_model_not_found(server: Server, tmp_path: Path) -> None:
    with pytest.raises(ModelNotFoundError, match="HTTP 404"):
        download_file(server.url("missing.pth"), tmp_path / "w.pth", PAYLOAD_SHA[:8], progress=False)
    assert files_in(tmp_path) == []


def test_timeout_and_refused_connection_are_model_not_found(server: Server, tmp_path: Path) -> None:
    server.routes["slow.pth"] = Route(mode="slow")
    with pytest.raises(ModelNotFoundError, match="timed out"):
        download_file(server.url("slow.pth"), tmp_path / "w.pth", None, progress=False, timeout=0.2)
    with pytest.raises(ModelNotFoundError, match=r"download of http://127\.0\.0\.1:9/"):
        download_file("http://127.0.0.1:9/w.pth", tmp_path / "w.pth", None, progress=False, timeout=2)
    assert files_in(tmp_path) == []


def test_keyboard_interrupt_mid_download_leaves_nothing(
    server: Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    server.routes["w.pth"] = Route()

    class InterruptingBar:
        def __init__(self, *args: object, **kwargs: object) -> None:
            self.updates = 0

        def __enter__(self) -> InterruptingBar:
            return self

        def __exit__(self, *exc: object) -> None:
            return None

        def update(self, n: int) -> None:
            self.updates += 1
            if self.updates == 2:
                raise KeyboardInterrupt

    monkeypatch.setattr(weights_module, "tqdm", InterruptingBar)
    with pytest.raises(KeyboardInterrupt):
        download_file(server.url("w.pth"), tmp_path / "w.pth", PAYLOAD_SHA[:8], progress=False)
    assert files_in(tmp_path) == []


def test_sha_prefix_rules() -> None:
    assert sha256_matches(PAYLOAD_SHA, PAYLOAD_SHA[:8])
    assert not sha256_matches(PAYLOAD_SHA, "00000000")
    for bad in ("abc", "not-hex-at-all"):
        with pytest.raises(WeightsError, match="invalid expected sha256"):
            sha256_matches(PAYLOAD_SHA, bad)


# --- resolve_weights ------------------------------------------------------------------------------


def test_explicit_file_wins_and_its_format_comes_from_the_suffix(tmp_path: Path) -> None:
    onnx_file = tmp_path / "model.onnx"
    onnx_file.write_bytes(b"x")
    resolved = resolve_weights(make_spec(None), onnx_file, cache_dir=tmp_path / "cache")
    assert (resolved.path, resolved.format, resolved.origin, resolved.source) == (
        onnx_file,
        "onnx",
        "explicit",
        None,
    )
    with pytest.raises(ModelNotFoundError, match="does not exist"):
        resolve_weights(make_spec(None), tmp_path / "missing.pth")
    odd = tmp_path / "weights.bin"
    odd.write_bytes(b"x")
    with pytest.raises(WeightsError, match=r"unknown weight file type '\.bin'"):
        resolve_weights(make_spec(None), odd)


def test_download_then_cache(server: Server, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    server.routes["tiny-weights.pth"] = Route()
    spec = make_spec(server.url("tiny-weights.pth"))
    with caplog.at_level(logging.INFO, logger="rtpose"):
        first = resolve_weights(spec, cache_dir=tmp_path, progress=False)
        second = resolve_weights(spec, cache_dir=tmp_path, progress=False)
    assert first.origin == "download" and second.origin == "cache"
    assert first.path == second.path == tmp_path / "weights" / "tiny-weights.pth"
    assert first.path.read_bytes() == PAYLOAD and server.hits == ["tiny-weights.pth"]
    assert files_in(tmp_path / "weights") == ["tiny-weights.pth"]
    messages = [r.getMessage() for r in caplog.records]
    assert f"tiny-test: weights from cache {first.path} (PyTorch checkpoint)" in messages


def test_cache_dir_from_environment(server: Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    server.routes["tiny-weights.pth"] = Route()
    monkeypatch.setenv("RTPOSE_CACHE", str(tmp_path / "env-cache"))
    resolved = resolve_weights(make_spec(server.url("tiny-weights.pth")), progress=False)
    assert resolved.path == tmp_path / "env-cache" / "weights" / "tiny-weights.pth"


def test_corrupted_cache_file_is_replaced(
    server: Server, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    server.routes["tiny-weights.pth"] = Route()
    cached = tmp_path / "weights" / "tiny-weights.pth"
    cached.parent.mkdir(parents=True)
    cached.write_bytes(PAYLOAD[:-10] + b"corrupted!")
    with caplog.at_level(logging.INFO, logger="rtpose"):
        resolved = resolve_weights(
            make_spec(server.url("tiny-weights.pth")), cache_dir=tmp_path, progress=False
        )
    assert resolved.origin == "download" and cached.read_bytes() == PAYLOAD
    assert any(r.levelno == logging.WARNING and "sha256" in r.getMessage() for r in caplog.records)
    assert files_in(tmp_path / "weights") == ["tiny-weights.pth"]


def test_corrupt_cache_and_failed_download_leave_no_file(server: Server, tmp_path: Path) -> None:
    server.routes["tiny-weights.pth"] = Route(mode="truncate")
    cached = tmp_path / "weights" / "tiny-weights.pth"
    cached.parent.mkdir(parents=True)
    cached.write_bytes(b"garbage")
    with pytest.raises(ModelNotFoundError, match="corrupt, deleted"):
        resolve_weights(make_spec(server.url("tiny-weights.pth")), cache_dir=tmp_path, progress=False)
    assert files_in(tmp_path / "weights") == []


def test_offline_dir_before_download(
    server: Server, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    offline = tmp_path / "offline"
    (offline / "det").mkdir(parents=True)
    (offline / "det" / "end2end.onnx").write_bytes(b"onnx bytes")
    spec = make_spec(server.url("tiny-weights.pth"), offline_names=("det/end2end.onnx",))
    with caplog.at_level(logging.INFO, logger="rtpose"):
        resolved = resolve_weights(spec, cache_dir=tmp_path / "cache", offline_dir=offline)
    assert resolved.origin == "offline" and resolved.format == "onnx-mmdeploy"
    assert server.hits == []
    expected = f"tiny-test: weights from offline dir {offline / 'det' / 'end2end.onnx'} (mmdeploy ONNX)"
    assert expected in [r.getMessage() for r in caplog.records]


def test_offline_dir_by_official_filename_is_checked(server: Server, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("RTPOSE_OFFLINE_DIR", str(tmp_path / "offline"))
    (tmp_path / "offline").mkdir()
    (tmp_path / "offline" / "tiny-weights.pth").write_bytes(PAYLOAD)
    resolved = resolve_weights(make_spec(None), cache_dir=tmp_path / "cache")
    assert resolved.origin == "offline" and resolved.format == "pth"
    (tmp_path / "offline" / "tiny-weights.pth").write_bytes(b"not the official bytes")
    with pytest.raises(ModelNotFoundError, match="wrong sha256"):
        resolve_weights(make_spec(None), cache_dir=tmp_path / "cache")


def test_nothing_found_lists_everything_tried(server: Server, tmp_path: Path) -> None:
    url = server.url("tiny-weights.pth")  # not served: 404
    with pytest.raises(ModelNotFoundError) as info:
        resolve_weights(
            make_spec(url, offline_names=("det/end2end.onnx",)), cache_dir=tmp_path, progress=False
        )
    message = str(info.value)
    cache_path = str(tmp_path / "weights" / "tiny-weights.pth")
    hints = ("--weights FILE", "RTPOSE_OFFLINE_DIR to a folder", "det/end2end.onnx")
    for expected in (cache_path, "RTPOSE_OFFLINE_DIR not set", url, "HTTP 404", *hints):
        assert expected in message, message
    assert files_in(tmp_path / "weights") == []


def test_downloads_can_be_disabled(server: Server, tmp_path: Path) -> None:
    server.routes["tiny-weights.pth"] = Route()
    with pytest.raises(ModelNotFoundError, match="downloads disabled"):
        resolve_weights(make_spec(server.url("tiny-weights.pth")), cache_dir=tmp_path, download=False)
    assert server.hits == []


def test_real_offline_file_is_found(models_dir: Path, tmp_path: Path) -> None:
    name = "rtmdet_nano_person_mmdeploy/end2end.onnx"
    resolved = resolve_weights(
        make_spec(None, offline_names=(name,)), cache_dir=tmp_path, offline_dir=models_dir
    )
    assert resolved.path == models_dir / name and resolved.format == "onnx-mmdeploy"


def test_explicit_onnx_in_an_mmdeploy_sdk_folder_is_mmdeploy(tmp_path: Path) -> None:
    (tmp_path / "end2end.onnx").write_bytes(b"x")
    (tmp_path / "deploy.json").write_text("{}")
    resolved = resolve_weights(make_spec(None), tmp_path / "end2end.onnx")
    assert resolved.format == "onnx-mmdeploy" and resolved.describe().endswith("(mmdeploy ONNX)")


def test_malformed_url_is_model_not_found(tmp_path: Path) -> None:
    with pytest.raises(ModelNotFoundError, match="unknown url type"):
        download_file("not a url", tmp_path / "sub" / "w.pth", None, progress=False)
    assert files_in(tmp_path) == []
