"""Data layer: everything between a folder on disk and a padded batch with targets.

Modules, one concept each:
  images      read_image: file -> uint8 RGB [3, H, W] (float in [0, 1] for more than 8 bits, windowed)
  records     ImageRecord / DatasetRecords (canonical form), Problem
  formats/    readers and writers: coco, voc, yolo, csv_format (ours and TF Object Detection), labelme, createml,
              labelstudio, cvat; sniff (which format a folder holds, by content); to_coco_dict for evaluation
  discover    load_dataset / load_splits: a path (folder, file, dataset YAML) -> its splits
  convert     write_dataset / convert between formats
  synthetic   the built-in `shapes` dataset (ensure_shapes_dataset); shapes_large its large-image variant
  transforms  TransformConfig, presets none/default/strong, DetectionTransform
  loading     DetectionDataset, collate_detection, GroupedBatchSampler, build_loader
  tiles       tiled training's sampling and crops
  regions     slides and large tiled TIFFs read by region (tifffile or OpenSlide), at a level or an mpp
  check       check_dataset / format_report (`retinadet data check`), check_plot (`--plot`)
"""

from retinadet.data.discover import load_dataset, load_splits
from retinadet.data.formats.coco import coco_api, to_coco_dict
from retinadet.data.images import read_image
from retinadet.data.loading import DetectionDataset, DetectionLoader, build_loader, collate_detection
from retinadet.data.records import DatasetRecords, ImageRecord, Problem
from retinadet.data.transforms import TransformConfig, build_transform, transform_config

__all__ = [
    "read_image", "load_dataset", "load_splits", "to_coco_dict", "coco_api", "DetectionDataset", "DetectionLoader",
    "build_loader", "collate_detection", "DatasetRecords", "ImageRecord", "Problem", "TransformConfig",
    "build_transform", "transform_config",
]
