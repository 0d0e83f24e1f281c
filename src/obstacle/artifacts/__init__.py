"""Formats that travel between a training process, the service and the workers.

Torch-free on purpose: the service validates uploads with this package alone.
"""

from obstacle.artifacts.layout import (
    CHECKPOINT_DIR,
    OPTIMIZER_SUFFIX,
    PROBE_DATA,
    PROBE_DIR,
    PROBE_MANIFEST,
    PROBE_PROGRAM,
    TRAIN_LOG,
    checkpoint_filename,
    list_checkpoints,
    optimizer_filename,
)
from obstacle.artifacts.manifest import (
    MANIFEST_FORMAT,
    InputSpec,
    ProbeManifest,
    TensorSpec,
    read_manifest,
)
from obstacle.artifacts.safetensors_header import SafetensorsHeader, read_header, read_header_bytes

__all__ = [
    "CHECKPOINT_DIR",
    "MANIFEST_FORMAT",
    "OPTIMIZER_SUFFIX",
    "PROBE_DATA",
    "PROBE_DIR",
    "PROBE_MANIFEST",
    "PROBE_PROGRAM",
    "TRAIN_LOG",
    "InputSpec",
    "ProbeManifest",
    "SafetensorsHeader",
    "TensorSpec",
    "checkpoint_filename",
    "list_checkpoints",
    "optimizer_filename",
    "read_header",
    "read_header_bytes",
    "read_manifest",
]
