"""The TFRecord record spec (version ``SPEC_VERSION``): one ``tf.train.Example`` per instance, with the features
of :data:`FEATURES` (version 2 added ``image/instances/*`` and ``instance/index``: every record also knows the
centre, box and keypoints of every instance of its source image, what the multi-instance centroid stage trains on), from which the encoder (:func:`to_example`), the decoders (:func:`decode_record`,
:func:`feature_description` for ``tf.io``) and ``schemas/record-spec.json`` (:func:`spec_json`) derive.
Records are serialized with ``SerializeToString(deterministic=True)`` (the bytes TensorFlow writes); nothing
here imports TensorFlow at module import time."""
from __future__ import annotations

import json

SPEC_VERSION = 2

# name -> (dtype, shape, meaning); shape "K" means one value per keypoint, "N" one per instance of the source image
# (variable length: N >= 1, stored flat, instance after instance).
FEATURES = {
    "image/encoded": ("bytes", (), "encoded image bytes (JPEG or PNG)"),
    "image/format": ("bytes", (), "'jpeg' or 'png'"),
    "image/height": ("int64", (), "stored image height in pixels"),
    "image/width": ("int64", (), "stored image width in pixels"),
    "image/source_path": ("bytes", (), "image path from the manifest, relative to its images root"),
    "image/original_height": ("int64", (), "original image height (EXIF orientation applied)"),
    "image/original_width": ("int64", (), "original image width (EXIF orientation applied)"),
    "instance/id": ("bytes", (), "instance id, unique within the source image"),
    "instance/bbox": ("float", (4,), "[x, y, w, h] of the instance, normalized to the stored image, clipped to "
                                     "the image content"),
    "instance/index": ("int64", (), "position of this record's instance in image/instances/* (manifest order)"),
    "image/instances/center": ("float", ("N", 2), "[x, y] centre of every instance of the source image (this one "
                                                  "included), normalized to the stored image: the middle of the box "
                                                  "of its labelled keypoints (of its box without any); may lie "
                                                  "outside [0, 1] in a crop"),
    "image/instances/bbox": ("float", ("N", 4), "[x, y, w, h] of every instance of the source image, normalized to "
                                                "the stored image (not clipped)"),
    "keypoints/x": ("float", ("K",), "keypoint x, normalized to the stored image width"),
    "keypoints/y": ("float", ("K",), "keypoint y, normalized to the stored image height"),
    "keypoints/visibility": ("int64", ("K",), "0 not labelled / outside, 1 occluded, 2 visible"),
    "transform/stored_to_original": ("float", (6,), "[a, b, c, d, e, f]: stored pixel coordinates -> original "
                                                    "pixel coordinates"),
    "image/instances/keypoints": ("float", ("N", "K", 3), "[x, y, v] of every keypoint of every instance of the "
                                                          "source image, as keypoints/* (normalized to the stored "
                                                          "image, 0, 0, 0 when not labelled or outside)"),
}

CONVENTIONS = {
    "coordinates": "continuous pixel convention: x = 0 is the left edge, x = 1 (normalized) the right edge; "
                   "pixel i's centre is (i + 0.5) / size",
    "visibility": "0 not labelled or outside the stored image (then x = y = 0), 1 labelled but occluded, 2 visible",
    "transform": "an original pixel coordinate is x' = a*x + b*y + c, y' = d*x + e*y + f for a stored pixel "
                 "coordinate (x, y); b = d = 0 for the crops and resizes kpconv does",
    "image": "decode with 3 channels (e.g. tf.io.decode_image(..., channels=3)): passthrough images may be "
             "grayscale JPEG/PNG",
}

_LISTS = {"bytes": "bytes_list", "float": "float_list", "int64": "int64_list"}


def spec_json() -> str:
    """The text of ``schemas/record-spec.json``, generated from :data:`FEATURES`."""
    spec = {
        "$comment": "Generated from kpconv/data/records.py (FEATURES) by kpconv.data.records.spec_json(): do not edit. "
                    "Each record is one tf.train.Example for one instance; "
                    "shape N: one entry per instance of the source image, stored flat. Keypoint names, skeleton and flip "
                    "pairs are in dataset_info.json, not in the records.",
        "name": "kpconv-record",
        "spec_version": SPEC_VERSION,
        "conventions": CONVENTIONS,
        "features": [{"name": name, "dtype": dtype, "shape": list(shape), "description": meaning}
                     for name, (dtype, shape, meaning) in FEATURES.items()],
    }
    return json.dumps(spec, indent=2, ensure_ascii=False) + "\n"


def feature_description(num_keypoints: int) -> dict:
    """``{name: tf.io.FixedLenFeature}`` for ``tf.io.parse_single_example`` / ``parse_example``; the per-instance
    features (shape ``("N", ...)``) are ``tf.io.VarLenFeature`` (flat ``SparseTensor``)."""
    import tensorflow as tf

    dtypes = {"bytes": tf.string, "int64": tf.int64, "float": tf.float32}
    return {name: tf.io.VarLenFeature(dtypes[dtype]) if _per_instance(shape) else
            tf.io.FixedLenFeature(_shape(shape, num_keypoints), dtypes[dtype])
            for name, (dtype, shape, _) in FEATURES.items()}


def to_example(*, image: bytes, image_format: str, height: int, width: int, source_path: str,
               original_height: int, original_width: int, instance_id: str, bbox, keypoints, transform,
               instance_index: int = 0, centers=None, boxes=None, instance_keypoints=None) -> bytes:
    """One serialized record (deterministic ``tf.train.Example`` bytes). ``keypoints`` is K x (x, y, v)
    normalized to the stored image; ``bbox`` and ``transform`` as in :data:`FEATURES`; ``centers`` (N x 2) and
    ``boxes`` (N x 4) the image's instances (default: this one alone, its box's centre), ``instance_keypoints``
    (N x K x 3) their keypoints (default: this record's), ``instance_index`` this record's position among them."""
    from ..proto import Example

    if boxes is None:
        boxes = [list(bbox)]
        centers = [[bbox[0] + bbox[2] / 2.0, bbox[1] + bbox[3] / 2.0]]
    if instance_keypoints is None:
        instance_keypoints = [keypoints] * len(boxes)
    if len(centers) != len(boxes) or len(instance_keypoints) != len(boxes) or not 0 <= instance_index < len(boxes):
        raise ValueError(f"instance_index {instance_index}: expected one of {len(boxes)} instance(s) "
                         f"({len(centers)} centre(s), {len(instance_keypoints)} keypoint set(s))")
    values = {
        "image/encoded": [image],
        "image/format": [image_format.encode()],
        "image/height": [height],
        "image/width": [width],
        "image/source_path": [source_path.encode("utf-8")],
        "image/original_height": [original_height],
        "image/original_width": [original_width],
        "instance/id": [instance_id.encode("utf-8")],
        "instance/bbox": bbox,
        "instance/index": [instance_index],
        "image/instances/center": [float(v) for c in centers for v in c],
        "image/instances/bbox": [float(v) for b in boxes for v in b],
        "image/instances/keypoints": [float(v) for kps in instance_keypoints for p in kps for v in p],
        "keypoints/x": [p[0] for p in keypoints],
        "keypoints/y": [p[1] for p in keypoints],
        "keypoints/visibility": [int(p[2]) for p in keypoints],
        "transform/stored_to_original": transform,
    }
    ex = Example()
    feature = ex.features.feature
    for name, (dtype, _, _) in FEATURES.items():
        getattr(feature[name], _LISTS[dtype]).value.extend(values[name])
    return ex.SerializeToString(deterministic=True)


def decode_record(data: bytes, num_keypoints: int) -> dict:
    """A serialized record -> ``{name: value}`` (scalars unwrapped, bytes kept, strings decoded), without
    TensorFlow. Raises ValueError naming the feature when the record does not follow the spec."""
    from google.protobuf.message import DecodeError

    from ..proto import Example

    try:
        feature = Example.FromString(data).features.feature
    except DecodeError as e:
        raise ValueError(f"not a tf.train.Example: {e}") from None
    out = {}
    for name, (dtype, shape, _) in FEATURES.items():
        if name not in feature:
            raise ValueError(f"feature {name!r} is missing")
        kind = feature[name].WhichOneof("kind")
        if kind != _LISTS[dtype]:
            raise ValueError(f"feature {name!r}: expected {dtype}, got {kind and kind[:-5]}")
        values = list(getattr(feature[name], kind).value)
        if _per_instance(shape):
            each = 1
            for d in _shape(shape[1:], num_keypoints):
                each *= d
            if not values or len(values) % each:
                raise ValueError(f"feature {name!r}: expected a positive multiple of {each} values, got "
                                 f"{len(values)}")
            out[name] = values
            continue
        n = 1 if shape == () else _shape(shape, num_keypoints)[0]
        if len(values) != n:
            raise ValueError(f"feature {name!r}: expected {n} value(s), got {len(values)}")
        if shape == ():
            value = values[0]
            out[name] = value.decode("utf-8") if dtype == "bytes" and name != "image/encoded" else value
        else:
            out[name] = values
    n = len(out["image/instances/center"]) // 2
    if len(out["image/instances/bbox"]) != 4 * n:
        raise ValueError(f"feature 'image/instances/bbox': expected {4 * n} values (4 per centre), got "
                         f"{len(out['image/instances/bbox'])}")
    if len(out["image/instances/keypoints"]) != 3 * num_keypoints * n:
        raise ValueError(f"feature 'image/instances/keypoints': expected {3 * num_keypoints * n} values (3 per "
                         f"keypoint, {num_keypoints} keypoints, {n} instance(s)), got "
                         f"{len(out['image/instances/keypoints'])}")
    if not 0 <= out["instance/index"] < n:
        raise ValueError(f"feature 'instance/index': {out['instance/index']} is not one of the {n} instance(s)")
    return out


def _per_instance(shape) -> bool:
    return bool(shape) and shape[0] == "N"


def _shape(shape, num_keypoints: int) -> tuple:
    return tuple(num_keypoints if s == "K" else s for s in shape)
