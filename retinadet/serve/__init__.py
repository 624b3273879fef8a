"""``retinadet serve``: an HTTP inference server (``/detect``, the KServe/Triton v2 protocol, a Label Studio ML
backend) around one loaded :class:`retinadet.detector.Detector`, with dynamic batching.

Nothing is imported here, so that the CLI can name this package without loading FastAPI: see
:func:`retinadet.serve.app.create_app`.
"""
