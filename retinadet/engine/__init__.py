"""Training, evaluation and prediction loops (``retinadet train|val|predict``); import them from their modules."""
