"""Training callbacks: capture the probe and log checkpoints from Lightning or Hugging Face.

Lightning (``pip install 'obstacle-detector[client]' lightning``)::

    from obstacle.client.callbacks import ObstacleCallback

    callback = ObstacleCallback(run_dir="runs/mlp", loss_fn=F.cross_entropy, every_n_steps=50)
    lightning.Trainer(max_steps=5000, callbacks=[callback]).fit(module, loader, val_loader)
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

``run_dir`` is created when training starts (missing parents too). One that already holds a run
(a probe, checkpoints or a training log) is refused before anything is written, so two runs never
mix; ``resume=True`` continues it instead (or starts it, if there is none): the model, loss and
batch layout must be those its probe was captured from, the probe is kept, and steps go on after
the run's last one (a trainer resumed from its own checkpoint keeps its step numbers when they are
already past it).

``validation`` defaults to the trainer's own validation data (Lightning's validation dataloader,
the Trainer's ``eval_dataset``); up to 256 examples of it become the probe's validation batch, so
the battery measures a validation loss at every checkpoint and can tell overfitting. Pass
batches to use others, or ``validation=None`` for none.

Checkpoints hold the state of a wrapper around the model, so parameter names carry a
``model.`` prefix (``model.bert.encoder...``). Non-persistent buffers (position ids, rotary
frequencies) stay fixed inside the probe's program, as they are not part of a state dict.

The library is imported when a callback class is first looked up, so this module imports
without either one installed.
"""

from __future__ import annotations

import inspect
import json
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from obstacle._validation import check_int
from obstacle.client._run import Run
from obstacle.errors import InputError, ParameterError, ProbeError, RunDirectoryError

if TYPE_CHECKING:
    import torch
    from torch import nn

    from obstacle.artifacts.manifest import ProbeManifest

    # Built on first lookup by __getattr__ below, each subclassing its library's callback.
    ObstacleCallback: type[Any]
    ObstacleTrainerCallback: type[Any]

__all__ = ["ObstacleCallback", "ObstacleTrainerCallback"]

LossFn = Callable[[Any, "torch.Tensor"], "torch.Tensor"]
Batch = tuple["torch.Tensor", ...]

# At most this many validation examples go into the probe: the battery evaluates the validation
# loss at every checkpoint (and along its interpolations), so it stays a forward pass or two.
VALIDATION_EXAMPLES = 256


def _run_contents(run_dir: Path) -> list[str]:
    """What an earlier run left in ``run_dir``: its probe, checkpoints and training log."""
    from obstacle.artifacts.layout import CHECKPOINT_DIR, PROBE_DIR, TRAIN_LOG, list_checkpoints

    if not run_dir.exists():
        return []
    if not run_dir.is_dir():
        raise RunDirectoryError(
            f"{run_dir} is a file; run_dir must be a directory (missing ones are created). "
            "Pass a directory path."
        )
    found = []
    if (run_dir / PROBE_DIR).exists():
        found.append(f"{PROBE_DIR}/")
    if (run_dir / CHECKPOINT_DIR).is_dir() and (count := len(list_checkpoints(run_dir))):
        found.append(f"{count} checkpoint{'s' if count != 1 else ''}")
    if (run_dir / TRAIN_LOG).exists():
        found.append(TRAIN_LOG)
    return found


def _last_step(run_dir: Path) -> int:
    """The last step an earlier run recorded: its last checkpoint or training-log line."""
    from obstacle.artifacts.layout import TRAIN_LOG, list_checkpoints

    steps = [step for step, _ in list_checkpoints(run_dir)]
    log = run_dir / TRAIN_LOG
    if log.exists():
        for line in log.read_text(encoding="utf-8").splitlines():
            try:
                steps.append(int(json.loads(line)["step"]))
            except (ValueError, KeyError, TypeError):
                continue  # a line cut short by a crash: the checkpoints still bound the run
    return max(steps, default=0)


class _Recorder:
    """What both callbacks do: keep the probe batches, capture the probe, log checkpoints."""

    def __init__(
        self,
        *,
        run_dir: str | Path | None,
        run: Run | None,
        every_n_steps: int,
        probe_batches: int,
        resume: bool = False,
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
        if not isinstance(resume, bool):
            raise ParameterError(
                f"The 'resume' parameter must be a bool. Got {type(resume).__name__} instead."
            )
        if resume and run is not None:
            raise ParameterError(
                "The 'resume' parameter applies to run_dir= only: a run on the service is "
                "resumed by logging more checkpoints to the same obstacle.client.Run. Got "
                "resume=True with run=."
            )
        self.run_dir = Path(run_dir) if run_dir is not None else None
        self.run = run
        self.resume = resume
        self.every_n_steps = check_int("every_n_steps", every_n_steps, low=1)
        self.probe_batches = check_int("probe_batches", probe_batches, low=1)
        self.batches: list[tuple[torch.Tensor, ...]] = []
        self.has_probe = False
        self.last_checkpoint = -1
        # Added to the trainer's step when resuming a run whose steps the trainer restarts.
        self.step_offset = 0
        # The probe of the run being resumed: the model and batches are checked against it.
        self.resumed: ProbeManifest | None = None
        self._checked_batch = False
        self.check_run_dir()

    def check_run_dir(self) -> list[str]:
        """What an earlier run left in ``run_dir``; refused unless ``resume=True``."""
        if self.run_dir is None:
            return []
        found = _run_contents(self.run_dir)
        if found and not self.resume:
            raise RunDirectoryError(
                f"{self.run_dir} already holds a run ({', '.join(found)}); a callback starts a "
                "new run only in a directory that holds none, so that two runs never mix in one "
                "training log. Pass a new run_dir, delete the old run, or pass resume=True "
                "to continue that run."
            )
        return found

    def open(self) -> None:
        """At the start of training: create ``run_dir``, or take up the run it holds (resume)."""
        if self.run_dir is None:
            return
        found = self.check_run_dir()
        self.run_dir.mkdir(parents=True, exist_ok=True)
        if not found:
            return
        from obstacle.artifacts.layout import PROBE_DIR, PROBE_MANIFEST
        from obstacle.artifacts.manifest import read_manifest

        if (self.run_dir / PROBE_DIR / PROBE_MANIFEST).is_file():
            self.resumed = read_manifest(self.run_dir / PROBE_DIR / PROBE_MANIFEST)
            self.has_probe = True

    def check_resumed(self, model: nn.Module, loss_fn: object) -> None:
        """The model (and loss) being trained must be the resumed run's: class, names, shapes."""
        manifest = self.resumed
        if manifest is None:
            return
        problems = []
        model_class = f"{type(model).__module__}.{type(model).__qualname__}"
        if manifest.model_class and manifest.model_class != model_class:
            problems.append(f"model {model_class} (the run's is {manifest.model_class})")
        loss_class = getattr(loss_fn, "__qualname__", type(loss_fn).__qualname__)
        if manifest.loss_class and manifest.loss_class != loss_class:
            problems.append(f"loss {loss_class} (the run's is {manifest.loss_class})")
        expected = {s.name: (list(s.shape), s.dtype) for s in manifest.state_specs}
        state = {
            name: (list(t.shape), str(t.dtype).removeprefix("torch."))
            for name, t in model.state_dict().items()
        }
        missing = sorted(set(expected) - set(state))
        extra = sorted(set(state) - set(expected))
        wrong = sorted(k for k in set(expected) & set(state) if expected[k] != state[k])
        if missing or extra or wrong:
            problems.append(
                f"weights missing: {missing or 'none'}; unexpected: {extra or 'none'}; "
                f"mis-shaped or mis-typed: {wrong or 'none'}"
            )
        self._refuse_resume(problems)

    def check_resumed_batch(self, batch: tuple[torch.Tensor, ...]) -> None:
        """The training batches must have the layout the resumed run's probe was traced on."""
        manifest = self.resumed
        if manifest is None or self._checked_batch:
            return
        self._checked_batch = True
        got = [([-1, *t.shape[1:]], str(t.dtype).removeprefix("torch.")) for t in batch]
        want = [(list(s.shape), s.dtype) for s in manifest.inputs]
        if got != want:
            self._refuse_resume([f"batch tensors {got} (the run's are {want})"])

    def _refuse_resume(self, problems: list[str]) -> None:
        if problems:
            raise RunDirectoryError(
                f"{self.run_dir}: resume=True continues a run only with the model, loss and "
                f"batch layout its probe was captured from; this training differs: "
                f"{'; '.join(problems)}. Pass a new run_dir to record this training as a new run."
            )

    def start_at(self, trainer_step: int) -> None:
        """The trainer's step as training starts (after it restored any checkpoint of its own).

        A trainer that counts from 0 again continues after the resumed run's last step; one
        resumed from its own checkpoint, at or past that step, keeps its numbering.
        """
        if self.run_dir is not None and self.resume:
            last = _last_step(self.run_dir)
            self.step_offset = max(0, last - trainer_step)

    def step(self, trainer_step: int) -> int:
        """The run's step for the trainer's optimizer step (continuing a resumed run)."""
        return trainer_step + self.step_offset

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

    def capture(
        self,
        model: nn.Module,
        loss_fn: LossFn,
        validation: Callable[[], tuple[torch.Tensor, ...] | None] = lambda: None,
    ) -> None:
        """Capture and store the probe once ``probe_batches`` batches are kept.

        ``validation`` is called only then, for the probe's validation batch (or None).
        """
        from obstacle.battery.probe import Probe

        if self.has_probe or len(self.batches) < self.probe_batches:
            return
        probe = Probe.capture(model, loss_fn, self.batches, validation=validation())
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


def _validation_batch(
    source: Any,
    convert: Callable[[Any], Batch | None],
    like: Batch,
    *,
    auto: bool,
    who: str,
) -> Batch | None:
    """The probe's validation batch from ``source``: one batch, or an iterable of batches.

    Batches shaped like the probe batches beyond the batch dimension (the probe's program has a
    fixed sequence length) are concatenated up to ``VALIDATION_EXAMPLES`` examples. A problem
    with data the callback found by itself (``auto``) is a warning and no validation batch; with
    data given as ``validation=``, an error.
    """
    import torch

    if source is None:
        return None
    is_batch = isinstance(source, Mapping) or (
        isinstance(source, tuple | list) and all(isinstance(t, torch.Tensor) for t in source)
    )
    batches: Iterable[Any] = [source] if is_batch else source
    kept: list[Batch] = []
    count = 0
    try:
        for raw in batches:
            batch = convert(raw)
            if batch is None:
                continue
            if len(batch) != len(like) or any(
                t.shape[1:] != u.shape[1:] or t.dtype != u.dtype
                for t, u in zip(batch, like, strict=True)
            ):
                continue
            kept.append(tuple(t.detach().to("cpu", copy=True) for t in batch))
            count += int(batch[0].shape[0])
            if count >= VALIDATION_EXAMPLES:
                break
    except InputError as exc:
        problem = str(exc)
    else:
        problem = ""
        if count < 2:
            shapes = [tuple(t.shape) for t in like]
            problem = (
                f"the validation data holds {count} example(s) shaped like the probe batches "
                f"{shapes} beyond the batch dimension; the probe needs at least 2 (its program "
                "fixes every dimension but the batch, so batches of another shape are skipped; "
                "pad tokenized text to one length, padding='max_length')"
            )
    if problem:
        where = "the trainer's validation data" if auto else "validation="
        message = (
            f"{who}: {where} cannot give the probe a validation batch: {problem}. Pass "
            "validation=(inputs..., target) batches of the training batches' layout, or "
            "validation=None to record no validation loss (no overfitting test)."
        )
        if auto:
            warnings.warn(message, UserWarning, stacklevel=2)
            return None
        raise ProbeError(message)
    return tuple(torch.cat(parts)[:VALIDATION_EXAMPLES] for parts in zip(*kept, strict=True))


def _check_validation(validation: Any) -> Any:
    if isinstance(validation, str) and validation != "auto":
        raise ParameterError(
            "The 'validation' parameter must be 'auto' (the trainer's validation data), None "
            f"(no validation loss), a batch or an iterable of batches. Got {validation!r}."
        )
    return validation


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

        ``validation`` (``"auto"``: the trainer's first validation dataloader, if it has one; a
        batch ``(*inputs, target)``; an iterable of such batches; ``None``: none) becomes the
        probe's validation batch, so the battery can see overfitting. ``resume=True`` continues
        the run already in ``run_dir`` (see the module docstring).

            callback = ObstacleCallback(run_dir="runs/mlp", loss_fn=F.cross_entropy)
            Trainer(max_steps=1000, callbacks=[callback]).fit(module, loader, val_loader)
        """

        def __init__(
            self,
            *,
            run_dir: str | Path | None = None,
            run: Run | None = None,
            every_n_steps: int = 50,
            probe_batches: int = 4,
            loss_fn: LossFn | None = None,
            validation: Any = "auto",
            resume: bool = False,
        ) -> None:
            super().__init__()
            self.recorder = _Recorder(
                run_dir=run_dir,
                run=run,
                every_n_steps=every_n_steps,
                probe_batches=probe_batches,
                resume=resume,
            )
            self.loss_fn = loss_fn
            self.validation = _check_validation(validation)
            self._model: nn.Module | None = None
            self._trainer: pl.Trainer | None = None
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
            self._trainer = trainer
            self.recorder.open()
            self.recorder.check_resumed(self._model, self.loss_fn)

        def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
            # After on_fit_start Lightning restores its own checkpoint (ckpt_path=), step included.
            self._last_step = trainer.global_step
            self.recorder.start_at(trainer.global_step)

        def on_train_batch_start(
            self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
        ) -> None:
            if self.recorder.collecting or self.recorder.resumed is not None:
                kept = _lightning_batch(batch)
                self.recorder.check_resumed_batch(kept)
                self.recorder.offer(kept)

        def _validation(self) -> Batch | None:
            auto = isinstance(self.validation, str)
            source = _lightning_val_loader(self._trainer) if auto else self.validation
            return _validation_batch(
                source,
                lambda raw: _lightning_batch(raw, "validation"),
                self.recorder.batches[0],
                auto=auto,
                who="ObstacleCallback",
            )

        def on_train_batch_end(
            self,
            trainer: pl.Trainer,
            pl_module: pl.LightningModule,
            outputs: Any,
            batch: Any,
            batch_idx: int,
        ) -> None:
            if trainer.global_step == self._last_step:  # accumulating gradients: no step yet
                return
            self._last_step = trainer.global_step
            step = self.recorder.step(trainer.global_step)
            assert self._model is not None and self.loss_fn is not None
            optimizer = _inner_optimizer(trainer.optimizers[0])
            lr = float(optimizer.param_groups[0]["lr"])
            loss = _loss_value(outputs)
            self.recorder.capture(self._model, self.loss_fn, self._validation)
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


def _lightning_val_loader(trainer: Any) -> Any:
    """The trainer's first validation dataloader, loaded now if Lightning has not yet done so.

    Lightning loads validation data lazily, at the sanity check or the first validation; the
    probe is captured after a few training batches, usually before either.
    """
    loaders = trainer.val_dataloaders
    if loaders is None:
        val_loop = getattr(getattr(trainer.fit_loop, "epoch_loop", None), "val_loop", None)
        setup = getattr(val_loop, "setup_data", None)
        if callable(setup):
            setup()  # what the loop runs at its first validation; it is not done twice
        loaders = trainer.val_dataloaders
    if isinstance(loaders, Mapping):
        loaders = next(iter(loaders.values()), None)
    if isinstance(loaders, list | tuple):
        loaders = loaders[0] if loaders else None
    return loaders


def _lightning_batch(batch: Any, what: str = "training") -> tuple[torch.Tensor, ...]:
    import torch

    if not isinstance(batch, tuple | list) or not all(isinstance(t, torch.Tensor) for t in batch):
        raise InputError(
            f"ObstacleCallback needs {what} batches laid out as (*inputs, target), a tuple or "
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

        ``validation`` (``"auto"``: the Trainer's ``eval_dataset``, through its eval dataloader;
        a dataset, read the same way; a batch dict; an iterable of batch dicts; ``None``: none)
        becomes the probe's validation batch, so the battery can see overfitting. Only eval
        batches padded to the probe batches' length are kept (pad to a fixed length).
        ``resume=True`` continues the run already in ``run_dir`` (see the module docstring).

            callback = ObstacleTrainerCallback(run_dir="runs/bert", every_n_steps=50)
            Trainer(model, args, train_dataset=data, eval_dataset=held_out,
                    callbacks=[callback]).train()
        """

        def __init__(
            self,
            *,
            run_dir: str | Path | None = None,
            run: Run | None = None,
            every_n_steps: int = 50,
            probe_batches: int = 4,
            validation: Any = "auto",
            resume: bool = False,
        ) -> None:
            self.recorder = _Recorder(
                run_dir=run_dir,
                run=run,
                every_n_steps=every_n_steps,
                probe_batches=probe_batches,
                resume=resume,
            )
            self.validation = _check_validation(validation)
            self._keys: tuple[str, ...] | None = None
            self._model: nn.Module | None = None
            self._trainer: transformers.Trainer | None = None
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
            self.recorder.open()
            self.recorder.start_at(state.global_step)  # the Trainer has restored its checkpoint
            self._trainer = _calling_trainer()
            model: nn.Module = kwargs["model"]
            self._hooks = [
                model.register_forward_pre_hook(self._keep_batch, with_kwargs=True),
                model.register_forward_hook(self._keep_loss),
            ]

        def _keep_batch(self, model: nn.Module, args: Any, kwargs: dict[str, Any]) -> None:
            if not model.training or (self._keys is not None and not self.recorder.collecting):
                return
            tensors = self._tensors(kwargs, "training")
            if self._keys is None:
                self._keys = tuple(sorted(tensors))
                self._model = _wrap(model, self._keys)
                self.recorder.check_resumed(self._model, _own_loss)
            if set(tensors) == set(self._keys):
                batch = self._batch(tensors)
                self.recorder.check_resumed_batch(batch)
                self.recorder.offer(batch)

        def _tensors(self, kwargs: Mapping[str, Any], what: str) -> dict[str, torch.Tensor]:
            """The batch's tensors that share the labels' batch dimension."""
            if "labels" not in kwargs:
                raise InputError(
                    "ObstacleTrainerCallback probes the model's own loss, so the "
                    f"{what} batches must hold 'labels'; this one holds {sorted(kwargs)}."
                )
            size = kwargs["labels"].shape[0]
            return {
                k: v
                for k, v in kwargs.items()
                if isinstance(v, torch.Tensor) and v.dim() and v.shape[0] == size
            }

        def _batch(self, tensors: Mapping[str, torch.Tensor]) -> Batch:
            assert self._keys is not None
            # The target is a copy: safetensors refuses two names for one storage.
            return (*(tensors[k] for k in self._keys), tensors["labels"].clone())

        def _validation_from(self, raw: Any) -> Batch | None:
            if not isinstance(raw, Mapping):
                raise InputError(
                    "ObstacleTrainerCallback needs validation batches as dicts of tensors, like "
                    f"the training batches; got {type(raw).__name__}."
                )
            tensors = self._tensors(raw, "validation")
            if set(tensors) != set(self._keys or ()):
                raise InputError(
                    f"the validation batches hold {sorted(tensors)}, the training batches "
                    f"{sorted(self._keys or ())}"
                )
            return self._batch(tensors)

        def _validation(self) -> Batch | None:
            auto = isinstance(self.validation, str)
            source = self.validation
            if auto or _is_dataset(source):
                trainer = self._trainer
                dataset = trainer.eval_dataset if auto and trainer is not None else source
                if isinstance(dataset, Mapping):  # several eval datasets: the first
                    dataset = next(iter(dataset.values()), None)
                if trainer is None and not auto:
                    raise ParameterError(
                        "ObstacleTrainerCallback reads a validation= dataset through the "
                        "Trainer's eval dataloader, and found no Trainer calling it. Pass "
                        "batches (a DataLoader of dicts) instead."
                    )
                source = (
                    trainer.get_eval_dataloader(dataset)
                    if trainer is not None and dataset is not None
                    else None
                )
            return _validation_batch(
                source,
                self._validation_from,
                self.recorder.batches[0],
                auto=auto,
                who="ObstacleTrainerCallback",
            )

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
            self.recorder.capture(self._model, _own_loss, self._validation)
            step = self.recorder.step(state.global_step)
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
                step = self.recorder.step(state.global_step)
                self.recorder.train_log(step, lr=lr, loss=float(logs["loss"]))

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
            self._trainer = None
            self.recorder.finish("ObstacleTrainerCallback")

    return ObstacleTrainerCallback


def _calling_trainer() -> Any:
    """The ``transformers.Trainer`` whose training loop is calling this callback, if any.

    The Trainer hands callbacks its model, optimizer and dataloaders but not itself, and its
    eval dataloader is built only at evaluation; the callback needs ``get_eval_dataloader`` (which
    collates and drops columns the way evaluation does), so it finds the Trainer up the stack.
    """
    import transformers

    frame = inspect.currentframe()
    for _ in range(16):
        frame = frame.f_back if frame is not None else None
        if frame is None:
            break
        candidate = frame.f_locals.get("self")
        if isinstance(candidate, transformers.Trainer):
            return candidate
    return None


def _is_dataset(source: Any) -> bool:
    """A dataset of examples (read through the Trainer's eval dataloader), not of batches."""
    import torch

    if isinstance(source, torch.utils.data.DataLoader | Mapping | str) or source is None:
        return False
    return isinstance(source, torch.utils.data.Dataset) or type(source).__module__.startswith(
        "datasets."
    )


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
