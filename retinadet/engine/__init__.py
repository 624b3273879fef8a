"""Training, evaluation and prediction loops (``retinadet train|val|predict``)."""

__all__ = ["train", "evaluate_detector", "predict"]


def __getattr__(name):
    if name == "train":
        from retinadet.engine.train import train

        return train
    if name == "evaluate_detector":
        from retinadet.engine.evaluate import evaluate_detector

        return evaluate_detector
    if name == "predict":
        from retinadet.engine.predict import predict

        return predict
    raise AttributeError(f"module 'retinadet.engine' has no attribute '{name}'")
