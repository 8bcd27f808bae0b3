"""CLIP-CE for Ultralytics YOLO detectors (YOLOv8, YOLO11, YOLO26): loss, trainer, model class (METHOD.md §5b)."""
