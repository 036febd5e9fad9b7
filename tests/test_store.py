"""The model store against a fake hub on 127.0.0.1 (tests/hubserver.py): what a pull fetches, how it resumes
(after a dropped connection, Ctrl-C or a killed process), verifies, refuses and reuses, and what list / show / rm
print. No test touches the internet."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections import namedtuple
from io import StringIO
from pathlib import Path

import pytest
from huggingface_hub import constants as hf_constants
from rich.console import Console

from gptoss_cli import cli, store, store_view
from gptoss_cli.errors import ConfigError, ExitCode, ModelNotFoundError, NetworkError, UsageError
from hubserver import FakeHub, tiny_model_files

REPO = "openai/gpt-oss-20b"
SHARD = "model-00002-of-00002.safetensors"  # 16 MiB: embedding + lm_head
WANTED = {"config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json",
          "special_tokens_map.json", "chat_template.jinja", "model.safetensors.index.json",
          "model-00000-of-00002.safetensors", "model-00001-of-00002.safetensors", SHARD}

Env = namedtuple("Env", "models hf_cache hub files")


@pytest.fixture(scope="session")
def hub_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, bytes]:
    return tiny_model_files(tmp_path_factory.mktemp("tiny"))


@pytest.fixture(scope="session")
def hub(hub_files: dict[str, bytes]):
    server = FakeHub()
    server.add_repo(REPO, hub_files)
    server.add_repo("testorg/tiny-gpt-oss", hub_files)
    llama = {**hub_files, "config.json": json.dumps({"model_type": "llama", "hidden_size": 64}).encode()}
    server.add_repo("testorg/not-gpt-oss", llama)
    server.start()
    yield server
    server.stop()


@pytest.fixture
def env(hub: FakeHub, hub_files: dict[str, bytes], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Env:
    """A fresh store and Hugging Face cache, with HF_ENDPOINT at the fake hub."""
    hub.reset()
    models, hf_cache = tmp_path / "models", tmp_path / "hf-cache"
    monkeypatch.setenv("GPTOSS_MODELS", str(models))
    monkeypatch.setenv("HF_HUB_CACHE", str(hf_cache))
    monkeypatch.setenv("HF_ENDPOINT", hub.url)
    for var in ("HF_TOKEN", "HF_HUB_OFFLINE", "GPTOSS_DEBUG"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", False)
    return Env(models, hf_cache, hub, hub_files)


def pull(name: str = "gpt-oss-20b") -> store.StoredModel:
    return store.pull(store.prepare_pull(store.parse_ref(name)))


def gptoss(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    """Run the real entry point in-process: (exit code, stdout, stderr)."""
    monkeypatch.setattr(sys, "argv", ["gptoss", *args])
    with pytest.raises(SystemExit) as done:
        cli.main()
    out, err = capsys.readouterr()
    return done.value.code, out, err


def hf_cache_copy(env: Env, skip: set[str] = frozenset()) -> Path:
    """Put the model in the standard Hugging Face cache layout, as another tool would have."""
    commit = env.hub.repos[REPO].commit
    repo_dir = env.hf_cache / "models--openai--gpt-oss-20b"
    snapshot = repo_dir / "snapshots" / commit
    snapshot.mkdir(parents=True)
    for name in WANTED - skip:
        (snapshot / name).write_bytes(env.files[name])
    (repo_dir / "refs").mkdir()
    (repo_dir / "refs" / "main").write_text(commit)
    return snapshot


# ---- names ------------------------------------------------------------------------------------------------------
def test_names_resolve_to_repo_and_revision(tmp_path: Path) -> None:
    assert store.parse_ref("gpt-oss-20b") == store.ModelRef("gpt-oss-20b", "openai/gpt-oss-20b", "main")
    assert store.parse_ref("GPT-OSS-120B").repo_id == "openai/gpt-oss-120b"
    assert store.parse_ref("openai/gpt-oss-20b").name == "gpt-oss-20b"  # a repo id and its alias are one model
    ref = store.parse_ref("someone/fine-tune@v2")
    assert (ref.repo_id, ref.revision, ref.name, ref.slug) == ("someone/fine-tune", "v2", "someone/fine-tune@v2",
                                                               "someone--fine-tune@v2")
    assert store.parse_ref(str(tmp_path)).local_dir == tmp_path.resolve()
    with pytest.raises(UsageError):
        store.parse_ref("not a model")
    with pytest.raises(ModelNotFoundError):
        store.parse_ref("./no/such/dir")


# ---- pulling ----------------------------------------------------------------------------------------------------
def test_pull_fetches_only_the_files_the_engine_loads(env: Env) -> None:
    plan = store.prepare_pull(store.parse_ref("gpt-oss-20b"))
    assert {f.name for f in plan.to_fetch} == WANTED
    assert plan.download_bytes == sum(len(env.files[n]) for n in WANTED)
    model = store.pull(plan)
    assert env.hub.files_served() == WANTED  # never original/, metal/ or README.md
    assert model.complete and model.source == "hub" and model.name == "gpt-oss-20b"
    assert {p.name for p in model.path.iterdir()} == WANTED
    for name in WANTED:
        assert (model.path / name).read_bytes() == env.files[name]
    assert store.resolve_model("gpt-oss-20b") == model.path
    assert store.resolve_model("openai/gpt-oss-20b") == model.path


def test_second_pull_downloads_nothing(env: Env) -> None:
    pull()
    env.hub.reset()
    plan = store.prepare_pull(store.parse_ref("gpt-oss-20b"))
    assert plan.up_to_date
    store.pull(plan)
    assert env.hub.served == []


def test_new_revision_fetches_only_changed_files(env: Env) -> None:
    old = pull()
    changed = {name: data for name, data in env.files.items() if name != "special_tokens_map.json"}
    changed["tokenizer.json"] = b'{"version": "2.0"}'
    try:
        commit = env.hub.add_repo(REPO, changed)
        env.hub.reset()
        model = pull()
    finally:
        env.hub.add_repo(REPO, env.files)
    assert env.hub.files_served() == {"tokenizer.json", "config.json"}
    assert model.commit == commit != old.commit
    assert (model.path / "tokenizer.json").read_bytes() == changed["tokenizer.json"]
    assert not (model.path / "special_tokens_map.json").exists()  # dropped upstream, removed here


def test_dropped_connection_resumes_from_the_bytes_received(env: Env) -> None:
    chunk = hf_constants.DOWNLOAD_CHUNK_SIZE  # what huggingface_hub writes to disk at a time
    env.hub.faults.abort_after[SHARD] = chunk
    model = pull()
    first, second = env.hub.bodies(SHARD)
    assert (first.start, first.sent) == (0, chunk)
    assert (second.start, second.sent) == (chunk, len(env.files[SHARD]) - chunk)  # a Range request for the rest
    assert (model.path / SHARD).read_bytes() == env.files[SHARD]


def test_corrupted_byte_is_detected_and_the_file_removed(env: Env) -> None:
    env.hub.faults.corrupt[SHARD] = 123_456
    with pytest.raises(store.IntegrityError) as caught:
        pull()
    assert SHARD in caught.value.message and "sha256" in caught.value.message
    assert "gptoss pull gpt-oss-20b" in (caught.value.hint or "")
    files = env.models / "gpt-oss-20b" / "files"
    assert not (files / SHARD).exists() and not (files / (SHARD + ".incomplete")).exists()
    with pytest.raises(ModelNotFoundError, match="not fully downloaded"):
        store.resolve_model("gpt-oss-20b")

    env.hub.reset()  # the hub serves good bytes again: only the bad file is fetched again
    model = pull()
    assert env.hub.files_served() == {SHARD, "config.json"}  # config.json: read before planning
    assert (model.path / SHARD).read_bytes() == env.files[SHARD]


def test_pull_refuses_when_the_disk_is_short(env: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    real = shutil.disk_usage
    monkeypatch.setattr(shutil, "disk_usage", lambda p: real(p)._replace(free=store.DISK_HEADROOM + 1_000_000))
    plan = store.prepare_pull(store.parse_ref("gpt-oss-20b"))
    assert not plan.enough_disk
    with pytest.raises(store.DiskSpaceError, match="not enough disk space") as caught:
        store.pull(plan)
    assert "--models-dir" in (caught.value.hint or "")
    assert env.hub.files_served() == {"config.json"}
    assert store.list_models() == []


def test_unknown_repo_or_revision_is_model_not_found(env: Env) -> None:
    for name in ("nobody/nothing", "gpt-oss-20b@no-such-branch"):
        with pytest.raises(ModelNotFoundError) as caught:
            store.prepare_pull(store.parse_ref(name))
        assert caught.value.exit_code == ExitCode.MODEL_NOT_FOUND


def test_repo_that_is_not_gpt_oss_is_refused_before_downloading_weights(env: Env) -> None:
    with pytest.raises(ConfigError, match="gpt_oss"):
        store.prepare_pull(store.parse_ref("testorg/not-gpt-oss"))
    assert env.hub.files_served() == {"config.json"}


def test_hf_token_is_sent_to_the_hub(env: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_TOKEN", "hf_fake_token")
    pull()
    assert env.hub.auth_headers and set(env.hub.auth_headers) == {"Bearer hf_fake_token"}


def test_offline_mode_uses_what_is_here_and_never_calls_the_hub(env: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    pull()
    env.hub.reset()
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", True)
    assert store.prepare_pull(store.parse_ref("gpt-oss-20b")).up_to_date
    with pytest.raises(NetworkError, match="offline") as caught:
        store.prepare_pull(store.parse_ref("gpt-oss-120b"))
    assert caught.value.exit_code == ExitCode.NETWORK
    assert store.resolve_model("gpt-oss-20b").is_dir()
    assert env.hub.served == [] and env.hub.auth_headers == []


# ---- resuming a stopped pull ----------------------------------------------------------------------------------
STOPS = [pytest.param("SIGINT", id="ctrl-c"),
         pytest.param("SIGKILL", id="killed", marks=pytest.mark.skipif(not hasattr(signal, "SIGKILL"),
                                                                      reason="no SIGKILL on this OS"))]


def wait_for(condition, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("timed out waiting")
        time.sleep(0.02)


@pytest.mark.parametrize("stop", STOPS)
def test_pull_stopped_mid_file_resumes_without_refetching(env: Env, stop: str) -> None:
    chunk = hf_constants.DOWNLOAD_CHUNK_SIZE  # huggingface_hub writes to disk this much at a time
    assert chunk + (1 << 20) < len(env.files[SHARD])
    env.hub.faults.stall_after[SHARD] = chunk + (1 << 20)  # then hang: the client is stopped mid-file
    partial = env.models / "gpt-oss-20b" / "files" / (SHARD + ".incomplete")
    child = subprocess.Popen([sys.executable, "-m", "gptoss_cli", "pull", "gpt-oss-20b"], env=os.environ.copy(),
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_for(lambda: partial.is_file() and partial.stat().st_size >= chunk)
        child.send_signal(getattr(signal, stop))
        _, err = child.communicate(timeout=30)
    finally:
        child.kill()
        env.hub.release_stalls()
    if stop == "SIGINT":
        assert child.returncode == ExitCode.INTERRUPTED
        assert "run `gptoss pull gpt-oss-20b` to resume" in err
    have = partial.stat().st_size
    assert 0 < have < len(env.files[SHARD])
    finished = WANTED - {SHARD}
    assert all((partial.parent / n).is_file() for n in finished)  # smaller files came first and were kept

    env.hub.reset()
    plan = store.prepare_pull(store.parse_ref("gpt-oss-20b"))
    assert plan.partial_bytes == have and plan.download_bytes == len(env.files[SHARD]) - have
    model = store.pull(plan)
    assert [(b.start, b.sent) for b in env.hub.bodies(SHARD)] == [(have, len(env.files[SHARD]) - have)]
    assert env.hub.files_served() == {SHARD, "config.json"}  # config.json is read again to plan
    assert (model.path / SHARD).read_bytes() == env.files[SHARD]
    assert not partial.exists()


# ---- reuse ------------------------------------------------------------------------------------------------------
def test_model_in_the_hf_cache_is_reused_not_downloaded(env: Env) -> None:
    snapshot = hf_cache_copy(env)
    assert store.resolve_model("gpt-oss-20b") == snapshot  # found before any pull, without the network
    model = pull()
    assert env.hub.served == []
    assert (model.source, model.path) == ("hf-cache", snapshot)
    assert store.remove_model("gpt-oss-20b").source == "hf-cache"
    assert (snapshot / SHARD).read_bytes() == env.files[SHARD]  # rm forgets it, the HF cache keeps its files


def test_partial_hf_cache_copy_is_completed_from_the_hub(env: Env) -> None:
    hf_cache_copy(env, skip={SHARD})
    plan = store.prepare_pull(store.parse_ref("gpt-oss-20b"))
    assert plan.download_bytes == len(env.files[SHARD])
    model = store.pull(plan)
    assert env.hub.files_served() == {SHARD, "config.json"}
    assert model.source == "hub" and (model.path / "tokenizer.json").read_bytes() == env.files["tokenizer.json"]


def test_local_directory_is_registered_not_copied(env: Env, tmp_path: Path) -> None:
    local = tmp_path / "my-gpt-oss"
    local.mkdir()
    for name in WANTED:
        (local / name).write_bytes(env.files[name])
    model = pull(str(local))
    assert (model.name, model.source, model.path) == ("my-gpt-oss", "local", local.resolve())
    assert store.resolve_model("my-gpt-oss") == local.resolve()
    store.remove_model("my-gpt-oss")
    assert (local / SHARD).is_file() and store.list_models() == []


# ---- the CLI ----------------------------------------------------------------------------------------------------
def test_cli_pull_list_show_rm(env: Env, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = gptoss(monkeypatch, capsys, "pull", "gpt-oss-20b")
    assert code == 0
    assert "16.2 MB in 10 files" in out and "free in" in out and "this PC" in out and "ready: gpt-oss-20b" in out
    assert f"{SHARD} (16.0 MB, sha256 ok)" in err  # plain lines: stderr is not a terminal here

    code, out, _ = gptoss(monkeypatch, capsys, "list", "--json")
    listed = json.loads(out)
    assert code == 0 and [m["name"] for m in listed] == ["gpt-oss-20b"] and listed[0]["size_bytes"] > 16 << 20
    code, out, _ = gptoss(monkeypatch, capsys, "list")
    assert "gpt-oss-20b" in out and "never" in out and "LAST USED" in out

    code, out, _ = gptoss(monkeypatch, capsys, "show", "gpt-oss-20b")
    assert code == 0 and "3 layers" in out and "5 experts (2 active)" in out and SHARD in out and "sha256" in out

    code, _, err = gptoss(monkeypatch, capsys, "rm", "gpt-oss-20b")  # stdin is not a terminal: must not guess
    assert code == ExitCode.USAGE and "--yes" in err
    code, out, _ = gptoss(monkeypatch, capsys, "rm", "gpt-oss-20b", "--yes")
    assert code == 0 and "removed gpt-oss-20b" in out and not (env.models / "gpt-oss-20b").exists()

    code, _, err = gptoss(monkeypatch, capsys, "show", "gpt-oss-20b")
    assert code == ExitCode.MODEL_NOT_FOUND and "gptoss pull gpt-oss-20b" in err


def test_cli_exit_codes_for_unknown_repo_and_offline(env: Env, monkeypatch: pytest.MonkeyPatch,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = gptoss(monkeypatch, capsys, "pull", "nobody/nothing")
    assert code == ExitCode.MODEL_NOT_FOUND and "no model nobody/nothing" in err and "Traceback" not in err
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    code, _, err = gptoss(monkeypatch, capsys, "pull", "gpt-oss-20b")
    assert code == ExitCode.NETWORK and "offline" in err


def test_resolver_says_which_pull_to_run(env: Env) -> None:
    with pytest.raises(ModelNotFoundError) as caught:
        store.resolve_model("gpt-oss-120b")
    assert caught.value.exit_code == ExitCode.MODEL_NOT_FOUND
    assert caught.value.hint == "run `gptoss pull gpt-oss-120b`"


def test_summary_before_download_says_when_the_model_will_not_run_here(env: Env,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    from gptoss_cli import hardware
    from gptoss_cli.model.random_weights import config_dict

    small_pc = hardware.Hardware(gpus=(), ram_total_bytes=16 << 30, ram_available_bytes=12 << 30, cpu_cores=8,
                                 os="Linux")
    monkeypatch.setattr(hardware, "detect", lambda override=None: small_pc)
    big = {**env.files, "config.json": json.dumps(config_dict(num_hidden_layers=36, num_local_experts=128)).encode()}
    env.hub.add_repo("openai/gpt-oss-120b", big)
    fits, lines = store_view.pull_summary(store.prepare_pull(store.parse_ref("gpt-oss-120b")))
    text = "\n".join(lines)
    assert not fits and "will not run here" in text and "would fit with" in text
    assert "16.2 MB in 10 files" in text and "free in" in text
    fits, lines = store_view.pull_summary(store.prepare_pull(store.parse_ref("gpt-oss-20b")))
    assert fits and "runs on the CPU" in "\n".join(lines)
    assert env.hub.files_served() == {"config.json"}  # all of it known before downloading a weight


def test_terminal_progress_shows_bytes_speed_and_files(env: Env) -> None:
    plan = store.prepare_pull(store.parse_ref("gpt-oss-20b"))
    screen = StringIO()
    console = Console(file=screen, force_terminal=True, width=120)
    with store_view.RichPullReporter(console, plan) as reporter:
        store.pull(plan, reporter)
    text = screen.getvalue()
    assert "total" in text and SHARD in text and "16.0 MB of 16.0 MB" in text and "sha256 ok" in text
