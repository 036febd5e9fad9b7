"""A stand-in for the Hugging Face Hub on 127.0.0.1, for store tests that must not touch the internet.

It serves what ``huggingface_hub`` asks for when it looks up and downloads a model, the way the hub answers:

- ``GET /api/models/{repo}/revision/{rev}``: model info; with ``?blobs=true`` each sibling carries its size, git
  blob id and, for LFS files, ``lfs: {size, sha256, pointerSize}``.
- ``HEAD|GET /{repo}/resolve/{rev}/{path}``: small files answer directly (ETag = git blob id); LFS files answer
  302 to ``/lfs-cdn/{sha256}`` with ``X-Linked-Etag`` / ``X-Linked-Size``, as the hub redirects to its CDN.
- ``Range: bytes=N-`` gets ``206`` with ``Content-Range``. Unknown repos, revisions and files get 404 with the
  hub's ``X-Error-Code`` header, which ``huggingface_hub`` turns into its typed errors.

Every body it sends is logged (path, start offset, bytes sent), so a test can prove that a resumed pull asked
for the rest of a file only. Faults are injected per file: a corrupted byte, a connection dropped after N bytes,
or a stall after N bytes (the client hangs there until the test kills it).
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit

LFS_SUFFIXES = (".safetensors", ".bin")


def git_blob_id(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


@dataclass
class HubFile:
    data: bytes
    lfs: bool

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.data).hexdigest()

    @property
    def blob_id(self) -> str:
        return git_blob_id(self.data)


@dataclass
class HubRepo:
    repo_id: str
    commit: str
    files: dict[str, HubFile]


@dataclass
class Served:
    """One response body: which file, from which offset, how many bytes actually went out."""

    name: str
    start: int
    sent: int = 0


@dataclass
class _Faults:
    corrupt: dict[str, int] = field(default_factory=dict)  # file -> offset of the flipped byte (every GET)
    abort_after: dict[str, int] = field(default_factory=dict)  # file -> bytes, then drop the connection (once)
    stall_after: dict[str, int] = field(default_factory=dict)  # file -> bytes, then hang until released (once)


class FakeHub:
    def __init__(self, rate: int | None = None, port: int = 0) -> None:
        self.rate = rate  # bytes per second per response body (None: as fast as possible)
        self.repos: dict[str, HubRepo] = {}
        self.served: list[Served] = []
        self.auth_headers: list[str | None] = []
        self.faults = _Faults()
        self._release = threading.Event()
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", port), _handler_for(self))
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, name="fake-hub", daemon=True)

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> FakeHub:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._release.set()
        self._server.shutdown()
        self._server.server_close()

    # ---- repos ------------------------------------------------------------------------------------
    def add_repo(self, repo_id: str, files: dict[str, bytes]) -> str:
        digest = hashlib.sha1(repo_id.encode())
        for name in sorted(files):
            digest.update(name.encode() + b"\0" + hashlib.sha1(files[name]).digest())
        commit = digest.hexdigest()
        self.repos[repo_id] = HubRepo(repo_id, commit, {
            name: HubFile(data, lfs=name.endswith(LFS_SUFFIXES)) for name, data in files.items()})
        return commit

    def add_repo_from_dir(self, repo_id: str, directory: Path, extra: dict[str, bytes] | None = None) -> str:
        files = {p.relative_to(directory).as_posix(): p.read_bytes() for p in sorted(directory.rglob("*"))
                 if p.is_file()}
        files.update(extra or {})
        return self.add_repo(repo_id, files)

    # ---- observation and faults -------------------------------------------------------------------
    def reset(self) -> None:
        with self._lock:
            self.served.clear()
            self.auth_headers.clear()
            self.faults = _Faults()
            self._release = threading.Event()

    def release_stalls(self) -> None:
        self._release.set()

    def bodies(self, name: str) -> list[Served]:
        """The response bodies sent for ``name`` (a path inside a repo), in order."""
        return [s for s in self.served if s.name == name]

    def bytes_served(self, name: str) -> int:
        return sum(s.sent for s in self.bodies(name))

    def files_served(self) -> set[str]:
        return {s.name for s in self.served}

    # ---- used by the handler ----------------------------------------------------------------------
    def _take_fault(self, table: dict[str, int], name: str) -> int | None:
        with self._lock:
            return table.pop(name, None)


def _handler_for(hub: FakeHub) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: object) -> None:  # keep test output clean
            pass

        def do_HEAD(self) -> None:
            self._route(head=True)

        def do_GET(self) -> None:
            self._route(head=False)

        # ---- routing ------------------------------------------------------------------------------
        def _route(self, head: bool) -> None:
            split = urlsplit(self.path)
            parts = [unquote(p) for p in split.path.split("/") if p]
            hub.auth_headers.append(self.headers.get("Authorization"))
            if parts[:2] == ["api", "models"] and len(parts) >= 4:
                repo_id = "/".join(parts[2:4])
                rev = parts[5] if len(parts) >= 6 and parts[4] == "revision" else "main"
                blobs = parse_qs(split.query).get("blobs", ["false"])[0].lower() == "true"
                return self._model_info(repo_id, rev, blobs)
            if len(parts) >= 5 and parts[2] == "resolve":
                return self._resolve("/".join(parts[:2]), parts[3], "/".join(parts[4:]), head)
            if len(parts) == 2 and parts[0] == "lfs-cdn":
                return self._cdn(parts[1], head)
            self._empty(404, {"X-Error-Code": "EntryNotFound"})

        def _repo_and_commit(self, repo_id: str, rev: str) -> HubRepo | None:
            repo = hub.repos.get(repo_id)
            if repo is None:
                self._empty(404, {"X-Error-Code": "RepoNotFound", "X-Error-Message": "Repository not found"})
                return None
            if rev not in ("main", repo.commit):
                self._empty(404, {"X-Error-Code": "RevisionNotFound", "X-Error-Message": "Invalid rev id"})
                return None
            return repo

        def _model_info(self, repo_id: str, rev: str, blobs: bool) -> None:
            repo = self._repo_and_commit(repo_id, rev)
            if repo is None:
                return
            siblings = []
            for name, f in sorted(repo.files.items()):
                entry: dict[str, object] = {"rfilename": name}
                if blobs:
                    entry.update(size=len(f.data), blobId=f.blob_id)
                    if f.lfs:
                        entry["lfs"] = {"size": len(f.data), "sha256": f.sha256, "pointerSize": 134}
                siblings.append(entry)
            body = json.dumps({"_id": "fake", "id": repo_id, "modelId": repo_id, "sha": repo.commit,
                               "private": False, "disabled": False, "gated": False, "downloads": 0, "likes": 0,
                               "tags": [], "siblings": siblings}).encode()
            self._send(200, {"Content-Type": "application/json"}, body)

        def _resolve(self, repo_id: str, rev: str, name: str, head: bool) -> None:
            repo = self._repo_and_commit(repo_id, rev)
            if repo is None:
                return
            f = repo.files.get(name)
            if f is None:
                self._empty(404, {"X-Error-Code": "EntryNotFound", "X-Repo-Commit": repo.commit})
                return
            common = {"X-Repo-Commit": repo.commit, "Accept-Ranges": "bytes"}
            if f.lfs:
                self._empty(302, {**common, "Location": f"/lfs-cdn/{f.sha256}", "ETag": f'"{f.blob_id}"',
                                  "X-Linked-Etag": f'"{f.sha256}"', "X-Linked-Size": str(len(f.data))})
                return
            self._body(name, f.data, {**common, "ETag": f'"{f.blob_id}"'}, head)

        def _cdn(self, sha256: str, head: bool) -> None:
            for repo in hub.repos.values():
                for name, f in repo.files.items():
                    if f.lfs and f.sha256 == sha256:
                        return self._body(name, f.data, {"ETag": f'"{sha256}"', "Accept-Ranges": "bytes"}, head)
            self._empty(404, {})

        # ---- responses ----------------------------------------------------------------------------
        def _empty(self, status: int, headers: dict[str, str]) -> None:
            self._send(status, headers, b"")

        def _send(self, status: int, headers: dict[str, str], body: bytes) -> None:
            self.send_response(status)
            for key, value in headers.items():
                self.send_header(key, value)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if body and self.command != "HEAD":
                self.wfile.write(body)

        def _body(self, name: str, data: bytes, headers: dict[str, str], head: bool) -> None:
            offset = hub.faults.corrupt.get(name)
            if offset is not None:
                data = data[:offset] + bytes([data[offset] ^ 0xFF]) + data[offset + 1:]
            start, status = 0, 200
            rng = self.headers.get("Range")
            if rng and rng.startswith("bytes="):
                first, _, last = rng[len("bytes="):].partition("-")
                start = int(first)
                end = int(last) + 1 if last else len(data)
                if start >= len(data):
                    self._empty(416, {"Content-Range": f"bytes */{len(data)}"})
                    return
                headers = {**headers, "Content-Range": f"bytes {start}-{end - 1}/{len(data)}"}
                data, status = data[start:end], 206
            self.send_response(status)
            for key, value in headers.items():
                self.send_header(key, value)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            if head:
                return
            abort = hub._take_fault(hub.faults.abort_after, name)
            stall = hub._take_fault(hub.faults.stall_after, name)
            cut = min(x for x in (abort, stall, len(data)) if x is not None)
            record = Served(name, start)
            with hub._lock:
                hub.served.append(record)
            try:
                for i in range(0, cut, 1 << 16):
                    chunk = data[i:min(i + (1 << 16), cut)]
                    self.wfile.write(chunk)
                    record.sent += len(chunk)
                    if hub.rate:
                        time.sleep(len(chunk) / hub.rate)
                self.wfile.flush()
                if stall is not None and stall < len(data):
                    hub._release.wait(timeout=60)
                if cut < len(data):
                    self.close_connection = True
            except (BrokenPipeError, ConnectionResetError):
                self.close_connection = True

    return Handler


def tiny_model_files(directory: Path) -> dict[str, bytes]:
    """A tiny gpt-oss checkpoint in the exact hub layout, plus what else the official repos hold: tokenizer files,
    the chat template, and the ``original/`` and ``metal/`` weight copies a pull must not download.

    The vocabulary is large enough (65536) that the last shard (embedding + lm_head, 16 MiB) spans more than one of
    huggingface_hub's 10 MiB download chunks, so a pull can be stopped with part of it on disk.
    """
    from gptoss_cli.model.random_weights import tiny_config_dict, write_checkpoint

    write_checkpoint(directory, tiny_config_dict(vocab_size=65536), seed=0, shards=3)
    files = {p.name: p.read_bytes() for p in sorted(directory.iterdir()) if p.is_file()}
    files.update({
        "tokenizer.json": json.dumps({"version": "1.0", "model": {"type": "BPE"}}).encode(),
        "tokenizer_config.json": b'{"model_max_length": 131072}',
        "special_tokens_map.json": b'{"eos_token": "<|return|>"}',
        "chat_template.jinja": b"{% for m in messages %}{{ m.content }}{% endfor %}",
        "README.md": b"# tiny gpt-oss for tests\n",
        "original/config.json": b"{}",
        "original/model.safetensors": bytes(range(256)) * 4096,
        "metal/model.bin": bytes(range(255, -1, -1)) * 4096,
    })
    return files


def main() -> None:
    """Serve the tiny model as openai/gpt-oss-20b, to try ``gptoss pull`` by hand:
    ``python tests/hubserver.py --rate 2000000`` then ``HF_ENDPOINT=<printed url> gptoss pull gpt-oss-20b``."""
    import argparse
    import tempfile

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("--rate", type=int, default=None, help="bytes per second per download")
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args()
    hub = FakeHub(rate=args.rate, port=args.port)
    with tempfile.TemporaryDirectory() as tmp:
        files = tiny_model_files(Path(tmp))
        for repo_id in ("openai/gpt-oss-20b", "testorg/tiny-gpt-oss"):
            hub.add_repo(repo_id, files)
        hub.start()
        print(hub.url, flush=True)
        try:
            threading.Event().wait()
        except KeyboardInterrupt:
            hub.stop()


if __name__ == "__main__":
    main()
