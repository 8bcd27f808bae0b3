"""The detector-independent half of a CLIP-CE trainer (Ultralytics' custom-trainer pattern).

CLIP, the prompt bank and the per-object weight table live on the trainer, outside the detector's
module tree, so they never reach `state_dict`, EMA or checkpoints. The detector stays stock; only its
`criterion` is a CLIP-CE loss, which Ultralytics drops from checkpoints (`ema.criterion = None`). So
`best.pt` loads in any Ultralytics install.

Per batch the only extra work with `ame_crops=source` is a gather of precomputed weights by object id
(FAME's confidence adjustment happens inside the loss, on matched objects only).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import yaml
from ultralytics.utils import DEFAULT_CFG, LOCAL_RANK, LOGGER, RANK
from ultralytics.utils.ops import xywh2xyxy
from ultralytics.utils.torch_utils import torch_distributed_zero_first, unwrap_model

from clipce_rtdetr.clip.loader import require_weights
from clipce_rtdetr.config import check_project_values, project_defaults
from clipce_rtdetr.method.object_ids import as_object_id_dataset, split_object_ids
from clipce_rtdetr.method.prompts import load_profile

# Attribute on the detector carrying the CLIP-CE keys into checkpoints (a plain dict, which unpickles
# anywhere), so `resume=True` restores them.
CKPT_ATTR = "clipce_args"
# Project keys that shape training (saved in checkpoints, restored on resume); the others belong to other modes.
TRAIN_KEYS = (
    "clipce",
    "clip",
    "ame_profile",
    "ame_templates",
    "ame_context",
    "ame_temperature",
    "ame_alpha",
    "ame_form",
    "fame_gamma",
    "clipce_terms",
    "ame_crops",
    "prior_a",
    "ame_batch",
    "allow_download",
)
WEIGHT_KEYS = ("clipce/ame_w", "clipce/fame_w", "clipce/frac_w>1.5")


class ClipCETrainerMixin:
    """Put in front of a detector's Ultralytics trainer: its classification loss is weighted per object by CLIP-CE.

    The detector adapter supplies `build_criterion()` (its loss class with an `object_weights` attribute).
    """

    def build_criterion(self):
        """The detector's CLIP-CE loss (an `object_weights` (N,) attribute, None = stock)."""
        raise NotImplementedError

    def __init__(self, cfg=DEFAULT_CFG, overrides: dict[str, Any] | None = None, _callbacks=None):
        overrides = dict(overrides or {})
        defaults = {k: v for k, v in project_defaults().items() if k in TRAIN_KEYS}
        given = {k: overrides.pop(k) for k in list(overrides) if k in project_defaults()}
        ignored = [k for k in given if k not in TRAIN_KEYS]
        if ignored:
            LOGGER.warning(f"train ignores {ignored}: they belong to other modes (see 'clipce-rtdetr cfg').")
        given = {k: v for k, v in given.items() if k in TRAIN_KEYS}
        self.clipce_args = check_project_values({**defaults, **given})
        if self.clipce_args["clipce"] in ("ame", "fame"):  # before a run folder exists
            if "clip" in given:
                require_weights(self.clipce_args["clip"])
            load_profile(self.clipce_args["ame_profile"])  # unknown name, unreadable file (classes: once data is read)
        self._padded_weights = None  # per-object AME/prior weights + a trailing 1 (ame_crops=source or prior)
        self.scorer = None  # AMEScorer, ame_crops=batch
        self._reset_weight_stats()
        super().__init__(cfg, overrides, _callbacks)
        if self.resume:
            self.clipce_args = self._restore_clipce_args(given)
        if RANK in {-1, 0}:
            (Path(self.save_dir) / "clipce.yaml").write_text(yaml.safe_dump(self.clipce_args, sort_keys=False))

    def train(self):
        if self.ddp:
            # Ultralytics re-launches DDP workers with `vars(self.args)` as their overrides: carry the
            # CLIP-CE keys there for the launch only (each worker's __init__ pops them again).
            added = [k for k in self.clipce_args if not hasattr(self.args, k)]
            for k in added:
                setattr(self.args, k, self.clipce_args[k])
            try:
                return super().train()
            finally:
                for k in added:
                    delattr(self.args, k)
        return super().train()

    @property
    def mode(self) -> str:
        return self.clipce_args["clipce"]

    def _restore_clipce_args(self, given: dict[str, Any]) -> dict[str, Any]:
        from ultralytics.nn.tasks import load_checkpoint

        model, _ = load_checkpoint(self.args.resume)
        saved = getattr(model, CKPT_ATTR, None)
        if saved is None:
            LOGGER.warning(f"{self.args.resume} has no CLIP-CE settings; resuming with the ones given now.")
            return self.clipce_args
        saved = check_project_values({k: v for k, v in {**project_defaults(), **saved}.items() if k in TRAIN_KEYS})
        asked = check_project_values({**saved, **given})  # normalised the same way (e.g. clipce=none parses as None)
        changed = [k for k in given if asked[k] != saved[k]]
        if changed:
            LOGGER.warning(f"Resume ignores {changed}, using checkpoint values. Start a new run to change them.")
        return saved

    # ------------------------------------------------------------------------------ model and data
    def get_model(self, cfg=None, weights=None, verbose: bool = True):
        model = super().get_model(cfg=cfg, weights=weights, verbose=verbose)
        setattr(model, CKPT_ATTR, dict(self.clipce_args))
        if self.mode != "none":
            model.criterion = self.build_criterion()
        return model

    @property
    def needs_object_ids(self) -> bool:
        """Weights looked up per source object (cache or prior), not scored on the augmented batch."""
        return self.mode == "prior" or (self.mode in ("ame", "fame") and self.clipce_args["ame_crops"] == "source")

    def get_dataset(self):
        # Ultralytics would run a YAML's `download:` script (Python, via exec) for missing data:
        # only with allow_download.
        if not self.clipce_args["allow_download"] and str(self.args.data).endswith((".yaml", ".yml")):
            from clipce_rtdetr.data.dataset import resolve_data

            resolve_data(self.args.data, allow_download=False, check_labels=False)
        return super().get_dataset()

    def build_dataset(self, img_path, mode: str = "train", batch=None):
        dataset = super().build_dataset(img_path, mode=mode, batch=batch)
        if mode == "train" and self.needs_object_ids:
            if getattr(self.args, "augmentations", None):
                from clipce_rtdetr.errors import ClipCEError

                raise ClipCEError(
                    "Custom augmentations= cannot carry CLIP-CE's object ids (Albumentations reshapes the "
                    "labels); use ame_crops=batch (scores augmented crops online) or drop augmentations=."
                )
            as_object_id_dataset(dataset, self.args)
        return dataset

    def _setup_train(self):
        if self.mode in ("ame", "fame"):
            self._check_prompts()  # configuration errors before any heavy work
        super()._setup_train()
        if self.mode != "none":
            self._setup_weights()

    def _check_prompts(self):
        from clipce_rtdetr.method.prompts import build_prompts, load_profile

        a = self.clipce_args
        build_prompts(load_profile(a["ame_profile"]), list(self.data["names"].values()), a["ame_templates"])

    def _setup_weights(self):
        """Build the weight table (source crops / prior) or the online scorer (batch crops)."""
        a = self.clipce_args
        dataset = self.train_loader.dataset
        labels, label_files = dataset.labels, getattr(dataset, "label_files", None)
        if self.mode == "prior":
            from clipce_rtdetr.method.embedding_cache import dataset_prior_weights

            with torch_distributed_zero_first(LOCAL_RANK):  # rank 0 builds and saves, the others load
                self._set_weight_table(dataset_prior_weights(labels, label_files, a["prior_a"]))
            return
        from clipce_rtdetr.method.embedding_cache import make_scorer, score_dataset

        names = list(self.data["names"].values())
        if a["ame_crops"] == "batch":
            self.scorer = make_scorer(a, names, self.device, batch_size=1 << 30)  # one CLIP forward per batch
            return
        with torch_distributed_zero_first(LOCAL_RANK):  # rank 0 builds and saves the cache, the others load it
            _, d, w, scorer = score_dataset(labels, label_files, names, a, self.device, progress=RANK in {-1, 0})
        self._set_weight_table(w)
        if RANK in {-1, 0} and len(w):
            LOGGER.info(
                f"CLIP-CE: {len(w)} objects scored; mean d={d.mean():.3f}, mean w={w.mean():.3f}, "
                f"w>1.5: {(w > 1.5).float().mean():.1%}"
            )
        del scorer  # CLIP is not needed again in this mode: free its memory

    def _set_weight_table(self, w: torch.Tensor) -> None:
        """Per-object weights plus one trailing 1: an object without an id (-1) indexes it and keeps weight 1."""
        self._padded_weights = torch.cat([w.float(), w.new_ones(1, dtype=torch.float32)]).to(self.device)

    @property
    def weight_table(self) -> torch.Tensor | None:
        """(N,) per-object AME/prior weight in the dataset's object order (None: none computed)."""
        return None if self._padded_weights is None else self._padded_weights[:-1]

    def object_weights(self, ids: torch.Tensor) -> torch.Tensor:
        """Weights of a batch's objects by id; id -1 (an object with no source, e.g. from copy-paste) gets 1."""
        return self._padded_weights[ids.to(self._padded_weights.device)]

    # ----------------------------------------------------------------------------- per batch
    def preprocess_batch(self, batch: dict) -> dict:
        batch = super().preprocess_batch(batch)
        ids = split_object_ids(batch)
        if self.mode == "none":
            return batch
        criterion = unwrap_model(self.model).criterion
        if self.scorer is not None:  # ame_crops=batch: score the augmented crops online
            img = batch["img"]
            h, w_ = img.shape[2:]
            xyxy = xywh2xyxy(batch["bboxes"]) * batch["bboxes"].new_tensor([w_, h, w_, h])
            _, _, w = self.scorer.score_boxes(img, xyxy, batch["batch_idx"].long(), batch["cls"].view(-1).long())
        else:
            w = self.object_weights(ids)
        w = w.detach().float()
        criterion.object_weights = w
        s = self._wstats
        s["sum"] = s["sum"] + w.sum()
        s["gt15"] = s["gt15"] + (w > 1.5).sum()
        s["n"] += len(w)
        return batch

    # ----------------------------------------------------------------------------- logging
    def _reset_weight_stats(self):
        self._wstats = {"sum": 0.0, "gt15": 0, "n": 0}

    def weight_metrics(self) -> dict[str, float]:
        """Mean AME (or prior) weight, mean applied (FAME) weight, fraction w > 1.5, over this epoch's objects."""
        s, n = self._wstats, max(self._wstats["n"], 1)
        crit = getattr(unwrap_model(self.model), "criterion", None) if self.model is not None else None
        applied = (
            float(crit.stats["applied_sum"]) / max(crit.stats["n"], 1)
            if crit is not None and hasattr(crit, "stats") and crit.stats["n"]
            else float(s["sum"]) / n
        )
        out = {WEIGHT_KEYS[0]: float(s["sum"]) / n, WEIGHT_KEYS[1]: applied, WEIGHT_KEYS[2]: float(s["gt15"]) / n}
        self._reset_weight_stats()
        if crit is not None and hasattr(crit, "reset_stats"):
            crit.reset_stats()
        return out

    def save_metrics(self, metrics):
        if self.mode != "none":
            w = self.weight_metrics()
            metrics = {**metrics, **w}
            if isinstance(self.metrics, dict):  # seen by on_fit_epoch_end (TensorBoard, MLflow, W&B, user callbacks)
                self.metrics.update(w)
        super().save_metrics(metrics)

    def plot_metrics(self):
        super().plot_metrics()
        if self.mode != "none":
            from clipce_rtdetr.eval.plots import plot_weight_history

            plot_weight_history(self.csv, WEIGHT_KEYS, on_plot=self.on_plot)
