"""A store's manifest: what wrote the store, which settings decide its bytes, which epochs are done.

``manifest.json`` is rewritten atomically by the one writer. Its identity sections
(:data:`IDENTITY_KEYS`: format, record format, layout, teacher, dataset, augmentation, seed,
teacher batch size) decide the bytes of every record; ``identity_digest`` is their SHA-256 (moved
checkpoint and dataset paths excluded), so a manifest edited or damaged in a way JSON still
parses is caught, and its first 32 bits start every record's check (:mod:`.record`). ``epochs``
(planned) and ``epochs_complete`` change as the store grows.
"""
from __future__ import annotations

import hashlib
import json
import os
from typing import Any

from ..files import read_json
from .errors import StoreError
from .layout import BLOCK_BYTES, EpochLayout
from .record import RecordFormat

FORMAT = "tinyvit-distill-store"
FORMAT_VERSION = 2
MANIFEST = "manifest.json"
EPOCH_FILE = "epoch_{epoch:04d}.records"
# Manifest sections that decide the bytes of a record; a writer or reader must agree on all of
# them. ``epochs`` (planned) and ``epochs_complete`` change as the store grows.
IDENTITY_KEYS = ("format", "format_version", "record", "layout", "teacher", "dataset",
                 "augmentation", "seed", "batch_size")
# Informational entries inside identity sections: a moved checkpoint or dataset is still the
# same one when its digest / fingerprint match.
IGNORED_PATHS = {("teacher", "checkpoint"), ("dataset", "root")}
CONVERT_HINT = "python -m tinyvit_backbone.distill convert-store --store {root}"


def identity_digest(manifest: dict) -> str:
    """Hex SHA-256 of the manifest's identity sections (ignoring moved paths)."""
    def strip(section: Any, path: tuple) -> Any:
        if isinstance(section, dict):
            return {k: strip(v, (*path, k)) for k, v in section.items()
                    if (*path, k) not in IGNORED_PATHS}
        return section

    identity = {k: strip(manifest.get(k), (k,)) for k in IDENTITY_KEYS}
    text = json.dumps(identity, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


def manifest_differences(stored: dict, requested: dict, prefix: tuple = ()) -> list[str]:
    """Human-readable differences between two manifests' identity sections."""
    diffs: list[str] = []
    keys = IDENTITY_KEYS if not prefix else sorted(set(stored) | set(requested))
    for key in keys:
        path = (*prefix, key)
        if path in IGNORED_PATHS:
            continue
        a, b = stored.get(key, "<absent>"), requested.get(key, "<absent>")
        if isinstance(a, dict) and isinstance(b, dict):
            diffs += manifest_differences(a, b, path)
        elif _normalise(a) != _normalise(b):
            diffs.append(f"{'.'.join(path)}: store has {a!r}, this run has {b!r}")
    return diffs


def _normalise(value: Any) -> Any:
    # JSON turns tuples into lists and may print floats differently; compare canonically.
    if isinstance(value, (list, tuple)):
        return [_normalise(v) for v in value]
    if isinstance(value, float):
        return round(value, 12)
    return value


def describe_store_format(record: RecordFormat, block_bytes: int = BLOCK_BYTES) -> dict:
    """The format-deciding manifest sections of a new store."""
    layout = EpochLayout(1, record.size, block_bytes)
    return dict(format=FORMAT, format_version=FORMAT_VERSION, record=record.describe(),
                layout=dict(layout.describe(), file=EPOCH_FILE))


def load_manifest(root: str) -> dict:
    """Read and check a store manifest (format, version, identity digest)."""
    path = os.path.join(root, MANIFEST)
    if not os.path.isdir(root):
        raise StoreError(f"logit store {root!r} does not exist: write it first with "
                         "`python -m tinyvit_backbone.distill save-logits --out ...`")
    damaged = ("; the epoch files are not affected: rerun save-logits with the arguments that "
               "wrote the store and --rebuild-manifest to write it again (records that do not "
               "match those arguments fail their checks and are rewritten)")
    try:
        manifest = read_json(path, "store manifest", StoreError)
    except StoreError as err:
        if os.path.exists(path):
            raise StoreError(f"{err}{damaged}") from None
        raise
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise StoreError(f"{path} is not a {FORMAT} manifest (format="
                         f"{manifest.get('format') if isinstance(manifest, dict) else None!r})"
                         + damaged)
    version = manifest.get("format_version")
    if version == 1:
        raise StoreError(f"store {root!r} has format version 1 (records by sample index); this "
                         f"code reads version {FORMAT_VERSION}: convert it once, in place, with "
                         f"`{CONVERT_HINT.format(root=root)}`")
    if version != FORMAT_VERSION:
        raise StoreError(f"{path} has format version {version}, this code reads version "
                         f"{FORMAT_VERSION}: use the version of this tool that wrote it")
    missing = [k for k in (*IDENTITY_KEYS, "identity_digest", "epochs") if k not in manifest]
    if missing:
        raise StoreError(f"{path} lacks {missing}" + damaged)
    if identity_digest(manifest) != manifest["identity_digest"]:
        raise StoreError(f"{path}: its settings do not match its identity digest (the manifest "
                         "was edited or damaged)" + damaged)
    return manifest


__all__ = ["CONVERT_HINT", "EPOCH_FILE", "FORMAT", "FORMAT_VERSION", "IDENTITY_KEYS",
           "IGNORED_PATHS", "MANIFEST", "describe_store_format", "identity_digest",
           "load_manifest", "manifest_differences"]
