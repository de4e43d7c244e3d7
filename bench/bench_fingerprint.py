"""Cost of the dataset fingerprint on many small files: the stat rule it uses (size and
modification time) against the size-only rule it replaced and against hashing every file's
bytes, the alternative it was chosen over (see tinyvit_backbone/fingerprint.py).

    python bench/run_all.py --only fingerprint [--quick]

Files of 0.2-2 KB in 100 class folders, written once in a temporary folder (quick: 20,000,
full: 100,000); every rule walks the same sorted sample list, in interleaved rounds, and the
best round counts (the page cache is warm for all three).
"""
from __future__ import annotations

import hashlib
import os
import random
import sys
import tempfile
import time

if __package__ in (None, ""):
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench.common import Figure, main  # noqa: E402


def _write_files(root: str, n: int) -> list[tuple[str, int]]:
    rng = random.Random(0)
    samples = []
    for i in range(n):
        folder = os.path.join(root, f"c{i % 100:03d}")
        os.makedirs(folder, exist_ok=True)
        path = os.path.join(folder, f"{i:06d}.bin")
        with open(path, "wb") as f:
            f.write(rng.randbytes(rng.randint(200, 2000)))
        samples.append((path, i % 100))
    return sorted(samples)


def _size_only(root, samples) -> str:
    digest = hashlib.sha256()
    for path, label in samples:
        digest.update(f"|{os.path.relpath(path, root)}|{os.path.getsize(path)}|{label}".encode())
    return digest.hexdigest()


def _content_hash(root, samples) -> str:
    digest = hashlib.sha256()
    for path, label in samples:
        with open(path, "rb") as f:
            content = hashlib.sha256(f.read()).hexdigest()
        digest.update(f"|{os.path.relpath(path, root)}|{content}|{label}".encode())
    return digest.hexdigest()


def run(quick: bool = True) -> list[Figure]:
    from tinyvit_backbone.fingerprint import folder_fingerprint

    n = 20_000 if quick else 100_000
    with tempfile.TemporaryDirectory() as root:
        samples = _write_files(root, n)
        classes = [f"c{c:03d}" for c in range(100)]
        rules = {"size": lambda: _size_only(root, samples),
                 "stat": lambda: folder_fingerprint(root, classes, samples),
                 "sha256": lambda: _content_hash(root, samples)}
        best = {name: float("inf") for name in rules}
        for _ in range(3):
            for name, rule in rules.items():
                start = time.perf_counter()
                rule()
                best[name] = min(best[name], time.perf_counter() - start)
    extra = {"files": n, "bytes_per_file": "200-2000", "us_per_file": {
        name: round(1e6 * seconds / n, 2) for name, seconds in best.items()}}
    return [
        Figure("fingerprint", f"stat_size_mtime_{n // 1000}k_files", best["stat"], "s",
               "size only (the previous rule)", best["size"], higher_is_better=False, goal=0.7,
               extra=extra),
        Figure("fingerprint", f"sha256_content_{n // 1000}k_files", best["sha256"], "s",
               "size only (the previous rule)", best["size"], higher_is_better=False,
               extra=extra),
    ]


if __name__ == "__main__":
    sys.exit(main(run))
