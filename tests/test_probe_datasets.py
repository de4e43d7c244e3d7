"""Dataset registry and groups, missing-dataset messages, loaders, preprocessing, identity."""
import numpy as np
import pytest
import torch

from linear_probe.__main__ import main
from linear_probe.backbones import ModelSpec
from linear_probe.downloads import MANUAL, TORCHVISION
from linear_probe.loaders import DatasetNotFoundError, dataset_labels, load_split
from linear_probe.preprocessing import dataset_preprocessing, eval_preprocessing
from linear_probe.registry import GROUPS, REGISTRY, dataset_spec, resolve_datasets
from linear_probe.results import DATASET_TITLES, PAPER_FEWSHOT, PAPER_LINEAR
from tinyvit_backbone.fingerprint import dataset_fingerprint


def test_official_metrics_follow_kornblith():
    metric = {name: spec.metric for name, spec in REGISTRY.items()}
    for name in ("fgvc_aircraft", "pets", "caltech101", "flowers102"):
        assert metric[name] == "mean_per_class"
    assert metric["voc2007"] == "map11" and REGISTRY["voc2007"].multilabel
    for name in ("cifar10", "cifar100", "food101", "sun397", "stanford_cars", "dtd", "imagenet1k"):
        assert metric[name] == "top1"
    for name in ("cropdisease", "eurosat", "isic2018", "chestx"):
        assert REGISTRY[name].episodes_split == "all" and REGISTRY[name].style == "cdfsl"


def test_groups_are_the_papers_and_resolve_in_order():
    assert GROUPS["paper-linear"] == ("cifar10", "cifar100", "flowers102", "stanford_cars", "pets")
    assert GROUPS["paper-linear"] == PAPER_LINEAR.datasets
    assert set(GROUPS["paper-fewshot"]) == {"isic2018", "eurosat", "cropdisease", "chestx"}
    assert GROUPS["paper-fewshot"] == PAPER_FEWSHOT.datasets
    assert "imagenet1k" in REGISTRY and "imagenet1k" not in GROUPS["paper-linear"]
    assert len(GROUPS["transfer"]) == 11  # Kornblith's 12 without Birdsnap
    assert resolve_datasets(["digits", "paper-linear", "cifar10"]) == [
        "digits", "cifar10", "cifar100", "flowers102", "stanford_cars", "pets"]
    with pytest.raises(ValueError, match="unknown dataset 'cifar11'.*paper-linear.*imagefolder"):
        resolve_datasets(["cifar11"])


def test_every_dataset_has_a_title_and_one_way_to_get_it():
    for name in REGISTRY:
        assert name in DATASET_TITLES
        ways = (name in TORCHVISION) + (name in MANUAL) + (name == "digits")
        assert ways == 1, name
    assert set(GROUPS) >= {"paper-linear", "paper-fewshot", "transfer", "imagenet", "embedded"}
    for group in GROUPS.values():
        assert set(group) <= set(REGISTRY)


def test_missing_dataset_names_path_and_how_to_get_it(tmp_path):
    with pytest.raises(DatasetNotFoundError) as err:
        load_split(dataset_spec("cifar10"), "train", tmp_path)
    msg = str(err.value)
    assert f"expected {tmp_path}/cifar10/cifar-10-batches-py." in msg
    assert "Rerun with --download" in msg and "checksums verified" in msg
    assert f"python -m linear_probe download --dataset cifar10 --data-root {tmp_path}" in msg
    with pytest.raises(DatasetNotFoundError, match=r"(?s)imagenet/train\. .*image-net\.org.*"
                                                   r"imagenet/train/<wnid>/\*\.JPEG"):
        load_split(dataset_spec("imagenet1k"), "train", tmp_path)
    with pytest.raises(DatasetNotFoundError, match=r"chestX/Data_Entry_2017\.csv.*kaggle datasets download"):
        load_split(dataset_spec("chestx"), "all", tmp_path)
    with pytest.raises(DatasetNotFoundError, match=r"(?s)link is dead.*stanford_cars/stanford_cars/cars_train"):
        load_split(dataset_spec("stanford_cars"), "train", tmp_path)


def test_cli_reports_a_missing_dataset_without_traceback(tmp_path, capsys):
    code = main(["sweep", "--dataset", "cifar10", "--data-root", str(tmp_path), "--cache-dir",
                 str(tmp_path / "c"), "--output", str(tmp_path / "r.jsonl"), "--no-progress"])
    captured = capsys.readouterr()
    assert code == 2 and captured.out == ""
    assert captured.err.startswith("error: CIFAR-10 (cifar10) not found") and "Traceback" not in captured.err
    assert f"{tmp_path}/cifar10/cifar-10-batches-py" in captured.err
    assert not (tmp_path / "r.jsonl").exists()


def test_unknown_dataset_and_split():
    with pytest.raises(ValueError, match="unknown dataset 'cifar11'.*imagefolder"):
        dataset_spec("cifar11")
    with pytest.raises(ValueError, match=r"splits \['train', 'test', 'all'\], not 'val'"):
        load_split(dataset_spec("digits"), "val")


def test_digits_are_the_embedded_dataset_with_its_fingerprint():
    from tinyvit_backbone.embedded.digits import DigitsDataset
    spec = dataset_spec("digits")
    train, test = load_split(spec, "train", image_size=32), load_split(spec, "test", image_size=32)
    assert isinstance(train, DigitsDataset) and (len(train), len(test)) == (1257, 540)
    assert dataset_fingerprint(train) == dataset_fingerprint(load_split(spec, "train", image_size=32))
    assert dataset_fingerprint(train) != dataset_fingerprint(test)
    assert dataset_fingerprint(train) != dataset_fingerprint(load_split(spec, "train", image_size=48))
    np.testing.assert_array_equal(dataset_labels(train), train.targets)


def test_user_image_folder_val_split_and_fingerprint(tmp_path):
    from PIL import Image
    for split in ("train", "val"):
        for c in ("a", "b"):
            (tmp_path / split / c).mkdir(parents=True)
            Image.new("RGB", (8, 8)).save(tmp_path / split / c / "0.png")
    spec = dataset_spec(f"imagefolder:{tmp_path}")
    assert spec.splits == ("train", "val") and spec.test_split == "val"
    ds = load_split(spec, "train", data_root="/elsewhere")  # a user folder ignores the root
    before = dataset_fingerprint(ds)
    Image.new("L", (8, 8)).save(tmp_path / "train" / "a" / "1.png")
    assert dataset_fingerprint(load_split(spec, "train")) != before
    with pytest.raises(DatasetNotFoundError, match="train/<class>/<image>"):
        load_split(dataset_spec(f"imagefolder:{tmp_path / 'nothing'}"), "train")


@pytest.mark.parametrize("dataset, style", [("digits", "native"), ("eurosat", "cdfsl"),
                                            ("cifar10", "timm-eval")])
def test_preprocessing_yields_uint8_and_normalises_like_torchvision(dataset, style):
    import torchvision.transforms as T
    from PIL import Image
    config = ModelSpec("tinyvit", arch="5m").data_config(48)
    prep = dataset_preprocessing(dataset_spec(dataset), config)
    assert prep.description["style"] == style
    # digits are generated at the model's size ("native"); the others are resized and cropped
    shape = (48, 48) if style == "native" else (60, 70)
    img = Image.fromarray(np.random.default_rng(0).integers(0, 255, shape, dtype=np.uint8))
    x = prep.transform(img)  # grey image: converted to RGB
    assert x.dtype == torch.uint8 and x.shape == (3, 48, 48)
    ours = prep.normalise(x[None])[0]
    ref = T.Normalize(config["mean"], config["std"])(x.float() / 255.0)
    torch.testing.assert_close(ours, ref, atol=1e-5, rtol=1e-5)


def test_protocol_preprocessing_matches_the_reference_transforms():
    """mocov3-eval is main_lincls.py's Resize(256) + CenterCrop(224); cdfsl is finetune.py's
    square Resize(int(224 * 1.15)) + CenterCrop(224)."""
    import torchvision.transforms as T
    from PIL import Image
    config = ModelSpec("tinyvit", arch="5m").data_config(224)
    img = Image.fromarray(np.random.default_rng(1).integers(0, 255, (300, 400, 3), dtype=np.uint8))
    moco = eval_preprocessing("mocov3-eval", config)
    assert moco.description["resize"] == 256
    ref = T.Compose([T.Resize(256), T.CenterCrop(224), T.PILToTensor()])(img)
    assert torch.equal(moco.transform(img), ref)
    cdfsl = eval_preprocessing("cdfsl", config)
    ref = T.Compose([T.Resize((257, 257)), T.CenterCrop(224), T.PILToTensor()])(img)
    assert cdfsl.description["resize"] == 257 and torch.equal(cdfsl.transform(img), ref)
    with pytest.raises(ValueError, match="unknown preprocessing style 'moco'"):
        eval_preprocessing("moco", config)


def test_cdfsl_csv_layouts(tmp_path):
    """ISIC2018 (one-hot CSV) and ChestX (cdfsl's 7 single-finding classes) read as cdfsl does."""
    from PIL import Image
    isic = tmp_path / "ISIC"
    (isic / "ISIC2018_Task3_Training_GroundTruth").mkdir(parents=True)
    (isic / "ISIC2018_Task3_Training_GroundTruth" / "ISIC2018_Task3_Training_GroundTruth.csv").write_text(
        "image,MEL,NV,BCC,AKIEC,BKL,DF,VASC\nISIC_1,0.0,1.0,0,0,0,0,0\nISIC_2,0,0,0,0,0,0,1.0\n")
    assert dataset_spec("isic2018").missing_path(tmp_path) == isic / "ISIC2018_Task3_Training_Input"
    (isic / "ISIC2018_Task3_Training_Input").mkdir()
    for name in ("ISIC_1", "ISIC_2"):
        Image.new("RGB", (20, 16)).save(isic / "ISIC2018_Task3_Training_Input" / f"{name}.jpg")
    ds = load_split(dataset_spec("isic2018"), "all", tmp_path)
    assert ds.targets == [1, 6] and ds.classes[6] == "VASC" and ds[0][0].mode == "RGB"

    chest = tmp_path / "chestX"
    (chest / "images").mkdir(parents=True)
    (chest / "Data_Entry_2017.csv").write_text(
        "Image Index,Finding Labels,Follow-up #\n"
        "a.png,Effusion,0\nb.png,No Finding,0\nc.png,Pneumonia,0\n"
        "d.png,Mass|Nodule,0\ne.png,Pneumothorax,0\nf.png,Hernia,0\n")
    for name in "abcdef":
        Image.new("L", (300, 300)).save(chest / "images" / f"{name}.png")
    ds = load_split(dataset_spec("chestx"), "all", tmp_path)
    assert [f.rsplit("/", 1)[-1] for f in ds.files] == ["a.png", "e.png"]
    assert ds.targets == [2, 6] and dataset_labels(ds).tolist() == [2, 6]
    img, _ = ds[0]
    assert img.size == (256, 256) and img.mode == "RGB"


def test_datasets_command_lists_groups_and_states(tmp_path, capsys):
    import json
    assert main(["datasets", "--data-root", str(tmp_path)]) == 0
    captured = capsys.readouterr()
    listing = json.loads(captured.out)
    by_name = {d["name"]: d for d in listing["datasets"]}
    assert by_name["digits"]["on_disk"] and by_name["digits"]["download"] == "embedded"
    assert by_name["cifar10"]["missing"] == f"{tmp_path}/cifar10/cifar-10-batches-py"
    assert by_name["cifar10"]["download"] == "torchvision" and by_name["stanford_cars"]["download"] == "manual"
    assert by_name["pets"]["groups"] == ["paper-linear", "transfer"]
    assert listing["groups"]["paper-linear"] == list(PAPER_LINEAR.datasets)
    assert listing["instructions_only"] == ["ade20k", "coco"]
    assert "digits" in captured.err and "missing" in captured.err


def _readme() -> str:
    from pathlib import Path
    return (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")


def test_readme_layouts_are_the_ones_the_registry_reads(tmp_path):
    """Every folder layout the README states for the datasets is built under a data root as
    written, and the registry finds the dataset there (the README said EuroSAT/2750/ while
    the code reads eurosat/2750). COCO / ADE20K and the scenes: the folders the configs and
    the instructions use."""
    import re

    from linear_probe.downloads import MANUAL
    from tinyvit_backbone.embedded.scenes import DEFAULT_ROOT
    readme = _readme()
    sentence = re.search(r"cdfsl sets\s+are read from(.*?)\n\n", readme, re.S).group(1)
    paths = re.findall(r"`([^`\s]+/[^`\s]*)`", sentence)
    assert len(paths) >= 5, paths
    folders = {spec.folder: name for name, spec in REGISTRY.items() if spec.folder}
    found = set()
    for path in paths:
        top = path.split("/")[0]
        assert top in folders, f"README layout {path}: no registry dataset reads {top}/"
        target = tmp_path / path.replace("<class>", "a")
        if path.endswith("/"):
            target.mkdir(parents=True, exist_ok=True)
        else:
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text("x")
        found.add(folders[top])
    assert set(PAPER_FEWSHOT.datasets) <= found
    for name in found:
        assert dataset_spec(name).missing_path(tmp_path) is None, name

    coco = re.search(r"With COCO at `data/([^`]+)` \(or ADE20K at `data/([^`]+)`\)", readme)
    assert coco and coco.groups() == (MANUAL["coco"].folder, MANUAL["ade20k"].folder)
    assert f"to `{DEFAULT_ROOT}`" in readme


def test_a_folder_named_in_another_case_is_pointed_out(tmp_path):
    """data/EuroSAT/2750 (the cdfsl benchmark's name) where data/eurosat/2750 is read."""
    from linear_probe.downloads import how_to_get
    (tmp_path / "EuroSAT" / "2750" / "AnnualCrop").mkdir(parents=True)
    message = how_to_get(dataset_spec("eurosat"), tmp_path)
    assert message == (f"Found {tmp_path}/EuroSAT, but eurosat is read from {tmp_path}/eurosat "
                       "(names are case-sensitive): rename the folder to eurosat.")
