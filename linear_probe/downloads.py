"""Getting the datasets: torchvision's downloaders where they exist, exact instructions where not.

``--download`` (on every probe and few-shot command, and ``python -m linear_probe download``)
calls the dataset's torchvision class with ``download=True``. Torchvision checks what is on
disk first and fetches only what is missing or fails its MD5 checksum, so a second call
downloads nothing; every file it fetches is checked against its checksum (FGVC Aircraft and
SUN397's partition files have none: the result says ``verified: false``). Torchvision's
progress bars go to stderr with its messages, so stdout keeps the one JSON result.

Datasets torchvision cannot fetch — Stanford Cars (its official link is dead), ImageNet, the
cdfsl sets CropDisease, ISIC2018 and ChestX (EuroSAT torchvision does fetch), and the
detection / segmentation sets COCO and ADE20K — get their exact source and folder layout
printed instead (:data:`MANUAL`).

Mirror: ``$TINYVIT_DATA_MIRROR`` (an ``http(s)://`` or ``file://`` base) sends every download
to ``<mirror>/<host>/<path>`` instead of ``https://<host>/<path>`` — the layout
``wget --mirror`` writes — for machines behind a proxy, an in-house copy, and the tests.
"""
from __future__ import annotations

import contextlib
import os
import sys
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

MIRROR_ENV = "TINYVIT_DATA_MIRROR"


class DatasetDownloadError(OSError):
    """A download failed or cannot be done automatically; the message says what to do."""


@dataclass(frozen=True)
class TorchvisionDownload:
    """How torchvision fetches a registry dataset: ``cls(root, download=True, **kwargs)`` for
    each ``calls`` entry. ``root`` is the dataset's folder, or its parent where the class adds
    the folder itself (EuroSAT). ``extra`` archives (url, md5 or None) are fetched with
    torchvision's ``download_and_extract_archive`` into the folder."""

    cls: str
    calls: tuple[dict, ...] = ({},)
    root: str = "folder"
    verified: bool = True
    extra: tuple[tuple[str, str | None], ...] = ()


TORCHVISION: dict[str, TorchvisionDownload] = {
    "cifar10": TorchvisionDownload("CIFAR10", ({"train": True},)),
    "cifar100": TorchvisionDownload("CIFAR100", ({"train": True},)),
    "food101": TorchvisionDownload("Food101"),
    "sun397": TorchvisionDownload(
        "SUN397", verified=False,
        extra=(("https://vision.princeton.edu/projects/2010/SUN/download/Partitions.zip", None),)),
    "fgvc_aircraft": TorchvisionDownload("FGVCAircraft", verified=False),
    "voc2007": TorchvisionDownload("VOCDetection", ({"year": "2007", "image_set": "trainval"},
                                                    {"year": "2007", "image_set": "test"})),
    "dtd": TorchvisionDownload("DTD"),
    "pets": TorchvisionDownload("OxfordIIITPet"),
    "caltech101": TorchvisionDownload("Caltech101"),
    "flowers102": TorchvisionDownload("Flowers102"),
    "eurosat": TorchvisionDownload("EuroSAT", root="parent"),
}


@dataclass(frozen=True)
class ManualSource:
    """Where to get a dataset by hand, and the tree it must form (``{dir}`` = its folder)."""

    title: str
    source: str
    layout: tuple[str, ...]
    folder: str | None = None  # for the sets outside the probe registry (COCO, ADE20K)

    def instructions(self, directory) -> str:
        tree = "\n".join("    " + line.format(dir=directory) for line in self.layout)
        return f"Get it from {self.source}, and arrange it as:\n{tree}"


MANUAL: dict[str, ManualSource] = {
    "imagenet1k": ManualSource(
        "ImageNet-1k",
        "https://image-net.org/download.php (ILSVRC2012_img_train.tar and ILSVRC2012_img_val.tar; "
        "registration required)",
        ("{dir}/train/<wnid>/*.JPEG   (1,000 class folders, 1,281,167 images)",
         "{dir}/val/<wnid>/*.JPEG     (the 50,000 val images sorted into the same class folders, "
         "e.g. with https://raw.githubusercontent.com/soumith/imagenetloader.torch/master/valprep.sh)")),
    "stanford_cars": ManualSource(
        "Stanford Cars",
        "a copy in torchvision's layout, https://www.kaggle.com/datasets/rickyyyyyyy/"
        "torchvision-stanford-cars (kaggle datasets download -d rickyyyyyyy/torchvision-stanford-cars); "
        "the official https://ai.stanford.edu/~jkrause/cars/car_dataset.html link is dead",
        ("{dir}/stanford_cars/devkit/cars_meta.mat, cars_train_annos.mat",
         "{dir}/stanford_cars/cars_train/*.jpg   (8,144 images)",
         "{dir}/stanford_cars/cars_test/*.jpg    (8,041 images)",
         "{dir}/stanford_cars/cars_test_annos_withlabels.mat")),
    "cropdisease": ManualSource(
        "CropDisease (cdfsl)",
        "https://www.kaggle.com/saroz014/plant-disease (kaggle datasets download -d "
        "saroz014/plant-disease), as the cdfsl benchmark (https://github.com/IBM/cdfsl-benchmark) uses it",
        ("{dir}/dataset/train/<class>/*.jpg   (38 classes)",)),
    "isic2018": ManualSource(
        "ISIC2018 task 3 (cdfsl)",
        "https://challenge.isic-archive.com/data/#2018 (ISIC2018_Task3_Training_Input.zip and "
        "ISIC2018_Task3_Training_GroundTruth.zip), as the cdfsl benchmark uses it",
        ("{dir}/ISIC2018_Task3_Training_Input/ISIC_*.jpg   (10,015 images)",
         "{dir}/ISIC2018_Task3_Training_GroundTruth/ISIC2018_Task3_Training_GroundTruth.csv")),
    "chestx": ManualSource(
        "ChestX-ray8 (cdfsl)",
        "https://www.kaggle.com/nih-chest-xrays/data (kaggle datasets download -d "
        "nih-chest-xrays/data), as the cdfsl benchmark uses it",
        ("{dir}/Data_Entry_2017.csv",
         "{dir}/images/*.png   (every images_*/images/*.png of the archive in this one folder)")),
    "coco": ManualSource(
        "COCO 2017",
        "https://cocodataset.org/#download (http://images.cocodataset.org/zips/train2017.zip, "
        "http://images.cocodataset.org/zips/val2017.zip, "
        "http://images.cocodataset.org/annotations/annotations_trainval2017.zip)",
        ("{dir}/train2017/*.jpg",
         "{dir}/val2017/*.jpg",
         "{dir}/annotations/instances_train2017.json, instances_val2017.json   "
         "(the detection configs read data/coco/ under the working directory)"),
        folder="coco"),
    "ade20k": ManualSource(
        "ADE20K (SceneParsing 2016)",
        "http://data.csail.mit.edu/places/ADEchallenge/ADEChallengeData2016.zip",
        ("{dir}/images/training/*.jpg, images/validation/*.jpg",
         "{dir}/annotations/training/*.png, annotations/validation/*.png   "
         "(the segmentation configs read data/ade/ADEChallengeData2016 under the working directory)"),
        folder="ade/ADEChallengeData2016"),
}
DENSE_DATASETS = tuple(name for name, source in MANUAL.items() if source.folder)


def mirror_url() -> str | None:
    """The mirror base from ``$TINYVIT_DATA_MIRROR`` (None: the datasets' own hosts)."""
    base = os.environ.get(MIRROR_ENV, "").strip()
    if not base:
        return None
    if not base.startswith(("http://", "https://", "file://")):
        raise ValueError(f"${MIRROR_ENV}={base!r} is not a URL: give an http://, https:// or "
                         "file:// base under which <host>/<path> of each download is served")
    return base.rstrip("/")


def mirrored(url: str, base: str | None) -> str:
    """``https://host/path`` -> ``<base>/host/path`` (unchanged without a mirror)."""
    if not base or url.startswith(base + "/"):
        return url
    return f"{base}/{url.split('://', 1)[-1]}"


class _RequestRouter(urllib.request.BaseHandler):
    """Sends every request to the mirror (when set) and remembers what was requested."""

    handler_order = 100

    def __init__(self, base: str | None):
        self.base = base
        self.requested: list[str] = []

    def _route(self, request):
        request.full_url = mirrored(request.full_url, self.base)
        self.requested.append(request.full_url)
        return request

    http_request = https_request = file_request = _route


@contextlib.contextmanager
def routed_requests(base: str | None):
    """Within the block, urllib (torchvision's downloader) goes through :class:`_RequestRouter`;
    the process's previous opener is put back afterwards."""
    router = _RequestRouter(base)
    previous = urllib.request._opener  # None unless someone installed one: urllib's default
    urllib.request.install_opener(urllib.request.build_opener(router))
    try:
        yield router
    finally:
        urllib.request.install_opener(previous)


@contextlib.contextmanager
def recorded_targets():
    """Within the block, every file torchvision's ``download_url`` is asked for is recorded as
    (official URL, local path): where a copy downloaded by hand is picked up (torchvision checks
    a file in place against its checksum before it downloads anything). ``download_url`` is
    replaced in torchvision's utils and in every dataset module that imported it by name."""
    import torchvision.datasets.utils as tv_utils

    original = tv_utils.download_url
    targets: list[tuple[str, str]] = []

    def download_url(url, root, filename=None, md5=None, *args, **kwargs):
        path = os.path.join(os.path.expanduser(os.fspath(root)), filename or os.path.basename(url))
        targets.append((url, path))
        return original(url, root, filename, md5, *args, **kwargs)

    modules = [m for name, m in list(sys.modules.items())
               if name.startswith("torchvision.datasets") and getattr(m, "download_url", None)
               is original]
    for module in modules:
        module.download_url = download_url
    try:
        yield targets
    finally:
        for module in modules:
            module.download_url = original


@contextlib.contextmanager
def project_progress_bars(desc: str):
    """Torchvision's download bars drawn by :func:`tinyvit_backbone.progress.progress_bar`
    (a line every few percent in a log, not carriage-return redraws)."""
    import torchvision.datasets.utils as tv_utils

    from tinyvit_backbone.progress import progress_bar

    previous = tv_utils.tqdm
    tv_utils.tqdm = lambda *args, **kwargs: progress_bar(*args, desc=desc, **kwargs)
    try:
        yield
    finally:
        tv_utils.tqdm = previous


def _fetch(spec, how: TorchvisionDownload, directory: Path) -> None:
    import torchvision.datasets as tvd
    from torchvision.datasets.utils import download_and_extract_archive

    root = directory.parent if how.root == "parent" else directory
    root.mkdir(parents=True, exist_ok=True)
    for kwargs in how.calls:
        getattr(tvd, how.cls)(str(root), download=True, **kwargs)
    for url, md5 in how.extra:
        archive = directory / os.path.basename(url)
        if not archive.exists():
            download_and_extract_archive(url, str(directory), md5=md5)


def _failure(spec, err: BaseException, requested: list[str], base: str | None,
             targets: list[tuple[str, str]], data_root) -> str:
    url = requested[-1] if requested else "(no request was made)"
    where = f" (through ${MIRROR_ENV}={base})" if base else ""
    if isinstance(err, urllib.error.HTTPError):
        what = f"{url} answered HTTP {err.code} ({err.reason})"
    elif isinstance(err, urllib.error.URLError):
        what = f"{url} could not be reached ({err.reason})"
    elif "corrupted" in str(err):
        what = (f"the file from {url} does not match torchvision's checksum (a truncated or "
                "altered download); the next download fetches it again")
    else:
        what = f"{type(err).__name__}: {err}"
    command = f"python -m linear_probe download --dataset {spec.name} --data-root {data_root}"
    message = (f"downloading {spec.title} ({spec.name}){where} failed: {what}. Check the "
               f"network (or set ${MIRROR_ENV} to a mirror) and run again: {command}")
    if targets:
        official, path = targets[-1]
        message += (f". Without network access, download {official} elsewhere and put it at "
                    f"{path}: the same command checks it and unpacks it without a download (and "
                    "names the next file the same way, for a dataset of several files)")
    return message + "."


def download(spec, data_root, *, stream=None) -> dict:
    """Put ``spec`` under ``data_root`` with torchvision's downloader (see the module
    docstring). Returns {"dataset", "status": "downloaded" | "verified" | "present" |
    "embedded", "folder", "verified", "requests"}; torchvision's messages go to ``stream``
    (default stderr). Raises :class:`DatasetDownloadError` when
    the download fails, or when the dataset is missing and cannot be fetched automatically
    (the message gives the source and layout)."""
    directory = spec.directory(data_root)
    result = {"dataset": spec.name, "folder": str(directory), "verified": None, "requests": 0}
    if spec.name == "digits":
        return {**result, "status": "embedded"}
    how = TORCHVISION.get(spec.name)
    if how is None:
        if spec.missing_path(data_root) is None:
            return {**result, "status": "present"}
        raise DatasetDownloadError(f"{spec.title} ({spec.name}) cannot be downloaded "
                                   f"automatically. " + how_to_get(spec, data_root))
    base = mirror_url()
    with routed_requests(base) as router, contextlib.redirect_stdout(stream or sys.stderr), \
            project_progress_bars(f"download {spec.name}"), recorded_targets() as targets:
        try:
            _fetch(spec, how, directory)
        except (urllib.error.URLError, OSError, RuntimeError) as err:
            raise DatasetDownloadError(_failure(spec, err, router.requested, base, targets,
                                                data_root)) from err
    missing = spec.missing_path(data_root)
    if missing is not None:
        raise DatasetDownloadError(f"torchvision fetched {spec.title} ({spec.name}), but {missing} "
                                   "is still missing: the archive's layout is not the expected one")
    status = "downloaded" if router.requested else "verified"
    return {**result, "status": status, "verified": how.verified, "requests": len(router.requested)}


def _other_case(directory: Path) -> Path | None:
    """A sibling of a missing ``directory`` whose name differs only in case (``EuroSAT`` for
    ``eurosat``): file names are case-sensitive, the registry's folder names are fixed."""
    parent = directory.parent
    if directory.exists() or not parent.is_dir():
        return None
    return next((p for p in sorted(parent.iterdir()) if p.name.lower() == directory.name.lower()),
                None)


def how_to_get(spec, data_root) -> str:
    """One paragraph on how ``spec`` gets onto disk (used by every dataset-not-found error)."""
    directory = spec.directory(data_root)
    other = _other_case(directory) if spec.folder and not spec.user_folder else None
    if other is not None:
        return (f"Found {other}, but {spec.name} is read from {directory} (names are "
                f"case-sensitive): rename the folder to {directory.name}.")
    if spec.name == "digits":
        return "It ships with scikit-learn; nothing to download."
    if spec.user_folder:
        return (f"Arrange your images as {directory}/train/<class>/<image> and "
                f"{directory}/test/<class>/<image> (or val/ instead of test/).")
    if spec.name in TORCHVISION:
        checked = "checksums verified" if TORCHVISION[spec.name].verified else "no checksum published"
        return (f"Rerun with --download to fetch it with torchvision's downloader ({checked}), "
                f"or: python -m linear_probe download --dataset {spec.name} --data-root {data_root}")
    return MANUAL[spec.name].instructions(directory)


def dense_dataset_report(name: str, data_root) -> dict:
    """COCO / ADE20K (read by the detection and segmentation configs, not the probes):
    whether they are in place, and how to get them."""
    source = MANUAL[name]
    directory = Path(data_root) / source.folder
    present = directory.is_dir() and any(directory.iterdir())
    return {"dataset": name, "folder": str(directory), "status": "present" if present else "manual",
            "instructions": None if present else source.instructions(directory)}
