"""Calibration settings: how many samples in which batches, how image files become tensors, where the
float graph runs (ORT CPU or CUDA EP, in this process or sharded over Ray workers)."""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass, field

from qcompile.config.field_types import check_field_types
from qcompile.errors import ConfigError


class CalibrationProvider(enum.Enum):
    """Where calibration runs the float graph: ORT's CPU EP, or its CUDA EP (needs onnxruntime-gpu)."""

    CPU = "cpu"
    CUDA = "cuda"

    @property
    def ort_providers(self) -> tuple[str, ...]:
        return ("CUDAExecutionProvider", "CPUExecutionProvider") if self is CalibrationProvider.CUDA \
            else ("CPUExecutionProvider",)


#: Seconds one run of the model on one calibration / eval item may take (qcompile/runtime_ext/run_limit.py).
DEFAULT_SAMPLE_TIME_LIMIT_S = 600.0
#: Largest image side, and pixels in all, that calibration decodes or resizes to (qcompile/data/limits.py).
MAX_IMAGE_SIDE = 16384
MAX_IMAGE_PIXELS = 1 << 26


class ImageLayout(enum.Enum):
    NCHW = "nchw"
    NHWC = "nhwc"


@dataclass(frozen=True)
class ImageOptions:
    """How image files in a calibration folder become a float tensor: resize, x/255, (x - mean) / std, layout."""

    size: tuple[int, int] | None = None
    mean: tuple[float, ...] = (0.0, 0.0, 0.0)
    std: tuple[float, ...] = (1.0, 1.0, 1.0)
    layout: ImageLayout = ImageLayout.NCHW

    def __post_init__(self) -> None:
        check_field_types(self)
        if self.size is not None and (len(self.size) != 2 or min(self.size) <= 0):
            raise ConfigError(f"image size must be two positive integers, got {self.size}")
        if self.size is not None and (max(self.size) > MAX_IMAGE_SIDE
                                      or self.size[0] * self.size[1] > MAX_IMAGE_PIXELS):
            raise ConfigError(f"image size {self.size[0]}x{self.size[1]} is over the limit of {MAX_IMAGE_SIDE} per "
                              f"side and {MAX_IMAGE_PIXELS:,} pixels in all")
        if len(self.mean) != len(self.std):
            raise ConfigError("image mean and std must have the same number of channels")
        if any(s <= 0 for s in self.std):
            raise ConfigError("image std values must be positive")


LOCAL_RAY = "ray"
_RAY_ADDRESS = re.compile(r"ray://[^\s/:]+:\d{1,5}")


@dataclass(frozen=True)
class WorkersConfig:
    """Calibration sharded over Ray tasks (``qcompile[distributed]``).

    ``address``: "ray" joins the local Ray cluster (or starts one), "ray://HOST:PORT" a remote one.
    ``shards``: pieces the calibration folder is cut into (None: one per task the cluster runs at once).
    ``threads``: ORT intra-op threads per task, which is also the CPUs a task reserves.
    ``max_retries``: re-runs of a task whose worker process dies.
    """

    address: str = LOCAL_RAY
    shards: int | None = None
    threads: int = 1
    max_retries: int = 3

    def __post_init__(self) -> None:
        check_field_types(self)
        if self.address != LOCAL_RAY and not _RAY_ADDRESS.fullmatch(self.address):
            raise ConfigError(f"workers must be 'ray' (a local cluster) or ray://HOST:PORT, got {self.address!r}")
        if self.shards is not None and self.shards < 1:
            raise ConfigError(f"workers.shards must be >= 1, got {self.shards}")
        if self.threads < 1:
            raise ConfigError(f"workers.threads must be >= 1, got {self.threads}")
        if self.max_retries < 0:
            raise ConfigError(f"workers.max_retries must be >= 0, got {self.max_retries}")


@dataclass(frozen=True)
class CalibrationConfig:
    num_samples: int | None = None
    batch_size: int = 1
    memory_budget_mb: int = 1024
    image: ImageOptions = field(default_factory=ImageOptions)
    workers: WorkersConfig | None = None  # None: calibrate in this process
    provider: CalibrationProvider = CalibrationProvider.CPU   # ORT EP the calibration runs on
    sample_time_limit_s: float | None = DEFAULT_SAMPLE_TIME_LIMIT_S   # per run of one item; None: no limit

    def __post_init__(self) -> None:
        check_field_types(self)
        if self.num_samples is not None and self.num_samples < 1:
            raise ConfigError(f"num_samples must be >= 1, got {self.num_samples}")
        if self.batch_size < 1:
            raise ConfigError(f"batch_size must be >= 1, got {self.batch_size}")
        if self.memory_budget_mb < 1:
            raise ConfigError(f"memory_budget_mb must be >= 1, got {self.memory_budget_mb}")
        if self.sample_time_limit_s is not None and not self.sample_time_limit_s > 0:
            raise ConfigError(f"sample_time_limit_s must be > 0 seconds, got {self.sample_time_limit_s}")
