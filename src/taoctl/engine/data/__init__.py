"""Datasets: generated samples, KITTI labels, TFRecord shards, augmentation."""
