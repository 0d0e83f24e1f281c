"""The callbacks end to end: a real ``Trainer.fit`` / ``Trainer.train``, then ``obstacle analyze``.

Each run memorises 32 training points with random labels while its held-out points (random labels
too) can only get worse: the training loss falls towards zero and the validation loss climbs from
its first checkpoint on. The callbacks take the held-out data from the trainer itself, and the
battery, reading the run directory the way ``obstacle analyze RUN_DIR`` does, must call it
overfitting. Without validation data the same run cannot be called overfitting.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

# Plain imports, not importorskip: the dev extra installs both, and a missing one must fail here.
import lightning.pytorch as pl
import pytest
import torch
import torch.nn.functional as F
import transformers
from torch import nn
from typer.testing import CliRunner

from obstacle.cli import app
from obstacle.client.callbacks import ObstacleCallback, ObstacleTrainerCallback

pytestmark = pytest.mark.slow

# Lightning advises DataLoader workers (on machines with more than 2 cores); the data is in memory.
_FEW_WORKERS = "ignore:The '\\w+_dataloader' does not have many workers"
# The quick preset's 40 Lanczos steps do not resolve λmin of the memorising ReLU net to 1%; the
# estimate is still returned (converged=False) and the overfitting verdict does not read it.
_LANCZOS = "ignore::obstacle.errors.ConvergenceWarning"


def _obstacle_analyze(run_dir: Path, tmp_path: Path) -> dict[str, Any]:
    """``obstacle analyze RUN_DIR --preset quick --json``: the verdict the CLI gives."""
    out = tmp_path / f"{run_dir.name}.json"
    result = CliRunner().invoke(
        app,
        ["analyze", str(run_dir), "--preset", "quick", "--json", str(out), "--no-progress"],
        catch_exceptions=False,
    )
    assert result.exit_code == 0, result.output
    verdict: dict[str, Any] = json.loads(out.read_text())["verdict"]
    return verdict


def _overfitting(verdict: dict[str, Any]) -> dict[str, Any]:
    found = [o for o in verdict["obstacles"] if o["kind"] == "overfitting"]
    assert len(found) == 1, verdict["summary"]
    return found[0]


def _not_overfitting(verdict: dict[str, Any], reason: str) -> None:
    assert "overfitting" not in {o["kind"] for o in verdict["obstacles"]}
    ruled_out = {r["kind"]: r["reason"] for r in verdict["ruled_out"]}
    assert reason in ruled_out["overfitting"]


def _random_labels(n: int, features: int, classes: int, seed: int) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(n, features, generator=g), torch.randint(0, classes, (n,), generator=g)]


# --- Lightning ----------------------------------------------------------------------------


class _Memoriser(pl.LightningModule):
    """A 16 → 256 → 4 ReLU MLP (5.4k parameters) for 32 training points."""

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(16, 256), nn.ReLU(), nn.Linear(256, 4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.net(x)
        return out

    def training_step(
        self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int
    ) -> torch.Tensor:
        x, y = batch
        return F.cross_entropy(self(x), y)

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        x, y = batch
        self.log("val_loss", F.cross_entropy(self(x), y))

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.parameters(), lr=0.01)


def _fit_memoriser(run_dir: Path, **callback: Any) -> None:
    torch.manual_seed(0)
    train = torch.utils.data.TensorDataset(*_random_labels(32, 16, 4, seed=0))
    held_out = torch.utils.data.TensorDataset(*_random_labels(64, 16, 4, seed=1))
    trainer = pl.Trainer(
        max_steps=300,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[
            ObstacleCallback(run_dir=run_dir, every_n_steps=30, loss_fn=F.cross_entropy, **callback)
        ],
    )
    trainer.fit(
        _Memoriser(),
        torch.utils.data.DataLoader(train, batch_size=8, shuffle=True),
        torch.utils.data.DataLoader(held_out, batch_size=64),
    )


@pytest.mark.filterwarnings(_FEW_WORKERS, _LANCZOS)
def test_lightning_run_with_the_trainers_validation_data_is_found_overfitting(
    tmp_path: Path,
) -> None:
    run_dir = tmp_path / "runs" / "memoriser"  # does not exist yet
    _fit_memoriser(run_dir)

    verdict = _obstacle_analyze(run_dir, tmp_path)
    assert verdict["primary"] == "overfitting", verdict["summary"]
    found = _overfitting(verdict)
    assert found["confidence"] >= 0.5 and found["still_present"]
    assert "the validation loss rose" in found["evidence"][-1]["statement"]


@pytest.mark.filterwarnings(_FEW_WORKERS, _LANCZOS)
def test_lightning_run_without_validation_data_cannot_be_found_overfitting(
    tmp_path: Path,
) -> None:
    run_dir = tmp_path / "memoriser"
    _fit_memoriser(run_dir, validation=None)

    verdict = _obstacle_analyze(run_dir, tmp_path)
    _not_overfitting(verdict, "the probe has no validation batch")


# --- Hugging Face -------------------------------------------------------------------------


class _Sequences(torch.utils.data.Dataset[dict[str, torch.Tensor]]):
    """Random token sequences of length 12 with random binary labels."""

    def __init__(self, n: int, seed: int) -> None:
        g = torch.Generator().manual_seed(seed)
        self.ids = torch.randint(1, 50, (n, 12), generator=g)
        self.labels = torch.randint(0, 2, (n,), generator=g)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"input_ids": self.ids[i], "labels": self.labels[i]}


def test_trainer_run_with_its_eval_dataset_is_found_overfitting(tmp_path: Path) -> None:
    torch.manual_seed(0)
    config = transformers.BertConfig(
        vocab_size=50,
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=16,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
    )
    run_dir = tmp_path / "runs" / "bert"  # does not exist yet
    args = transformers.TrainingArguments(
        output_dir=str(tmp_path / "out"),
        max_steps=300,
        per_device_train_batch_size=8,
        learning_rate=3e-3,
        lr_scheduler_type="constant",
        logging_steps=10,
        save_strategy="no",
        report_to=[],
        use_cpu=True,
        disable_tqdm=True,
    )
    transformers.Trainer(
        model=transformers.BertForSequenceClassification(config),
        args=args,
        train_dataset=_Sequences(32, seed=0),
        eval_dataset=_Sequences(64, seed=1),
        callbacks=[ObstacleTrainerCallback(run_dir=run_dir, every_n_steps=30)],
    ).train()

    verdict = _obstacle_analyze(run_dir, tmp_path)
    assert verdict["primary"] == "overfitting", verdict["summary"]
    assert _overfitting(verdict)["confidence"] >= 0.5
