"""Helpers for OpenCV work on whole batches inside tf.data's ``numpy_function`` calls (the affine and the
dense warps of `lungnet.data.augmentation` and `lungnet.data.elastic_augment`)."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator

import numpy as np


def aligned_empty(shape: tuple[int, ...], dtype) -> np.ndarray:
    """`np.empty` on a 64-byte boundary: TensorFlow takes such a NumPy result without copying it."""
    dtype = np.dtype(dtype)
    size = int(np.prod(shape)) * dtype.itemsize
    raw = np.empty(size + 64, np.uint8)
    start = -raw.ctypes.data % 64
    return raw[start : start + size].view(dtype).reshape(shape)


_opencv_threads_lock = threading.Lock()
_opencv_threads_users = 0
_opencv_threads_saved = 0


@contextlib.contextmanager
def opencv_single_threaded(cv2) -> Iterator[None]:
    """OpenCV on one thread while any warp runs; its own setting is restored when the last one ends.

    tf.data already runs batches in parallel; OpenCV's thread pool on top of that splits each small image
    across threads and, measured on 2 cores, doubles the CPU time of a batch's warps for the same wall
    time. Counted, so overlapping calls from tf.data's threads cannot restore the setting too early.
    """
    global _opencv_threads_users, _opencv_threads_saved
    with _opencv_threads_lock:
        if _opencv_threads_users == 0:
            _opencv_threads_saved = cv2.getNumThreads()
            cv2.setNumThreads(1)
        _opencv_threads_users += 1
    try:
        yield
    finally:
        with _opencv_threads_lock:
            _opencv_threads_users -= 1
            if _opencv_threads_users == 0:
                cv2.setNumThreads(_opencv_threads_saved)
