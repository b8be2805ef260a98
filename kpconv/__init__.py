"""kpconv: from keypoint annotations in any common format to TFRecord shards and a trained regressor.

Importing this package is cheap: TensorFlow is imported only by the modules that need it
(``kpconv.pipeline``, ``kpconv.model``, ``kpconv.train``), never by ``kpconv.cli`` at start-up.
"""

__version__ = "0.1.0"
