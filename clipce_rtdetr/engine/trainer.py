"""The detector-independent half of a CLIP-CE trainer (Ultralytics' custom-trainer pattern).

CLIP, the prompt bank and the per-object weight table live on the trainer, outside the detector's
module tree, so they never reach `state_dict`, EMA or checkpoints. The detector stays stock; only its
`criterion` is a CLIP-CE loss, which Ultralytics drops from checkpoints (`ema.criterion = None`). So
`best.pt` loads in any Ultralytics install.

Per batch the only extra work with `ame_crops=source` is a gather of precomputed weights by object id
(FAME's confidence adjustment happens inside the loss, on matched objects only).

Distributed (torchrun on any number of nodes, or Ultralytics' `device=0,1`): see `engine/distributed.py`. Global
rank 0 builds (or loads) the weight table once and broadcasts it, so every process uses the identical table and
no other process loads CLIP for it.
"""

from __future__ import annotations

import math
import os
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import torch
import yaml
from ultralytics.utils import DEFAULT_CFG, LOGGER, RANK
from ultralytics.utils.ops import xywh2xyxy
from ultralytics.utils.torch_utils import unwrap_model

from clipce_rtdetr import atomic
from clipce_rtdetr.clip.loader import require_weights
from clipce_rtdetr.config import check_project_values, project_defaults
from clipce_rtdetr.engine import distributed
from clipce_rtdetr.engine.run_files import RunFilesMixin
from clipce_rtdetr.errors import ClipCEError
from clipce_rtdetr.method.object_ids import as_object_id_dataset, split_object_ids
from clipce_rtdetr.method.prompts import load_profile
from clipce_rtdetr.method.weight_table import TABLE_MODES, check_weights_key, read_table

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
    "dist_timeout",
    "weights",
)
WEIGHT_KEYS = ("clipce/ame_w", "clipce/fame_w", "clipce/frac_w>1.5")


class ClipCETrainerMixin(RunFilesMixin):
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
        if self.clipce_args["clipce"] in ("ame", "fame"):  # before a run folder exists (or any worker starts)
            check_single_cls(self.clipce_args["clipce"], overrides.get("single_cls"))
            load_profile(self.clipce_args["ame_profile"])  # unknown name, unreadable file (classes: once data is read)
            if "clip" in given:
                require_weights(self.clipce_args["clip"])
            if not overrides.get("resume"):  # resuming: the checkpoint's clip=, checked once restored
                check_clip_available(self.clipce_args["clip"])
        table_file = check_weights_key(self.clipce_args["clipce"], self.clipce_args["weights"])
        self._read_table = None  # the weight table read here, matched to the objects once data is read
        if table_file is not None and not overrides.get("resume") and RANK in {-1, 0}:
            self._read_table = read_table(table_file)  # the file's own errors before a run folder exists
        self._padded_weights = None  # per-object AME/prior weights + a trailing 1 (ame_crops=source or prior)
        self.scorer = None  # AMEScorer, ame_crops=batch
        self.weight_source = None  # how this process got its weight table (logs, tests)
        self._reset_weight_stats()
        job = distributed.dist_env()
        if job is not None:  # a worker of torchrun/SLURM or of Ultralytics' own launcher
            cfg, overrides = self._join_job(job, cfg, overrides)
        super().__init__(cfg, overrides, _callbacks)
        if job is not None:
            self.world_size = job.world_size  # Ultralytics counts local devices (0 on CPU): the global size splits
            self._check_shared_run_folder()  # the batch, scales the loss and sizes DDP
        if self.resume:
            self.clipce_args = self._restore_clipce_args(given)
            if self.mode in ("ame", "fame"):
                check_clip_available(self.clipce_args["clip"])
        if RANK in {-1, 0}:
            atomic.write_text(Path(self.save_dir) / "clipce.yaml", yaml.safe_dump(self.clipce_args, sort_keys=False))

    def _join_job(self, job: distributed.DistEnv, cfg, overrides: dict[str, Any]) -> tuple[Any, dict[str, Any]]:
        """Join the process group now and take rank 0's run folder: every process otherwise picks its own
        (`increment_path` runs in each; under torchrun they would disagree, e.g. train2 on rank 0, train elsewhere)."""
        from ultralytics.cfg import cfg2dict, get_cfg, get_save_dir

        overrides = dict(overrides)
        if overrides.get("resume") and "device" not in overrides:  # the devices the run was started on
            overrides["device"] = distributed.checkpoint_device(overrides["resume"], overrides.get("model"))
        overrides["device"] = distributed.local_device_arg(overrides.get("device"), job)
        if not overrides.get("resume"):  # a resumed run's batch is the checkpoint's (checked when it started)
            distributed.check_batch(overrides.get("batch", DEFAULT_CFG.batch), job.world_size)
        device = distributed.torch_device(overrides.get("device") or "cpu", job)
        distributed.init_process_group(device, self.clipce_args["dist_timeout"])
        if overrides.get("resume") or overrides.get("save_dir"):  # the checkpoint / Ultralytics' launcher names it
            return cfg, overrides
        cfg = {**cfg2dict(cfg), "save_dir": ""}  # Ultralytics' own workers take save_dir the same way
        if distributed.restart_attempt():  # torchrun restarted the job: continue the run its first attempt began
            mine = distributed.restarted_run(cfg, overrides) if distributed.is_main() else None
            found = distributed.broadcast_object(mine)
            if found is not None:
                return cfg, {**overrides, **found}
        mine = str(get_save_dir(get_cfg(cfg, overrides))) if distributed.is_main() else None
        overrides["save_dir"] = distributed.broadcast_object(mine)
        return cfg, overrides

    def _check_shared_run_folder(self) -> None:
        """Rank 0 writes the run folder; every process must see it (checkpoints, resume and the final evaluation
        of best.pt read it), so on several machines it must be on a filesystem they all share."""
        distributed.broadcast_object(True)  # rank 0 has created it by the time this returns anywhere
        if distributed.is_main() and os.environ.get("TORCHELASTIC_RUN_ID"):  # a restart finds its run by this
            atomic.write_text(Path(self.save_dir) / distributed.RUN_ID_FILE, os.environ["TORCHELASTIC_RUN_ID"])
        if distributed.any_rank(not Path(self.save_dir).is_dir()):
            raise ClipCEError(
                f"the run folder {self.save_dir} is not visible to every process: on several machines put it on a "
                "filesystem they all share (project=/shared/path/runs)."
            )

    def train(self):
        if distributed.is_distributed():  # a torchrun/SLURM worker, or one of Ultralytics' own
            result = super().train()
            distributed.barrier_and_destroy()  # only after success: a failed rank must not wait for the others
            return result
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
        saved["dist_timeout"] = self.clipce_args["dist_timeout"]  # how long to wait is this session's choice
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
        return self.mode in ("prior", *TABLE_MODES) or (
            self.mode in ("ame", "fame") and self.clipce_args["ame_crops"] == "source"
        )

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

    def _setup_ddp(self):
        """Ultralytics sizes its process group by the local device count; the launcher's environment has the
        global one (the group is usually joined already, in __init__)."""
        job = distributed.dist_env()
        if job is None:
            return super()._setup_ddp()
        self.device = distributed.torch_device(distributed.local_device_arg(self.args.device, job), job)
        if self.device.type == "cuda":  # also when the group was joined in __init__ (e.g. before a resume's device)
            torch.cuda.set_device(self.device)
        distributed.init_process_group(self.device)

    def final_eval(self):
        if distributed.is_distributed() and self.device.type == "cpu":
            with distributed.cpu_final_eval():
                return super().final_eval()
        return super().final_eval()

    def _setup_train(self):
        if self.mode in ("ame", "fame"):
            self._check_prompts()  # configuration errors before any heavy work
        cpu_ddp = self.world_size > 1 and self.device.type == "cpu"
        with distributed.cpu_ddp() if cpu_ddp else nullcontext():
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
        if self.mode in ("ame", "fame") and a["ame_crops"] == "batch":
            from clipce_rtdetr.method.embedding_cache import make_scorer

            # every process scores its own augmented batches, ame_batch crops per CLIP forward
            self.scorer = make_scorer(a, list(self.data["names"].values()), self.device)
            return
        from clipce_rtdetr.method.embedding_cache import labels_hash

        dataset = self.train_loader.dataset
        lhash = labels_hash(dataset.labels)
        self._check_same_labels(lhash)
        self._build_cache_shares(dataset)
        table = None
        if distributed.is_main():
            try:
                table = self._build_weight_table(dataset.labels, getattr(dataset, "label_files", None))
            except ClipCEError as e:  # every process stops with rank 0's message (none waits on a broadcast)
                table = e
        distributed.wait_all("weight-table")  # rank 0 may merge and score a large cache: heartbeats bound the wait
        rank0_hash, table = distributed.broadcast_object((lhash, table) if distributed.is_main() else None)
        if isinstance(table, ClipCEError):
            raise table
        if rank0_hash != lhash:
            raise ClipCEError(
                f"rank {RANK} reads other training labels than rank 0 ({self.data['train']}): node-local copies of the "
                "dataset must be identical (object ids index one weight table)."
            )
        if not distributed.is_main():
            self.weight_source = "received from rank 0"
        self._set_weight_table(table)

    def _check_same_labels(self, lhash: str) -> None:
        """Every process reads the labels rank 0 reads (object ids index one weight table): all stop if one does
        not, before any heavy work."""
        differs = distributed.broadcast_object(lhash) != lhash
        if distributed.any_rank(differs):
            raise ClipCEError(
                f"the processes of this job read different training labels ({self.data['train']}; rank {RANK} "
                f"{'differs from' if differs else 'agrees with'} rank 0): node-local copies of the dataset must be "
                "identical (object ids index one weight table)."
            )

    def _build_cache_shares(self, dataset) -> None:
        """ame/fame on source crops under torchrun, when the embedding cache must be built: every process embeds its
        share of the objects into shard files (`method/cache_build.py`); rank 0 merges them in `score_dataset`."""
        a = self.clipce_args
        if not distributed.is_distributed() or self.mode not in ("ame", "fame") or a["ame_crops"] != "source":
            return
        from clipce_rtdetr.clip.loader import load_clip
        from clipce_rtdetr.method import cache_build
        from clipce_rtdetr.method import embedding_cache as ec

        labels, files = dataset.labels, getattr(dataset, "label_files", None)
        bundle = load_clip(a["clip"], device=self.device) if distributed.is_main() else None
        shards = distributed.broadcast_object(
            ec.cache_to_build(labels, files, bundle, a["ame_context"]) if distributed.is_main() else None
        )
        if shards is None:
            return
        bundle = bundle or load_clip(a["clip"], device=self.device)
        rank, world = torch.distributed.get_rank(), torch.distributed.get_world_size()
        done = cache_build.build_share(
            labels, bundle, a["ame_context"], a["ame_batch"], self.device, shards, rank, world, self.args.workers,
            progress=RANK in {-1, 0},
        )
        LOGGER.info(f"CLIP-CE: rank {rank} embedded {done} chunk(s) of the cache into {shards}")
        del bundle
        distributed.wait_all("cache-shares")

    def _build_weight_table(self, labels: list[dict], label_files: list[str] | None) -> torch.Tensor:
        """Per-object weights from the cache (built once, here, by global rank 0 only)."""
        from clipce_rtdetr.method import embedding_cache as ec

        a = self.clipce_args
        built = ec.COUNTS["built"]
        if self.mode == "prior":
            w = ec.dataset_prior_weights(labels, label_files, a["prior_a"])
        elif self.mode in TABLE_MODES:
            from clipce_rtdetr.method.weight_table import table_weights

            table, self._read_table = self._read_table or read_table(a["weights"]), None  # read once, then freed
            w = table_weights(table, labels)
            LOGGER.info(f"CLIP-CE: {len(w)} object weights from {a['weights']}; mean w={float(w.mean()):.3f}")
            self.weight_source = "table"
            return w
        else:
            names = list(self.data["names"].values())
            _, d, w, scorer = ec.score_dataset(
                labels, label_files, names, a, self.device, progress=RANK in {-1, 0}, workers=self.args.workers
            )
            del scorer  # CLIP is not needed again in this mode: free its memory
            if len(w):
                LOGGER.info(
                    f"CLIP-CE: {len(w)} objects scored; mean d={d.mean():.3f}, mean w={w.mean():.3f}, "
                    f"w>1.5: {(w > 1.5).float().mean():.1%}"
                )
        self.weight_source = "built" if ec.COUNTS["built"] > built else "loaded"
        return w.detach().float().cpu()

    def _set_weight_table(self, w: torch.Tensor) -> None:
        """Per-object weights plus one trailing 1: an object without an id (-1) indexes it and keeps weight 1."""
        bad = ~torch.isfinite(w)
        if bool(bad.any()):
            raise ClipCEError(
                f"CLIP-CE weights are not finite for {int(bad.sum())} of {len(w)} objects; training with them would "
                "turn the loss NaN. Delete the dataset's *.clipce-*.pt caches and check the CLIP weights (clip=)."
            )
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
        if self.scorer is None and self._padded_weights is None:
            # No weights yet: Ultralytics' QAT calibration (quantize=8) runs batches through here inside
            # _setup_train, before _setup_weights; calibrating ranges needs the stock loss only.
            criterion.object_weights = None
            return batch
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

    def _handle_nan_recovery(self, epoch):
        """Fail loudly, not with exit 0 and mAP 0: non-finite CLIP-CE weights stop the run at once; a non-finite
        loss or fitness that Ultralytics cannot recover from (first epoch: it only warns) stops it too."""
        bad_w = self.mode != "none" and not math.isfinite(float(self._wstats["sum"]))
        if distributed.any_rank(bad_w):
            raise ClipCEError(
                f"CLIP-CE weights went non-finite in epoch {epoch + 1} (clipce={self.mode}); the run is stopped. "
                "Check the CLIP weights (clip=) and delete the dataset's *.clipce-*.pt caches."
            )
        if super()._handle_nan_recovery(epoch):
            self._stock_ema_criterion()  # the EMA was rebuilt from the live model: a copy of its batch's weights
            return True
        loss_bad = self.loss is not None and not bool(torch.isfinite(self.loss).all())
        fitness_bad = self.fitness is not None and not math.isfinite(float(self.fitness))
        if distributed.any_rank(loss_bad or fitness_bad):
            raise ClipCEError(
                f"the training loss went NaN/inf in epoch {epoch + 1} (in at least one process) and Ultralytics did "
                "not recover it from a checkpoint; the run is stopped (its weights would be garbage). Try amp=False, "
                "a lower lr0, or gradient clipping."
            )
        return False

    def _stock_ema_criterion(self) -> None:
        """Validation runs the EMA model's loss: it must not weight its objects by a training batch's weights."""
        ema = getattr(self, "ema", None)
        crit = getattr(unwrap_model(ema.ema), "criterion", None) if ema is not None else None
        if crit is not None and hasattr(crit, "object_weights"):
            crit.object_weights = None

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


def check_single_cls(mode: str, single_cls) -> None:
    """single_cls renames every class to one name ("item"), so AME's class prompts would score every object
    against "a photo of a item": meaningless weights. prior and none use no class names."""
    if single_cls:
        raise ClipCEError(
            f"single_cls=True cannot be used with clipce={mode}: it renames every class to one name, so CLIP's class "
            "prompts would not describe the objects. Use clipce=prior or clipce=none with single_cls=True, or train "
            "with the real classes."
        )


def check_clip_available(spec: str) -> None:
    """The CLIP weights named by `spec` exist and can be read: reported here, before a run folder, data loading or
    any DDP worker, not after data loading in every worker."""
    from clipce_rtdetr.clip.loader import check_clip_weights

    check_clip_weights(spec)  # loads it once on the CPU: wrong or damaged weights are found here, not after data
