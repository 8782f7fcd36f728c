"""A stand-in Hugging Face hub on 127.0.0.1: answers huggingface_hub's resolve URLs
(HEAD/GET ``/{org}/{name}/resolve/{revision}/{filename}``) for repos held as local folders.

Each repo has one commit (a fixed 40-hex sha) reachable as ``main``, as its sha and as any extra
names given. Responses carry ``ETag`` (the file's sha256, as the hub sends for LFS files),
``X-Repo-Commit`` and ``Content-Length``; unknown repos, revisions and files get the hub's 404s with
``X-Error-Code``. Every GET is counted (file name and bytes) in ``served``.
"""

from __future__ import annotations

import hashlib
import threading
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote


class StandInHub:
    def __init__(self):
        self.repos: dict[str, dict] = {}
        self.served: Counter = Counter()  # (repo, filename) -> bytes sent by GET
        self.requests: list[tuple[str, str]] = []
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
                                        daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def add_repo(self, repo_id: str, folder: Path, commit: str, revisions=("main",)) -> None:
        files = {p.relative_to(folder).as_posix(): p for p in sorted(folder.rglob("*")) if p.is_file()}
        self.repos[repo_id] = {"files": files, "commit": commit, "revisions": {commit, *revisions}}

    def downloaded(self, repo_id: str) -> dict[str, int]:
        return {f: n for (r, f), n in self.served.items() if r == repo_id}

    def start(self) -> "StandInHub":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    def _handler(self):
        hub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_HEAD(self):
                self._answer(body=False)

            def do_GET(self):
                self._answer(body=True)

            def _fail(self, code: str, commit: str | None = None):
                self.send_response(404)
                self.send_header("X-Error-Code", code)
                self.send_header("X-Error-Message", code)
                if commit:
                    self.send_header("X-Repo-Commit", commit)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def _answer(self, body: bool):
                parts = self.path.split("?")[0].lstrip("/").split("/", 4)
                if len(parts) < 5 or parts[2] != "resolve":
                    return self._fail("RepoNotFound")
                repo_id, revision, filename = f"{parts[0]}/{parts[1]}", unquote(parts[3]), unquote(parts[4])
                hub.requests.append((self.command, f"{repo_id}/{revision}/{filename}"))
                repo = hub.repos.get(repo_id)
                if repo is None:
                    return self._fail("RepoNotFound")
                if revision not in repo["revisions"]:
                    return self._fail("RevisionNotFound")
                path = repo["files"].get(filename)
                if path is None:
                    return self._fail("EntryNotFound", repo["commit"])
                data = path.read_bytes()
                self.send_response(200)
                self.send_header("ETag", f'"{hashlib.sha256(data).hexdigest()}"')
                self.send_header("X-Repo-Commit", repo["commit"])
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if body:
                    self.wfile.write(data)
                    hub.served[(repo_id, filename)] += len(data)

        return Handler
