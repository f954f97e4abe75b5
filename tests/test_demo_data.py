"""The synthetic shapes data set: seeded, COCO-valid, and the two layouts agree."""
import json
import os.path as osp

import cv2
import numpy as np
import pytest
from pycocotools.coco import COCO

from ssn_plugins.demo import DEMO_CLASSES, make_demo_dataset


@pytest.fixture(scope='module')
def demo_root(tmp_path_factory):
    root = str(tmp_path_factory.mktemp('shapes'))
    make_demo_dataset(root, num_train=6, num_val=3, size=64, seed=3)
    return root


def test_layout_and_coco_fields(demo_root):
    for split, n in (('train', 6), ('val', 3)):
        coco = COCO(osp.join(demo_root, 'annotations', f'instances_{split}.json'))
        assert len(coco.getImgIds()) == n
        assert [c['name'] for c in coco.loadCats(coco.getCatIds())] == list(DEMO_CLASSES)
        for img in coco.loadImgs(coco.getImgIds()):
            assert cv2.imread(osp.join(demo_root, 'images', split, img['file_name'])).shape == (64, 64, 3)
            assert len(coco.getAnnIds(imgIds=img['id'])) >= 1
    # image ids do not collide across splits
    train = json.load(open(osp.join(demo_root, 'annotations', 'instances_train.json')))
    val = json.load(open(osp.join(demo_root, 'annotations', 'instances_val.json')))
    assert not {i['id'] for i in train['images']} & {i['id'] for i in val['images']}


def test_instance_masks_match_label_maps(demo_root):
    """COCO polygons rasterised by pycocotools agree with the semantic label map."""
    coco = COCO(osp.join(demo_root, 'annotations', 'instances_train.json'))
    for img in coco.loadImgs(coco.getImgIds()):
        label = cv2.imread(osp.join(demo_root, 'masks', 'train', img['file_name']),
                           cv2.IMREAD_UNCHANGED)
        assert label.dtype == np.uint8 and label.shape == (64, 64)
        assert set(np.unique(label)) <= {0, 1, 2, 3}
        for ann in coco.loadAnns(coco.getAnnIds(imgIds=img['id'])):
            mask = coco.annToMask(ann).astype(bool)
            assert mask.any() and (label[mask] == ann['category_id']).all()
            x, y, w, h = ann['bbox']
            ys, xs = np.nonzero(mask)
            assert xs.min() >= np.floor(x) - 1 and xs.max() <= np.ceil(x + w) + 1
            assert ys.min() >= np.floor(y) - 1 and ys.max() <= np.ceil(y + h) + 1
            assert ann['area'] == mask.sum()
        assert (label > 0).sum() == sum(a['area'] for a in coco.loadAnns(coco.getAnnIds(imgIds=img['id'])))


def test_seeded_and_reused(tmp_path, demo_root):
    again = str(tmp_path / 'again')
    make_demo_dataset(again, num_train=6, num_val=3, size=64, seed=3)
    for rel in ('images/train/000000.png', 'masks/val/000007.png'):
        assert np.array_equal(cv2.imread(osp.join(demo_root, rel), cv2.IMREAD_UNCHANGED),
                              cv2.imread(osp.join(again, rel), cv2.IMREAD_UNCHANGED))
    other = str(tmp_path / 'other')
    make_demo_dataset(other, num_train=6, num_val=3, size=64, seed=4)
    assert not np.array_equal(cv2.imread(osp.join(demo_root, 'images/train/000000.png')),
                              cv2.imread(osp.join(other, 'images/train/000000.png')))
    # same arguments: kept; different arguments: refused unless overwrite
    make_demo_dataset(again, num_train=6, num_val=3, size=64, seed=3)
    with pytest.raises(ValueError, match='already holds'):
        make_demo_dataset(again, num_train=5, num_val=3, size=64, seed=3)
    make_demo_dataset(again, num_train=5, num_val=3, size=64, seed=3, overwrite=True)


@pytest.mark.parametrize('kwargs', [dict(num_train=0), dict(size=8), dict(num_val=1.5)])
def test_bad_arguments(tmp_path, kwargs):
    args = dict(num_train=2, num_val=2, size=64, seed=0)
    args.update(kwargs)
    with pytest.raises(ValueError, match=next(iter(kwargs))):
        make_demo_dataset(str(tmp_path), **args)
