"""Publishing and downloading through the real huggingface_hub client, against a loopback Hub.

:class:`fake_hub.FakeHub` answers the Hub's HTTP API on 127.0.0.1: ``zoo push`` /
``push_to_hub`` run the client's real upload protocol (create repo, validate the card,
pre-upload, NDJSON commit) and ``zoo.create("hf-hub:...")`` its real download protocol (HEAD,
GET, the cache). Nothing touches the network.
"""

from __future__ import annotations

import hashlib
import socket
import time
from pathlib import Path

import pytest
import torch
from fake_hub import READ_TOKEN, WRITE_TOKEN, FakeHub, online  # noqa: F401 (online is a fixture)

import zoo
from zoo.cli import main as cli_main
from zoo.data.vocab import Vocabulary
from zoo.hub import PretrainedLoadError
from zoo.publish import push_to_hub
from zoo.upload import PublishError

pytestmark = pytest.mark.kernel_independent  # the kernels-off pass leaves it out (pyproject.toml)

NUM_ITEMS = 12
RAW_IDS = [f"movie-{k}" for k in range(NUM_ITEMS)]
METRICS = {"valid": {"ndcg@10": 0.25}, "test": {"ndcg@10": 0.2}}
HISTORY = torch.tensor([[0, 0, 3, 5, 7], [1, 2, 3, 4, 12]])
PUBLISHED = ["README.md", "config.json", "model.safetensors"]


def tiny(seed: int = 0) -> zoo.SeqRecModel:
    torch.manual_seed(seed)
    model = zoo.create("sasrec", num_items=NUM_ITEMS, d_model=8, max_len=5)
    model.item_vocab = Vocabulary(RAW_IDS)
    return model.eval()


def save(model: zoo.SeqRecModel, folder: Path) -> Path:
    return model.save_pretrained(folder, dataset_facts={"name": "toy", "split": {"method": "loo"}}, metrics=METRICS)


def cli(*argv: str) -> int:
    return cli_main(["push", *argv])


def pushed_sha(url: str) -> str:
    sha = url.rsplit("/commit/", 1)[1]
    assert len(sha) == 40, url
    return sha


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    """A trained folder with a checkpoint beside its three files (which must stay home)."""
    out = save(tiny(), tmp_path / "run")
    (out / "checkpoint.pt").write_bytes(b"not for the Hub")
    return out


@pytest.fixture
def cache(tmp_path: Path) -> Path:
    return tmp_path / "hf-cache"


def assert_same_scores(loaded: zoo.SeqRecModel, expected: zoo.SeqRecModel) -> None:
    torch.testing.assert_close(loaded.score(HISTORY), expected.score(HISTORY), rtol=0, atol=0)


# ---------------------------------------------------------------- publish, then download


def test_zoo_push_then_hf_hub_load_gives_identical_scores(folder, cache, online, capsys):
    with FakeHub() as fake:
        assert cli(str(folder), "--repo", "org/toy", "--token", WRITE_TOKEN, "--endpoint", fake.url) == 0
        out = capsys.readouterr().out
        sha = fake.head("org/toy")
        assert f"{fake.url}/org/toy/commit/{sha}" in out and f"zoo.create('hf-hub:org/toy@{sha}')" in out
        stored = fake.repos["org/toy"].commits[sha]
        assert sorted(stored) == [".gitattributes", *PUBLISHED], "only the three files, never checkpoints"
        assert all(stored[name] == (folder / name).read_bytes() for name in PUBLISHED)
        paths = [path for _, path in fake.requests]
        assert "/api/models/org/toy/preupload/main" in paths and "/api/models/org/toy/commit/main" in paths
        loaded = zoo.create("hf-hub:org/toy", endpoint=fake.url, cache_dir=cache)

        assert cli(str(folder), "--repo", "org/toy", "--token", WRITE_TOKEN, "--endpoint", fake.url) == 0
        assert fake.head("org/toy") == sha, "an unchanged folder makes no new commit"
    assert_same_scores(loaded, tiny())
    assert loaded.decode_items([1]) == ["movie-0"]
    assert zoo.hub.read_config(cache / "models--org--toy" / "snapshots" / sha)["metrics"] == METRICS


def test_model_push_to_hub_private_repository(cache, online):
    model = tiny(3)
    with FakeHub() as fake:
        url = model.push_to_hub("org/mine", metrics=METRICS, private=True, token=WRITE_TOKEN, endpoint=fake.url,
                                commit_message="first weights")
        assert fake.repos["org/mine"].private and pushed_sha(url) == fake.head("org/mine")
        with pytest.raises(FileNotFoundError, match="hf-hub:org/mine: no such repository on the Hub .*private"):
            zoo.create("hf-hub:org/mine", endpoint=fake.url, cache_dir=cache, token=False)
        loaded = zoo.create("hf-hub:org/mine", endpoint=fake.url, cache_dir=cache, token=READ_TOKEN)
    assert_same_scores(loaded, model)
    assert zoo.hub.load_config(f"hf-hub:org/mine@{pushed_sha(url)}", cache_dir=cache, local_files_only=True)["metrics"] == METRICS


def test_revisions_pin_what_was_pushed(tmp_path, cache, online):
    first, second, branch = tiny(1), tiny(2), tiny(3)
    assert not torch.equal(first.score(HISTORY), second.score(HISTORY))
    with FakeHub() as fake:
        options = dict(token=WRITE_TOKEN, endpoint=fake.url)
        sha1 = pushed_sha(push_to_hub(save(first, tmp_path / "a"), "org/toy", **options))
        sha2 = pushed_sha(push_to_hub(save(second, tmp_path / "b"), "org/toy", **options))
        assert cli(str(save(branch, tmp_path / "c")), "--repo", "org/toy", "--revision", "exp", "--token", WRITE_TOKEN,
                   "--endpoint", fake.url) == 0
        assert sha1 != sha2 and fake.head("org/toy") == sha2 and fake.head("org/toy", "exp") not in (sha1, sha2)
        for name, expected in ((f"hf-hub:org/toy@{sha1}", first), ("hf-hub:org/toy@main", second),
                               ("hf-hub:org/toy", second), ("hf-hub:org/toy@exp", branch)):
            assert_same_scores(zoo.create(name, endpoint=fake.url, cache_dir=cache), expected)


# ---------------------------------------------------------------- the cache, the Hub gone


def test_cached_models_load_with_the_hub_gone(folder, cache, online, monkeypatch):
    from huggingface_hub import constants

    model = tiny()
    with FakeHub() as fake:
        sha = pushed_sha(push_to_hub(folder, "org/toy", token=WRITE_TOKEN, endpoint=fake.url))
        for name in (f"hf-hub:org/toy@{sha}", "hf-hub:org/toy"):
            zoo.create(name, endpoint=fake.url, cache_dir=cache)

    started = time.monotonic()
    for name in (f"hf-hub:org/toy@{sha}", "hf-hub:org/toy"):  # server stopped: the port is closed
        assert_same_scores(zoo.create(name, endpoint=fake.url, cache_dir=cache), model)
    assert time.monotonic() - started < 5
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    for name in (f"hf-hub:org/toy@{sha}", "hf-hub:org/toy@main"):
        assert_same_scores(zoo.create(name, endpoint=fake.url, cache_dir=cache), model)


# ---------------------------------------------------------------- what the Hub serves is wrong


@pytest.mark.parametrize("damage", [lambda data: data[: len(data) // 2], lambda data: b"<html>gateway error</html>" * 4])
def test_corrupted_weights_from_the_hub_name_the_file(folder, cache, online, damage):
    files = {name: (folder / name).read_bytes() for name in PUBLISHED}
    files["model.safetensors"] = damage(files["model.safetensors"])
    with FakeHub() as fake:
        sha = fake.commit("org/bad", files)
        with pytest.raises(PretrainedLoadError) as info:
            zoo.create("hf-hub:org/bad", endpoint=fake.url, cache_dir=cache)
    cached = cache / "models--org--bad" / "snapshots" / sha / "model.safetensors"
    message = str(info.value)
    assert message.startswith(f"{cached}: not a readable safetensors file") and "re-download" in message


def test_a_damaged_cache_file_is_named_and_force_download_repairs_it(folder, cache, online):
    with FakeHub() as fake:
        sha = pushed_sha(push_to_hub(folder, "org/toy", token=WRITE_TOKEN, endpoint=fake.url))
        zoo.create(f"hf-hub:org/toy@{sha}", endpoint=fake.url, cache_dir=cache)
        cached = cache / "models--org--toy" / "snapshots" / sha / "model.safetensors"
        cached.resolve().write_bytes(cached.read_bytes()[:100])
        with pytest.raises(PretrainedLoadError, match=f"{cached}: not a readable safetensors file .*delete it"):
            zoo.create(f"hf-hub:org/toy@{sha}", endpoint=fake.url, cache_dir=cache)
        repaired = zoo.create(f"hf-hub:org/toy@{sha}", endpoint=fake.url, cache_dir=cache, force_download=True)
    assert_same_scores(repaired, tiny())


def test_a_garbage_config_is_a_clear_error(folder, cache, online):
    with FakeHub() as fake:
        fake.commit("org/bad", {"config.json": b"\xff\xfe not json", "model.safetensors": b""})
        with pytest.raises(PretrainedLoadError, match="config.json: not valid JSON"):
            zoo.create("hf-hub:org/bad", endpoint=fake.url, cache_dir=cache)


# ---------------------------------------------------------------- dry runs


def test_dry_run_prints_the_plan_and_sends_nothing(folder, online, capsys):
    with FakeHub() as fake:
        assert cli(str(folder), "--repo", "org/toy", "--revision", "v2", "--endpoint", fake.url, "--dry-run") == 0
        plan = push_to_hub(folder, "org/toy", endpoint=fake.url, dry_run=True)
        from_memory = tiny().push_to_hub("org/toy", metrics=METRICS, dataset_facts={"name": "toy", "split": {"method": "loo"}},
                                         endpoint=fake.url, dry_run=True)
    assert fake.requests == []
    printed = capsys.readouterr().out.splitlines()
    assert printed[0] == (f"dry run: would upload 3 files ({sum((folder / n).stat().st_size for n in PUBLISHED):,} bytes) "
                          f"to hf-hub:org/toy at revision v2 ({fake.url}); nothing was sent")
    for name in ("config.json", "model.safetensors", "README.md"):
        data = (folder / name).read_bytes()
        assert any(line.split() == [name, f"{len(data):,}", "bytes", "sha256", hashlib.sha256(data).hexdigest()]
                   for line in printed[1:4]), name
    assert "at revision main" in plan and plan in "\n".join(printed)
    # The model in memory is written as the folder was (safetensors' header order varies, so not the weights' hash).
    assert [line.split()[:3] for line in from_memory.splitlines()[1:]] == [line.split()[:3] for line in plan.splitlines()[1:]]
    assert [line for line in plan.splitlines()[1:] if "safetensors" not in line] == \
        [line for line in from_memory.splitlines()[1:] if "safetensors" not in line]


# ---------------------------------------------------------------- errors are one line


def refusing_hub(fake: FakeHub) -> None:
    fake.refuse("/preupload/", 404, "Repository not found", "RepoNotFound")


def existing_repo(fake: FakeHub) -> None:
    fake.commit("org/toy", {"README.md": b"---\nlicense: mit\n---\n"})


BAD_TOKEN = "refused the upload (401: Invalid credentials in Authorization header); the token is missing or invalid: pass --token"


@pytest.mark.parametrize("token, setup, expected", [
    ("hf_not_a_token", None, BAD_TOKEN),
    ("hf_not_a_token", existing_repo, BAD_TOKEN),
    (READ_TOKEN, None, "refused the upload (403: You don't have the rights to write to org/toy; this token is read-only); "
                       "the token may not write to org/toy: use a token with write access to 'org'"),
    (WRITE_TOKEN, refusing_hub, "refused the upload (404: Repository not found); no such repository or revision"),
])
def test_hub_refusals_are_one_line(folder, online, capsys, token, setup, expected):
    with FakeHub() as fake:
        if setup:
            setup(fake)
        assert cli(str(folder), "--repo", "org/toy", "--token", token, "--endpoint", fake.url) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"zoo push: error: hf-hub:org/toy: the Hub at {fake.url} {expected}"), err
    assert err.count("\n") == 1 and "Traceback" not in err


@pytest.mark.parametrize("repo, expected", [
    ("justname", "repository id 'justname': expected 'org/name'"),
    ("org/na me", "repository id 'org/na me' is not valid on the Hub"),
    ("org/name/extra", "repository id 'org/name/extra': expected 'org/name'"),
])
def test_bad_repository_ids_are_refused_before_any_request(folder, online, capsys, repo, expected):
    with FakeHub() as fake:
        assert cli(str(folder), "--repo", repo, "--token", WRITE_TOKEN, "--endpoint", fake.url) == 2
    assert fake.requests == []
    err = capsys.readouterr().err
    assert err.startswith(f"zoo push: error: {expected}") and err.count("\n") == 1


def test_a_folder_that_does_not_load_is_not_pushed(folder, online, capsys):
    (folder / "model.safetensors").write_bytes(b"garbage")
    with FakeHub() as fake:
        assert cli(f"local-dir:{folder}", "--repo", "org/toy", "--token", WRITE_TOKEN, "--endpoint", fake.url) == 2
        (folder / "model.safetensors").unlink()
        assert cli(str(folder), "--repo", "org/toy", "--dry-run") == 2
    assert fake.requests == []
    first, second = capsys.readouterr().err.splitlines()
    assert first.startswith(f"zoo push: error: {folder / 'model.safetensors'}: not a readable safetensors file")
    assert second.startswith(f"zoo push: error: {folder / 'model.safetensors'} does not exist")


def closed_port_url() -> str:
    """An endpoint nothing listens on (the port was free a moment ago)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{sock.getsockname()[1]}"


def test_pushing_to_an_unreachable_hub_fails_fast_naming_the_repo(folder, online, capsys):
    endpoint = closed_port_url()
    started = time.monotonic()
    assert cli(str(folder), "--repo", "org/toy", "--token", WRITE_TOKEN, "--endpoint", endpoint) == 2
    assert time.monotonic() - started < 5
    err = capsys.readouterr().err
    assert err.startswith(f"zoo push: error: hf-hub:org/toy: could not reach the Hub at {endpoint} (")
    assert "check the network, or --endpoint / HF_ENDPOINT" in err and err.count("\n") == 1
    with pytest.raises(PublishError, match="could not reach"):
        tiny().push_to_hub("org/toy", token=WRITE_TOKEN, endpoint=endpoint)


def test_loading_from_an_unreachable_hub_fails_fast_naming_the_repo(cache, online, capsys):
    """Not cached and no Hub: one probe without retries, then the cache alone (the client would retry ~20 s)."""
    endpoint = closed_port_url()
    started = time.monotonic()
    with pytest.raises(FileNotFoundError, match=rf"hf-hub:org/toy: config.json is not in the Hugging Face cache .* "
                                                rf"the Hub at {endpoint} could not be reached"):
        zoo.create("hf-hub:org/toy", endpoint=endpoint, cache_dir=cache)
    assert time.monotonic() - started < 5
