"""Export errors (torch-free, so the onnxruntime runner can raise them too)."""

from retinadet.errors import RetinadetError


class ExportError(RetinadetError):
    """A model, option or file that cannot be exported or run as exported; the message says what to change."""
