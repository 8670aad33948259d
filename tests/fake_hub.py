"""A stand-in for the Hugging Face Hub's HTTP API on 127.0.0.1, for tests.

The real ``huggingface_hub`` client runs against it unpatched, uploads and downloads alike:

* ``POST /api/repos/create`` -- create a model repository (409 when it exists);
* ``POST /api/validate-yaml`` -- check a model card's metadata (400 when it is not YAML);
* ``POST /api/models/{repo}/branch/{branch}`` -- create a branch (409 when it exists);
* ``POST /api/models/{repo}/preupload/{revision}`` -- every file is uploaded ``regular`` (inline,
  base64, in the commit), so no LFS or Xet transfer is needed; ``oid`` is the git blob SHA-1 of
  the file already there, which lets the client skip unchanged files;
* ``POST /api/models/{repo}/commit/{branch}`` -- NDJSON: a header, then ``file`` (base64) and
  ``deletedFile`` lines; each commit gets a new 40-hex SHA and keeps its own copy of the tree;
* ``GET /api/models/{repo}[/revision/{revision}]`` -- repository info (the client asks for it
  when an upload changes nothing);
* ``HEAD`` / ``GET /{repo}/resolve/{revision}/{file}`` -- a file with ``X-Repo-Commit``, ``ETag``
  and ``Content-Length``.

A revision is a branch name or a commit SHA. Errors carry the Hub's ``X-Error-Code`` /
``X-Error-Message`` headers and a JSON ``{"error": ...}`` body, so the client raises the same
exceptions it raises against the Hub. Tokens: an unknown one is refused everywhere (401), writes
need :data:`WRITE_TOKEN` (401 without a token, 403 with :data:`READ_TOKEN`), and a private
repository is invisible (401 ``RepoNotFound``) without a token. Not served: LFS and Xet uploads,
pull requests.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable
from urllib.parse import unquote, urlsplit

import pytest
import yaml

WRITE_TOKEN = "hf_fake_write_token"
READ_TOKEN = "hf_fake_read_token"
GITATTRIBUTES = b"*.safetensors filter=lfs diff=lfs merge=lfs -text\n"
REPO = r"(?P<repo>[^/]+/[^/]+)"
ROUTES: list[tuple[str, re.Pattern[str], str]] = [
    ("POST", re.compile(r"^/api/repos/create$"), "create_repo"),
    ("POST", re.compile(r"^/api/validate-yaml$"), "validate_yaml"),
    ("POST", re.compile(rf"^/api/models/{REPO}/branch/(?P<rev>[^/]+)$"), "create_branch"),
    ("POST", re.compile(rf"^/api/models/{REPO}/preupload/(?P<rev>[^/]+)$"), "preupload"),
    ("POST", re.compile(rf"^/api/models/{REPO}/commit/(?P<rev>[^/]+)$"), "commit"),
    ("GET", re.compile(rf"^/api/models/{REPO}(?:/revision/(?P<rev>[^/]+))?$"), "repo_info"),
    ("GET", re.compile(rf"^/{REPO}/resolve/(?P<rev>[^/]+)/(?P<file>.+)$"), "resolve"),
    ("HEAD", re.compile(rf"^/{REPO}/resolve/(?P<rev>[^/]+)/(?P<file>.+)$"), "resolve"),
]


def git_blob_sha1(content: bytes) -> str:
    """The git object id of a file's content (the Hub's ``oid`` and ``ETag`` of a regular file)."""
    return hashlib.sha1(b"blob %d\0" % len(content) + content).hexdigest()


class HubError(Exception):
    """An error answer: HTTP status, message, the Hub's ``X-Error-Code`` (or None), ``X-Repo-Commit`` and JSON body."""

    def __init__(self, status: int, message: str, code: str | None = None, commit: str | None = None,
                 body: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.code, self.commit = status, message, code, commit
        self.body = {"error": message, **(body or {})}


@dataclass
class Repo:
    """A repository: branch name -> commit SHA, and commit SHA -> the files of that commit."""

    private: bool = False
    branches: dict[str, str] = field(default_factory=dict)
    commits: dict[str, dict[str, bytes]] = field(default_factory=dict)

    def resolve(self, revision: str) -> str:
        """The commit SHA a branch name or commit SHA means."""
        if revision in self.branches:
            return self.branches[revision]
        if revision in self.commits:
            return revision
        raise HubError(404, f"Invalid rev id: {revision}", "RevisionNotFound")


@dataclass
class Reply:
    """What a handler answers: status, JSON or raw body, extra headers."""

    status: int = 200
    json_body: Any = None
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)


class FakeHub:
    """The Hub on a free loopback port; use as a context manager. ``url`` is the endpoint to pass.

    ``requests`` records ``(method, path)`` of every request; :meth:`commit` seeds a repository
    with files the client would refuse to upload (no weights, corrupted weights);
    :meth:`refuse` makes matching requests fail as the Hub would.
    """

    def __init__(self) -> None:
        self.repos: dict[str, Repo] = {}
        self.requests: list[tuple[str, str]] = []
        self.refusals: list[tuple[str, HubError]] = []
        self.lock = threading.Lock()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), _handler_class(self))
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    def __enter__(self) -> "FakeHub":
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        """Stop serving and free the port: later requests find nothing listening."""
        self.server.shutdown()
        self.server.server_close()

    # ---------------------------------------------------------------- test controls

    def commit(self, repo_id: str, files: dict[str, bytes]) -> str:
        """Commit ``files`` (the whole tree) to ``main`` of ``repo_id``, creating it if needed; returns the SHA."""
        with self.lock:
            repo = self.repos.setdefault(repo_id, Repo())
            return self._new_commit(repo, "main", dict(files), f"seed {sorted(files)}")

    def refuse(self, path_part: str, status: int, message: str, code: str | None = None) -> None:
        """Answer every request whose path contains ``path_part`` with this error."""
        self.refusals.append((path_part, HubError(status, message, code)))

    def head(self, repo_id: str, branch: str = "main") -> str:
        """The commit SHA ``branch`` points to."""
        return self.repos[repo_id].branches[branch]

    # ---------------------------------------------------------------- serving

    def handle(self, method: str, target: str, headers: Any, body: bytes) -> Reply:
        """Route one request; errors become the Hub's error answers."""
        path = urlsplit(target).path
        self.requests.append((method, target))
        try:
            for part, error in self.refusals:
                if part in path:
                    raise error
            if self._token(headers) not in (None, WRITE_TOKEN, READ_TOKEN):
                raise HubError(401, "Invalid credentials in Authorization header")
            for verb, pattern, name in ROUTES:
                match = pattern.match(path)
                if verb == method and match:
                    params = {k: unquote(v) for k, v in match.groupdict().items() if v is not None}
                    action: Callable[..., Reply] = getattr(self, f"_{name}")
                    with self.lock:
                        return action(headers=headers, body=body, **params)
            raise HubError(404, f"no route for {method} {path}")
        except HubError as error:
            extra = {"X-Error-Message": error.message}
            if error.code:
                extra["X-Error-Code"] = error.code
            if error.commit:
                extra["X-Repo-Commit"] = error.commit
            return Reply(error.status, error.body, headers=extra)

    def _token(self, headers: Any) -> str | None:
        value = headers.get("Authorization") or ""
        return value[len("Bearer "):] if value.startswith("Bearer ") else None

    def _check_write(self, headers: Any, repo_id: str) -> None:
        token = self._token(headers)
        if token is None:
            raise HubError(401, "Invalid username or password.")
        if token != WRITE_TOKEN:
            raise HubError(403, f"You don't have the rights to write to {repo_id}; this token is read-only")

    def _repo(self, headers: Any, repo_id: str) -> Repo:
        repo = self.repos.get(repo_id)
        hidden = repo is not None and repo.private and self._token(headers) not in (WRITE_TOKEN, READ_TOKEN)
        if repo is None or hidden:
            raise HubError(401 if hidden else 404, "Repository not found", "RepoNotFound")
        return repo

    def _new_commit(self, repo: Repo, branch: str, files: dict[str, bytes], summary: str) -> str:
        parent = repo.branches.get(branch, "")
        tree = sorted((name, git_blob_sha1(content)) for name, content in files.items())
        sha = hashlib.sha1(json.dumps([parent, tree, summary, len(repo.commits)]).encode()).hexdigest()
        repo.commits[sha] = files
        repo.branches[branch] = sha
        return sha

    # ---------------------------------------------------------------- the endpoints

    def _create_repo(self, headers: Any, body: bytes, **_: Any) -> Reply:
        request = json.loads(body)
        repo_id = f"{request.get('organization')}/{request['name']}"
        self._check_write(headers, repo_id)
        if repo_id in self.repos:
            raise HubError(409, "You already created this model repo", body={"url": f"{self.url}/{repo_id}"})
        repo = self.repos[repo_id] = Repo(private=request.get("visibility") == "private")
        self._new_commit(repo, "main", {".gitattributes": GITATTRIBUTES}, "initial commit")
        return Reply(json_body={"url": f"{self.url}/{repo_id}", "name": repo_id, "id": repo_id})

    def _validate_yaml(self, body: bytes, **_: Any) -> Reply:
        content = json.loads(body)["content"]
        front = re.match(r"^---\n(.*?)\n---\n", content, re.DOTALL)
        if front is None:
            return Reply(json_body={"warnings": [{"message": "Empty or missing yaml metadata in repo card"}]})
        try:
            yaml.safe_load(front.group(1))
        except yaml.YAMLError as exc:
            return Reply(400, {"errors": [{"message": f"YAML metadata: {exc}"}], "warnings": []})
        return Reply(json_body={"warnings": []})

    def _create_branch(self, headers: Any, body: bytes, repo: str, rev: str, **_: Any) -> Reply:
        self._check_write(headers, repo)
        target = self._repo(headers, repo)
        if rev in target.branches:
            raise HubError(409, f"Reference {rev} already exists")
        start = (json.loads(body or b"{}") or {}).get("startingPoint") or "main"
        target.branches[rev] = target.resolve(start)
        return Reply(json_body={})

    def _preupload(self, headers: Any, body: bytes, repo: str, rev: str, **_: Any) -> Reply:
        self._check_write(headers, repo)
        target = self._repo(headers, repo)
        current = target.commits[target.resolve(rev)]
        answer = [
            {"path": f["path"], "uploadMode": "regular", "shouldIgnore": False,
             "oid": git_blob_sha1(current[f["path"]]) if f["path"] in current else None}
            for f in json.loads(body)["files"]
        ]
        return Reply(json_body={"files": answer})

    def _commit(self, headers: Any, body: bytes, repo: str, rev: str, **_: Any) -> Reply:
        self._check_write(headers, repo)
        target = self._repo(headers, repo)
        if rev not in target.branches:
            raise HubError(404, f"Invalid rev id: {rev} (commits go to a branch)", "RevisionNotFound")
        lines = [json.loads(line) for line in body.splitlines() if line.strip()]
        if not lines or lines[0]["key"] != "header":
            raise HubError(400, "a commit starts with its header line")
        header = lines[0]["value"]
        parent = header.get("parentCommit")
        if parent and parent != target.branches[rev]:
            raise HubError(412, f"A commit has happened since {parent}; the branch is at {target.branches[rev]}")
        files = dict(target.commits[target.branches[rev]])
        for line in lines[1:]:
            key, value = line["key"], line["value"]
            if key == "file":
                files[value["path"]] = base64.b64decode(value["content"])
            elif key == "deletedFile":
                files.pop(value["path"], None)
            else:
                raise HubError(400, f"this fake Hub takes 'file' and 'deletedFile' lines, not {key!r}")
        sha = self._new_commit(target, rev, files, header.get("summary", ""))
        return Reply(json_body={"commitUrl": f"{self.url}/{repo}/commit/{sha}", "commitOid": sha, "success": True})

    def _repo_info(self, headers: Any, repo: str, rev: str = "main", **_: Any) -> Reply:
        target = self._repo(headers, repo)
        sha = target.resolve(rev)
        siblings = [{"rfilename": name} for name in sorted(target.commits[sha])]
        return Reply(json_body={"id": repo, "sha": sha, "private": target.private, "siblings": siblings})

    def _resolve(self, headers: Any, repo: str, rev: str, file: str, **_: Any) -> Reply:
        target = self._repo(headers, repo)
        sha = target.resolve(rev)
        files = target.commits[sha]
        if file not in files:
            raise HubError(404, f"{file} does not exist at {sha}", "EntryNotFound", commit=sha)
        content = files[file]
        return Reply(body=content, headers={
            "X-Repo-Commit": sha, "ETag": f'"{git_blob_sha1(content)}"', "Content-Length": str(len(content)),
        })


def _handler_class(hub: FakeHub) -> type[BaseHTTPRequestHandler]:
    """The request handler of ``hub``'s server: reads a request, lets ``hub`` answer, writes the reply."""

    class Handler(BaseHTTPRequestHandler):
        def _serve(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else b""
            reply = hub.handle(self.command, self.path, self.headers, body)
            payload = json.dumps(reply.json_body).encode() if reply.json_body is not None else reply.body
            self.send_response(reply.status)
            headers = {"Content-Length": str(len(payload)), **reply.headers}
            if reply.json_body is not None:
                headers["Content-Type"] = "application/json"
            for name, value in headers.items():
                self.send_header(name, value)
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(payload)

        do_GET = do_HEAD = do_POST = _serve  # noqa: N815 (http.server naming)

        def log_message(self, *args: Any) -> None:
            pass

    return Handler


@pytest.fixture
def online(monkeypatch: pytest.MonkeyPatch) -> None:
    """Let the client talk to a loopback Hub even where HF_HUB_OFFLINE=1 (CI), with :data:`READ_TOKEN`
    as the ambient ``HF_TOKEN``, so no token of the user's is ever read or sent."""
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setenv("HF_TOKEN", READ_TOKEN)
