"""`clipce-rtdetr clip-train`, the tool that adapts a CLIP to a dataset's classes (see `tool.py`).

It lives with the training engines, above the method: it uses the method's crops and prompts (`method/`), the
datasets (`data/`) and the loader (`clip/`). `clip/` keeps only the low-level loader that the method itself uses,
so the arrows point down: method -> clip, engine.clip_train -> method, clip.

Modules: `tool` (the steps and the CLI entry), `data` (objects and clean copies), `loop` (the contrastive loop),
`output` (out= checked before training, atomic save), `zero_shot` (before/after evaluation), `report`.
"""
