"""A seeded synthetic data set of coloured shapes for the embedded demo.

Each image holds 1-4 non-overlapping shapes (square, circle, triangle) on a
textured background.  One call writes both layouts the host toolkits read:

- detection / instance segmentation: COCO ``instances_{split}.json`` with
  polygon masks (mmdet's ``CocoDataset``);
- semantic segmentation: a ``uint8`` label map per image, 0 = background and
  ``i + 1`` = ``DEMO_CLASSES[i]`` (mmseg's ``BaseSegDataset``);
- classification: a square crop around every shape, in a folder per class
  plus a ``path label`` list with label ``i`` = ``DEMO_CLASSES[i]``
  (mmpretrain's ``CustomDataset``, with or without the list).

Layout under ``root``::

    images/{train,val}/000000.png
    annotations/instances_{train,val}.json
    masks/{train,val}/000000.png
    cls/{train,val}/{square,circle,triangle}/000000_0001.png
    cls/{train,val}.txt
    meta.json
"""
from __future__ import annotations

import json
import math
import os
import os.path as osp
import shutil
from typing import Optional

import cv2
import numpy as np

from ..extras import require
from ..fileio import replacing, temporary_folder

__all__ = ['DEMO_CLASSES', 'make_demo_dataset', 'make_split', 'cls_size']

DEMO_CLASSES = ('square', 'circle', 'triangle')
# what a demo set consists of under its root; removed whole by overwrite
_LAYOUT = ('images', 'masks', 'annotations', 'cls')
_META = 'meta.json'
# 2: classification crops (cls/); sets without it are remade with overwrite
LAYOUT_VERSION = 2
_MAX_SHAPES = 4
# varied sets: larger shapes with a colour per class (RGB), so that a small model
# learns them in minutes on a CPU; the per-image cast shifts these colours
_VARIED_SCALE = 1.5
_VARIED_COLOURS = np.array([[220, 60, 60], [60, 200, 60], [60, 90, 230]], np.float64)


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


def _cluttered_background(rng: np.random.Generator, size: int) -> np.ndarray:
    """:func:`_background` with a texture and clutter on it, (H, W, 3) uint8.

    Texture: oriented stripes of random frequency and colour, and blotches
    of low-frequency noise.  Clutter: thin strokes in random colours, which
    class shapes can share.  All of it is background in the labels.
    """
    img = _background(rng, size).astype(np.float32)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    theta, freq, phase = rng.uniform(0, math.pi), rng.uniform(2, 8), rng.uniform(0, 2 * math.pi)
    stripes = np.sin(2 * math.pi * freq * (xx * math.cos(theta) + yy * math.sin(theta)) + phase)
    img += stripes[..., None] * rng.uniform(15, 60, size=3).astype(np.float32)
    blotches = rng.normal(0, 1, size=(5, 5, 3)).astype(np.float32)
    img += 40 * cv2.resize(blotches, (size, size), interpolation=cv2.INTER_CUBIC)
    img = np.clip(img, 0, 255).astype(np.uint8)
    for _ in range(int(rng.integers(2, 6))):
        (x0, y0), (x1, y1) = rng.uniform(0, size, size=(2, 2)).astype(int)
        colour = tuple(int(c) for c in rng.uniform(0, 255, size=3))
        cv2.line(img, (int(x0), int(y0)), (int(x1), int(y1)), colour, 1)
    return img


def _photometric(rng: np.random.Generator, img: np.ndarray) -> np.ndarray:
    """A per-image contrast, brightness and colour cast (per-channel gain), (H, W, 3) uint8."""
    contrast = math.exp(rng.uniform(math.log(0.3), math.log(1.6)))
    brightness = rng.uniform(-70, 70)
    gain = rng.uniform(0.5, 1.5, size=3).astype(np.float32)
    out = ((img.astype(np.float32) - 127.5) * contrast + 127.5 + brightness) * gain
    return np.clip(out, 0, 255).astype(np.uint8)


def _render(rng: np.random.Generator, size: int, varied: bool = False):
    """One image: (image, label map, list of (class index, polygon, mask)).

    ``varied``: a textured, cluttered background, shapes 1.5 times larger
    with a hue per class, and, after the shapes, a per-image contrast,
    brightness and colour cast; the default draws exactly what it always drew.
    """
    from pycocotools import mask as mask_utils  # the [det] extra, checked by make_demo_dataset

    img = _cluttered_background(rng, size) if varied else _background(rng, size)
    label = np.zeros((size, size), np.uint8)
    shapes, boxes = [], []
    for _ in range(int(rng.integers(1, _MAX_SHAPES + 1))):
        for _attempt in range(20):
            r = rng.uniform(0.08, 0.2) * size * (_VARIED_SCALE if varied else 1)
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
        if varied:  # each class its own hue, which the per-image colour cast then shifts
            colour = np.clip(_VARIED_COLOURS[kind] + rng.uniform(-40, 40, size=3), 0, 255)
        else:
            colour = rng.uniform(0, 255, size=3)
            # keep the shape visible against the local background
            colour = np.where(np.abs(colour - img[int(cy), int(cx)]) < 60, 255 - colour, colour)
        img[mask.astype(bool)] = colour.astype(np.uint8)
        label[mask.astype(bool)] = kind + 1
        shapes.append((kind, poly, mask))
    if varied:
        img = _photometric(rng, img)
    return img, label, shapes


def _write_file(path: str, data: bytes) -> None:
    """Write ``data`` to ``path`` whole (:func:`ssn_plugins.fileio.replacing`)."""
    try:
        with replacing(path) as (tmp, ):
            with open(tmp, 'wb') as f:
                f.write(data)
    except OSError as err:
        raise OSError(f'demo data: could not write {path}: {err.strerror or err}') from err


def _write_png(path: str, array: np.ndarray) -> None:
    """``cv2.imwrite`` that fails loudly: encode, then :func:`_write_file`."""
    ok, buf = cv2.imencode('.png', array)
    if not ok:
        raise OSError(f'demo data: could not encode {path} as PNG')
    _write_file(path, buf.tobytes())


def _write_json(path: str, obj) -> None:
    _write_file(path, json.dumps(obj).encode())


def _crop(img: np.ndarray, poly: np.ndarray, side: int) -> np.ndarray:
    """A square crop centred on ``poly``'s box, 1.25 times its larger side, resized to ``side``."""
    (x0, y0), (x1, y1) = poly.min(0), poly.max(0)
    half = 0.625 * max(x1 - x0, y1 - y0)
    pad = int(math.ceil(half)) + 1
    padded = np.pad(img, ((pad, pad), (pad, pad), (0, 0)), mode='edge')
    cx, cy = (x0 + x1) / 2 + pad, (y0 + y1) / 2 + pad
    window = padded[int(round(cy - half)):int(round(cy + half)), int(round(cx - half)):int(round(cx + half))]
    return cv2.resize(window, (side, side), interpolation=cv2.INTER_AREA)


def make_split(root: str, split: str, num_images: int, size: int, seed: int,
               first_id: int = 0, varied: bool = False) -> dict:
    """Write one split (images, label maps, classification crops, COCO json); returns the COCO dict.

    Every file is written whole (temporary file, then rename); a failed write
    raises ``OSError`` naming the file.
    """
    rng = np.random.default_rng(seed)
    for sub in ('images', 'masks'):
        os.makedirs(osp.join(root, sub, split), exist_ok=True)
    for name in DEMO_CLASSES:
        os.makedirs(osp.join(root, 'cls', split, name), exist_ok=True)
    os.makedirs(osp.join(root, 'annotations'), exist_ok=True)
    images, annotations, cls_lines = [], [], []
    for i in range(num_images):
        image_id = first_id + i
        name = f'{image_id:06d}.png'
        img, label, shapes = _render(rng, size, varied)
        _write_png(osp.join(root, 'images', split, name), img[:, :, ::-1])  # RGB -> BGR
        _write_png(osp.join(root, 'masks', split, name), label)
        images.append(dict(id=image_id, file_name=name, width=size, height=size))
        for kind, poly, mask in shapes:
            x0, y0 = np.clip(poly.min(0), 0, size)
            x1, y1 = np.clip(poly.max(0), 0, size)
            annotations.append(dict(
                id=len(annotations) + 1, image_id=image_id, category_id=kind + 1,
                bbox=[float(x0), float(y0), float(x1 - x0), float(y1 - y0)],
                area=float(mask.sum()), iscrowd=0,
                segmentation=[[float(v) for v in poly.reshape(-1)]]))
            crop = f'{DEMO_CLASSES[kind]}/{image_id:06d}_{len(annotations):04d}.png'
            _write_png(osp.join(root, 'cls', split, crop), _crop(img, poly, cls_size(size))[:, :, ::-1])
            cls_lines.append(f'{crop} {kind}\n')
    coco = dict(images=images, annotations=annotations,
                categories=[dict(id=i + 1, name=n) for i, n in enumerate(DEMO_CLASSES)])
    _write_json(osp.join(root, 'annotations', f'instances_{split}.json'), coco)
    _write_file(osp.join(root, 'cls', f'{split}.txt'), ''.join(cls_lines).encode())
    return coco


def cls_size(size: int) -> int:
    """Side of the classification crops of a data set of ``size`` x ``size`` images."""
    return size // 2


def _is_empty_dir(path: str) -> bool:
    return not osp.exists(path) or (osp.isdir(path) and not os.listdir(path))


def _remove_set(root: str) -> None:
    """Remove the files of the demo set under ``root`` (only its own folders and meta.json)."""
    for sub in _LAYOUT:
        path = osp.join(root, sub)
        if osp.isdir(path) and not osp.islink(path):
            shutil.rmtree(path)
        elif osp.lexists(path):
            os.remove(path)
    if osp.lexists(osp.join(root, _META)):
        os.remove(osp.join(root, _META))


def _read_meta(root: str) -> dict:
    path = osp.join(root, _META)
    try:
        with open(path) as f:
            meta = json.load(f)
    except (OSError, ValueError) as err:
        raise ValueError(f'{path} is not a readable demo data set record ({err}); remove {root} '
                         f'or pick another folder') from err
    if not isinstance(meta, dict):
        raise ValueError(f'{path} is not a demo data set record (a {type(meta).__name__}); remove '
                         f'{root} or pick another folder')
    return meta


def _args(meta: dict) -> dict:
    return {k: v for k, v in meta.items() if k != 'layout'}


def make_demo_dataset(root: str, num_train: int = 300, num_val: int = 50, size: int = 128,
                      seed: int = 0, overwrite: bool = False, varied: bool = False) -> dict:
    """Write the train and val splits under ``root``; returns their COCO dicts.

    ``varied``: per-image brightness, contrast and colour cast on textured,
    cluttered backgrounds, larger shapes with a hue per class (the small-batch
    study's data); the default set is the plain one the demo always used.

    Deterministic for a given ``seed``.  ``root/meta.json`` records the
    arguments and whether the set is complete.  The set is built in a hidden
    folder beside ``root`` and moved in once whole, so a failed or killed run
    leaves ``root`` as it was.  A complete set
    made with the same arguments is kept; one made with different arguments
    is an error unless ``overwrite``, which removes the old set's files once
    the new set is built (so no stale image is left for a loader to count).  An incomplete set (a
    run that failed part-way), or one of an older layout made with the same
    arguments, is removed and written again.  A non-empty
    folder without ``meta.json`` is not a demo set and is refused, with or
    without ``overwrite``: nothing in it is touched.
    """
    require('pycocotools', purpose='the demo data set (COCO instance masks)')
    for name, value, low in (('num_train', num_train, 1), ('num_val', num_val, 1), ('size', size, 32),
                             ('seed', seed, 0)):
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise ValueError(f'{name} must be an int >= {low}, got {value!r}')
    meta = dict(num_train=num_train, num_val=num_val, size=size, seed=seed, classes=list(DEMO_CLASSES),
                layout=LAYOUT_VERSION)
    if varied:
        meta['varied'] = True
    meta_path = osp.join(root, _META)
    replace_old = False
    if osp.lexists(meta_path):
        old = _read_meta(root)
        complete = old.pop('complete', True)  # sets written before the flag existed were complete
        if complete and old == meta and not overwrite:
            return {split: _read(root, split) for split in ('train', 'val')}
        # the same arguments in an older layout (e.g. without cls/): ours, deterministic, rewritten
        older = old.get('layout', 1) < LAYOUT_VERSION and _args(old) == _args(meta)
        if complete and not overwrite and not older:
            raise ValueError(f'{root} already holds a demo data set made with {old}; '
                             f'pass overwrite=True (--overwrite) or another root to make {meta}')
        replace_old = True
    elif not _is_empty_dir(root):
        if not osp.isdir(root):
            raise ValueError(f'{root} exists and is not a folder; pick another root for the demo data')
        raise ValueError(f'{root} is not empty and holds no demo data set (no {_META}); refusing to '
                         f'write into it{" even with overwrite" if overwrite else ""}: pick an empty '
                         f'or new folder')
    # built in a hidden folder beside root and moved in at the end: a failure or a kill leaves
    # no half-made set (the folder is removed then, or by the next write beside it)
    with temporary_folder(root) as tmp:
        out = {'train': make_split(tmp, 'train', num_train, size, seed, varied=varied),
               'val': make_split(tmp, 'val', num_val, size, seed + 1, first_id=num_train, varied=varied)}
        _write_json(osp.join(tmp, _META), dict(meta, complete=True))
        if not osp.exists(root):
            os.replace(tmp, root)
        else:  # an empty folder, or an old set of ours: meta.json last
            if replace_old:
                _remove_set(root)
            for name in _LAYOUT + (_META, ):
                os.replace(osp.join(tmp, name), osp.join(root, name))
    return out


def _read(root: str, split: str) -> dict:
    with open(osp.join(root, 'annotations', f'instances_{split}.json')) as f:
        return json.load(f)
