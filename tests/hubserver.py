"""A local Hub-compatible HTTP server: the part of the Hugging Face Hub API that huggingface_hub uses to
create a repo, branch and commit to it, list refs and trees, and download files.

Repos live in memory (commits, branches, tags) with file contents stored by sha256 in a directory.
Uploads are always "regular" (base64 inside the commit), so no LFS or xet endpoint is ever needed;
responses never carry ``X-Xet-Hash``, so downloads never go through xet either.

Endpoints (``{repo}`` is ``org/name``, revisions are URL-quoted branch, tag or commit):

- ``POST /api/repos/create``                              create_repo (409 if it exists)
- ``GET  /api/models/{repo}[/revision/{rev}]``            model_info / repo_info
- ``GET  /api/models/{repo}/refs``                        list_repo_refs
- ``GET  /api/models/{repo}/tree/{rev}[/{path}]``         list_repo_tree / list_repo_files
- ``POST /api/models/{repo}/preupload/{rev}``             preupload: every file "regular"
- ``POST /api/models/{repo}/commit/{rev}``                create_commit (NDJSON; stale parentCommit -> 412)
- ``POST /api/models/{repo}/branch/{branch}``             create_branch (409 if it exists)
- ``POST /api/models/{repo}/tag/{rev}``                   create_tag (409 if it exists)
- ``HEAD|GET /{repo}/resolve/{rev}/{path}``               hf_hub_download (ETag, X-Repo-Commit, Range)
- ``POST /api/models/{repo}/paths-info/{rev}``            get_paths_info (HfFileSystem)

Dataset repos (:meth:`HubServer.create_dataset`) answer the same read routes under ``/api/datasets/{repo}``
and ``/datasets/{repo}/resolve/…``, which is what ``datasets.load_dataset("org/name")`` uses.

Private repos (and every write) need ``Authorization: Bearer <token>`` when the server has a token.
Test hooks: :meth:`HubServer.rewrite` (change a file in place, keeping the commit id),
:attr:`HubServer.drop_after` (cut a download short once),
:attr:`HubServer.fail_once` (answer one download with an error), :attr:`HubServer.delay` (slow downloads down), :attr:`HubServer.preupload_barrier` (hold
concurrent pushes until all have arrived), and :attr:`HubServer.requests` (every request seen).
"""

from __future__ import annotations

import base64
import hashlib
import itertools
import json
import re
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

DATASET_PREFIX = "datasets/"  # dataset repos are kept in ``HubServer.repos`` under this prefix
GITATTRIBUTES = b"*.rbln filter=lfs diff=lfs merge=lfs -text\n*.safetensors filter=lfs diff=lfs merge=lfs -text\n"
_COMMIT = re.compile(r"^[0-9a-f]{40}$")


@dataclass
class Commit:
    oid: str
    parent: str | None
    files: dict[str, str]  # path -> sha256 of the content
    message: str


@dataclass
class Repo:
    repo_id: str
    private: bool
    commits: dict[str, Commit] = field(default_factory=dict)
    branches: dict[str, str] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)

    def resolve(self, revision: str) -> str | None:
        if revision in self.branches:
            return self.branches[revision]
        if revision in self.tags:
            return self.tags[revision]
        if _COMMIT.match(revision) and revision in self.commits:
            return revision
        return None


class HubError(Exception):
    def __init__(self, status: int, message: str, code: str | None = None, commit: str | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.code, self.commit = status, message, code, commit


class HubServer:
    """Start with :meth:`start`; ``url`` is the value for ``HF_ENDPOINT``."""

    def __init__(self, root: Path, token: str | None = None) -> None:
        self.root = Path(root)
        self.blobs = self.root / "blobs"
        self.blobs.mkdir(parents=True, exist_ok=True)
        self.token = token
        self.repos: dict[str, Repo] = {}
        self.lock = threading.RLock()
        self.requests: list[tuple[str, str, dict[str, str]]] = []
        self.statuses: list[tuple[str, str, int]] = []
        self.drop_after: dict[str, int] = {}  # path suffix -> bytes to send before cutting the connection once
        self.fail_once: dict[str, int] = {}  # path suffix -> HTTP status to answer the next GET with
        self.delay: dict[str, float] = {}  # path suffix -> seconds to wait before answering every GET
        self.preupload_barrier: threading.Barrier | None = None
        self._counter = itertools.count()
        self._httpd: ThreadingHTTPServer | None = None

    # lifecycle ----------------------------------------------------------------------------------
    def start(self) -> "HubServer":
        server = self

        class Handler(_Handler):
            hub = server

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        threading.Thread(target=self._httpd.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()

    @property
    def url(self) -> str:
        assert self._httpd is not None
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}"

    # storage ------------------------------------------------------------------------------------
    def put_blob(self, data: bytes) -> str:
        sha = hashlib.sha256(data).hexdigest()
        path = self.blobs / sha
        if not path.exists():
            path.write_bytes(data)
        return sha

    def blob(self, sha: str) -> bytes:
        return (self.blobs / sha).read_bytes()

    def _new_oid(self, *parts: Any) -> str:
        text = json.dumps([next(self._counter), *parts], sort_keys=True, default=str)
        return hashlib.sha1(text.encode()).hexdigest()

    def create_repo(self, repo_id: str, private: bool = False) -> Repo:
        with self.lock:
            if repo_id in self.repos:
                raise HubError(409, "You already created this model repo", commit=None)
            repo = Repo(repo_id, private)
            oid = self._new_oid(repo_id, "initial")
            repo.commits[oid] = Commit(oid, None, {".gitattributes": self.put_blob(GITATTRIBUTES)}, "initial commit")
            repo.branches["main"] = oid
            self.repos[repo_id] = repo
            return repo

    def create_dataset(self, repo_id: str, files: dict[str, bytes]) -> str:
        """A public dataset repo holding ``files`` on ``main``; returns its commit."""
        self.create_repo(DATASET_PREFIX + repo_id)
        return self.commit(DATASET_PREFIX + repo_id, "main", dict(files), "add dataset")

    def commit(self, repo_id: str, branch: str, files: dict[str, bytes | None], message: str, parent: str | None = None) -> str:
        """Apply additions (bytes) and deletions (None) on ``branch``; ``parent`` must be its head."""
        with self.lock:
            repo = self.repos[repo_id]
            if branch not in repo.branches:
                raise HubError(404, f"Invalid rev id: {branch}", code="RevisionNotFound")
            head = repo.branches[branch]
            if parent is not None and not head.startswith(parent):
                raise HubError(412, "A commit has happened since. Please refresh and try again.")
            tree = dict(repo.commits[head].files)
            for path, data in files.items():
                if data is None:
                    if path not in tree:
                        raise HubError(404, f"A file with this name doesn't exist: {path}", code="EntryNotFound")
                    del tree[path]
                else:
                    tree[path] = self.put_blob(data)
            oid = self._new_oid(repo_id, branch, head, tree)
            repo.commits[oid] = Commit(oid, head, tree, message)
            repo.branches[branch] = oid
            return oid

    # test hooks ---------------------------------------------------------------------------------
    def rewrite(self, repo_id: str, revision: str, path: str, data: bytes) -> None:
        """Replace a file's bytes in an existing commit, keeping its id (a corrupted or hostile server)."""
        with self.lock:
            repo = self.repos[repo_id]
            oid = repo.resolve(revision)
            assert oid is not None, revision
            repo.commits[oid].files[path] = self.put_blob(data)

    def read(self, repo_id: str, revision: str, path: str) -> bytes:
        with self.lock:
            repo = self.repos[repo_id]
            oid = repo.resolve(revision)
            assert oid is not None, revision
            return self.blob(repo.commits[oid].files[path])

    def count(self, method: str, contains: str = "") -> int:
        return sum(1 for m, p, _ in list(self.requests) if m == method and contains in p)


def _git_blob_oid(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


class _Handler(BaseHTTPRequestHandler):
    hub: HubServer
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - quiet
        pass

    # plumbing -----------------------------------------------------------------------------------
    def _send(self, status: int, body: bytes = b"", headers: dict[str, str] | None = None, content_type: str = "application/json") -> None:
        self.hub.statuses.append((self.command, self.path, status))
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        if "Content-Length" not in (headers or {}):
            self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _json(self, data: Any, status: int = 200, headers: dict[str, str] | None = None) -> None:
        self._send(status, json.dumps(data).encode(), headers)

    def _error(self, error: HubError) -> None:
        headers = {"X-Error-Message": error.message}
        if error.code:
            headers["X-Error-Code"] = error.code
        if error.commit:
            headers["X-Repo-Commit"] = error.commit
        self._json({"error": error.message}, error.status, headers)

    def _body(self) -> bytes:
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _authorized(self) -> bool:
        return self.hub.token is None or self.headers.get("Authorization") == f"Bearer {self.hub.token}"

    def _repo(self, repo_id: str, write: bool = False) -> Repo:
        repo = self.hub.repos.get(repo_id)
        if repo is None or (repo.private and not self._authorized()):
            raise HubError(404 if self._authorized() else 401, "Repository not found", code="RepoNotFound")
        if write and not self._authorized():
            raise HubError(401, "Invalid credentials in Authorization header")
        return repo

    def _dispatch(self) -> None:
        self.hub.requests.append((self.command, self.path, dict(self.headers)))
        split = urlsplit(self.path)
        path, query = unquote(split.path), parse_qs(split.query)
        try:
            self._route(path, query)
        except HubError as error:
            self._error(error)
        except (BrokenPipeError, ConnectionResetError):
            pass

    do_GET = do_HEAD = do_POST = _dispatch

    # routes -------------------------------------------------------------------------------------
    def _route(self, path: str, query: dict[str, list[str]]) -> None:
        hub = self.hub
        if self.command == "POST" and path == "/api/repos/create":
            if not self._authorized():
                raise HubError(401, "Invalid credentials in Authorization header")
            payload = json.loads(self._body() or b"{}")
            repo_id = f"{payload['organization']}/{payload['name']}" if payload.get("organization") else payload["name"]
            try:
                hub.create_repo(repo_id, private=payload.get("visibility") == "private" or bool(payload.get("private")))
            except HubError as error:  # the Hub's 409 names the existing repo's url
                return self._json({"error": error.message, "url": f"{hub.url}/{repo_id}"}, error.status)
            return self._json({"url": f"{hub.url}/{repo_id}", "name": repo_id, "id": repo_id})
        match = re.match(r"^/api/(models|datasets)/([^/]+/[^/]+)(?:/(.*))?$", path)
        if match:
            prefix = DATASET_PREFIX if match.group(1) == "datasets" else ""
            return self._api(prefix + match.group(2), match.group(3) or "", query)
        match = re.match(r"^/(datasets/)?([^/]+/[^/]+)/resolve/([^/]+)/(.+)$", path)
        if match and self.command in ("GET", "HEAD"):
            return self._resolve((match.group(1) or "") + match.group(2), match.group(3), match.group(4))
        raise HubError(404, f"no route for {self.command} {path}")

    def _api(self, repo_id: str, rest: str, query: dict[str, list[str]]) -> None:
        hub = self.hub
        if self.command == "POST" and rest.startswith("paths-info/"):
            with hub.lock:
                repo = self._repo(repo_id)
            return self._paths_info(repo, rest[len("paths-info/"):])
        with hub.lock:
            repo = self._repo(repo_id, write=self.command == "POST")
        if self.command == "GET" and (rest == "" or rest.startswith("revision/")):
            revision = rest[len("revision/"):] if rest else "main"
            oid = repo.resolve(revision)
            if oid is None:
                raise HubError(404, f"Invalid rev id: {revision}", code="RevisionNotFound")
            files = sorted(repo.commits[oid].files)
            repo_id = repo_id.removeprefix(DATASET_PREFIX)
            return self._json({"id": repo_id, "modelId": repo_id, "sha": oid, "private": repo.private,
                               "siblings": [{"rfilename": f} for f in files], "tags": [], "downloads": 0, "likes": 0})
        if self.command == "GET" and rest == "refs":
            def refs(kind: str, items: dict[str, str]) -> list[dict[str, str]]:
                return [{"name": n, "ref": f"refs/{kind}/{n}", "targetCommit": c} for n, c in sorted(items.items())]

            with hub.lock:
                return self._json({"branches": refs("heads", repo.branches), "tags": refs("tags", repo.tags), "converts": []})
        if self.command == "GET" and rest.startswith("tree/"):
            revision, _, prefix = rest[len("tree/"):].partition("/")
            return self._tree(repo, revision, prefix.strip("/"), query.get("recursive", ["false"])[0].lower() in ("1", "true"))
        if self.command == "POST" and rest.startswith("preupload/"):
            payload = json.loads(self._body() or b"{}")
            if hub.preupload_barrier is not None:
                hub.preupload_barrier.wait()
            return self._json({"files": [{"path": f["path"], "uploadMode": "regular", "shouldIgnore": False, "oid": None} for f in payload["files"]]})
        if self.command == "POST" and rest.startswith("commit/"):
            return self._commit(repo, rest[len("commit/"):])
        if self.command == "POST" and rest.startswith("branch/"):
            branch = rest[len("branch/"):]
            payload = json.loads(self._body() or b"{}")
            with hub.lock:
                if branch in repo.branches:
                    raise HubError(409, f"Reference already exists: refs/heads/{branch}")
                start = repo.resolve(payload.get("startingPoint") or "main")
                if start is None:
                    raise HubError(404, "Invalid starting point", code="RevisionNotFound")
                repo.branches[branch] = start
            return self._json({})
        if self.command == "POST" and rest.startswith("tag/"):
            payload = json.loads(self._body() or b"{}")
            with hub.lock:
                oid = repo.resolve(rest[len("tag/"):])
                if oid is None:
                    raise HubError(404, "Invalid rev id", code="RevisionNotFound")
                if payload["tag"] in repo.tags:
                    raise HubError(409, f"Tag already exists: {payload['tag']}")
                repo.tags[payload["tag"]] = oid
            return self._json({})
        raise HubError(404, f"no route for {self.command} /api/models/{repo_id}/{rest}")

    def _tree(self, repo: Repo, revision: str, prefix: str, recursive: bool) -> None:
        with self.hub.lock:
            oid = repo.resolve(revision)
            if oid is None:
                raise HubError(404, f"Invalid rev id: {revision}", code="RevisionNotFound")
            files = dict(repo.commits[oid].files)
        base = f"{prefix}/" if prefix else ""
        entries: list[dict[str, Any]] = []
        folders: set[str] = set()
        for path, sha in sorted(files.items()):
            if not path.startswith(base):
                continue
            rest = path[len(base):]
            if "/" in rest and not recursive:
                folders.add(base + rest.split("/", 1)[0])
                continue
            parts = rest.split("/")[:-1]
            for i in range(1, len(parts) + 1):
                folders.add(base + "/".join(parts[:i]))
            data = self.hub.blob(sha)
            entries.append({"type": "file", "oid": _git_blob_oid(data), "size": len(data), "path": path})
        if prefix and not entries and not folders:
            raise HubError(404, f"{prefix} does not exist", code="EntryNotFound")
        folder_entries = [{"type": "directory", "oid": hashlib.sha1(f.encode()).hexdigest(), "path": f} for f in sorted(folders)]
        self._json(folder_entries + entries)

    def _paths_info(self, repo: Repo, revision: str) -> None:
        form = parse_qs(self._body().decode())
        with self.hub.lock:
            oid = repo.resolve(revision)
            if oid is None:
                raise HubError(404, f"Invalid rev id: {revision}", code="RevisionNotFound")
            files = dict(repo.commits[oid].files)
        entries: list[dict[str, Any]] = []
        for wanted in form.get("paths", []):
            wanted = wanted.strip("/")
            if wanted in files:
                data = self.hub.blob(files[wanted])
                entries.append({"type": "file", "oid": _git_blob_oid(data), "size": len(data), "path": wanted})
            elif any(path.startswith(wanted + "/") for path in files) or wanted == "":
                entries.append({"type": "directory", "oid": hashlib.sha1(wanted.encode()).hexdigest(), "path": wanted})
        self._json(entries)

    def _commit(self, repo: Repo, branch: str) -> None:
        lines = [json.loads(line) for line in self._body().splitlines() if line.strip()]
        header = next(item["value"] for item in lines if item["key"] == "header")
        files: dict[str, bytes | None] = {}
        for item in lines:
            key, value = item["key"], item["value"]
            if key == "file":
                files[value["path"]] = base64.b64decode(value["content"])
            elif key == "deletedFile":
                files[value["path"]] = None
            elif key in ("lfsFile", "deletedFolder"):
                raise HubError(400, f"{key} is not supported by this test server")
        oid = self.hub.commit(repo.repo_id, branch, files, header.get("summary", ""), parent=header.get("parentCommit"))
        self._json({"success": True, "commitOid": oid, "commitUrl": f"{self.hub.url}/{repo.repo_id}/commit/{oid}"})

    def _resolve(self, repo_id: str, revision: str, path: str) -> None:
        hub = self.hub
        with hub.lock:
            repo = self._repo(repo_id)
            oid = repo.resolve(revision)
            if oid is None:
                raise HubError(404, f"Invalid rev id: {revision}", code="RevisionNotFound")
            sha = repo.commits[oid].files.get(path)
            if sha is None:
                raise HubError(404, "Entry not found", code="EntryNotFound", commit=oid)
            data = hub.blob(sha)
        etag = f'"{hashlib.sha256(data).hexdigest()}"'
        headers = {"X-Repo-Commit": oid, "ETag": etag, "Accept-Ranges": "bytes"}
        start = 0
        status = 200
        range_header = self.headers.get("Range")
        if range_header and self.command == "GET":
            match = re.match(r"bytes=(\d+)-$", range_header.strip())
            if match:
                start = int(match.group(1))
                status = 206
                headers["Content-Range"] = f"bytes {start}-{len(data) - 1}/{len(data)}"
        body = data[start:]
        headers["Content-Length"] = str(len(body))
        if self.command == "GET":
            for suffix, failure in list(hub.fail_once.items()):
                if path.endswith(suffix):
                    del hub.fail_once[suffix]
                    raise HubError(failure, "Internal Error - We're working hard to fix this as soon as possible!")
        if self.command == "GET":
            for suffix, seconds in list(hub.delay.items()):
                if path.endswith(suffix):
                    time.sleep(seconds)
        cut = None
        if self.command == "GET":
            for suffix, limit in list(hub.drop_after.items()):
                if path.endswith(suffix):
                    cut = limit
                    del hub.drop_after[suffix]
        if cut is None:
            return self._send(status, body, headers, content_type="application/octet-stream")
        hub.statuses.append((self.command, self.path, status))
        self.send_response(status)
        for key, value in headers.items():
            self.send_header(key, value)
        self.end_headers()
        self.wfile.write(body[:cut])
        self.wfile.flush()
        self.close_connection = True
        self.connection.shutdown(2)
