"""Mini reproduction of fast pretraining distillation on the embedded digits (CPU, minutes).

Stages (each resumable; finished ones are skipped on a rerun unless ``fresh``):

1. teacher  — a timm ResNet trained on the digits' labels (``teacher/teacher.pth``);
2. store    — its top-K probabilities on every augmented epoch (``store/``; one store per
   value format: ``store_log8/`` for the 8-bit format);
3. students — the same TinyViT, same init seed, same pixels, trained
   a. from the store (fast distillation: no teacher, no labels)      ``student_store/``
      (``student_store_log8/`` from the 8-bit store)
   b. on labels alone (mixed one-hot, label smoothing)               ``student_labels/``
   c. with the teacher online (its full softmax each step), optional ``student_online/``

``results.json`` holds the test accuracies and every setting; ``student_arch.json`` the
students' architecture, for the tools that take ``--arch`` (``python -m linear_probe kshot
--arch OUT/student_arch.json --weights OUT/student_store/student.pth --dataset digits``).

Stored and online distillation see the same pixels, and, with the same batch size, the teacher sees the same batches in both,
so their targets differ only by the top-K truncation and the rounding of the store's value
format; two value formats with the same seeds differ by their rounding alone.
"""
from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Callable

import torch

from ..files import atomic_torch_save, atomic_write_json
from .datasets import TransformedDataset, open_dataset
from .errors import DistillError
from .replay import AugConfig, build_eval_transform
from .runtime import amp_dtype as pick_amp
from .runtime import select_device
from .save_logits import SaveSettings, save_logits
from .store import LogitStore
from .teacher import create_timm_model, load_teacher
from .train import TrainSettings, train_classifier

TEACHER_MODEL = "resnet10t"
# A TinyViT small enough for 32-pixel digits on a laptop CPU: stage resolutions 8/4/2/1, so the
# windows cover each stage whole.
DEMO_ARCH = dict(embed_dims=[32, 64, 96, 128], depths=[1, 1, 2, 1], num_heads=[1, 2, 3, 4],
                 window_sizes=[8, 4, 2, 1])
# Training augmentation of the students and the store (no flips: digits are not symmetric).
DIGITS_AUG = dict(hflip=0.0, scale=(0.35, 1.0))
# The teacher is trained with light augmentation: it needs to be accurate quickly.
TEACHER_AUG = dict(hflip=0.0, scale=(0.5, 1.0), auto_augment=None, re_prob=0.0, mixup=0.0,
                   cutmix=0.0)

SCALES: dict[str, dict] = {
    # ~2.5 minutes on 2 CPU cores for the three default stages (the demo's distill stage).
    "demo": dict(teacher_epochs=3, epochs=8, batch_size=64, topk=5, lr=2e-3, teacher_lr=3e-3,
                 eval_every=8),
    # The reproduction the README reports: a few minutes per student.
    "repro": dict(teacher_epochs=6, epochs=30, batch_size=64, topk=5, lr=2e-3, teacher_lr=3e-3,
                  eval_every=5),
    # For tests: seconds.
    "smoke": dict(teacher_epochs=1, epochs=2, batch_size=64, topk=5, lr=2e-3, teacher_lr=3e-3,
                  eval_every=2),
}


def run_pipeline(out_dir: str, student_arch: str | dict = None, *, image_size: int = 32,
                 scale: str = "demo", with_online: bool = False, device: str | None = None,
                 fresh: bool = False, seed: int = 0, workers: int = 0,
                 progress: bool | None = True, value_formats: tuple[str, ...] = ("fp16",),
                 log: Callable[[str], None] = print) -> dict:
    """Teacher -> store -> distilled / label-trained (/ online-distilled) students on digits.

    Args:
        out_dir: folder for every stage's outputs (created).
        student_arch: TinyViT arch ('5m' / '11m' / '21m', a dict, or a JSON path); default
            :data:`DEMO_ARCH`.
        image_size: training / test resolution (the digit scans are upscaled to it).
        scale: 'demo' (~2.5 min on 2 cores), 'repro' (30 epochs, the README's figures) or
            'smoke'.
        with_online: also train the student with the teacher online.
        device: 'auto' / 'cpu' / 'cuda' (None = auto).
        fresh: recompute every stage even when its outputs exist.
        value_formats: one store and one store-trained student per store value format; the
            first is the ``store`` entry of the results.

    Returns a dict: ``accuracy`` (test top-1 %, keys teacher / store / labels [/ online], plus
    ``store_<format>`` for each further value format), ``weights`` (paths of ``student.pth``
    per student, plus the teacher), ``stores`` (path, record bytes per value format),
    ``seconds`` per stage, ``settings``; it is also written to ``out_dir/results.json``.
    """
    from ..backbone import build_timm_tinyvit, resolve_arch

    if scale not in SCALES:
        raise DistillError(f"scale must be one of {sorted(SCALES)}, got {scale!r}")
    if not value_formats or len(set(value_formats)) != len(value_formats):
        raise DistillError(f"value formats must be distinct and at least one, got {value_formats}")
    cfg = SCALES[scale]
    student_arch = DEMO_ARCH if student_arch is None else student_arch
    dev = select_device(device)
    amp = pick_amp(dev)
    if fresh and os.path.isdir(out_dir):
        shutil.rmtree(out_dir)
    os.makedirs(out_dir, exist_ok=True)
    train_set, info = open_dataset("digits", "train", image_size)
    test_set, _ = open_dataset("digits", "test", image_size)
    aug = AugConfig(image_size=image_size, **DIGITS_AUG)
    val = TransformedDataset(test_set, build_eval_transform(image_size, aug.mean, aug.std,
                                                            crop_pct=1.0))
    common = dict(val_set=val, device=dev, amp_dtype=amp, workers=workers, progress=progress,
                  log=log)
    seconds, accuracy, weights = {}, {}, {}
    arch_file = os.path.join(out_dir, "student_arch.json")
    atomic_write_json(arch_file, resolve_arch(student_arch))
    steps = 2 + len(value_formats) + 1 + int(with_online)  # teacher, store(s), students

    # 1. teacher
    tic = time.time()
    log(f"[mini-repro] 1/{steps} teacher: timm {TEACHER_MODEL} on digits labels "
        f"({cfg['teacher_epochs']} epochs)")
    teacher_dir = os.path.join(out_dir, "teacher")
    res = train_classifier(
        lambda: create_timm_model(TEACHER_MODEL, info.num_classes), train_set, info,
        AugConfig(image_size=image_size, **TEACHER_AUG),
        TrainSettings(mode="labels", epochs=cfg["teacher_epochs"], batch_size=cfg["batch_size"],
                      lr=cfg["teacher_lr"], warmup_epochs=0.5, seed=seed + 1,
                      eval_every=cfg["teacher_epochs"]),
        teacher_dir, num_classes=info.num_classes, weights_name="teacher.pth",
        extra=dict(model=TEACHER_MODEL), **common)
    weights["teacher"], accuracy["teacher"] = res["weights"], res["val_top1"]
    seconds["teacher"] = round(time.time() - tic, 1)

    # 2. stores, one per value format
    tic = time.time()
    log(f"[mini-repro] 2/{steps} store: top-{cfg['topk']} teacher probabilities for "
        f"{cfg['epochs']} augmented epochs ({', '.join(value_formats)})")
    teacher, teacher_info = load_teacher(TEACHER_MODEL, weights["teacher"], info.num_classes,
                                         data_mean=aug.mean, data_std=aug.std)
    stores = {}
    for fmt in value_formats:
        store_dir = os.path.join(out_dir, "store" + _suffix(fmt))
        save = SaveSettings(topk=cfg["topk"], epochs=cfg["epochs"], batch_size=cfg["batch_size"],
                            seed=seed, value_format=fmt)
        summary = save_logits(store_dir, teacher, teacher_info, train_set, info, aug, save,
                              device=dev, amp_dtype=amp, workers=workers, progress=progress,
                              log=log)
        stores[fmt] = dict(path=os.path.abspath(store_dir), record_bytes=summary["record_bytes"],
                           teacher_top1_on_augmented=summary["teacher_top1_on_augmented"])
    seconds["save_logits"] = round(time.time() - tic, 1)

    def student():
        return build_timm_tinyvit(student_arch, info.num_classes)

    student_settings = dict(epochs=cfg["epochs"], batch_size=cfg["batch_size"], lr=cfg["lr"],
                            seed=seed, eval_every=cfg["eval_every"])
    extra = dict(arch=student_arch)
    runs = [("store" + ("" if k == 0 else "_" + fmt), "store" + _suffix(fmt),
             dict(store=LogitStore.open(stores[fmt]["path"])))
            for k, fmt in enumerate(value_formats)]
    runs.append(("labels", "labels", {}))
    if with_online:
        runs.append(("online", "online", dict(teacher=teacher)))
    for step, (key, name, kwargs) in enumerate(runs, 3):
        tic = time.time()
        mode = "store" if "store" in kwargs else name
        log(f"[mini-repro] {step}/{steps} student from {name} ({cfg['epochs']} epochs)")
        res = train_classifier(student, train_set, info, aug,
                               TrainSettings(mode=mode, **student_settings),
                               os.path.join(out_dir, f"student_{name}"),
                               num_classes=info.num_classes, extra=extra, **kwargs, **common)
        weights[key], accuracy[key] = res["weights"], res["val_top1"]
        seconds[key] = round(time.time() - tic, 1)

    init_path = os.path.join(out_dir, "student_init.pth")
    if not os.path.exists(init_path):
        torch.manual_seed(seed)  # the very init every student started from
        atomic_torch_save(init_path, student().state_dict())
    weights["init"] = os.path.abspath(init_path)
    result = dict(accuracy=accuracy, weights=weights, arch=os.path.abspath(arch_file),
                  seconds=seconds,
                  store=stores[value_formats[0]], stores=stores,
                  settings=dict(scale=scale, **cfg, image_size=image_size, seed=seed,
                                value_formats=list(value_formats),
                                student_arch=student_arch, teacher=TEACHER_MODEL,
                                aug=aug.to_dict(), device=str(dev),
                                amp=str(amp) if amp else None,
                                torch_threads=torch.get_num_threads()))
    atomic_write_json(os.path.join(out_dir, "results.json"), result)
    log("[mini-repro] test top-1: " + json.dumps({k: round(v, 2) for k, v in accuracy.items()}))
    log(f"[mini-repro] probe the distilled student: python -m linear_probe kshot --arch "
        f"{arch_file} --weights {weights['store']} --dataset digits")
    return result


def _suffix(value_format: str) -> str:
    """Folder suffix of a value format's store and student (none for the default fp16)."""
    return "" if value_format == "fp16" else "_" + value_format


__all__ = ["DEMO_ARCH", "SCALES", "run_pipeline"]
