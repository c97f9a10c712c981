"""Checks of the COCO numbers the runs report, computed here: pycocotools'
own COCOeval on the predictions the models returned (not mmdet's
CocoMetric), and ground truth fed to the run's evaluator as predictions."""
import numpy as np
import pycocotools.mask as mask_util
import pytest
import torch
from mmengine.hooks import Hook
from mmengine.structures import InstanceData
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

# CocoMetric rounds what it reports to 3 decimals
REPORTED = dict(abs=5e-4 + 1e-9)
METRIC_KEYS = ('mAP', 'mAP_50', 'mAP_75')  # COCOeval stats[0:3]


class OutputRecorder(Hook):
    """Keeps the data samples the model returned in validation / test."""

    def __init__(self, outputs):
        self.outputs = outputs

    def after_val_iter(self, runner, batch_idx, data_batch=None,
                       outputs=None):
        self.outputs.extend(outputs)

    def after_test_iter(self, runner, batch_idx, data_batch=None,
                        outputs=None):
        self.outputs.extend(outputs)


def _as_dict(sample):
    return sample if isinstance(sample, dict) else sample.to_dict()


def _numpy(value):
    return (value.detach().cpu().float().numpy()
            if isinstance(value, torch.Tensor) else np.asarray(value))


def coco_stats(ann_file, samples, classes, iou_type='bbox'):
    """AP, AP50, AP75 of ``samples`` (DetDataSamples or their dicts, with
    ``img_id`` and ``pred_instances``; masks as boolean arrays or RLE) on
    ``ann_file``, by pycocotools."""
    coco = COCO(ann_file)
    category = {c['name']: c['id'] for c in coco.dataset['categories']}
    results = []
    for sample in map(_as_dict, samples):
        pred = sample['pred_instances']
        boxes, scores = _numpy(pred['bboxes']), _numpy(pred['scores'])
        labels = _numpy(pred['labels']).astype(int)
        assert len(scores) <= 100  # COCOeval counts 100 per image
        masks = pred.get('masks') if iou_type == 'segm' else None
        for i, (box, score, label) in enumerate(zip(boxes, scores, labels)):
            x1, y1, x2, y2 = (float(v) for v in box)
            result = dict(image_id=int(sample['img_id']),
                          category_id=category[classes[label]],
                          score=float(score), bbox=[x1, y1, x2 - x1, y2 - y1])
            if masks is not None:
                mask = masks[i]
                if not isinstance(mask, dict):
                    mask = mask_util.encode(np.asfortranarray(
                        _numpy(mask).astype(np.uint8)))
                result['segmentation'] = dict(
                    size=list(mask['size']),
                    counts=(mask['counts'].decode() if isinstance(
                        mask['counts'], bytes) else mask['counts']))
            results.append(result)
    assert results, 'no predictions to score'
    evaluation = COCOeval(coco, coco.loadRes(results), iou_type)
    evaluation.evaluate()
    evaluation.accumulate()
    evaluation.summarize()
    return [float(v) for v in evaluation.stats[:3]]


def assert_reported(reported: dict, stats, prefix):
    """``reported`` (``{prefix}_mAP``... as CocoMetric names them) against
    ``stats`` from :func:`coco_stats`."""
    for key, value in zip(METRIC_KEYS, stats):
        assert reported[f'{prefix}_{key}'] == pytest.approx(
            value, **REPORTED), key


def evaluate_ground_truth(evaluator, dataloader):
    """Feed every image's ground truth to ``evaluator`` as its predictions
    (score 1); a consistent dataset and evaluator give a perfect score. The
    test pipelines load annotations after resizing: ground truth is at the
    original size, where predictions are scored."""
    for batch in dataloader:
        samples = []
        for sample in batch['data_samples']:
            gt = sample.gt_instances
            pred = InstanceData(bboxes=gt.bboxes.tensor.clone(),
                                labels=gt.labels.clone(),
                                scores=torch.ones(len(gt)))
            if 'masks' in gt:
                pred.masks = torch.from_numpy(gt.masks.to_ndarray()).bool()
            sample = sample.clone()
            sample.pred_instances = pred
            samples.append(sample)
        evaluator.process(data_samples=samples, data_batch=batch)
    return evaluator.evaluate(len(dataloader.dataset))


def assert_runner_metrics_are_pycocotools(runner, outputs, metrics,
                                          keys=('mAP', )):
    """The COCO numbers ``runner`` logged for its last validation equal
    pycocotools' own on the predictions ``outputs`` (an OutputRecorder's),
    for each of ``metrics`` ('bbox', 'segm'); and its evaluator scores the
    ground truth itself as perfect (``keys`` of each metric == 1.0)."""
    dataset = runner.val_dataloader.dataset
    scalars = runner.message_hub.log_scalars
    reported = {k[len('val/coco/'):]: v.current() for k, v in scalars.items()
                if k.startswith('val/coco/')}
    for metric in metrics:
        stats = coco_stats(dataset.ann_file, outputs,
                           dataset.metainfo['classes'], metric)
        assert_reported(reported, stats, metric)
    perfect = evaluate_ground_truth(runner.val_evaluator,
                                    runner.val_dataloader)
    for metric in metrics:
        for key in keys:
            assert perfect[f'coco/{metric}_{key}'] == 1.0
