"""Turn a weights spec into a verified local file: a registry name, a URL, a hub tag or a path.

Specs, in the order they are recognised (:func:`classify`):

* ``http://`` / ``https://`` URL: downloaded once into torch.hub's cache folder
  ``<torch.hub.get_dir()>/checkpoints`` (``$TORCH_HOME/hub/checkpoints``), keyed on the URL
  (:func:`cache_path`). An official URL of the registry is fetched from the mirror
  ``TINYVIT_ZOO_MIRROR`` names, and lands at ``checkpoints/<file name>``, where mmengine and
  torch.hub put that URL's file too, so a file fetched by either is found here and vice versa.
  Any other URL lands at ``checkpoints/by_url/<sha256(url)[:16]>/<file name>``: a file name
  alone does not say which server it came from (``/a/x.pth`` and ``/b/x.pth`` may be two
  checkpoints), and only the registry guarantees one file per name, on every mirror alike;
* ``hf-hub:<org>/<repo>``: fetched by huggingface_hub into its cache (``HF_HOME`` /
  ``HF_HUB_CACHE``; ``HF_HUB_OFFLINE=1`` reads only the cache, ``HF_ENDPOINT`` selects a
  mirror); ``model.safetensors``, else ``pytorch_model.bin``, as timm does. When the hub
  cannot be reached (a connect probe of a few seconds, :func:`hub_unreachable`) only the cache
  is read, instead of retrying for most of a minute;
* an existing local file: used as is;
* a registry name (:mod:`tinyvit_backbone.zoo`, e.g. ``tiny_vit_21m_22kto1k_distill``): its
  official URL, as above;
* ``timm/<model>.<tag>``: a hub tag, as ``hf-hub:`` (a relative path of that name wins).

Integrity. A URL download streams into a temporary file in the cache folder, with a progress
bar, and is renamed only once it is verified as a complete checkpoint
(:func:`checkpoint_problem`: a length short of ``Content-Length`` is refused, and since a
server that closes the connection early without a ``Content-Length`` looks like a finished
download, the file itself must prove complete: a torch zip archive whose central directory is
there and whose members pass their CRC check, a safetensors file whose header accounts for
every byte, or an old-style torch file that ``torch.load`` reads), so an interrupted download is
never kept and a rerun fetches it again. Its URL, size and SHA-256 are then recorded next to it
in ``<file>.record.json`` (``{"url", "name", "size", "sha256", "verified", "recorded"}``) and
checked on every later use, by URL, name or path: a truncated, altered or foreign file (a record
naming another URL) is refused, logged, and fetched again. A file placed in the cache by hand
(offline machines) or by another tool has no record yet: it is verified and recorded on first
use; a record written before the completeness check existed is checked once more. Hugging Face
stores large files under their SHA-256 (``blobs/<sha256>``); that name is the record checked on
every use. Processes that resolve the same URL at once (torchrun ranks) take a file lock, so
one downloads and the others reuse it.
"""
from __future__ import annotations

import difflib
import hashlib
import http.client
import logging
import os
import re
import socket
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

from . import zoo
from .files import atomic_write, atomic_write_json, read_json, sha256_file
from .progress import progress_bar
from .zoo import ZooEntry

logger = logging.getLogger(__name__)
Log = Callable[[str], None]

RECORD_SUFFIX = ".record.json"
URL_KEYED_DIR = "by_url"
HUB_FILES = ("model.safetensors", "pytorch_model.bin")
TIMEOUT_S = 60.0
# A TCP connect to a reachable host takes well under a second, even across continents; a
# machine without a route answers at once or never, so a few seconds tell "offline" apart.
PROBE_TIMEOUT_S = 3.0
_HUB_TAG = re.compile(r"^timm/[\w.\-]+$")


class CheckpointError(ValueError):
    """Weights that cannot be found, fetched, verified or mapped onto the model; the message
    says what to do."""


class WeightsNotFoundError(CheckpointError, FileNotFoundError):
    """A spec that is neither an existing file nor a registry name, URL or hub tag."""


@dataclass(frozen=True)
class Weights:
    """A resolved spec: ``path`` is a local, verified file.

    ``kind`` is 'url' | 'hub' | 'path' | 'name'; ``source`` the URL, hub tag or path it came
    from; ``entry`` the registry entry when the weights are an official checkpoint (known by
    name, URL, hub tag or download record); ``sha256`` the verified digest (None for a plain
    local file, which is not hashed).
    """

    spec: str
    kind: str
    source: str
    path: str
    entry: ZooEntry | None = None
    sha256: str | None = None

    def describe(self) -> str:
        if self.kind == "path":
            return self.path
        return f"{self.spec} ({self.path})" if self.spec != self.path else self.path


# --------------------------------------------------------------------------- classification
Spec = str | os.PathLike | Weights  # what every loader of the project accepts


def classify(spec: Spec) -> tuple[str, str, ZooEntry | None]:
    """``(kind, source, entry)`` of a spec, without touching the network (see module doc)."""
    if isinstance(spec, Weights):
        return spec.kind, spec.source, spec.entry
    text = os.fspath(spec)
    if text.startswith(("http://", "https://")):  # an official URL is fetched from the mirror
        return "url", zoo.mirrored(text), zoo.by_url(text)
    if text.startswith("hf-hub:"):
        return "hub", text.removeprefix("hf-hub:"), zoo.by_hub_tag(text)
    if os.path.exists(text):
        return "path", text, _recorded_entry(text)
    entry = zoo.get(text)
    if entry is not None:
        return "name", entry.url, entry
    if _HUB_TAG.match(text):
        return "hub", text, zoo.by_hub_tag(text)
    return "path", text, None


def entry_of(spec: Spec) -> ZooEntry | None:
    """The registry entry a spec names (by name, URL, hub tag or a cached file's record)."""
    return classify(spec)[2]


def resolve_weights(spec: Spec, *, progress: bool | None = None,
                    log: Log | None = None) -> Weights:
    """Return the verified local file for ``spec``, downloading it if needed (an already
    resolved :class:`Weights` is returned as is, so callers never hash a file twice)."""
    if isinstance(spec, Weights):
        return spec
    log = log or logger.info
    kind, source, entry = classify(spec)
    text = os.fspath(spec)
    if kind in ("url", "name"):
        path, digest = fetch_url(source, entry=entry, progress=progress, log=log)
        return Weights(text, kind, source, path, entry, digest)
    if kind == "hub":
        path, digest = fetch_hub(source, entry=entry, progress=progress, log=log)
        return Weights(text, kind, source, path, entry, digest)
    if not os.path.isfile(text):
        raise WeightsNotFoundError(_not_found_message(text))
    record = _read_record(text)
    if record is None:
        return Weights(text, "path", text, text, entry, None)
    # A download given by its path (a result or manifest recorded it): checked like a URL.
    url = record.get("url")
    if url and os.path.abspath(text) == os.path.abspath(cache_path(url)):
        _, digest = fetch_url(url, entry=entry, progress=progress, log=log)
        return Weights(text, "path", text, text, entry, digest)
    problem = _verify(text, record)
    if problem is not None:
        raise CheckpointError(f"{text} failed its check ({problem}): delete it and its "
                              f"{RECORD_SUFFIX}, then fetch it again from {url or 'its source'}")
    return Weights(text, "path", text, text, entry, record["sha256"])


def _not_found_message(text: str) -> str:
    close = difflib.get_close_matches(os.path.basename(text).removesuffix(".pth"), zoo.names(),
                                      n=3, cutoff=0.6)
    hint = f" Did you mean {', '.join(close)}?" if close else ""
    return (f"weights {text!r} not found: no such file, and not a registry name, an http(s) URL "
            f"or a timm/... hub tag.{hint} Registry names: python -m tinyvit_backbone.weights "
            "list")


# --------------------------------------------------------------------------- URL downloads
def cache_dir() -> str:
    """torch.hub's checkpoint folder (``$TORCH_HOME/hub/checkpoints`` by default)."""
    import torch.hub

    return os.path.join(torch.hub.get_dir(), "checkpoints")


def cache_path(url: str) -> str:
    """Where the file of ``url`` is kept (and where a manually downloaded copy is picked up):
    ``checkpoints/<name>`` for a registry URL (official or mirrored), as mmengine and torch.hub
    keep it; ``checkpoints/by_url/<sha256(url)[:16]>/<name>`` for any other URL, so two URLs
    that end in the same file name never share a file (module docstring)."""
    name = os.path.basename(urllib.parse.urlparse(url).path)
    if not name:
        raise CheckpointError(f"{url}: the URL names no file (it ends in '/')")
    if zoo.by_url(url) is not None:
        return os.path.join(cache_dir(), name)
    key = hashlib.sha256(url.encode("utf-8")).hexdigest()[:16]
    return os.path.join(cache_dir(), URL_KEYED_DIR, key, name)


def fetch_url(url: str, *, entry: ZooEntry | None = None, progress: bool | None = None,
              log: Log | None = None) -> tuple[str, str]:
    """Download ``url`` into the cache unless a verified copy is there; ``(path, sha256)``."""
    from filelock import FileLock

    log = log or logger.info
    entry = entry or zoo.by_url(url)
    dest = cache_path(url)
    locks = os.path.join(cache_dir(), ".locks")
    os.makedirs(locks, exist_ok=True)
    lock_name = os.path.relpath(dest, cache_dir()).replace(os.sep, "--") + ".lock"
    with FileLock(os.path.join(locks, lock_name)):
        refused = None
        if os.path.isfile(dest):
            digest, refused = _check_cached(dest, url, entry, log)
            if refused is None:
                return dest, digest
            log(f"{dest}: refused ({refused}); downloading it again from {url}")
        try:
            _download(url, dest, entry, progress, log)
        except CheckpointError as err:
            if refused:
                raise CheckpointError(f"{dest} failed its check ({refused}) and fetching it "
                                      f"again failed: {err}") from None
            raise
        return dest, _write_record(dest, url, entry)


def _check_cached(dest: str, url: str, entry: ZooEntry | None,
                  log: Log) -> tuple[str | None, str | None]:
    """``(sha256, None)`` when the cached ``dest`` may serve ``url``, else ``(None, why not)``."""
    record = _read_record(dest)
    if record is None:
        problem = checkpoint_problem(dest)
        if problem is not None:
            return None, f"found without a download record, and {problem}"
        digest = _write_record(dest, url, entry)
        log(f"{dest}: found without a download record (placed by hand or by another tool); "
            "verified it as a complete checkpoint and recorded its size and sha256 for later "
            "checks")
        return digest, None
    problem = _verify(dest, record)
    if problem is None and not _same_source(record, url, entry):
        problem = f"its record says it came from {record.get('url')}, not {url}"
    if problem is None and "verified" not in record:
        # Recorded before downloads were verified as complete checkpoints: a connection cut
        # without a Content-Length may have been recorded as a finished download.
        problem = checkpoint_problem(dest)
        if problem is None:
            return _write_record(dest, record.get("url") or url, entry), None
    return (record["sha256"], None) if problem is None else (None, problem)


def _same_source(record: dict, url: str, entry: ZooEntry | None) -> bool:
    """A registry file may come from the official URL or any mirror (same bytes, same name);
    anything else must come from this very URL."""
    if entry is not None and record.get("name") == entry.name:
        return True
    return record.get("url") in (None, url)


def checkpoint_problem(path: str) -> str | None:
    """None when ``path`` holds a complete checkpoint, else what is wrong with it.

    Complete means: a zip archive (what ``torch.save`` writes) with its central directory, a
    ``data.pkl`` and every member passing its CRC check; a safetensors file whose header
    accounts for every byte (safetensors' own check); or else an old-style (pre-zip) torch file
    that :func:`tinyvit_backbone.safe_load.torch_load` reads to the end. A truncated file, an
    HTML page saved under a ``.pth`` name, or a damaged member fails.
    """
    import zipfile

    size = os.path.getsize(path)
    if size == 0:
        return "it is empty"
    with open(path, "rb") as f:
        head = f.read(16)
    if zipfile.is_zipfile(path):
        try:
            with zipfile.ZipFile(path) as archive:
                names = archive.namelist()
                if not any(n == "data.pkl" or n.endswith("/data.pkl") for n in names):
                    return "it is a zip archive but no torch checkpoint (no data.pkl inside)"
                bad = archive.testzip()
        except (zipfile.BadZipFile, OSError, EOFError, ValueError) as err:
            return f"it is a damaged zip archive ({err})"
        return None if bad is None else f"its member {bad} fails its CRC check: damaged"
    if head.startswith(b"PK\x03\x04"):
        return f"it is a zip archive cut short after {size} bytes (no central directory at " \
               "its end): truncated"
    if len(head) >= 9 and head[8:9] == b"{":  # safetensors: u64 header length, JSON header
        from safetensors import safe_open

        try:
            with safe_open(path, framework="pt") as f:
                f.keys()
        except Exception as err:  # safetensors raises its own error types
            return f"it is not a complete safetensors file ({err})"
        return None
    from .safe_load import torch_load

    try:
        torch_load(path, map_location="cpu")
    except Exception as err:  # torch.load raises many types for a file it cannot read
        return (f"torch.load cannot read it ({type(err).__name__}: {err}); first bytes "
                f"{head[:8]!r}")
    return None


def _download(url: str, dest: str, entry: ZooEntry | None, progress: bool | None,
              log: Log) -> None:
    request = urllib.request.Request(url, headers={"User-Agent": "tinyvit-transfer"})
    try:
        response = urllib.request.urlopen(request, timeout=TIMEOUT_S)
    except urllib.error.HTTPError as err:
        raise CheckpointError(_http_error_message(url, err.code, err.reason, dest, entry)) from None
    except (urllib.error.URLError, OSError) as err:
        reason = getattr(err, "reason", err)
        raise CheckpointError(_offline_message(url, reason, dest, entry)) from None
    log(f"downloading {url} to {dest}")
    with response:
        total = response.length

        def write(f):
            got = 0
            with progress_bar(total=total, desc=os.path.basename(dest), unit="B",
                              unit_scale=True, unit_divisor=1024, enabled=progress) as bar:
                while True:
                    try:
                        block = response.read(1 << 20)
                    except (http.client.IncompleteRead, OSError) as err:
                        raise CheckpointError(_interrupted_message(url, got, total, err)) from None
                    if not block:
                        break
                    f.write(block)
                    got += len(block)
                    bar.update(len(block))
            if total is not None and got != total:
                raise CheckpointError(_interrupted_message(url, got, total, "connection closed"))

        def check(tmp):
            problem = checkpoint_problem(tmp)
            if problem is not None:
                got = os.path.getsize(tmp)
                why = "no Content-Length was sent, so" if total is None else "yet"
                raise CheckpointError(_interrupted_message(
                    url, got, total, f"{why} the file is no complete checkpoint: "
                    f"{problem.removeprefix('it ')}"))

        atomic_write(dest, write, check=check)


def _interrupted_message(url, got, total, why) -> str:
    size = f"{got} of {total} bytes" if total else f"{got} bytes"
    return (f"download of {url} stopped after {size} ({why}); nothing was kept: rerun to fetch "
            "it again (if it fails the same way, the server does not serve a checkpoint "
            "there: check the URL)")


def _manual_hint(url: str, dest: str, entry: ZooEntry | None) -> str:
    source = entry.official_url if entry is not None else url
    hint = (f" Without network access, download {source} elsewhere and put the file at {dest}: "
            "it is picked up from there without a download.")
    if entry is not None:
        hint += (f" Behind a proxy or firewall, set {zoo.MIRROR_ENV} to a server holding "
                 f"{entry.filename} (or the standard HTTPS_PROXY).")
        if entry.hub_tag:
            hint += f" The same weights are on the Hugging Face hub as {entry.hub_tag}."
    return hint


def _offline_message(url, reason, dest, entry) -> str:
    return f"could not download {url} ({reason})." + _manual_hint(url, dest, entry)


def _http_error_message(url, code, reason, dest, entry) -> str:
    if code == 404:
        what = "no file at that address: check the URL"
        if entry is not None and zoo.mirror_base():
            what += f", and that the mirror {zoo.mirror_base()} holds {entry.filename}"
    else:
        what = "the server refused the download"
    return f"could not download {url}: HTTP {code} {reason} ({what})." + _manual_hint(
        url, dest, entry)


# --------------------------------------------------------------------------- records
def _read_record(path: str) -> dict | None:
    record_path = path + RECORD_SUFFIX
    if not os.path.isfile(record_path):
        return None
    try:
        record = read_json(record_path, "download record", CheckpointError)
    except CheckpointError:
        return {"size": -1, "sha256": "", "damaged": True}
    return record if isinstance(record, dict) and {"size", "sha256"} <= set(record) else \
        {"size": -1, "sha256": "", "damaged": True}


def _write_record(path: str, url: str, entry: ZooEntry | None) -> str:
    """Record a file already verified by :func:`checkpoint_problem`."""
    digest = sha256_file(path)
    atomic_write_json(path + RECORD_SUFFIX, {
        "url": url, "name": entry.name if entry else None, "size": os.path.getsize(path),
        "sha256": digest, "verified": "complete checkpoint",
        "recorded": time.strftime("%Y-%m-%dT%H:%M:%S%z")})
    return digest


def _verify(path: str, record: dict) -> str | None:
    """None when ``path`` matches its record, else what is wrong."""
    if record.get("damaged"):
        return f"its record {path + RECORD_SUFFIX} is unreadable"
    size = os.path.getsize(path)
    if size != record["size"]:
        return f"{size} bytes, recorded {record['size']}: truncated or replaced"
    digest = sha256_file(path)
    if digest != record["sha256"]:
        return f"sha256 {digest[:16]}..., recorded {record['sha256'][:16]}...: altered"
    return None


def _recorded_entry(path: str) -> ZooEntry | None:
    record = _read_record(path) if os.path.isfile(path) else None
    if not record:
        return None
    return zoo.get(record.get("name") or "") or zoo.by_url(record.get("url") or "")


# --------------------------------------------------------------------------- Hugging Face hub
def fetch_hub(repo_id: str, *, entry: ZooEntry | None = None, progress: bool | None = None,
              log: Log | None = None) -> tuple[str, str | None]:
    """The weights file of hub repo ``repo_id`` from huggingface_hub's cache (fetched into it
    when missing and online), checked against the SHA-256 it is stored under."""
    from huggingface_hub import constants, hf_hub_download
    from huggingface_hub.errors import (
        EntryNotFoundError,
        HfHubHTTPError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
    )

    log = log or logger.info
    bar = partial(progress_bar, enabled=progress)
    # huggingface_hub retries a failed connection five times (about 23 s per file); without
    # a network that is most of a minute before the answer. A connect probe answers at once.
    unreachable = None if constants.HF_HUB_OFFLINE else hub_unreachable(constants.ENDPOINT)
    local_only = unreachable is not None
    offline_error = None
    for filename in HUB_FILES:
        try:
            path = hf_hub_download(repo_id, filename, tqdm_class=bar, local_files_only=local_only)
        except LocalEntryNotFoundError as err:  # offline, or the hub unreachable
            offline_error = err
            local_only = True  # the next file would wait for the same retries
            continue
        except EntryNotFoundError:  # the repository has no such file: try the next name
            continue
        except RepositoryNotFoundError:
            raise CheckpointError(f"hub tag {repo_id!r}: no such repository on "
                                  f"{constants.ENDPOINT} (timm's TinyViT tags: "
                                  + ", ".join(e.hub_tag for e in zoo.ZOO.values()) + ")") from None
        except HfHubHTTPError as err:
            raise CheckpointError(f"hub tag {repo_id!r}: {err}") from None
        return path, _check_hub_file(repo_id, filename, path, bar, log)
    if offline_error is not None:
        url = f"{constants.ENDPOINT}/{repo_id}/resolve/main/{HUB_FILES[0]}"
        if constants.HF_HUB_OFFLINE:
            mode = "HF_HUB_OFFLINE=1 is set"
        elif unreachable:
            mode = f"the hub is unreachable: {unreachable}"
        else:
            mode = "the hub is unreachable"
        raise CheckpointError(
            f"hub tag {repo_id!r}: not in the Hugging Face cache ({constants.HF_HUB_CACHE}) and "
            f"{mode}. Fetch it once with network access (e.g. `hf download {repo_id}`) into that "
            f"cache, or download {url} elsewhere and pass the file's path instead of the tag.")
    raise CheckpointError(f"hub tag {repo_id!r}: the repository holds none of {HUB_FILES}")


def hub_unreachable(endpoint: str, timeout: float = PROBE_TIMEOUT_S) -> str | None:
    """None when a TCP connection to ``endpoint``'s host (or to the proxy the environment
    names for it, as huggingface_hub's HTTP client would use) opens within ``timeout``
    seconds, else why not. A name lookup that hangs counts against the same time."""
    parsed = urllib.parse.urlparse(endpoint)
    host = parsed.hostname or ""
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    proxies = urllib.request.getproxies()
    proxy = proxies.get(parsed.scheme) or proxies.get("all")
    if proxy and not urllib.request.proxy_bypass(host):
        via = urllib.parse.urlparse(proxy if "://" in proxy else f"http://{proxy}")
        host, port = via.hostname or "", via.port or (443 if via.scheme == "https" else 80)
    outcome: dict[str, object] = {}

    def probe():
        try:
            socket.create_connection((host, port), timeout=timeout).close()
            outcome["ok"] = True
        except OSError as err:
            outcome["error"] = err

    thread = threading.Thread(target=probe, daemon=True)
    thread.start()
    thread.join(timeout + 1.0)
    if outcome.get("ok"):
        return None
    why = outcome.get("error") or f"no answer within {timeout:g} s"
    return f"no connection to {host}:{port} ({why})"


def _check_hub_file(repo_id, filename, path, bar, log) -> str | None:
    """The blob name of a large file is its SHA-256: recompute it; a damaged blob is fetched
    again (online) or refused with the path to delete."""
    from huggingface_hub import hf_hub_download

    expected = os.path.basename(os.path.realpath(path))
    if not re.fullmatch(r"[0-9a-f]{64}", expected):
        return None  # a small (git) file or a cache without symlinks: no content address
    digest = sha256_file(path)
    if digest == expected:
        return digest
    log(f"{path}: sha256 {digest[:16]}... does not match the {expected[:16]}... it is stored "
        "under; fetching it again")
    try:
        fresh = hf_hub_download(repo_id, filename, tqdm_class=bar, force_download=True)
    except Exception as err:  # offline, or the hub refused: the damaged file must not be used
        raise CheckpointError(
            f"hub tag {repo_id!r}: the cached {filename} is damaged (sha256 {digest[:16]}..., "
            f"expected {expected[:16]}...) and could not be fetched again ({err}). Delete "
            f"{os.path.realpath(path)} and rerun with network access.") from None
    if sha256_file(fresh) != expected:
        raise CheckpointError(f"hub tag {repo_id!r}: {filename} was fetched again but its "
                              "sha256 still differs from the hub's; retry later")
    return expected


# --------------------------------------------------------------------------- mmengine
def load_from_zoo(filename: str, map_location=None) -> dict:
    """mmengine ``CheckpointLoader`` scheme for the registry's URLs: checkpoints that mmengine
    loads itself (e.g. mmdet's SwinTransformer baseline, ``load_from``) are fetched through the
    registry too (mirror, cache, size / SHA-256 checks), then read like mmengine reads them."""
    from .safe_load import torch_load

    return torch_load(resolve_weights(filename).path, map_location=map_location or "cpu")


def register_mmengine_scheme() -> None:
    """Route every official base URL of the registry through :func:`load_from_zoo`
    (idempotent). mmengine tries its prefixes in reverse sorted order, so these come before its
    generic ``https://`` loader, and other URLs are unaffected."""
    from mmengine.runner import CheckpointLoader

    # mmengine matches prefixes as regular expressions
    CheckpointLoader.register_scheme(
        prefixes=[re.escape(base + "/") for base in zoo.OFFICIAL_BASE_URLS],
        loader=load_from_zoo, force=True)


# --------------------------------------------------------------------------- command line
def _list(args) -> dict:
    rows = []
    for e in zoo.entries():
        rows.append(dict(name=e.name, arch=e.arch, resolution=e.resolution,
                         window_sizes=list(e.window_sizes), num_classes=e.num_classes,
                         pretraining=e.pretraining, in1k_top1=e.in1k_top1, url=e.url,
                         hub_tag=e.hub_tag, cached=os.path.isfile(cache_path(e.url))))
    return {"mirror": zoo.mirror_base(), "cache": cache_dir(), "checkpoints": rows}


def _fetch(args) -> dict:
    fetched = []
    for spec in args.specs:
        w = resolve_weights(spec, progress=args.progress)
        fetched.append(dict(spec=spec, kind=w.kind, source=w.source, path=w.path,
                            sha256=w.sha256, name=w.entry.name if w.entry else None))
    return {"weights": fetched}


def main(argv: list[str] | None = None) -> int:
    import argparse

    from .cli import run_commands, subcommands

    parser = argparse.ArgumentParser(
        prog="python -m tinyvit_backbone.weights",
        description="The model zoo: list the official checkpoints, or fetch weights by registry "
                    "name, URL, hub tag or path into the caches (e.g. before going offline).")
    sub = subcommands(parser)
    sub.add_parser("list", help="every registry entry, its URL (mirror applied) and whether "
                                "it is cached")
    p = sub.add_parser("fetch", help="download (once) and verify; prints the local paths")
    p.add_argument("specs", nargs="+", metavar="SPEC",
                   help="weights to fetch: a registry name (see list), an http(s) URL, a "
                        "timm/... hub tag or a file")
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                   help="download progress bar (default on)")
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    return run_commands(parser, {"list": _list, "fetch": _fetch}, argv)


if __name__ == "__main__":
    raise SystemExit(main())
