"""--download through torchvision's downloaders, against a mirror served on 127.0.0.1.

The mirror holds small archives this test writes in the datasets' real formats (CIFAR-10's
tar.gz of pickled batches, Flowers-102's tgz of JPEGs plus its two .mat files) at
``<mirror>/<host>/<path>``; torchvision's checksums are set to theirs. Nothing leaves the machine.
"""
import hashlib
import http.server
import io
import json
import pickle
import tarfile
import threading
from functools import partial
from pathlib import Path

import numpy as np
import pytest
import torchvision.datasets as tvd

from linear_probe.__main__ import main
from linear_probe.downloads import MIRROR_ENV, mirror_url, mirrored
from linear_probe.loaders import load_split
from linear_probe.registry import dataset_spec

TINY = {"embed_dims": [16, 32, 48, 64], "depths": [1, 1, 1, 1], "num_heads": [1, 1, 2, 2],
        "window_sizes": [7, 4, 2, 1]}
CIFAR = "www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
FLOWERS = "www.robots.ox.ac.uk/~vgg/data/flowers/102/"


def _md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


def _tar_gz(members: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def _cifar_archive(monkeypatch) -> bytes:
    """CIFAR-10's layout: 5 train batches of 4 images, a test batch of 10, the meta file."""
    rng = np.random.default_rng(0)
    files = {}
    for name, n in [*((f"data_batch_{i}", 4) for i in range(1, 6)), ("test_batch", 10)]:
        files[name] = pickle.dumps({"data": rng.integers(0, 255, (n, 3072), dtype=np.uint8),
                                    "labels": [int(v) for v in rng.integers(0, 10, n)]})
    files["batches.meta"] = pickle.dumps({"label_names": [f"class{i}" for i in range(10)]})
    monkeypatch.setattr(tvd.CIFAR10, "train_list", [[f"data_batch_{i}", _md5(files[f"data_batch_{i}"])]
                                                    for i in range(1, 6)])
    monkeypatch.setattr(tvd.CIFAR10, "test_list", [["test_batch", _md5(files["test_batch"])]])
    monkeypatch.setattr(tvd.CIFAR10, "meta", {**tvd.CIFAR10.meta, "md5": _md5(files["batches.meta"])})
    archive = _tar_gz({f"cifar-10-batches-py/{k}": v for k, v in files.items()})
    monkeypatch.setattr(tvd.CIFAR10, "tgz_md5", _md5(archive))
    return archive


def _flowers_files(monkeypatch) -> dict[str, bytes]:
    """Flowers-102's three files: 8 JPEGs in 102flowers.tgz, imagelabels.mat, setid.mat."""
    from PIL import Image
    from scipy.io import savemat
    jpgs = {}
    for i in range(1, 9):
        buffer = io.BytesIO()
        Image.new("RGB", (40, 30), (30 * i, 20, 200)).save(buffer, format="JPEG")
        jpgs[f"jpg/image_{i:05d}.jpg"] = buffer.getvalue()
    labels, setid = io.BytesIO(), io.BytesIO()
    savemat(labels, {"labels": np.array([[1, 1, 2, 2, 1, 2, 1, 2]])})
    savemat(setid, {"trnid": np.array([[1, 3]]), "valid": np.array([[2, 4]]),
                    "tstid": np.array([[5, 6, 7, 8]])})
    files = {"102flowers.tgz": _tar_gz(jpgs), "imagelabels.mat": labels.getvalue(),
             "setid.mat": setid.getvalue()}
    monkeypatch.setattr(tvd.Flowers102, "_file_dict", {
        "image": ("102flowers.tgz", _md5(files["102flowers.tgz"])),
        "label": ("imagelabels.mat", _md5(files["imagelabels.mat"])),
        "setid": ("setid.mat", _md5(files["setid.mat"]))})
    return files


class Mirror:
    """http.server on 127.0.0.1 in a thread, serving ``root`` and counting the requests."""

    def __init__(self, root: Path):
        self.root, self.requests = root, []
        mirror = self

        class Handler(http.server.SimpleHTTPRequestHandler):
            def log_message(self, *args):
                mirror.requests.append(self.path)

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0),
                                                      partial(Handler, directory=str(root)))
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    def put(self, path: str, data: bytes) -> None:
        target = self.root / path
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def mirror(tmp_path, monkeypatch):
    served = Mirror(tmp_path / "mirror")
    monkeypatch.setenv(MIRROR_ENV, served.url)
    served.put(CIFAR, _cifar_archive(monkeypatch))
    for name, data in _flowers_files(monkeypatch).items():
        served.put(FLOWERS + name, data)
    yield served
    served.close()


def test_mirror_url_rewrites_every_host():
    assert mirrored("https://www.cs.toronto.edu/~kriz/x.tar.gz", "http://m:8/base") == \
        "http://m:8/base/www.cs.toronto.edu/~kriz/x.tar.gz"
    assert mirrored("http://m:8/base/a/b", "http://m:8/base") == "http://m:8/base/a/b"
    assert mirrored("https://a/b", None) == "https://a/b"


def test_mirror_must_be_a_url(monkeypatch):
    monkeypatch.setenv(MIRROR_ENV, "/some/folder")
    with pytest.raises(ValueError, match="is not a URL: give an http://, https:// or file://"):
        mirror_url()


def test_download_fetches_verifies_and_is_idempotent(mirror, tmp_path, capsys):
    root = tmp_path / "data"
    assert main(["download", "--dataset", "cifar10", "flowers102", "--data-root", str(root)]) == 0
    result = json.loads(capsys.readouterr().out)
    assert [(d["dataset"], d["status"], d["verified"]) for d in result["datasets"]] == [
        ("cifar10", "downloaded", True), ("flowers102", "downloaded", True)]
    assert any(CIFAR in path for path in mirror.requests)
    cifar = load_split(dataset_spec("cifar10"), "train", root)
    assert len(cifar) == 20 and len(load_split(dataset_spec("cifar10"), "test", root)) == 10
    flowers = load_split(dataset_spec("flowers102"), "train", root)  # train + val, as MoCo v3
    assert len(flowers) == 4 and len(load_split(dataset_spec("flowers102"), "test", root)) == 4

    served = len(mirror.requests)
    assert main(["download", "--dataset", "cifar10", "flowers102", "--data-root", str(root)]) == 0
    again = json.loads(capsys.readouterr().out)
    assert [d["status"] for d in again["datasets"]] == ["verified", "verified"]
    assert len(mirror.requests) == served  # nothing fetched twice

    # a damaged archive and batch fail torchvision's checksums: fetched and extracted again
    (root / "cifar10" / "cifar-10-python.tar.gz").write_bytes(b"truncated")
    (root / "cifar10" / "cifar-10-batches-py" / "data_batch_1").write_bytes(b"damaged")
    assert main(["download", "--dataset", "cifar10", "--data-root", str(root)]) == 0
    assert json.loads(capsys.readouterr().out)["datasets"][0]["status"] == "downloaded"
    assert len(mirror.requests) > served and len(load_split(dataset_spec("cifar10"), "train", root)) == 20


def test_checksum_mismatch_missing_file_and_dead_server_are_clear(mirror, tmp_path, capsys,
                                                                   monkeypatch):
    root = str(tmp_path / "data")
    archive = mirror.root / CIFAR
    archive.write_bytes(archive.read_bytes()[:-10] + b"0123456789")  # altered on the server
    assert main(["download", "--dataset", "cifar10", "--data-root", root]) == 2
    err = capsys.readouterr().err
    assert err.splitlines()[-1].startswith(
        f"error: downloading CIFAR-10 (cifar10) (through ${MIRROR_ENV}=")
    assert f"{mirror.url}/{CIFAR} does not match torchvision's checksum" in err
    assert "the next download fetches it again" in err

    archive.unlink()
    assert main(["download", "--dataset", "cifar10", "--data-root", root]) == 2
    assert f"{mirror.url}/{CIFAR} answered HTTP 404" in capsys.readouterr().err

    monkeypatch.setenv(MIRROR_ENV, "http://127.0.0.1:9")  # the discard port: nobody listens
    assert main(["download", "--dataset", "flowers102", "--data-root", root]) == 2
    err = capsys.readouterr().err
    assert "http://127.0.0.1:9/www.robots.ox.ac.uk/" in err and "could not be reached" in err


def test_probe_commands_take_download_as_the_error_says(mirror, tmp_path, capsys):
    arch = tmp_path / "tiny.json"
    arch.write_text(json.dumps(TINY))
    args = ["sweep", "--arch", str(arch), "--dataset", "cifar10", "--data-root",
            str(tmp_path / "data"), "--cache-dir", str(tmp_path / "cache"), "--image-size", "32",
            "--output", str(tmp_path / "r.jsonl"), "--weight-decay", "0.01", "--no-progress"]
    assert main(args) == 2
    assert "Rerun with --download" in capsys.readouterr().err
    assert main([*args, "--download"]) == 0
    captured = capsys.readouterr()
    (record,) = json.loads(captured.out)["records"]
    assert record["dataset"] == "cifar10" and record["split_sizes"]["test"] == 10
    assert "cifar10: downloaded in" in captured.err


def test_datasets_torchvision_cannot_fetch_get_their_source_and_layout(tmp_path, capsys):
    root = tmp_path / "data"
    assert main(["download", "--dataset", "stanford_cars", "coco", "digits",
                 "--data-root", str(root)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("digits: embedded, nothing to download\nerror: Stanford Cars "
                          "(stanford_cars) cannot be downloaded automatically")
    assert "official https://ai.stanford.edu/~jkrause/cars/car_dataset.html link is dead" in err
    assert f"{root}/stanford_cars/stanford_cars/cars_test_annos_withlabels.mat" in err
    assert "coco cannot be downloaded automatically" in err
    assert f"{root}/coco/annotations/instances_train2017.json" in err
    assert "images.cocodataset.org/zips/train2017.zip" in err
    assert main(["mocov3", "--dataset", "stanford_cars", "--download", "--data-root", str(root),
                 "--no-progress"]) == 2
    assert capsys.readouterr().err.startswith(
        "error: Stanford Cars (stanford_cars) cannot be downloaded automatically. Get it from")


def test_offline_download_names_the_url_and_where_a_manual_copy_goes(tmp_path, monkeypatch,
                                                                      capsys):
    """Unreachable host: the error gives the official URL, the exact path where a file
    downloaded elsewhere is picked up, and the command, which then unpacks that file without
    the network. (It used to say "rerun with --download", which the download command has no
    use for.)"""
    archive = _cifar_archive(monkeypatch)
    monkeypatch.setenv(MIRROR_ENV, "http://127.0.0.1:9")  # the discard port: nobody listens
    root = tmp_path / "data"
    assert main(["download", "--dataset", "cifar10", "--data-root", str(root)]) == 2
    err = capsys.readouterr().err
    assert "--download" not in err
    manual = root / "cifar10" / "cifar-10-python.tar.gz"
    assert (f"download https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz elsewhere and "
            f"put it at {manual}") in err
    assert f"python -m linear_probe download --dataset cifar10 --data-root {root}" in err

    manual.parent.mkdir(parents=True, exist_ok=True)
    manual.write_bytes(archive)
    assert main(["download", "--dataset", "cifar10", "--data-root", str(root)]) == 0
    result = json.loads(capsys.readouterr().out)["datasets"][0]
    assert result["requests"] == 0 and result["status"] == "verified"
    assert len(load_split(dataset_spec("cifar10"), "train", root)) == 20
