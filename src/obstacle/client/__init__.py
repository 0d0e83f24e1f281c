"""obstacle.client: the service from Python — runs, checkpoints during training, analyses.

    with obstacle.Client(url, token) as client:
        with client.create_run("resnet-lr0.1", probe=probe) as run:
            for step in ...:
                ...
                if step % 100 == 0:
                    run.log_checkpoint(step, model, lr=lr, train_loss=loss.item())
            result = run.analyze(target_loss=0.05)
        print(result.verdict["summary"])

Uploads take bytes or a file (a ``pathlib.Path`` or a hashed ``FileBody``); a file is sent from
disk in chunks, never read whole into memory. Every error is one of ``obstacle.errors``
(``TransportError`` and its subclasses for the network).
"""

from __future__ import annotations

from obstacle.client._body import FileBody
from obstacle.client._client import Client
from obstacle.client._models import (
    AnalysisResult,
    AnalysisStatus,
    CheckpointInfo,
    ProbeInfo,
    Progress,
    RunInfo,
    UploadResult,
)
from obstacle.client._run import Run
from obstacle.client._upload import upload_run_dir

__all__ = [
    "AnalysisResult",
    "AnalysisStatus",
    "CheckpointInfo",
    "Client",
    "FileBody",
    "ProbeInfo",
    "Progress",
    "Run",
    "RunInfo",
    "UploadResult",
    "upload_run_dir",
]
