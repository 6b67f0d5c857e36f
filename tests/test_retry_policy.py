"""Retries only for what a retry can fix: the trainable's sorting of a trial's exceptions."""
import errno
import gzip

import pytest
import ray.exceptions
import torch

from eeray.config import ConfigError
from eeray.data.real import CorruptDatasetError, DatasetFilesError
from eeray.raytune.trainable import retryable
from eeray.trial import TrialDiverged


@pytest.mark.parametrize("exc", [
    TrialDiverged("training loss is nan"), ConfigError("ee.tau", 2.0, "must be in (0, 1]"),
    DatasetFilesError("missing"), CorruptDatasetError("bad magic"), gzip.BadGzipFile("not a gzip file"),
    FileNotFoundError("x"), PermissionError("x"), ValueError("a bug"), TypeError("a bug"), KeyError("a bug"),
])
def test_errors_that_would_fail_again_are_final(exc):
    assert not retryable(exc)


@pytest.mark.parametrize("exc", [
    ray.exceptions.RayError(), torch.cuda.OutOfMemoryError("beside packed trials"), ConnectionResetError(),
    TimeoutError(), OSError(errno.ESTALE, "stale NFS file handle"), OSError(errno.EIO, "input/output error"),
])
def test_errors_another_attempt_can_outlive_are_retried(exc):
    assert retryable(exc)
