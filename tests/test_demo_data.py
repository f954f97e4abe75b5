"""The synthetic shapes data set: seeded, COCO-valid, the layouts agree, never half-written."""
import json
import os
import os.path as osp
import resource
import shutil

import cv2
import numpy as np
import pytest
from pycocotools.coco import COCO

from ssn_plugins.demo import DEMO_CLASSES, make_demo_dataset, shapes
from ssn_plugins.demo.shapes import cls_size
from tool_loader import load_tool

make_demo_data = load_tool('make_demo_data')


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


def test_classification_split(demo_root):
    """cls/{split}.txt lists one crop per COCO instance, in the folder of its class, labelled in DEMO_CLASSES order."""
    for split in ('train', 'val'):
        coco = json.load(open(osp.join(demo_root, 'annotations', f'instances_{split}.json')))
        lines = open(osp.join(demo_root, 'cls', f'{split}.txt')).read().splitlines()
        assert len(lines) == len(coco['annotations'])
        listed = set()
        for line, ann in zip(lines, coco['annotations']):
            rel, label = line.split()
            assert int(label) == ann['category_id'] - 1
            assert rel.split('/')[0] == DEMO_CLASSES[int(label)]
            crop = cv2.imread(osp.join(demo_root, 'cls', split, rel))
            assert crop.shape == (cls_size(64), cls_size(64), 3)
            listed.add(rel)
        on_disk = {f'{c}/{f}' for c in DEMO_CLASSES for f in os.listdir(osp.join(demo_root, 'cls', split, c))}
        assert on_disk == listed  # folder-per-class readers see exactly the listed crops


def _files(root):
    return sorted(osp.relpath(osp.join(d, f), root) for d, _, fs in os.walk(root) for f in fs)


def test_failed_image_write_is_an_error_and_the_set_is_not_marked_complete(tmp_path, monkeypatch):
    root = str(tmp_path / 'data')
    real, calls = cv2.imencode, []

    def failing(ext, img, *args):
        calls.append(ext)
        return (False, None) if len(calls) == 3 else real(ext, img, *args)

    monkeypatch.setattr(shapes.cv2, 'imencode', failing)
    with pytest.raises(OSError, match='could not encode .*png'):
        make_demo_dataset(root, num_train=3, num_val=1, size=64, seed=0)
    assert os.listdir(tmp_path) == []  # whole or not at all: no half-made root, no temporaries
    monkeypatch.setattr(shapes.cv2, 'imencode', real)
    # the next call writes it, whole
    make_demo_dataset(root, num_train=3, num_val=1, size=64, seed=0)
    assert json.load(open(osp.join(root, 'meta.json')))['complete'] is True
    assert len(os.listdir(osp.join(root, 'images', 'train'))) == 3


def test_full_disk_is_an_error_not_a_truncated_set(tmp_path):
    """A real write failure (file-size limit, as a full disk): the CLI exits naming the file."""
    root = str(tmp_path / 'data')
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (4096, hard))  # meta.json fits, a 64x64 noisy PNG does not
    try:
        with pytest.raises(SystemExit) as exit_info:
            make_demo_data.main([root, '--num-train', '2', '--num-val', '1', '--size', '64'])
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
    message = str(exit_info.value.code)
    assert message.startswith('make_demo_data: demo data: could not write') and '000000.png' in message
    assert os.listdir(tmp_path) == []  # whole or not at all: no half-made root, no temporaries


def test_overwrite_removes_the_old_set(tmp_path):
    root = str(tmp_path / 'data')
    make_demo_dataset(root, num_train=5, num_val=2, size=64, seed=0)
    (tmp_path / 'data' / 'notes.txt').write_text('mine')  # not part of the set: kept
    make_demo_dataset(root, num_train=2, num_val=1, size=64, seed=1, overwrite=True)
    assert sorted(os.listdir(osp.join(root, 'images', 'train'))) == ['000000.png', '000001.png']
    assert os.listdir(osp.join(root, 'images', 'val')) == ['000002.png']
    assert sorted(os.listdir(osp.join(root, 'masks', 'train'))) == ['000000.png', '000001.png']
    lines = open(osp.join(root, 'cls', 'train.txt')).read().splitlines()
    crops = [f for f in _files(osp.join(root, 'cls', 'train'))]
    assert sorted(crops) == sorted(line.split()[0] for line in lines)
    assert (tmp_path / 'data' / 'notes.txt').read_text() == 'mine'


@pytest.mark.parametrize('overwrite', [False, True])
def test_a_folder_that_is_not_a_demo_set_is_refused(tmp_path, overwrite):
    root = tmp_path / 'photos'
    root.mkdir()
    (root / 'holiday.png').write_bytes(b'not ours')
    with pytest.raises(ValueError, match='not empty and holds no demo data set'):
        make_demo_dataset(str(root), num_train=2, num_val=1, size=64, overwrite=overwrite)
    assert _files(str(root)) == ['holiday.png']
    # an empty folder is fine
    (tmp_path / 'empty').mkdir()
    make_demo_dataset(str(tmp_path / 'empty'), num_train=1, num_val=1, size=64)


def test_a_set_of_an_older_layout_is_rewritten(tmp_path):
    """`make demo` on data from before the classification crops: the same arguments, so it is remade."""
    root = str(tmp_path / 'data')
    make_demo_dataset(root, num_train=2, num_val=1, size=64, seed=5)
    image = cv2.imread(osp.join(root, 'images', 'train', '000001.png'))
    meta = json.load(open(osp.join(root, 'meta.json')))
    del meta['layout'], meta['complete']  # what the first layout wrote
    json.dump(meta, open(osp.join(root, 'meta.json'), 'w'))
    shutil.rmtree(osp.join(root, 'cls'))
    make_demo_dataset(root, num_train=2, num_val=1, size=64, seed=5)
    assert osp.isfile(osp.join(root, 'cls', 'train.txt'))
    assert np.array_equal(cv2.imread(osp.join(root, 'images', 'train', '000001.png')), image)
    # other arguments in an older layout are still refused without overwrite
    del meta['num_train']
    json.dump(dict(meta, num_train=3), open(osp.join(root, 'meta.json'), 'w'))
    with pytest.raises(ValueError, match='already holds'):
        make_demo_dataset(root, num_train=2, num_val=1, size=64, seed=5)
