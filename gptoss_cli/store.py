"""The model store: pull, list, show and remove gpt-oss models, over ``huggingface_hub``.

Layout under :func:`settings.models_dir` (one folder per model; no symlinks, so Windows behaves like Linux)::

    <models>/<slug>/manifest.json          what was pulled: repo, revision, commit, files with size and hash
    <models>/<slug>/files/                 the model directory the engine loads (hub layout)
    <models>/<slug>/files/NAME.incomplete  a download in progress; the next pull resumes it
    <models>/<slug>/last_used              touched whenever a command resolves the model

A model already complete in the standard Hugging Face cache, or a directory the user registers, gets a manifest
whose ``path`` points there; nothing is copied, and ``remove_model`` only forgets it.

Why the weights do not go through ``hf_hub_download``: since huggingface_hub 1.x every download writes to a
process-unique temporary file that is deleted when the download fails, so a pull killed after 10 GB would start
over. The store keeps the partial file itself and lets huggingface_hub's ``http_get`` resume it with a Range
request; the sha256 the hub publishes for every LFS file is checked before the file takes its final name.

Nothing here prints: progress goes to a :class:`PullReporter`, problems are :class:`GptossError` subclasses.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import hashlib
import io
import json
import os
import re
import shutil
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from . import settings
from .errors import ConfigError, GptossError, ModelNotFoundError, NetworkError, UsageError
from .model.config import GptOssConfig

if TYPE_CHECKING:
    from huggingface_hub.hf_api import RepoSibling

ALIASES = {"gpt-oss-20b": "openai/gpt-oss-20b", "gpt-oss-120b": "openai/gpt-oss-120b"}
# What the engine loads, at the top level of a repo. The official repos also hold original/ and metal/ copies of
# the weights, which would double the download.
WANTED_FILES = ["config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json",
                "special_tokens_map.json", "chat_template.jinja", "model.safetensors.index.json",
                "model*.safetensors"]
INDEX_FILE = "model.safetensors.index.json"
DISK_HEADROOM = 512 << 20  # a pull must leave this much free: a full disk breaks more than the download
MANIFEST, FILES, LAST_USED, PARTIAL = "manifest.json", "files", "last_used", ".incomplete"
_REPO_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*")


class DiskSpaceError(GptossError):
    """Not enough free space for a pull; nothing was downloaded (or the partial files are kept)."""


class IntegrityError(GptossError):
    """A downloaded file does not match the hub's hash; it has been removed."""


# ---- names ------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ModelRef:
    """What the user named: a hub repo at a revision, or a local directory."""

    name: str  # how the store lists it: an alias, org/name[@revision], or the directory's name
    repo_id: str | None = None
    revision: str = "main"
    local_dir: Path | None = None

    @property
    def slug(self) -> str:
        return re.sub(r"[^A-Za-z0-9._@-]+", "--", self.name)


def parse_ref(text: str) -> ModelRef:
    """``gpt-oss-20b``, ``openai/gpt-oss-20b@<rev>`` or a directory -> :class:`ModelRef`."""
    text = text.strip()
    path = Path(text).expanduser()
    if text and path.is_dir():
        return ModelRef(name=path.resolve().name, local_dir=path.resolve())
    base, _, revision = text.partition("@")
    repo_id = ALIASES.get(base.lower(), base)
    if not _REPO_ID.fullmatch(repo_id) or "--" in repo_id or ".." in repo_id:
        if text.startswith((".", "~")) or os.sep in text or (os.altsep and os.altsep in text):
            raise ModelNotFoundError(f"{text}: no such directory")
        raise UsageError(f"{text!r} is not a model name",
                         hint="use gpt-oss-20b, gpt-oss-120b, a hub repo id such as openai/gpt-oss-20b "
                              "(optionally @revision), or a model directory")
    revision = revision or "main"
    short = next((alias for alias, rid in ALIASES.items() if rid == repo_id), repo_id)
    return ModelRef(name=short if revision == "main" else f"{short}@{revision}", repo_id=repo_id, revision=revision)


# ---- records ----------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ModelFile:
    name: str
    size: int
    sha256: str | None = None  # LFS files: the hub's sha256 of the content
    git_oid: str | None = None  # small files: the git blob id


@dataclass
class StoredModel:
    """One entry of the store, as ``gptoss list`` shows it."""

    name: str
    path: Path  # the model directory (hub layout) that commands load
    source: str  # "hub": downloaded into the store; "hf-cache": in the Hugging Face cache; "local": registered
    files: list[ModelFile]
    complete: bool
    entry_dir: Path
    repo_id: str | None = None
    revision: str | None = None
    commit: str | None = None
    pulled_at: str | None = None
    last_used: float | None = None  # seconds since the epoch; None if never

    @property
    def size_bytes(self) -> int:
        return sum(f.size for f in self.files)

    def disk_bytes(self) -> int:
        """Bytes on disk now, partial downloads included (what ``rm`` would free for a "hub" entry)."""
        return sum(p.stat().st_size for p in self.path.rglob("*") if p.is_file()) if self.path.is_dir() else 0

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "path": str(self.path), "source": self.source, "complete": self.complete,
                "size_bytes": self.size_bytes, "repo_id": self.repo_id, "revision": self.revision,
                "commit": self.commit, "pulled_at": self.pulled_at,
                "last_used": None if self.last_used is None else
                datetime.fromtimestamp(self.last_used, timezone.utc).isoformat(timespec="seconds"),
                "files": [asdict(f) for f in self.files]}


def _read_entry(entry_dir: Path) -> StoredModel | None:
    try:
        raw = json.loads((entry_dir / MANIFEST).read_text(encoding="utf-8"))
        files = [ModelFile(**f) for f in raw["files"]]
        path = Path(raw["path"]) if raw.get("path") else entry_dir / FILES
        name, source, complete = raw["name"], raw["source"], bool(raw["complete"])
    except (OSError, ValueError, KeyError, TypeError):
        return None  # not an entry (or a damaged one): list and resolve skip it
    used = entry_dir / LAST_USED
    return StoredModel(name=name, path=path, source=source, files=files, complete=complete, entry_dir=entry_dir,
                       repo_id=raw.get("repo_id"), revision=raw.get("revision"), commit=raw.get("commit"),
                       pulled_at=raw.get("pulled_at"), last_used=used.stat().st_mtime if used.exists() else None)


def _write_manifest(entry_dir: Path, ref: ModelRef, source: str, files: list[ModelFile], *, complete: bool,
                    commit: str | None = None, path: Path | None = None) -> None:
    entry_dir.mkdir(parents=True, exist_ok=True)
    raw = {"name": ref.name, "source": source, "path": str(path) if path else None, "repo_id": ref.repo_id,
           "revision": ref.revision if ref.repo_id else None, "commit": commit,
           "files": [asdict(f) for f in files], "complete": complete,
           "pulled_at": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    tmp = entry_dir / (MANIFEST + ".tmp")
    tmp.write_text(json.dumps(raw, indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, entry_dir / MANIFEST)


# ---- the hub ----------------------------------------------------------------------------------------------------
@contextlib.contextmanager
def _hub_errors(ref: ModelRef, what: str | None = None) -> Iterator[None]:
    """Turn huggingface_hub's and the transport's exceptions into errors a user can act on."""
    import httpx2
    from huggingface_hub.errors import (GatedRepoError, HfHubHTTPError, OfflineModeIsEnabled,
                                        RepositoryNotFoundError, RevisionNotFoundError)

    endpoint = settings.hf_endpoint()
    resume = f"run `gptoss pull {ref.name}` again to resume" if what else f"run `gptoss pull {ref.name}` again"
    try:
        yield
    except GatedRepoError:
        raise ModelNotFoundError(f"{ref.repo_id} is gated on {endpoint} and this account has no access",
                                 hint="accept its terms on the model page and set HF_TOKEN") from None
    except RepositoryNotFoundError:
        raise ModelNotFoundError(f"no model {ref.repo_id} on {endpoint}",
                                 hint="check the name (built in: gpt-oss-20b, gpt-oss-120b); "
                                      "for a private repo set HF_TOKEN") from None
    except RevisionNotFoundError:
        raise ModelNotFoundError(f"{ref.repo_id} has no revision {ref.revision!r}",
                                 hint="use a branch, tag or commit that exists, or leave out @revision") from None
    except OfflineModeIsEnabled:
        raise NetworkError("offline mode is on (HF_HUB_OFFLINE) so the hub cannot be reached",
                           hint="unset HF_HUB_OFFLINE to download") from None
    except HfHubHTTPError as exc:
        status = exc.response.status_code if exc.response is not None else None
        if status in (401, 403):
            raise GptossError(f"{endpoint} refused access to {ref.repo_id} ({status})",
                              hint="check HF_TOKEN") from None
        raise NetworkError(f"{endpoint} answered {status} for {what or ref.repo_id}", hint=resume) from None
    except httpx2.TransportError as exc:
        raise NetworkError(f"cannot reach {endpoint}" + (f" while downloading {what}" if what else "")
                           + f" ({type(exc).__name__}: {exc})",
                           hint=resume + "; models already pulled work offline") from None


def _remote_files(ref: ModelRef) -> tuple[list[ModelFile], str]:
    """The files to pull (with sizes and hashes) and the commit the revision points at."""
    from huggingface_hub import HfApi
    from huggingface_hub.utils import filter_repo_objects

    assert ref.repo_id is not None
    with _hub_errors(ref):
        info = HfApi(endpoint=settings.hf_endpoint()).model_info(ref.repo_id, revision=ref.revision,
                                                                  files_metadata=True)
    top: list[RepoSibling] = [s for s in info.siblings or [] if "/" not in s.rfilename]
    files = [ModelFile(s.rfilename, s.lfs.size if s.lfs else s.size or 0, s.lfs.sha256 if s.lfs else None,
                       None if s.lfs else s.blob_id)
             for s in filter_repo_objects(top, allow_patterns=WANTED_FILES, key=lambda s: s.rfilename)]
    names = {f.name for f in files}
    if "config.json" not in names or not any(n.endswith(".safetensors") for n in names):
        raise GptossError(f"{ref.repo_id} has no config.json and safetensors weights at its top level",
                          hint="gptoss runs gpt-oss checkpoints in the Hugging Face layout, like openai/gpt-oss-20b")
    if info.sha is None:
        raise NetworkError(f"{settings.hf_endpoint()} did not say which commit {ref.revision!r} is")
    return files, info.sha


def _fetch_config(ref: ModelRef, commit: str) -> GptOssConfig:
    """config.json, read before any large download so a repo that is not gpt-oss is refused up front."""
    from huggingface_hub import hf_hub_url
    from huggingface_hub.file_download import http_get
    from huggingface_hub.utils import build_hf_headers, silent_tqdm

    assert ref.repo_id is not None
    buf = io.BytesIO()
    with _hub_errors(ref, "config.json"):
        http_get(hf_hub_url(ref.repo_id, "config.json", revision=commit, endpoint=settings.hf_endpoint()), buf,
                 headers=build_hf_headers(), tqdm_class=silent_tqdm)
    try:
        raw = json.loads(buf.getvalue())
    except ValueError as exc:
        raise ConfigError(f"{ref.repo_id}/config.json is not valid JSON ({exc})") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{ref.repo_id}/config.json: expected a JSON object")
    return GptOssConfig.from_dict(raw, source=f"{ref.repo_id}/config.json")


# ---- files on disk ----------------------------------------------------------------------------------------------
def _local_files(directory: Path) -> list[ModelFile]:
    from huggingface_hub.utils import filter_repo_objects

    names = sorted(p.name for p in directory.iterdir() if p.is_file())
    return [ModelFile(n, (directory / n).stat().st_size) for n in filter_repo_objects(names,
                                                                                      allow_patterns=WANTED_FILES)]


def _missing_weights(directory: Path) -> list[str]:
    """Weight files a model directory lacks: the shards its index names, or any safetensors file at all."""
    index = directory / INDEX_FILE
    if index.is_file():
        try:
            shards = sorted(set(json.loads(index.read_text(encoding="utf-8"))["weight_map"].values()))
        except (ValueError, KeyError, AttributeError):
            return [INDEX_FILE]
        return [s for s in shards if not (directory / s).is_file()]
    return [] if any(directory.glob("*.safetensors")) else ["*.safetensors"]


def _hf_cache_hits(repo_id: str, commit: str, files: list[ModelFile]) -> dict[str, Path]:
    """Files of this commit already in the standard Hugging Face cache, with the size the hub says."""
    from huggingface_hub import try_to_load_from_cache

    hits = {}
    for f in files:
        hit = try_to_load_from_cache(repo_id, f.name, cache_dir=settings.hf_hub_cache(), revision=commit)
        if isinstance(hit, str) and os.path.getsize(hit) == f.size:
            hits[f.name] = Path(hit)
    return hits


def _hf_cache_snapshot(ref: ModelRef) -> Path | None:
    """A complete copy of ``ref`` in the Hugging Face cache (found without the network), or None."""
    from huggingface_hub import try_to_load_from_cache

    if ref.repo_id is None:
        return None
    hit = try_to_load_from_cache(ref.repo_id, "config.json", cache_dir=settings.hf_hub_cache(), revision=ref.revision)
    if not isinstance(hit, str):
        return None
    snapshot = Path(hit).parent
    return None if _missing_weights(snapshot) else snapshot


def _free_bytes(path: Path) -> int:
    while not path.exists() and path.parent != path:
        path = path.parent
    return shutil.disk_usage(path).free


def _verify(path: Path, f: ModelFile) -> str | None:
    """None when ``path`` matches the hub's hash for ``f``, else the hash it has."""
    if f.sha256:
        digest, expected = hashlib.sha256(), f.sha256
    elif f.git_oid:
        digest, expected = hashlib.sha1(b"blob %d\0" % path.stat().st_size), f.git_oid
    else:
        return None
    with path.open("rb") as fh:
        while chunk := fh.read(8 << 20):
            digest.update(chunk)
    actual = digest.hexdigest()
    return None if actual == expected else actual


# ---- planning a pull --------------------------------------------------------------------------------------------
@dataclass
class PullPlan:
    """Everything known before the first byte moves: what, where, how much, and what is already here."""

    ref: ModelRef
    source: str  # "hub", "hf-cache" or "local" (see StoredModel.source)
    path: Path  # the model directory once pulled
    entry_dir: Path
    files: list[ModelFile]
    config: GptOssConfig
    commit: str | None = None
    to_fetch: list[ModelFile] = field(default_factory=list)
    from_hf_cache: dict[str, Path] = field(default_factory=dict)  # files copied from a partial HF-cache copy
    partial_bytes: int = 0  # bytes of to_fetch already on disk from an interrupted pull
    free_bytes: int = 0
    up_to_date: bool = False

    @property
    def total_bytes(self) -> int:
        return sum(f.size for f in self.files)

    @property
    def download_bytes(self) -> int:
        """Bytes still to come over the network."""
        return sum(f.size for f in self.to_fetch if f.name not in self.from_hf_cache) - self.partial_bytes

    @property
    def needed_bytes(self) -> int:
        """Bytes this pull will add to the disk."""
        return sum(f.size for f in self.to_fetch) - self.partial_bytes

    @property
    def enough_disk(self) -> bool:
        return self.needed_bytes == 0 or self.needed_bytes + DISK_HEADROOM <= self.free_bytes


def prepare_pull(ref: ModelRef, models_dir: str | Path | None = None) -> PullPlan:
    """Look up ``ref`` (on the hub unless offline) and work out what a pull has to do. Downloads only config.json."""
    root = settings.models_dir(models_dir)
    entry_dir = root / ref.slug
    if ref.local_dir is not None:
        return _plan_local(ref, entry_dir, root)
    existing = _read_entry(entry_dir)
    if settings.offline():
        return _plan_offline(ref, entry_dir, existing)
    files, commit = _remote_files(ref)
    if existing and existing.complete and existing.commit == commit and _sizes_match(existing):
        return PullPlan(ref, existing.source, existing.path, entry_dir, existing.files,
                        GptOssConfig.from_file(existing.path), commit, free_bytes=_free_bytes(existing.path),
                        up_to_date=True)
    assert ref.repo_id is not None
    hits = _hf_cache_hits(ref.repo_id, commit, files)
    if len(hits) == len(files):
        path = hits["config.json"].parent
        return PullPlan(ref, "hf-cache", path, entry_dir, files, GptOssConfig.from_file(path), commit,
                        free_bytes=_free_bytes(path))
    target = entry_dir / FILES
    # Files under their final name were verified against the manifest's hashes when they got there, and partial
    # files hold the start of the manifest's version of a file: both count only where the hub still has that file.
    known = set(existing.files) if existing and existing.source == "hub" else set()
    to_fetch = sorted((f for f in files if f not in known or not _is_complete(target / f.name, f)),
                      key=lambda f: (f.size, f.name))  # small files first: the shards' progress is what matters
    partial = sum(_resumable_bytes(target, f) for f in to_fetch if f in known and f.name not in hits)
    return PullPlan(ref, "hub", target, entry_dir, files, _fetch_config(ref, commit), commit, to_fetch,
                    {f.name: hits[f.name] for f in to_fetch if f.name in hits}, partial, _free_bytes(target))


def _plan_local(ref: ModelRef, entry_dir: Path, root: Path) -> PullPlan:
    assert ref.local_dir is not None
    config = GptOssConfig.from_file(ref.local_dir)
    missing = _missing_weights(ref.local_dir)
    if missing:
        raise ModelNotFoundError(f"{ref.local_dir} lacks weight files: {', '.join(missing[:3])}",
                                 hint="a model directory holds config.json and the safetensors weights (hub layout)")
    existing = _read_entry(entry_dir)
    if existing and existing.path != ref.local_dir:
        raise UsageError(f"a model named {ref.name!r} is already in {root} (from {existing.path})",
                         hint=f"remove it first with `gptoss rm {ref.name}`, or rename the directory")
    return PullPlan(ref, "local", ref.local_dir, entry_dir, _local_files(ref.local_dir), config,
                    free_bytes=_free_bytes(ref.local_dir))


def _plan_offline(ref: ModelRef, entry_dir: Path, existing: StoredModel | None) -> PullPlan:
    if existing and existing.complete and _sizes_match(existing):
        return PullPlan(ref, existing.source, existing.path, entry_dir, existing.files,
                        GptOssConfig.from_file(existing.path), existing.commit, up_to_date=True)
    snapshot = _hf_cache_snapshot(ref)
    if snapshot is not None:
        return PullPlan(ref, "hf-cache", snapshot, entry_dir, _local_files(snapshot),
                        GptOssConfig.from_file(snapshot), snapshot.name)
    raise NetworkError(f"{ref.name} is not downloaded and offline mode is on (HF_HUB_OFFLINE)",
                       hint=f"unset HF_HUB_OFFLINE and run `gptoss pull {ref.name}`")


def _size(path: Path) -> int:
    return path.stat().st_size if path.is_file() else 0


def _resumable_bytes(directory: Path, f: ModelFile) -> int:
    have = _size(directory / (f.name + PARTIAL))
    return have if have <= f.size else 0  # a longer file cannot be a prefix of this one


def _is_complete(path: Path, f: ModelFile) -> bool:
    """Present at the expected size (verified files only get their final name; this catches later damage)."""
    return path.is_file() and path.stat().st_size == f.size


def _sizes_match(model: StoredModel) -> bool:
    return all(_is_complete(model.path / f.name, f) for f in model.files)


# ---- pulling ----------------------------------------------------------------------------------------------------
class PullReporter(Protocol):
    """Where a pull reports progress; the CLI draws it (rich bars on a TTY, lines otherwise)."""

    def start(self, name: str, size: int, done: int) -> None: ...

    def advance(self, name: str, nbytes: int) -> None: ...

    def verifying(self, name: str) -> None: ...

    def finish(self, name: str, note: str) -> None: ...


class SilentReporter:
    def start(self, name: str, size: int, done: int) -> None:
        pass

    def advance(self, name: str, nbytes: int) -> None:
        pass

    def verifying(self, name: str) -> None:
        pass

    def finish(self, name: str, note: str) -> None:
        pass


class _ReporterBar:
    """The tqdm-shaped object huggingface_hub's ``http_get`` reports to, forwarding bytes to a PullReporter."""

    def __init__(self, reporter: PullReporter, name: str, **_tqdm_kwargs: Any) -> None:
        self._reporter, self._name = reporter, name

    def __enter__(self) -> _ReporterBar:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def update(self, n: float | None = 1) -> None:
        self._reporter.advance(self._name, int(n or 0))


def pull(plan: PullPlan, reporter: PullReporter | None = None) -> StoredModel:
    """Carry out ``plan``. Interrupted or failed pulls keep what was verified plus the partial file; run again."""
    reporter = reporter or SilentReporter()
    if plan.up_to_date:
        model = _read_entry(plan.entry_dir)
        assert model is not None
        return model
    if plan.source in ("local", "hf-cache"):
        _write_manifest(plan.entry_dir, plan.ref, plan.source, plan.files, complete=True, commit=plan.commit,
                        path=plan.path)
        return _entry(plan.entry_dir)
    if not plan.enough_disk:
        raise DiskSpaceError(
            f"not enough disk space: {plan.ref.name} needs {_gb(plan.needed_bytes)} more in {plan.entry_dir.parent}, "
            f"which has {_gb(plan.free_bytes)} free (and gptoss keeps {_gb(DISK_HEADROOM)} spare)",
            hint=f"free some space, or pull to a larger drive with --models-dir or {settings.MODELS_ENV}")
    plan.path.mkdir(parents=True, exist_ok=True)
    previous = _read_entry(plan.entry_dir)
    resumable = set(previous.files) if previous and previous.source == "hub" else set()
    for f in plan.to_fetch:
        if f not in resumable:  # a partial file of another version (or none at all)
            (plan.path / (f.name + PARTIAL)).unlink(missing_ok=True)
    _write_manifest(plan.entry_dir, plan.ref, "hub", plan.files, complete=False, commit=plan.commit)
    for f in plan.to_fetch:
        dest = plan.path / f.name
        if f.name in plan.from_hf_cache:
            _link_or_copy(plan.from_hf_cache[f.name], dest)
            reporter.finish(f.name, "copied from the Hugging Face cache")
        else:
            _download(plan, f, dest, reporter)
    wanted = {f.name for f in plan.files}
    for stale in plan.path.iterdir():  # files of an older revision
        if stale.is_file() and stale.name.removesuffix(PARTIAL) not in wanted:
            stale.unlink()
    _write_manifest(plan.entry_dir, plan.ref, "hub", plan.files, complete=True, commit=plan.commit)
    return _entry(plan.entry_dir)


def _download(plan: PullPlan, f: ModelFile, dest: Path, reporter: PullReporter) -> None:
    from huggingface_hub import hf_hub_url
    from huggingface_hub.file_download import http_get
    from huggingface_hub.utils import build_hf_headers

    assert plan.ref.repo_id is not None and plan.commit is not None
    part = dest.with_name(dest.name + PARTIAL)
    have = _size(part)
    if have > f.size:  # cannot be a prefix of this file
        part.unlink()
        have = 0
    reporter.start(f.name, f.size, have)
    url = hf_hub_url(plan.ref.repo_id, f.name, revision=plan.commit, endpoint=settings.hf_endpoint())
    try:
        with _hub_errors(plan.ref, f.name), part.open("ab") as out:
            http_get(url, out, resume_size=have, headers=build_hf_headers(), expected_size=f.size,
                     displayed_filename=f.name, tqdm_class=functools.partial(_ReporterBar, reporter, f.name))
    except OSError as exc:
        if exc.errno == errno.ENOSPC:
            raise DiskSpaceError(f"the disk filled up while downloading {f.name}",
                                 hint=f"free some space and run `gptoss pull {plan.ref.name}` to resume") from None
        part.unlink(missing_ok=True)  # http_get's size check failed: the bytes cannot be trusted
        raise IntegrityError(f"{f.name} arrived with the wrong size; the partial file was removed",
                             hint=f"run `gptoss pull {plan.ref.name}` again") from None
    reporter.verifying(f.name)
    actual = _verify(part, f)
    if actual is not None:
        part.unlink()
        kind, expected = ("sha256", f.sha256) if f.sha256 else ("git blob id", f.git_oid)
        raise IntegrityError(f"{f.name} is corrupt: its {kind} is {actual[:16]}…, the hub says {expected}; "
                             "the bad file was removed",
                             hint=f"run `gptoss pull {plan.ref.name}` again to download it afresh")
    os.replace(part, dest)
    reporter.finish(f.name, "sha256 ok" if f.sha256 else "verified")


def _link_or_copy(src: Path, dest: Path) -> None:
    """A hard link costs no space when the Hugging Face cache is on the same drive; otherwise copy."""
    dest.unlink(missing_ok=True)
    try:
        os.link(os.path.realpath(src), dest)
    except OSError:
        shutil.copyfile(src, dest)


def _entry(entry_dir: Path) -> StoredModel:
    model = _read_entry(entry_dir)
    assert model is not None, entry_dir
    return model


def _gb(n: int) -> str:
    return f"{n / 1e9:.1f} GB" if n >= 1e8 else f"{n / 1e6:.1f} MB"


# ---- the store --------------------------------------------------------------------------------------------------
def list_models(models_dir: str | Path | None = None) -> list[StoredModel]:
    root = settings.models_dir(models_dir)
    if not root.is_dir():
        return []
    return [m for d in sorted(root.iterdir()) if d.is_dir() and (m := _read_entry(d)) is not None]


def find_model(name: str, models_dir: str | Path | None = None) -> StoredModel | None:
    """The store entry called ``name`` (an alias and its repo id find the same entry)."""
    models = list_models(models_dir)
    for m in models:
        if m.name == name:
            return m
    try:
        ref = parse_ref(name)
    except GptossError:
        return None
    return next((m for m in models if m.name == ref.name or (ref.local_dir and m.path == ref.local_dir)), None)


def remove_model(name: str, models_dir: str | Path | None = None) -> StoredModel:
    """Delete a pulled model's files, or forget a registered one (its files are not ours to delete)."""
    model = find_model(name, models_dir)
    if model is None:
        raise ModelNotFoundError(f"no model {name!r} in {settings.models_dir(models_dir)}",
                                 hint="`gptoss list` shows what is there")
    shutil.rmtree(model.entry_dir)
    return model


def resolve_model(name_or_path: str, models_dir: str | Path | None = None) -> Path:
    """The model directory for a name or path, for commands that load a model. Works offline.

    Looks at a directory path, then the store, then the standard Hugging Face cache. Raises
    :class:`ModelNotFoundError` (exit 3) saying which ``gptoss pull`` to run.
    """
    path = Path(name_or_path).expanduser()
    if name_or_path and path.is_dir():
        if not (path / "config.json").is_file():
            raise ModelNotFoundError(f"{path} has no config.json",
                                     hint="point at a model directory in the Hugging Face layout, "
                                          "or run `gptoss pull gpt-oss-20b`")
        return path.resolve()
    model = find_model(name_or_path, models_dir)
    if model is not None:
        if not model.complete:
            raise ModelNotFoundError(f"{model.name} was not fully downloaded",
                                     hint=f"run `gptoss pull {model.name}` to resume")
        if not (model.path / "config.json").is_file():
            raise ModelNotFoundError(f"the files of {model.name} are gone from {model.path}",
                                     hint=f"run `gptoss pull {model.name}`")
        with contextlib.suppress(OSError):  # a read-only store still loads
            (model.entry_dir / LAST_USED).touch()
        return model.path
    ref = parse_ref(name_or_path)
    snapshot = _hf_cache_snapshot(ref)
    if snapshot is not None:
        return snapshot
    raise ModelNotFoundError(f"model {ref.name} is not downloaded", hint=f"run `gptoss pull {ref.name}`")

