"""The trainer's hooks for the files a run leaves behind: where a resumed run writes, and how checkpoints are
written (atomically). Put in front of an Ultralytics trainer (ClipCETrainerMixin inherits it)."""

from __future__ import annotations

from clipce_rtdetr.engine.checkpoint_writes import atomic_checkpoint_paths, atomic_strip_optimizer
from clipce_rtdetr.engine.run_folder import resumed_save_dir


class RunFilesMixin:
    def check_resume(self, overrides):
        super().check_resume(overrides)
        if self.resume:  # go on where the checkpoint is now, not where it was written (a moved run folder)
            self.args.save_dir = resumed_save_dir(self.args, overrides) or self.args.save_dir

    def save_model(self):
        with atomic_checkpoint_paths(self):  # a failed write keeps the previous last.pt/best.pt and names the file
            return super().save_model()

    def final_eval(self):
        with atomic_strip_optimizer():  # strip_optimizer rewrites last.pt and best.pt
            return super().final_eval()
