"""Data layer: everything between a folder on disk and a padded batch with targets."""
