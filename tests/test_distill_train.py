"""Student training from a store: equivalence with an online teacher, resume, export, devices."""
import pytest
import torch
from torch.utils.data import Subset

from tinyvit_backbone.backbone import TinyViT, build_timm_tinyvit
from tinyvit_backbone.checkpoint import backbone_state_dict
from tinyvit_backbone.distill.datasets import DatasetInfo, open_dataset
from tinyvit_backbone.distill.errors import DistillError
from tinyvit_backbone.distill.replay import AugConfig
from tinyvit_backbone.distill.runtime import DistEnv, amp_dtype, select_device
from tinyvit_backbone.distill.save_logits import SaveSettings, save_logits
from tinyvit_backbone.distill.store import LogitStore
from tinyvit_backbone.distill.teacher import create_timm_model, load_teacher
from tinyvit_backbone.distill.train import TrainSettings, load_weights, train_classifier

ARCH = dict(embed_dims=[16, 32, 32, 64], depths=[1, 1, 1, 1], num_heads=[1, 1, 1, 2],
            window_sizes=[8, 4, 2, 1])
AUG = AugConfig(image_size=32, hflip=0.0)
N, BATCH, K = 48, 16, 4
CPU = torch.device("cpu")
quiet = dict(device=CPU, progress=False, log=lambda _: None)


def student():
    return build_timm_tinyvit(ARCH, 10)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("train")
    ds, info = open_dataset("digits", "train", 32)
    data = Subset(ds, range(N))
    info = DatasetInfo("digits", "digits", "train", N, info.classes, "first48")
    torch.manual_seed(0)
    torch.save(create_timm_model("test_resnet", 10).state_dict(), root / "t.pth")
    teacher, tinfo = load_teacher("test_resnet", str(root / "t.pth"), 10, data_mean=AUG.mean,
                                  data_std=AUG.std)
    save_logits(str(root / "store"), teacher, tinfo, data, info, AUG,
                SaveSettings(topk=K, epochs=2, batch_size=BATCH), progress=False,
                log=lambda _: None, device=CPU)
    return root, data, info, teacher, LogitStore.open(root / "store")


def _weights(result):
    return torch.load(result["weights"], weights_only=True)


def test_store_training_equals_online_teacher_with_same_sparsity(setup):
    # Same pixels, same batches, same teacher outputs: distilling from the store and from the
    # live teacher (sparsified the same way) must give bit-identical students.
    root, data, info, teacher, store = setup
    settings = dict(epochs=2, batch_size=BATCH, lr=1e-3, warmup_epochs=0)
    a = train_classifier(student, data, info, AUG, TrainSettings(mode="store", **settings),
                         str(root / "s_store"), num_classes=10, store=store, **quiet)
    b = train_classifier(student, data, info, AUG,
                         TrainSettings(mode="online", online_topk=K, **settings),
                         str(root / "s_online"), num_classes=10, teacher=teacher, **quiet)
    wa, wb = _weights(a), _weights(b)
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    assert a["history"][-1]["train_loss"] == b["history"][-1]["train_loss"]
    init = student()
    assert not torch.equal(wa["head.fc.weight"], init.state_dict()["head.fc.weight"])


def test_interrupted_training_resumes_to_the_same_weights(setup):
    root, data, info, _, store = setup
    settings = TrainSettings(mode="store", epochs=2, batch_size=BATCH, lr=1e-3, warmup_epochs=0)
    kw = dict(num_classes=10, store=store, device=CPU, progress=False)
    straight = train_classifier(student, data, info, AUG, settings, str(root / "straight"),
                                log=lambda _: None, **kw)

    def stop_after_first_epoch(msg):
        if "epoch 1/2" in msg:  # logged after the epoch's checkpoint is written
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train_classifier(student, data, info, AUG, settings, str(root / "resumed"),
                         log=stop_after_first_epoch, **kw)
    messages = []
    resumed = train_classifier(student, data, info, AUG, settings, str(root / "resumed"),
                               log=messages.append, **kw)
    assert any("resumed after epoch 1" in m for m in messages)
    wa, wb = _weights(straight), _weights(resumed)
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    # A finished run is not retrained.
    messages.clear()
    again = train_classifier(student, data, info, AUG, settings, str(root / "resumed"),
                             log=messages.append, **kw)
    assert any("skipped" in m for m in messages) and again["weights"] == resumed["weights"]
    # Other settings in the same folder: refused instead of silently mixed.
    other = TrainSettings(mode="store", epochs=2, batch_size=BATCH, lr=5e-4, warmup_epochs=0)
    (root / "resumed" / "result.json").unlink()
    with pytest.raises(DistillError, match="other settings"):
        train_classifier(student, data, info, AUG, other, str(root / "resumed"), **kw,
                         log=lambda _: None)


def test_a_torn_log_line_is_repaired_before_the_resumed_run_appends(setup):
    """A run killed while appending its epoch line leaves a torn last line in log.jsonl; the
    resumed run moves it to log.jsonl.torn and appends whole lines after the complete ones,
    as the probes' results files do (one mechanism: tinyvit_backbone.files.append_jsonl)."""
    import json

    root, data, info, _, store = setup
    settings = TrainSettings(mode="store", epochs=2, batch_size=BATCH, lr=1e-3, warmup_epochs=0)
    kw = dict(num_classes=10, store=store, device=CPU, progress=False)
    out = root / "torn"

    def stop_after_first_epoch(msg):
        if "epoch 1/2" in msg:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train_classifier(student, data, info, AUG, settings, str(out), log=stop_after_first_epoch,
                         **kw)
    log = out / "log.jsonl"
    torn = b'{"train_loss": 2.1, "lr": 0.00'  # epoch 2's line, cut short by the kill
    with open(log, "ab") as f:
        f.write(torn)
    messages = []
    train_classifier(student, data, info, AUG, settings, str(out), log=messages.append, **kw)
    lines = log.read_text().splitlines()
    assert len(lines) == 2 and all("train_loss" in json.loads(line) for line in lines)
    assert (out / "log.jsonl.torn").read_bytes() == torn + b"\n"
    assert any("removed a torn last line" in m and "log.jsonl.torn" in m for m in messages)


def test_store_epochs_beyond_the_store_are_refused(setup):
    root, data, info, _, store = setup
    with pytest.raises(DistillError, match=r"3 epochs asked, but the store plans 2 \(complete: "
                                           r"\[0, 1\]\); append epochs with save-logits --epochs 3"):
        train_classifier(student, data, info, AUG, TrainSettings(mode="store", epochs=3,
                         batch_size=BATCH), str(root / "too_long"), num_classes=10,
                         store=store, **quiet)


def test_exported_student_loads_as_backbone_and_finetunes_with_layer_decay(setup):
    root, data, info, _, store = setup
    res = train_classifier(student, data, info, AUG, TrainSettings(mode="store", epochs=1,
                           batch_size=BATCH), str(root / "export"), num_classes=10,
                           store=store, **quiet)
    backbone = TinyViT(arch=ARCH, init_cfg=dict(type="Pretrained", checkpoint=res["weights"]))
    backbone.init_weights()
    sd = _weights(res)
    assert torch.equal(backbone.state_dict()["stages.1.blocks.0.attn.qkv.weight"],
                       sd["stages.1.blocks.0.attn.qkv.weight"])
    assert set(backbone_state_dict(res["weights"], backbone.state_dict())) == \
        set(backbone.state_dict())

    # Fine-tuning: another head size is re-made, the body loads; early layers get lower lr.
    model = build_timm_tinyvit(ARCH, 3)
    assert load_weights(model, res["weights"]) == ["head.fc.weight", "head.fc.bias"]
    assert torch.equal(model.state_dict()["patch_embed.conv1.conv.weight"],
                       sd["patch_embed.conv1.conv.weight"])
    from timm.optim import create_optimizer_v2

    opt = create_optimizer_v2(model, "adamw", lr=1e-3, layer_decay=0.8)
    scales = sorted({round(g["lr_scale"], 6) for g in opt.param_groups})
    assert scales[0] < scales[-1] == 1.0 and len(scales) > 3
    with pytest.raises(DistillError, match="does not fit"):
        load_weights(build_timm_tinyvit("5m", 10), res["weights"])


def test_device_and_amp_selection_logic():
    env = DistEnv(rank=1, world_size=2, local_rank=1)
    assert select_device("auto", env, cuda_available=False) == torch.device("cpu")
    assert select_device(None, env, cuda_available=True) == torch.device("cuda:1")
    assert select_device("cuda", env, cuda_available=True) == torch.device("cuda:1")
    assert select_device("cuda:0", env, cuda_available=True) == torch.device("cuda:0")
    assert select_device("cpu", env, cuda_available=True) == torch.device("cpu")
    with pytest.raises(DistillError, match="no GPU"):
        select_device("cuda", env, cuda_available=False)
    with pytest.raises(DistillError, match="not a device name"):
        select_device("tpu", env, cuda_available=False)
    assert select_device() == torch.device("cpu")  # the tests hide the GPUs
    cuda, cpu = torch.device("cuda:0"), torch.device("cpu")
    assert amp_dtype(cpu) is None and amp_dtype(cpu, True) is torch.bfloat16
    assert amp_dtype(cuda, bf16_supported=True) is torch.bfloat16
    assert amp_dtype(cuda, bf16_supported=False) is torch.float16
    assert amp_dtype(cuda, False) is None


def test_api_refuses_a_store_that_does_not_fit(setup):
    root, data, info, _, store = setup
    ok = dict(num_classes=10, store=store, **quiet)
    cases = [
        (dict(aug=AugConfig(image_size=32, hflip=0.5)), "augmentation differs"),
        (dict(settings=TrainSettings(mode="store", epochs=1, batch_size=BATCH, seed=1)),
         "seed 1 differs"),
        (dict(num_classes=7), "7 classes"),
        (dict(info=DatasetInfo("digits", "digits", "train", N, info.classes, "other")),
         "pass the same dataset"),
    ]
    for change, words in cases:
        args = dict(aug=AUG, settings=TrainSettings(mode="store", epochs=1, batch_size=BATCH),
                    info=info, **ok)
        args.update(change)
        with pytest.raises(DistillError, match=words):
            train_classifier(student, data, args.pop("info"), args.pop("aug"),
                             args.pop("settings"), str(root / "nofit"), **args)
        assert not (root / "nofit" / "last.pth").exists()


def test_gradient_accumulation_counts_updates(setup):
    root, data, info, _, store = setup
    res = train_classifier(student, data, info, AUG,
                           TrainSettings(mode="store", epochs=2, batch_size=BATCH, accum_steps=2),
                           str(root / "accum"), num_classes=10, store=store, **quiet)
    ckpt = torch.load(root / "accum" / "last.pth", weights_only=True)
    steps = {int(s["step"]) for s in ckpt["optimizer"]["state"].values()}
    # 48 samples / 16 = 3 batches per epoch -> updates after batches 2 and 3: 2 per epoch
    assert steps == {4}
    assert res["config"]["settings"]["accum_steps"] == 2
