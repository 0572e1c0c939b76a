"""Hyper-parameter defaults: the one place they are written down. The loss gains (``LOSS_GAINS``) and the
augmentation defaults (``AUGMENT_DEFAULTS``) are views of ``DEFAULTS``, so the trainer, the loss and the data
pipeline cannot disagree."""

__all__ = ["DEFAULTS", "OFFICIAL", "SYNTH_PRESET", "SYNTH_DATASET", "LOSS_GAINS", "AUGMENT_DEFAULTS", "uses_synth",
           "resolve_args"]

# Official default.yaml values (train-relevant subset); None = resolved at setup (see resolve_args).
DEFAULTS = {
    "model": "yolov10n", "data": None, "epochs": None, "batch": None, "imgsz": None, "device": "", "workers": None,
    "kernels": "auto", "dispatch": None, "out": None, "exist_ok": False, "seed": 0, "deterministic": True, "threads": None,
    "optimizer": None, "lr0": None, "lrf": 0.01, "momentum": None, "weight_decay": 5e-4,
    "warmup_epochs": None, "warmup_momentum": 0.8, "warmup_bias_lr": None, "nbs": None, "cos_lr": False,
    "box": 7.5, "cls": 0.5, "dfl": 1.5, "amp": True, "close_mosaic": None, "val": True, "val_epochs": None,
    "max_nan": 5,
    "hsv_h": 0.015, "hsv_s": 0.7, "hsv_v": 0.4, "degrees": 0.0, "translate": 0.1, "scale": 0.5, "shear": 0.0,
    "perspective": 0.0, "flipud": 0.0, "fliplr": 0.5, "mosaic": 1.0, "augment": True, "shuffle": True,
    "max_steps": None,
}
LOSS_GAINS = {k: DEFAULTS[k] for k in ("box", "cls", "dfl")}
AUGMENT_DEFAULTS = {k: DEFAULTS[k] for k in ("hsv_h", "hsv_s", "hsv_v", "degrees", "translate", "scale", "shear",
                                             "perspective", "flipud", "fliplr", "mosaic")}

# What None resolves to with a user dataset (the official defaults) ...
# val_epochs: validate in the last N epochs only (0 = every epoch); the last epoch is always validated.
OFFICIAL = {"epochs": 100, "batch": 16, "imgsz": 640, "workers": 8, "nbs": 64, "optimizer": "auto", "lr0": 0.01,
            "momentum": 0.937, "warmup_epochs": 3.0, "warmup_bias_lr": 0.1, "close_mosaic": 10, "val_epochs": 0}
# ... and with the embedded synthetic dataset: sized so that `yolov10 train` with no flags (the README's main job)
# finishes within 10 minutes, setup included, on the slower 2-core CPU machines and reaches mAP50-95 >= 0.5 on
# the synthetic validation split. A short CPU run needs many optimizer steps and a fast start: no gradient
# accumulation (nbs = batch), one warm-up epoch, AdamW at lr 0.003 (optimizer "auto" would pick 0.00083 for 8
# classes: mAP50-95 0.50 after 7 epochs where 0.003 gives 0.60 after 5), mosaic closed for the last 2 epochs, no
# dataloader workers (on 2 cores they take the compute threads' time). Validation (which never changes the
# training) in the last 2 epochs only.
SYNTH_PRESET = {"epochs": 5, "batch": 16, "imgsz": 256, "workers": 0, "nbs": 16, "optimizer": "AdamW", "lr0": 0.003,
                "momentum": 0.9, "warmup_epochs": 1.0, "warmup_bias_lr": 0.0, "close_mosaic": 2, "val_epochs": 2}
SYNTH_DATASET = {"n_train": 1500, "n_val": 200, "imgsz": 256, "seed": 0}


def uses_synth(data):
    """True when ``data`` names no dataset, i.e. the embedded synthetic one is used."""
    return data in (None, "", "synth")


def resolve_args(args):
    """Fill the None defaults: the synthetic preset without --data, the official values otherwise."""
    a = dict(DEFAULTS)
    a.update({k: v for k, v in dict(args).items() if v is not None or k not in a})
    preset = SYNTH_PRESET if uses_synth(a["data"]) else OFFICIAL
    for k, v in preset.items():
        if a.get(k) is None:
            a[k] = v
    return a
