"""A seeded synthetic data set of coloured shapes for the embedded demo.

Each image holds 1-4 non-overlapping shapes (square, circle, triangle) on a
textured background.  One call writes both layouts the host toolkits read:

- detection / instance segmentation: COCO ``instances_{split}.json`` with
  polygon masks (mmdet's ``CocoDataset``);
- semantic segmentation: a ``uint8`` label map per image, 0 = background and
  ``i + 1`` = ``DEMO_CLASSES[i]`` (mmseg's ``BaseSegDataset``).

Layout under ``root``::

    images/{train,val}/000000.png
    annotations/instances_{train,val}.json
    masks/{train,val}/000000.png
"""
from __future__ import annotations

import json
import math
import os
import os.path as osp
from typing import Optional

import cv2
import numpy as np
from pycocotools import mask as mask_utils

__all__ = ['DEMO_CLASSES', 'make_demo_dataset', 'make_split']

DEMO_CLASSES = ('square', 'circle', 'triangle')
_MAX_SHAPES = 4


def _polygon(kind: int, cx: float, cy: float, r: float, angle: float) -> np.ndarray:
    """Vertices (V, 2) of shape ``kind`` with circumradius ``r`` around (cx, cy)."""
    if kind == 0:  # square
        t = angle + np.arange(4) * (math.pi / 2) + math.pi / 4
    elif kind == 1:  # circle
        t = np.linspace(0, 2 * math.pi, 24, endpoint=False)
    else:  # triangle
        t = angle + np.arange(3) * (2 * math.pi / 3)
    return np.stack([cx + r * np.cos(t), cy + r * np.sin(t)], axis=1)


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    """A smooth random colour gradient plus pixel noise, (H, W, 3) uint8."""
    corners = rng.uniform(0, 255, size=(2, 2, 3)).astype(np.float32)
    img = cv2.resize(corners, (size, size), interpolation=cv2.INTER_LINEAR)
    img += rng.normal(0, 12, size=img.shape).astype(np.float32)
    return np.clip(img, 0, 255).astype(np.uint8)


def _render(rng: np.random.Generator, size: int):
    """One image: (image, label map, list of (class index, polygon, mask))."""
    img = _background(rng, size)
    label = np.zeros((size, size), np.uint8)
    shapes, boxes = [], []
    for _ in range(int(rng.integers(1, _MAX_SHAPES + 1))):
        for _attempt in range(20):
            r = rng.uniform(0.08, 0.2) * size
            cx, cy = rng.uniform(r + 1, size - r - 1, size=2)
            box = (cx - r, cy - r, cx + r, cy + r)
            if all(box[0] > b[2] or box[2] < b[0] or box[1] > b[3] or box[3] < b[1] for b in boxes):
                break
        else:
            continue  # no room left for another shape
        boxes.append(box)
        kind = int(rng.integers(len(DEMO_CLASSES)))
        poly = _polygon(kind, cx, cy, r, rng.uniform(0, 2 * math.pi))
        # rasterised as COCO does, so the label map equals the instance masks
        mask = mask_utils.decode(mask_utils.frPyObjects([poly.reshape(-1).tolist()], size, size))[..., 0]
        colour = rng.uniform(0, 255, size=3)
        # keep the shape visible against the local background
        colour = np.where(np.abs(colour - img[int(cy), int(cx)]) < 60, 255 - colour, colour)
        img[mask.astype(bool)] = colour.astype(np.uint8)
        label[mask.astype(bool)] = kind + 1
        shapes.append((kind, poly, mask))
    return img, label, shapes


def make_split(root: str, split: str, num_images: int, size: int, seed: int,
               first_id: int = 0) -> dict:
    """Write one split (images, label maps, COCO json); returns the COCO dict."""
    rng = np.random.default_rng(seed)
    for sub in ('images', 'masks'):
        os.makedirs(osp.join(root, sub, split), exist_ok=True)
    os.makedirs(osp.join(root, 'annotations'), exist_ok=True)
    images, annotations = [], []
    for i in range(num_images):
        image_id = first_id + i
        name = f'{image_id:06d}.png'
        img, label, shapes = _render(rng, size)
        cv2.imwrite(osp.join(root, 'images', split, name), img[:, :, ::-1])  # RGB -> BGR
        cv2.imwrite(osp.join(root, 'masks', split, name), label)
        images.append(dict(id=image_id, file_name=name, width=size, height=size))
        for kind, poly, mask in shapes:
            x0, y0 = np.clip(poly.min(0), 0, size)
            x1, y1 = np.clip(poly.max(0), 0, size)
            annotations.append(dict(
                id=len(annotations) + 1, image_id=image_id, category_id=kind + 1,
                bbox=[float(x0), float(y0), float(x1 - x0), float(y1 - y0)],
                area=float(mask.sum()), iscrowd=0,
                segmentation=[[float(v) for v in poly.reshape(-1)]]))
    coco = dict(images=images, annotations=annotations,
                categories=[dict(id=i + 1, name=n) for i, n in enumerate(DEMO_CLASSES)])
    with open(osp.join(root, 'annotations', f'instances_{split}.json'), 'w') as f:
        json.dump(coco, f)
    return coco


def make_demo_dataset(root: str, num_train: int = 300, num_val: int = 50, size: int = 128,
                      seed: int = 0, overwrite: bool = False) -> dict:
    """Write the train and val splits under ``root``; returns their COCO dicts.

    Deterministic for a given ``seed``.  An existing data set made with the
    same arguments (recorded in ``root/meta.json``) is kept unless
    ``overwrite``; one made with different arguments is an error rather than
    being silently mixed.
    """
    for name, value, low in (('num_train', num_train, 1), ('num_val', num_val, 1), ('size', size, 32)):
        if not isinstance(value, int) or value < low:
            raise ValueError(f'{name} must be an int >= {low}, got {value!r}')
    meta = dict(num_train=num_train, num_val=num_val, size=size, seed=seed, classes=list(DEMO_CLASSES))
    meta_path = osp.join(root, 'meta.json')
    if osp.exists(meta_path) and not overwrite:
        with open(meta_path) as f:
            old = json.load(f)
        if old != meta:
            raise ValueError(f'{root} already holds a demo data set made with {old}; '
                             f'pass overwrite=True (--overwrite) or another root to make {meta}')
        return {split: _read(root, split) for split in ('train', 'val')}
    out = {'train': make_split(root, 'train', num_train, size, seed),
           'val': make_split(root, 'val', num_val, size, seed + 1, first_id=num_train)}
    with open(meta_path, 'w') as f:
        json.dump(meta, f)
    return out


def _read(root: str, split: str) -> dict:
    with open(osp.join(root, 'annotations', f'instances_{split}.json')) as f:
        return json.load(f)
