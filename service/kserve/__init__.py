"""The KServe v2 / Open Inference Protocol (/v2/...), so Triton and KServe clients work unchanged.

``messages`` holds the JSON bodies (validated, and shown in OpenAPI), ``codec``
reads an infer request and encodes its outputs, ``model_config`` answers the
metadata and Triton's model configuration, ``endpoints`` holds the routes, and
``control`` the model repository's (index, load, unload: service/repository.py).

The model speaks the protocol as one input and four outputs:

* input ``images``: BYTES, shape [N] (or [N, 1], Triton's per-item shape), one
  encoded image (JPEG, PNG, ...) per element. In binary data (the binary
  tensor extension) each element is a 4-byte little-endian length and the
  image's bytes; in JSON data each element is the image's base64 text (an
  encoded image is never valid UTF-8, so it cannot travel as a JSON string).
* outputs, DESIGN.md's graph outputs per image, in the uploaded image's pixels:
  ``num_detections`` INT64 [N], ``boxes`` FP32 [N, M, 4] (x1, y1, x2, y2),
  ``scores`` FP32 [N, M] (descending), ``labels`` INT64 [N, M] (an index into
  the categories), where M is the request's largest count; rows past an
  image's count are zeros.

Request ``parameters``: ``score_threshold``, ``iou_threshold`` (0..1),
``max_detections`` (1..K), ``classes`` (names to keep, a list or a
comma-separated string; at least one), Triton's ``timeout`` (microseconds) and
``binary_data_output``; others are ignored, as Triton does. The options follow
/detect's rules (service/options.py); what either refuses, both refuse.
"""
