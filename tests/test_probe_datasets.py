"""Dataset registry: official metrics, missing-dataset messages, preprocessing, identity."""
import numpy as np
import pytest
import torch

from linear_probe.__main__ import main
from linear_probe.backbones import ModelSpec
from linear_probe.datasets import (
    REGISTRY,
    DatasetNotFoundError,
    eval_transform,
    fingerprint,
    get_info,
    load_split,
)


def test_official_metrics_follow_kornblith():
    metric = {name: info.metric for name, info in REGISTRY.items()}
    for name in ("fgvc_aircraft", "pets", "caltech101", "flowers102"):
        assert metric[name] == "mean_per_class"
    assert metric["voc2007"] == "map11" and REGISTRY["voc2007"].multilabel
    for name in ("cifar10", "cifar100", "food101", "sun397", "stanford_cars", "dtd", "imagenet1k"):
        assert metric[name] == "top1"
    assert REGISTRY["imagenet1k"].protocol == "mocov3"
    for name in ("cropdisease", "eurosat", "isic2018", "chestx"):
        assert REGISTRY[name].group == "paper-fewshot" and REGISTRY[name].episodes_split == "all"


def test_missing_dataset_names_path_and_download_command(tmp_path):
    with pytest.raises(DatasetNotFoundError) as err:
        load_split(get_info("cifar10"), "train", tmp_path)
    msg = str(err.value)
    assert f"expected {tmp_path}/cifar10/cifar-10-batches-py." in msg
    assert (f"python -c \"from torchvision.datasets import CIFAR10; "
            f"CIFAR10('{tmp_path}/cifar10', download=True)\"") in msg
    with pytest.raises(DatasetNotFoundError, match=r"imagenet/train\. .*train/<wnid>/\*\.JPEG"):
        load_split(get_info("imagenet1k"), "train", tmp_path)
    with pytest.raises(DatasetNotFoundError, match=r"chestX/Data_Entry_2017\.csv.*kaggle datasets download"):
        load_split(get_info("chestx"), "all", tmp_path)


def test_cli_reports_a_missing_dataset_without_traceback(tmp_path, capsys):
    code = main(["sweep", "--dataset", "cifar10", "--data-root", str(tmp_path), "--cache-dir",
                 str(tmp_path / "c"), "--output", str(tmp_path / "r.jsonl"), "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith("error: CIFAR-10 (cifar10) not found") and "Traceback" not in err
    assert f"{tmp_path}/cifar10/cifar-10-batches-py" in err
    assert not (tmp_path / "r.jsonl").exists()


def test_unknown_dataset_and_split():
    with pytest.raises(ValueError, match="unknown dataset 'cifar11'.*imagefolder"):
        get_info("cifar11")
    with pytest.raises(ValueError, match=r"splits \['train', 'test', 'all'\], not 'val'"):
        load_split(get_info("digits"), "val")


def test_digits_splits_and_fingerprints():
    info = get_info("digits")
    train, test = load_split(info, "train", image_size=32), load_split(info, "test", image_size=32)
    assert (len(train), len(test)) == (1257, 540)
    assert fingerprint(train) == fingerprint(load_split(info, "train", image_size=32))
    assert fingerprint(train) != fingerprint(test)
    assert fingerprint(train) != fingerprint(load_split(info, "train", image_size=48))


def test_user_image_folder_val_split_and_fingerprint(tmp_path):
    from PIL import Image
    for split in ("train", "val"):
        for c in ("a", "b"):
            (tmp_path / split / c).mkdir(parents=True)
            Image.new("RGB", (8, 8)).save(tmp_path / split / c / "0.png")
    info = get_info(f"imagefolder:{tmp_path}")
    assert info.splits == ("train", "val") and info.test_split == "val"
    ds = load_split(info, "train")
    before = fingerprint(ds)
    Image.new("L", (8, 8)).save(tmp_path / "train" / "a" / "1.png")
    assert fingerprint(load_split(info, "train")) != before
    with pytest.raises(DatasetNotFoundError, match="train/<class>/<image>"):
        load_split(get_info(f"imagefolder:{tmp_path / 'nothing'}"), "train")


@pytest.mark.parametrize("dataset, style", [("digits", "native"), ("eurosat", "cdfsl"),
                                            ("cifar10", "timm-eval")])
def test_preprocessing_yields_uint8_and_normalises_like_torchvision(dataset, style):
    import torchvision.transforms as T
    from PIL import Image
    info = get_info(dataset)
    config = ModelSpec("tinyvit", arch="5m").data_config(48)
    prep = eval_transform(info, config)
    assert prep.description["style"] == style
    # digits are generated at the model's size ("native"); the others are resized and cropped
    shape = (48, 48) if style == "native" else (60, 70)
    img = Image.fromarray(np.random.default_rng(0).integers(0, 255, shape, dtype=np.uint8))
    x = prep.transform(img)  # grey image: converted to RGB
    assert x.dtype == torch.uint8 and x.shape == (3, 48, 48)
    ours = prep.normalise(x[None])[0]
    ref = T.Normalize(config["mean"], config["std"])(x.float() / 255.0)
    torch.testing.assert_close(ours, ref, atol=1e-5, rtol=1e-5)


def test_cdfsl_csv_layouts(tmp_path):
    """ISIC2018 (one-hot CSV) and ChestX (cdfsl's 7 single-finding classes) read as cdfsl does."""
    from PIL import Image
    isic = tmp_path / "ISIC"
    (isic / "ISIC2018_Task3_Training_GroundTruth").mkdir(parents=True)
    (isic / "ISIC2018_Task3_Training_GroundTruth" / "ISIC2018_Task3_Training_GroundTruth.csv").write_text(
        "image,MEL,NV,BCC,AKIEC,BKL,DF,VASC\nISIC_1,0.0,1.0,0,0,0,0,0\nISIC_2,0,0,0,0,0,0,1.0\n")
    assert get_info("isic2018").missing_path(tmp_path) == isic / "ISIC2018_Task3_Training_Input"
    (isic / "ISIC2018_Task3_Training_Input").mkdir()
    for name in ("ISIC_1", "ISIC_2"):
        Image.new("RGB", (20, 16)).save(isic / "ISIC2018_Task3_Training_Input" / f"{name}.jpg")
    ds = load_split(get_info("isic2018"), "all", tmp_path)
    assert ds.targets == [1, 6] and ds.classes[6] == "VASC" and ds[0][0].mode == "RGB"

    chest = tmp_path / "chestX"
    (chest / "images").mkdir(parents=True)
    (chest / "Data_Entry_2017.csv").write_text(
        "Image Index,Finding Labels,Follow-up #\n"
        "a.png,Effusion,0\nb.png,No Finding,0\nc.png,Pneumonia,0\n"
        "d.png,Mass|Nodule,0\ne.png,Pneumothorax,0\nf.png,Hernia,0\n")
    for name in "abcdef":
        Image.new("L", (300, 300)).save(chest / "images" / f"{name}.png")
    ds = load_split(get_info("chestx"), "all", tmp_path)
    assert [f.rsplit("/", 1)[-1] for f in ds.files] == ["a.png", "e.png"]
    assert ds.targets == [2, 6]
    img, _ = ds[0]
    assert img.size == (256, 256) and img.mode == "RGB"
