"""retinadet: RetinaNet object detection toolkit."""

__all__ = ["load", "train"]


def __getattr__(name):
    # Lazy, so that `import retinadet` stays light; `retinadet.load(path)` -> Detector.
    if name == "load":
        from retinadet.detector import load

        return load
    if name == "train":
        from retinadet.engine.train import train

        return train
    raise AttributeError(f"module 'retinadet' has no attribute '{name}'")
