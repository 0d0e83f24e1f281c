"""The training callbacks with the real Lightning and transformers, on tiny local models."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import httpx

# Plain imports, not importorskip: the dev extra installs both, and a missing one must fail here.
import lightning.pytorch as pl
import pytest
import torch
import torch.nn.functional as F
import transformers
from torch import nn

from obstacle.artifacts.layout import CHECKPOINT_DIR, checkpoint_filename
from obstacle.battery.analysis import analyze, checkpoint_steps
from obstacle.battery.checkpoint import load_checkpoint
from obstacle.battery.probe import Probe
from obstacle.client import Client, Run
from obstacle.client.callbacks import ObstacleCallback, ObstacleTrainerCallback
from obstacle.errors import ParameterError, ProbeError, RunDirectoryError


def _assert_run_dir(
    run_dir: Path, *, steps: list[int], batches: int, lr: float, optimizer: str
) -> None:
    probe = Probe.load(run_dir)
    assert probe.manifest.num_batches == len(probe.batches) == batches
    assert checkpoint_steps(run_dir) == steps
    for step in steps:
        ck = load_checkpoint(run_dir / CHECKPOINT_DIR / checkpoint_filename(step), probe.manifest)
        assert ck.step == step
        assert ck.lr == pytest.approx(lr)
        assert ck.train_loss is not None
        assert ck.optimizer is not None and ck.optimizer.kind == optimizer
        assert all({"exp_avg", "exp_avg_sq"} <= set(s) for s in ck.optimizer.state.values())
    log = [json.loads(line) for line in (run_dir / "train_log.jsonl").read_text().splitlines()]
    assert log and all(set(e) == {"step", "lr", "loss"} for e in log)
    report = analyze(run_dir, preset="quick")
    assert isinstance(report["verdict"]["primary"], str)


# --- Lightning ----------------------------------------------------------------------------


class _MLP(pl.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(6, 16), nn.Tanh(), nn.Linear(16, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.net(x)
        return out

    def training_step(
        self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int
    ) -> torch.Tensor:
        x, y = batch
        return F.cross_entropy(self(x), y)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.parameters(), lr=0.01)


def _recorded_batch(run_dir: Path, step: int) -> int | None:
    from obstacle.artifacts.layout import CHECKPOINT_DIR, checkpoint_filename
    from obstacle.battery.checkpoint import load_checkpoint

    return load_checkpoint(run_dir / CHECKPOINT_DIR / checkpoint_filename(step)).batch_size


class _ValidatedMLP(_MLP):
    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        x, y = batch
        self.log("val_loss", F.cross_entropy(self(x), y))


def _validation_data(n: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return torch.randn(n, 6, generator=g), torch.randint(0, 3, (n,), generator=g)


def _fit_lightning(
    callback: pl.Callback,
    *,
    max_steps: int,
    module: pl.LightningModule | None = None,
    val: torch.utils.data.DataLoader[tuple[torch.Tensor, ...]] | None = None,
    ckpt_path: Path | None = None,
) -> pl.Trainer:
    torch.manual_seed(0)
    x, y = torch.randn(40, 6), torch.randint(0, 3, (40,))
    # 40 samples in batches of 16: 16, 16, 8 — the short third batch must not enter the probe.
    loader = torch.utils.data.DataLoader(
        torch.utils.data.TensorDataset(x, y), batch_size=16, shuffle=True
    )
    trainer = pl.Trainer(
        max_steps=max_steps,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        # No sanity check: the callback must load the validation data itself, as Lightning
        # loads it lazily and the probe is captured before the first validation.
        num_sanity_val_steps=0,
        callbacks=[callback],
    )
    trainer.fit(module or _MLP(), loader, val, ckpt_path=ckpt_path)
    return trainer


# Lightning advises DataLoader workers (on machines with more than 2 cores); the data is in memory.
_FEW_WORKERS = "ignore:The '\\w+_dataloader' does not have many workers"


@pytest.mark.filterwarnings(_FEW_WORKERS)
def test_lightning_callback_writes_an_analysable_run_dir(tmp_path: Path) -> None:
    callback = ObstacleCallback(
        run_dir=tmp_path, every_n_steps=10, probe_batches=4, loss_fn=F.cross_entropy
    )
    _fit_lightning(callback, max_steps=60)

    _assert_run_dir(tmp_path, steps=[10, 20, 30, 40, 50, 60], batches=4, lr=0.01, optimizer="Adam")
    assert Probe.load(tmp_path).manifest.batch_size == 16
    # The run's own batch size is recorded (noise is judged at it); the epoch's last batch is 8.
    assert {_recorded_batch(tmp_path, step) for step in (10, 20, 30, 40, 50, 60)} <= {16, 8}


@pytest.mark.filterwarnings(_FEW_WORKERS)
def test_lightning_callback_uploads_through_a_run() -> None:
    sent: list[tuple[str, str]] = []

    def service(request: httpx.Request) -> httpx.Response:
        sent.append((request.method, request.url.path))
        now = "2026-01-01T00:00:00Z"
        if request.method == "POST":
            run = {"id": "r1", "name": "mlp", "meta": {}, "created_at": now, "probe": None}
            return httpx.Response(201, json=run | {"num_checkpoints": 0, "train_log": None})
        step = request.url.path.split("/")[5] if "/checkpoints/" in request.url.path else "0"
        info = {"step": int(step), "sha256": "0" * 64, "size_bytes": 1, "lr": 0.01}
        extra = {"train_loss": None, "nonfinite": [], "optimizer": None, "created_at": now}
        return httpx.Response(201, json=info | extra)

    with (
        Client("http://obstacle.test", "token", transport=httpx.MockTransport(service)) as client,
        client.create_run("mlp") as run,
    ):
        _fit_lightning(
            ObstacleCallback(run=run, every_n_steps=10, loss_fn=F.cross_entropy), max_steps=20
        )
        assert run.uploaded_steps == [10, 20]

    puts = [path for method, path in sent if method == "PUT"]
    assert puts == [
        "/v1/runs/r1/probe",
        "/v1/runs/r1/checkpoints/10",
        "/v1/runs/r1/checkpoints/10/optimizer",
        "/v1/runs/r1/checkpoints/20",
        "/v1/runs/r1/checkpoints/20/optimizer",
    ]


# --- Hugging Face -------------------------------------------------------------------------


class _Pairs(torch.utils.data.Dataset[dict[str, torch.Tensor]]):
    """Token sequences with padding at the end; the label says whether token 7 occurs."""

    def __init__(self, n: int, seed: int = 0) -> None:
        g = torch.Generator().manual_seed(seed)
        self.ids = torch.randint(1, 50, (n, 12), generator=g)
        lengths = torch.randint(6, 13, (n,), generator=g)
        self.mask = (torch.arange(12) < lengths[:, None]).long()
        self.ids = self.ids * self.mask
        self.labels = (self.ids == 7).any(dim=1).long()

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"input_ids": self.ids[i], "attention_mask": self.mask[i], "labels": self.labels[i]}


def _tiny_bert(seed: int = 0, hidden: int = 16) -> transformers.BertForSequenceClassification:
    torch.manual_seed(seed)
    config = transformers.BertConfig(
        vocab_size=50,
        hidden_size=hidden,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=2 * hidden,
        max_position_embeddings=16,
    )
    return transformers.BertForSequenceClassification(config)


def _train_hf(
    callback: transformers.TrainerCallback,
    out: Path,
    *,
    max_steps: int,
    eval_dataset: torch.utils.data.Dataset[dict[str, torch.Tensor]] | None = None,
    logging_steps: int = 5,
    model: transformers.PreTrainedModel | None = None,
) -> None:
    args = transformers.TrainingArguments(
        output_dir=str(out),
        max_steps=max_steps,
        per_device_train_batch_size=8,
        learning_rate=1e-3,
        lr_scheduler_type="constant",
        logging_steps=logging_steps,
        save_strategy="no",
        report_to=[],
        use_cpu=True,
        disable_tqdm=True,
    )
    # 20 samples in batches of 8: 8, 8, 4 — the short third batch must not enter the probe.
    trainer = transformers.Trainer(
        model=model or _tiny_bert(),
        args=args,
        train_dataset=_Pairs(20),
        eval_dataset=eval_dataset,
        callbacks=[callback],
    )
    trainer.train()


def test_trainer_callback_writes_an_analysable_run_dir(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    callback = ObstacleTrainerCallback(run_dir=run_dir, every_n_steps=10, probe_batches=4)
    _train_hf(callback, tmp_path / "out", max_steps=40)

    _assert_run_dir(run_dir, steps=[10, 20, 30, 40], batches=4, lr=1e-3, optimizer="AdamW")
    manifest = Probe.load(run_dir).manifest
    assert manifest.batch_size == 8
    assert [_recorded_batch(run_dir, step) for step in (10, 20, 30, 40)] == [8, 8, 8, 8]
    # attention_mask, input_ids, labels — then labels again as the target.
    assert len(manifest.inputs) == 4
    # Non-persistent buffers are in no state_dict, so the manifest does not ask checkpoints for
    # them; they stay fixed inside the program (and the run above analysed).
    assert "model.bert.embeddings.position_ids" not in {b.name for b in manifest.buffers}
    assert manifest.model_class.endswith("BertForSequenceClassification)")


# --- the run directory --------------------------------------------------------------------


def _files(run_dir: Path) -> dict[Path, bytes]:
    return {p: p.read_bytes() for p in sorted(run_dir.rglob("*")) if p.is_file()}


def _log_steps(run_dir: Path) -> list[int]:
    lines = (run_dir / "train_log.jsonl").read_text().splitlines()
    return [json.loads(line)["step"] for line in lines]


class _WideMLP(_MLP):
    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(6, 32), nn.Tanh(), nn.Linear(32, 3))


@pytest.mark.filterwarnings(_FEW_WORKERS)
def test_lightning_callback_creates_a_missing_run_dir(tmp_path: Path) -> None:
    run_dir = tmp_path / "runs" / "mlp" / "first"
    callback = ObstacleCallback(run_dir=run_dir, every_n_steps=10, loss_fn=F.cross_entropy)
    _fit_lightning(callback, max_steps=20)

    assert checkpoint_steps(run_dir) == [10, 20]
    assert _log_steps(run_dir) == list(range(1, 21))


def test_trainer_callback_creates_a_missing_run_dir(tmp_path: Path) -> None:
    run_dir = tmp_path / "runs" / "bert" / "first"
    callback = ObstacleTrainerCallback(run_dir=run_dir, every_n_steps=10)
    # The loss is logged from step 1, before the probe (step 5) would have made the directory.
    _train_hf(callback, tmp_path, max_steps=20, logging_steps=1)

    assert checkpoint_steps(run_dir) == [10, 20]
    assert _log_steps(run_dir) == list(range(1, 21))


_USED = r"already holds a run \(probe/, 2 checkpoints, train_log\.jsonl\).*resume=True"


@pytest.mark.filterwarnings(_FEW_WORKERS)
def test_lightning_callback_refuses_a_used_run_dir(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    late = ObstacleCallback(run_dir=run_dir, loss_fn=F.cross_entropy)  # made while still empty
    _fit_lightning(
        ObstacleCallback(run_dir=run_dir, every_n_steps=10, loss_fn=F.cross_entropy), max_steps=20
    )
    before = _files(run_dir)

    with pytest.raises(RunDirectoryError, match=re.escape(str(run_dir)) + " " + _USED):
        ObstacleCallback(run_dir=run_dir, loss_fn=F.cross_entropy)
    with pytest.raises(RunDirectoryError, match=_USED):
        _fit_lightning(late, max_steps=20)
    assert _files(run_dir) == before  # refused before training wrote anything


def test_trainer_callback_refuses_a_used_run_dir(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    late = ObstacleTrainerCallback(run_dir=run_dir)
    _train_hf(ObstacleTrainerCallback(run_dir=run_dir, every_n_steps=10), tmp_path, max_steps=20)
    before = _files(run_dir)

    with pytest.raises(RunDirectoryError, match=re.escape(str(run_dir)) + " " + _USED):
        ObstacleTrainerCallback(run_dir=run_dir)
    with pytest.raises(RunDirectoryError, match=_USED):
        _train_hf(late, tmp_path, max_steps=20)
    assert _files(run_dir) == before


@pytest.mark.filterwarnings(_FEW_WORKERS)
def test_lightning_callback_resumes_a_run_after_its_last_step(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    _fit_lightning(
        ObstacleCallback(run_dir=run_dir, every_n_steps=10, loss_fn=F.cross_entropy), max_steps=20
    )
    probe_hash = Probe.load(run_dir).manifest.content_hash

    # A new Trainer counts from 0 again; the run goes on after its step 20.
    resumed = ObstacleCallback(
        run_dir=run_dir, every_n_steps=10, loss_fn=F.cross_entropy, resume=True
    )
    _fit_lightning(resumed, max_steps=20)

    assert checkpoint_steps(run_dir) == [10, 20, 30, 40]
    assert _log_steps(run_dir) == list(range(1, 41))
    probe = Probe.load(run_dir)
    assert probe.manifest.content_hash == probe_hash  # the run's probe is kept
    for step in (30, 40):
        assert load_checkpoint(
            run_dir / CHECKPOINT_DIR / checkpoint_filename(step), probe.manifest
        ).train_loss


@pytest.mark.filterwarnings(_FEW_WORKERS)
def test_lightning_callback_resumes_with_a_trainer_resumed_from_its_checkpoint(
    tmp_path: Path,
) -> None:
    run_dir = tmp_path / "run"
    first = _fit_lightning(
        ObstacleCallback(run_dir=run_dir, every_n_steps=7, loss_fn=F.cross_entropy), max_steps=21
    )
    first.save_checkpoint(tmp_path / "last.ckpt")

    # 21 steps are 7 whole epochs of 3 batches. The Trainer restores its step 21 itself: the run's numbering goes on from there.
    resumed = ObstacleCallback(
        run_dir=run_dir, every_n_steps=7, loss_fn=F.cross_entropy, resume=True
    )
    _fit_lightning(resumed, max_steps=42, ckpt_path=tmp_path / "last.ckpt")

    assert checkpoint_steps(run_dir) == [7, 14, 21, 28, 35, 42]
    assert _log_steps(run_dir) == list(range(1, 43))


@pytest.mark.filterwarnings(_FEW_WORKERS)
def test_lightning_resume_refuses_another_model(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    _fit_lightning(
        ObstacleCallback(run_dir=run_dir, every_n_steps=10, loss_fn=F.cross_entropy), max_steps=20
    )
    before = _files(run_dir)

    resumed = ObstacleCallback(run_dir=run_dir, loss_fn=F.cross_entropy, resume=True)
    with pytest.raises(
        RunDirectoryError,
        match=r"resume=True continues a run only with the model, loss and batch layout its probe "
        r"was captured from; this training differs: model .*_WideMLP\).*mis-shaped or mis-typed: "
        r"\['model\.net\.0\.bias', 'model\.net\.0\.weight', 'model\.net\.2\.weight'\]\. "
        r"Pass a new run_dir",
    ):
        _fit_lightning(resumed, max_steps=20, module=_WideMLP())
    assert _files(run_dir) == before


def test_trainer_callback_resumes_a_run_after_its_last_step(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    _train_hf(ObstacleTrainerCallback(run_dir=run_dir, every_n_steps=10), tmp_path, max_steps=20)
    probe_hash = Probe.load(run_dir).manifest.content_hash

    resumed = ObstacleTrainerCallback(run_dir=run_dir, every_n_steps=10, resume=True)
    _train_hf(resumed, tmp_path, max_steps=20)

    assert checkpoint_steps(run_dir) == [10, 20, 30, 40]
    assert _log_steps(run_dir) == [5, 10, 15, 20, 25, 30, 35, 40]
    assert Probe.load(run_dir).manifest.content_hash == probe_hash


def test_trainer_resume_refuses_another_model(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    _train_hf(ObstacleTrainerCallback(run_dir=run_dir, every_n_steps=10), tmp_path, max_steps=10)
    before = _files(run_dir)

    resumed = ObstacleTrainerCallback(run_dir=run_dir, resume=True)
    with pytest.raises(
        RunDirectoryError,
        match=r"resume=True continues a run only with the model, loss and batch layout its probe "
        r"was captured from; this training differs: weights .*mis-shaped or mis-typed: "
        r"\[.*'model\.bert\.embeddings\.word_embeddings\.weight'.*\]\. Pass a new run_dir",
    ):
        _train_hf(resumed, tmp_path, max_steps=10, model=_tiny_bert(hidden=32))
    assert _files(run_dir) == before


# --- validation data ----------------------------------------------------------------------


@pytest.mark.filterwarnings(_FEW_WORKERS)
def test_lightning_callback_takes_validation_from_the_trainer_or_the_argument(
    tmp_path: Path,
) -> None:
    vx, vy = _validation_data(300)
    val = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(vx, vy), batch_size=64)

    def fit(name: str, **kwargs: object) -> Probe:
        callback = ObstacleCallback(
            run_dir=tmp_path / name, every_n_steps=10, loss_fn=F.cross_entropy, **kwargs
        )
        _fit_lightning(callback, max_steps=10, module=_ValidatedMLP(), val=val)
        return Probe.load(tmp_path / name)

    # The trainer's validation dataloader, its first 256 examples.
    auto = fit("auto")
    assert auto.validation is not None and auto.manifest.validation_size == 256
    assert torch.equal(auto.validation[0], vx[:256]) and torch.equal(auto.validation[1], vy[:256])
    given = fit("given", validation=(vx[:50], vy[:50]))
    assert given.validation is not None and torch.equal(given.validation[0], vx[:50])
    assert fit("none", validation=None).validation is None

    with pytest.raises(
        ProbeError,
        match=r"ObstacleCallback: validation= cannot give the probe a validation batch: the "
        r"validation data holds 0 example\(s\) shaped like the probe batches",
    ):
        fit("wrong", validation=(torch.randn(8, 5), torch.randint(0, 3, (8,))))


@pytest.mark.filterwarnings(_FEW_WORKERS)
def test_lightning_validation_data_of_another_layout_is_a_warning_and_none(tmp_path: Path) -> None:
    vx, vy = _validation_data(16)
    odd = torch.utils.data.TensorDataset(vx[:, :5], vy)  # 5 features where training has 6
    callback = ObstacleCallback(
        run_dir=tmp_path, every_n_steps=2, probe_batches=2, loss_fn=F.cross_entropy
    )
    with pytest.warns(
        UserWarning,
        match=r"ObstacleCallback: the trainer's validation data cannot give the probe a "
        r"validation batch: the validation data holds 0 example\(s\) shaped like the probe "
        r"batches \[\(16, 6\), \(16,\)\].*validation=None",
    ):
        # Two steps: the epoch (3 batches) does not end, so Lightning never validates on it.
        _fit_lightning(
            callback,
            max_steps=2,
            module=_ValidatedMLP(),
            val=torch.utils.data.DataLoader(odd, batch_size=8),
        )
    probe = Probe.load(tmp_path)
    assert probe.validation is None and checkpoint_steps(tmp_path) == [2]


def test_trainer_callback_takes_validation_from_the_eval_dataset_or_the_argument(
    tmp_path: Path,
) -> None:
    def train(name: str, **kwargs: object) -> Probe:
        callback = ObstacleTrainerCallback(run_dir=tmp_path / name, every_n_steps=10, **kwargs)
        _train_hf(callback, tmp_path, max_steps=10, eval_dataset=_Pairs(24, seed=1))
        return Probe.load(tmp_path / name)

    held_out = _Pairs(24, seed=1)
    auto = train("auto")
    assert auto.validation is not None and auto.manifest.validation_size == 24
    # attention_mask, input_ids, labels, then labels again as the target.
    assert torch.equal(auto.validation[1], held_out.ids)
    assert torch.equal(auto.validation[3], held_out.labels)
    given = train("given", validation=_Pairs(10, seed=2))
    assert given.validation is not None and torch.equal(given.validation[1], _Pairs(10, 2).ids)
    assert train("none", validation=None).validation is None


# --- validation ---------------------------------------------------------------------------


@pytest.mark.parametrize("cls", [ObstacleCallback, ObstacleTrainerCallback])
def test_exactly_one_destination(cls: type, tmp_path: Path) -> None:
    with pytest.raises(ParameterError, match=r"exclusive: pass exactly one.*Got neither"):
        cls()
    with pytest.raises(ParameterError, match=r"must be an obstacle\.client\.Run"):
        cls(run=str(tmp_path))
    with pytest.raises(ParameterError, match="Got both"):
        cls(run_dir=tmp_path, run=object())


@pytest.mark.parametrize("cls", [ObstacleCallback, ObstacleTrainerCallback])
def test_every_n_steps_and_probe_batches_are_validated(cls: type, tmp_path: Path) -> None:
    with pytest.raises(
        ParameterError,
        match=r"The 'every_n_steps' parameter must be an int in the range \[1, inf\). Got 0",
    ):
        cls(run_dir=tmp_path, every_n_steps=0)
    with pytest.raises(ParameterError, match="'probe_batches' parameter must be an int"):
        cls(run_dir=tmp_path, probe_batches=2.5)


def test_module_imports_without_the_libraries_and_names_the_install() -> None:
    code = (
        "import sys\n"
        "for name in ('lightning', 'lightning.pytorch', 'transformers'):\n"
        "    sys.modules[name] = None\n"
        "import obstacle.client.callbacks as callbacks\n"
        "for name in ('ObstacleCallback', 'ObstacleTrainerCallback'):\n"
        "    try:\n"
        "        getattr(callbacks, name)\n"
        "    except ImportError as exc:\n"
        "        print(exc)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120
    ).stdout
    assert "ObstacleCallback needs Lightning" in out
    assert "ObstacleTrainerCallback needs Hugging Face transformers" in out
    assert out.count("pip install 'obstacle-detector[client]'") == 2


@pytest.mark.parametrize("cls", [ObstacleCallback, ObstacleTrainerCallback])
def test_validation_resume_and_run_dir_are_validated(cls: type, tmp_path: Path) -> None:
    with pytest.raises(ParameterError, match=r"The 'validation' parameter must be 'auto'.*'val'"):
        cls(run_dir=tmp_path, validation="val")
    with pytest.raises(ParameterError, match=r"'resume' parameter applies to run_dir= only"):
        cls(run=object.__new__(Run), resume=True)
    (tmp_path / "file").write_text("x")
    with pytest.raises(RunDirectoryError, match=r"file is a file; run_dir must be a directory"):
        cls(run_dir=tmp_path / "file")
