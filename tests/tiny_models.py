"""Tiny models and comparisons the tests share (importable: the tests folder is on sys.path)."""

# A tiny FCN with SSN layers: an R-18 backbone of 8 base channels, 32x32 inputs.
TINY_SEG = """
_base_ = 'mmseg::_base_/models/fcn_r50-d8.py'
custom_imports = dict(imports=['ssn_plugins'], allow_failed_imports=False)
default_scope = 'mmseg'
ssn = dict(type='SSN')
data_preprocessor = dict(type='SegDataPreProcessor', size=(32, 32))
model = dict(pretrained=None, data_preprocessor=data_preprocessor,
             backbone=dict(depth=18, base_channels=8, norm_cfg=ssn, init_cfg=None),
             decode_head=dict(in_channels=64, channels=8, num_convs=1, num_classes=3, norm_cfg=ssn),
             auxiliary_head=None)
"""


def assert_same_detections(after, before):
    """Each box has a twin (same label, score within 1e-4, IoU >= 0.99) on the other side.

    An untrained RPN ties many proposals, so order and NMS picks may vary.
    """
    from mmdet.structures.bbox import bbox_overlaps
    assert len(before) == len(after) > 0
    iou = bbox_overlaps(after.bboxes, before.bboxes)
    same = (after.labels[:, None] == before.labels[None]) & (
        (after.scores[:, None] - before.scores[None]).abs() <= 1e-4)
    iou[~same] = 0
    assert iou.max(1).values.min() >= 0.99 and iou.max(0).values.min() >= 0.99
