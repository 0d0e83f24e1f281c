"""Training callbacks: capture the probe and log checkpoints from Lightning or Hugging Face.

Lightning (``pip install 'obstacle-detector[client]' lightning``)::

    from obstacle.client.callbacks import ObstacleCallback

    callback = ObstacleCallback(run_dir="runs/mlp", loss_fn=F.cross_entropy, every_n_steps=50)
    lightning.Trainer(max_steps=5000, callbacks=[callback]).fit(module, loader)
    report = obstacle.battery.analysis.analyze("runs/mlp")

Hugging Face (``pip install 'obstacle-detector[client]' transformers``)::

    from obstacle.client.callbacks import ObstacleTrainerCallback

    with obstacle.Client(url, token) as client, client.create_run("bert-sst2") as run:
        callback = ObstacleTrainerCallback(run=run, every_n_steps=50)
        transformers.Trainer(model, args, train_dataset=data, callbacks=[callback]).train()
        result = run.analyze()

Both write to a local run directory (``run_dir=``) or upload through a :class:`obstacle.client.Run`
(``run=``). They keep the first ``probe_batches`` training batches of one shape (a shorter last
batch of an epoch is skipped), capture the probe from them once they have K, then every
``every_n_steps`` optimizer steps log a checkpoint: the weights, the optimizer's state (Adam
moments, momentum buffers), the learning rate its first parameter group holds at that moment
(the schedulers have stepped: the one the next step uses) and the minibatch loss of the step
that just ended. With ``run_dir`` they also append ``train_log.jsonl`` lines.

Checkpoints hold the state of a wrapper around the model, so parameter names carry a
``model.`` prefix (``model.bert.encoder...``). Non-persistent buffers (position ids, rotary
frequencies) stay fixed inside the probe's program, as they are not part of a state dict.

The library is imported when a callback class is first looked up, so this module imports
without either one installed.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from obstacle._validation import check_int
from obstacle.client._run import Run
from obstacle.errors import InputError, ParameterError

if TYPE_CHECKING:
    import torch
    from torch import nn

    # Built on first lookup by __getattr__ below, each subclassing its library's callback.
    ObstacleCallback: type[Any]
    ObstacleTrainerCallback: type[Any]

__all__ = ["ObstacleCallback", "ObstacleTrainerCallback"]

LossFn = Callable[[Any, "torch.Tensor"], "torch.Tensor"]


class _Recorder:
    """What both callbacks do: keep the probe batches, capture the probe, log checkpoints."""

    def __init__(
        self,
        *,
        run_dir: str | Path | None,
        run: Run | None,
        every_n_steps: int,
        probe_batches: int,
    ) -> None:
        if (run_dir is None) == (run is None):
            given = "both" if run is not None else "neither"
            raise ParameterError(
                "The 'run_dir' and 'run' parameters are exclusive: pass exactly one (run_dir= to "
                f"write a local run directory, run= to upload through obstacle.Client). Got {given}."
            )
        if run is not None and not isinstance(run, Run):
            raise ParameterError(
                "The 'run' parameter must be an obstacle.client.Run (from client.create_run). "
                f"Got {type(run).__name__} instead."
            )
        self.run_dir = Path(run_dir) if run_dir is not None else None
        self.run = run
        self.every_n_steps = check_int("every_n_steps", every_n_steps, low=1)
        self.probe_batches = check_int("probe_batches", probe_batches, low=1)
        self.batches: list[tuple[torch.Tensor, ...]] = []
        self.has_probe = False
        self.last_checkpoint = -1

    @property
    def collecting(self) -> bool:
        return not self.has_probe and len(self.batches) < self.probe_batches

    def offer(self, batch: tuple[torch.Tensor, ...]) -> None:
        """Keep a CPU copy of ``batch`` if it has the first kept batch's shapes."""
        if not self.collecting:
            return
        batch = tuple(t.detach().to("cpu", copy=True) for t in batch)
        first = self.batches[0] if self.batches else batch
        if [t.shape for t in batch] == [t.shape for t in first]:
            self.batches.append(batch)

    def capture(self, model: nn.Module, loss_fn: LossFn) -> None:
        """Capture and store the probe once ``probe_batches`` batches are kept."""
        from obstacle.battery.probe import Probe

        if self.has_probe or len(self.batches) < self.probe_batches:
            return
        probe = Probe.capture(model, loss_fn, self.batches)
        if self.run is not None:
            self.run.upload_probe(probe)
        else:
            assert self.run_dir is not None
            probe.save(self.run_dir)
        self.batches = []
        self.has_probe = True

    def due(self, step: int) -> bool:
        return self.has_probe and step % self.every_n_steps == 0 and step != self.last_checkpoint

    def checkpoint(
        self,
        step: int,
        model: nn.Module,
        *,
        lr: float,
        train_loss: float | None,
        optimizer: torch.optim.Optimizer | None,
        batch_size: int | None = None,
    ) -> None:
        from obstacle.battery.checkpoint import save_checkpoint

        if self.run is not None:
            self.run.log_checkpoint(
                step,
                model,
                lr=lr,
                train_loss=train_loss,
                optimizer=optimizer,
                batch_size=batch_size,
            )
        else:
            assert self.run_dir is not None
            save_checkpoint(
                self.run_dir,
                model,
                step=step,
                lr=lr,
                train_loss=train_loss,
                optimizer=optimizer,
                batch_size=batch_size,
            )
        self.last_checkpoint = step

    def train_log(self, step: int, *, lr: float, loss: float) -> None:
        """Append a ``train_log.jsonl`` line (run directories only: the service has no log)."""
        from obstacle.battery.checkpoint import append_train_log

        if self.run_dir is not None:
            append_train_log(self.run_dir, step=step, lr=lr, loss=loss)

    def finish(self, who: str) -> None:
        if not self.has_probe:
            warnings.warn(
                f"{who} kept {len(self.batches)} of the {self.probe_batches} equally shaped "
                "training batches it needs for the probe, so it captured no probe and logged no "
                "checkpoint. Train for longer or lower probe_batches.",
                UserWarning,
                stacklevel=3,
            )
        if self.run is not None:
            self.run.flush()


def _wrap(model: nn.Module, keys: Sequence[str] | None = None) -> nn.Module:
    """The module the probe is traced from and checkpoints are taken of.

    Without ``keys``: ``forward(*inputs) = model(*inputs)``. With ``keys`` (Hugging Face):
    ``forward(*tensors) = model(**dict(zip(keys, tensors))).loss``.
    """
    from torch import nn

    class _Wrapped(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model
            self.keys = tuple(keys) if keys is not None else None

        def forward(self, *tensors: torch.Tensor) -> Any:
            if self.keys is None:
                return self.model(*tensors)
            return self.model(**dict(zip(self.keys, tensors, strict=True))).loss

    # What the probe's manifest records as the model class.
    _Wrapped.__qualname__ = f"wrapped({type(model).__module__}.{type(model).__qualname__})"
    return _Wrapped()


def _own_loss(loss: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """The Hugging Face model computed its loss itself; the target only fed ``labels``."""
    return loss


def _loss_value(outputs: Any) -> float | None:
    import torch

    loss = outputs.get("loss") if isinstance(outputs, Mapping) else outputs
    return float(loss.detach()) if isinstance(loss, torch.Tensor) else None


def _inner_optimizer(optimizer: Any) -> torch.optim.Optimizer:
    import torch

    # accelerate wraps the optimizer (AcceleratedOptimizer); the state lives in the torch one.
    inner = getattr(optimizer, "optimizer", optimizer)
    if not isinstance(inner, torch.optim.Optimizer):
        raise InputError(
            f"the trainer's optimizer is a {type(inner).__name__}, not a torch.optim.Optimizer; "
            "the callbacks read its learning rate and state from a torch optimizer."
        )
    return inner


def _lightning_callback() -> type:
    try:
        import lightning.pytorch as pl
    except ImportError as exc:
        raise ImportError(
            "obstacle.client.callbacks.ObstacleCallback needs Lightning, which is not installed. "
            "Install it with the client extra: pip install 'obstacle-detector[client]' "
            "'lightning>=2.2'."
        ) from exc

    class ObstacleCallback(pl.Callback):
        """A Lightning callback that captures the probe and logs checkpoints (module docstring).

        The loss is ``loss_fn(pl_module(*inputs), target)`` on training batches laid out as
        ``(*inputs, target)`` (a tuple or list of tensors); ``loss_fn`` defaults to the module's
        ``loss_fn`` attribute. Checkpoints use the first of ``trainer.optimizers``.

            callback = ObstacleCallback(run_dir="runs/mlp", loss_fn=F.cross_entropy)
            Trainer(max_steps=1000, callbacks=[callback]).fit(module, loader)
        """

        def __init__(
            self,
            *,
            run_dir: str | Path | None = None,
            run: Run | None = None,
            every_n_steps: int = 50,
            probe_batches: int = 4,
            loss_fn: LossFn | None = None,
        ) -> None:
            super().__init__()
            self.recorder = _Recorder(
                run_dir=run_dir, run=run, every_n_steps=every_n_steps, probe_batches=probe_batches
            )
            self.loss_fn = loss_fn
            self._model: nn.Module | None = None
            self._last_step = -1

        def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
            if self.loss_fn is None:
                self.loss_fn = getattr(pl_module, "loss_fn", None)
            if not callable(self.loss_fn):
                raise ParameterError(
                    "ObstacleCallback needs the loss: pass loss_fn=, called as "
                    f"loss_fn(outputs, target), or give {type(pl_module).__name__} a loss_fn "
                    "attribute."
                )
            self._model = _wrap(pl_module)
            self._last_step = trainer.global_step

        def on_train_batch_start(
            self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
        ) -> None:
            if self.recorder.collecting:
                self.recorder.offer(_lightning_batch(batch))

        def on_train_batch_end(
            self,
            trainer: pl.Trainer,
            pl_module: pl.LightningModule,
            outputs: Any,
            batch: Any,
            batch_idx: int,
        ) -> None:
            step = trainer.global_step
            if step == self._last_step:  # accumulating gradients: no optimizer step yet
                return
            self._last_step = step
            assert self._model is not None and self.loss_fn is not None
            optimizer = _inner_optimizer(trainer.optimizers[0])
            lr = float(optimizer.param_groups[0]["lr"])
            loss = _loss_value(outputs)
            self.recorder.capture(self._model, self.loss_fn)
            if loss is not None:
                self.recorder.train_log(step, lr=lr, loss=loss)
            if self.recorder.due(step):
                # Examples per optimizer step: this batch × accumulation × processes.
                per_device = _batch_length(batch)
                self.recorder.checkpoint(
                    step,
                    self._model,
                    lr=lr,
                    train_loss=loss,
                    optimizer=optimizer,
                    batch_size=per_device
                    * int(getattr(trainer, "accumulate_grad_batches", 1) or 1)
                    * int(getattr(trainer, "world_size", 1) or 1)
                    if per_device
                    else None,
                )

        def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
            self.recorder.finish("ObstacleCallback")

    return ObstacleCallback


def _lightning_batch(batch: Any) -> tuple[torch.Tensor, ...]:
    import torch

    if not isinstance(batch, tuple | list) or not all(isinstance(t, torch.Tensor) for t in batch):
        raise InputError(
            "ObstacleCallback needs training batches laid out as (*inputs, target), a tuple or "
            f"list of tensors; got {type(batch).__name__}. Return that from the DataLoader, or "
            "capture the probe by hand with obstacle.Probe.capture."
        )
    return tuple(batch)


def _trainer_callback() -> type:
    try:
        import transformers
    except ImportError as exc:
        raise ImportError(
            "obstacle.client.callbacks.ObstacleTrainerCallback needs Hugging Face transformers, "
            "which is not installed. Install it with the client extra: pip install "
            "'obstacle-detector[client]' 'transformers>=4.40'."
        ) from exc
    import torch

    class ObstacleTrainerCallback(transformers.TrainerCallback):
        """A ``transformers.Trainer`` callback that captures the probe and logs checkpoints.

        The loss is the model's own: the batches must hold ``labels``, and the probe traces
        ``model(**batch).loss``, its batch tuple holding the batch's tensors in sorted key order
        with ``labels`` repeated last as the target. The batches are read by a forward pre-hook
        on the model (the Trainer does not pass them to callbacks). ``train_log.jsonl`` gets the
        Trainer's logged loss every ``logging_steps``.

            callback = ObstacleTrainerCallback(run_dir="runs/bert", every_n_steps=50)
            Trainer(model, args, train_dataset=data, callbacks=[callback]).train()
        """

        def __init__(
            self,
            *,
            run_dir: str | Path | None = None,
            run: Run | None = None,
            every_n_steps: int = 50,
            probe_batches: int = 4,
        ) -> None:
            self.recorder = _Recorder(
                run_dir=run_dir, run=run, every_n_steps=every_n_steps, probe_batches=probe_batches
            )
            self._keys: tuple[str, ...] | None = None
            self._model: nn.Module | None = None
            self._losses: list[torch.Tensor] = []
            self._hooks: list[torch.utils.hooks.RemovableHandle] = []
            self._lr = 0.0

        def on_train_begin(
            self,
            args: transformers.TrainingArguments,
            state: transformers.TrainerState,
            control: transformers.TrainerControl,
            **kwargs: Any,
        ) -> None:
            model: nn.Module = kwargs["model"]
            self._hooks = [
                model.register_forward_pre_hook(self._keep_batch, with_kwargs=True),
                model.register_forward_hook(self._keep_loss),
            ]

        def _keep_batch(self, model: nn.Module, args: Any, kwargs: dict[str, Any]) -> None:
            if not (model.training and self.recorder.collecting):
                return
            if "labels" not in kwargs:
                raise InputError(
                    "ObstacleTrainerCallback probes the model's own loss, so the training batches "
                    f"must hold 'labels'; this one holds {sorted(kwargs)}."
                )
            size = kwargs["labels"].shape[0]
            tensors = {
                k: v
                for k, v in kwargs.items()
                if isinstance(v, torch.Tensor) and v.dim() and v.shape[0] == size
            }
            if self._keys is None:
                self._keys = tuple(sorted(tensors))
                self._model = _wrap(model, self._keys)
            if set(tensors) == set(self._keys):
                # The target is a copy: safetensors refuses two names for one storage.
                batch = (*(tensors[k] for k in self._keys), tensors["labels"].clone())
                self.recorder.offer(batch)

        def _keep_loss(self, model: nn.Module, args: Any, output: Any) -> None:
            loss = getattr(output, "loss", None)
            if model.training and isinstance(loss, torch.Tensor):
                self._losses.append(loss.detach())

        def on_step_begin(
            self,
            args: transformers.TrainingArguments,
            state: transformers.TrainerState,
            control: transformers.TrainerControl,
            **kwargs: Any,
        ) -> None:
            self._losses = []

        def on_step_end(
            self,
            args: transformers.TrainingArguments,
            state: transformers.TrainerState,
            control: transformers.TrainerControl,
            **kwargs: Any,
        ) -> None:
            optimizer = _inner_optimizer(kwargs["optimizer"])
            self._lr = float(optimizer.param_groups[0]["lr"])
            if self._model is None:
                return
            self.recorder.capture(self._model, _own_loss)
            step = state.global_step
            if self.recorder.due(step):
                loss = float(torch.stack(self._losses).mean()) if self._losses else None
                self.recorder.checkpoint(
                    step,
                    self._model,
                    lr=self._lr,
                    train_loss=loss,
                    optimizer=optimizer,
                    batch_size=int(args.per_device_train_batch_size)
                    * int(args.gradient_accumulation_steps)
                    * int(args.world_size),
                )

        def on_log(
            self,
            args: transformers.TrainingArguments,
            state: transformers.TrainerState,
            control: transformers.TrainerControl,
            logs: dict[str, float] | None = None,
            **kwargs: Any,
        ) -> None:
            if logs and "loss" in logs:
                lr = float(logs.get("learning_rate", self._lr))
                self.recorder.train_log(state.global_step, lr=lr, loss=float(logs["loss"]))

        def on_train_end(
            self,
            args: transformers.TrainingArguments,
            state: transformers.TrainerState,
            control: transformers.TrainerControl,
            **kwargs: Any,
        ) -> None:
            for hook in self._hooks:
                hook.remove()
            self._hooks = []
            self.recorder.finish("ObstacleTrainerCallback")

    return ObstacleTrainerCallback


_FACTORIES: dict[str, Callable[[], type]] = {
    "ObstacleCallback": _lightning_callback,
    "ObstacleTrainerCallback": _trainer_callback,
}


def __getattr__(name: str) -> Any:
    factory = _FACTORIES.get(name)
    if factory is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    cls = factory()
    globals()[name] = cls
    return cls


def _batch_length(batch: Any) -> int | None:
    """Examples in a dataloader batch: the leading size of its first tensor (None if unknown)."""
    import torch

    if isinstance(batch, torch.Tensor):
        return int(batch.shape[0]) if batch.dim() else None
    if isinstance(batch, dict):
        batch = list(batch.values())
    if isinstance(batch, list | tuple):
        for item in batch:
            size = _batch_length(item)
            if size:
                return size
    return None
