"""The Python API: the chapter, a training run and a lab experiment in one call each.

For notebooks and scripts; the command line (``bnlab.cli``) does the same from a shell.
Every call finds Fashion-MNIST itself, the way the command line does: the ``data_dir``
argument, else the environment variable ``BNLAB_DATA_DIR``, else the user cache
(``$XDG_CACHE_HOME/bnlab/fashion-mnist`` or ``~/.cache/bnlab/fashion-mnist``), else a
download into that cache. Reading the environment is a side effect the library layers
below never have; like ``bnlab.cli``, this top layer may. Every call draws a progress bar
(an HTML bar in Jupyter, rich's on stderr elsewhere) and returns a result that shows its
table, verdicts and figures inline in Jupyter (``bnlab.api.results``).

    >>> import bnlab
    >>> train_iter, test_iter = bnlab.api.load_data_fashion_mnist(256)   # d2l's loader
    >>> bnlab.d2l.run(epochs=10)                                         # the chapter
    >>> bnlab.api.train("lenet", "bnlab", activation="relu", lr=0.05, momentum=0.9,
    ...                 lr_schedule="cosine", batch_size=128)           # one run
    >>> bnlab.api.lab("ics", quick=True)                                 # one experiment

Each call writes its run folder (``out``; a new temporary folder when not given), the
same files as the command line, so ``bnlab report`` reads them too.
"""

from __future__ import annotations

import math
import os
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from bnlab import models
from bnlab.api._progress import Bar, in_notebook
from bnlab.api.results import D2LResult, LabResult, TrainResult
from bnlab.cli._run_files import run_environment
from bnlab.cli.data import data_dir_from_env
from bnlab.data import DeviceLoader
from bnlab.data.iterators import load_data_fashion_mnist as _load_data
from bnlab.data.iterators import load_splits, split_loaders
from bnlab.lab.d2l import VARIANTS, D2LConfig, run_d2l
from bnlab.lab.experiment import config_from, get_lab, run_lab
from bnlab.models.norm_options import NormOptions
from bnlab.plots.d2l import plot_d2l_curves
from bnlab.plots.training import plot_training_curves
from bnlab.train import StepInfo, TrainConfig, fit, reaches
from bnlab.train.run_dir import RunDir

__all__ = [
    "D2LResult",
    "LabResult",
    "NormOptions",
    "TrainResult",
    "d2l",
    "find_data_dir",
    "in_notebook",
    "lab",
    "load_data_fashion_mnist",
    "train",
]


def find_data_dir(data_dir: str | os.PathLike[str] | None = None, *, download: bool = True) -> Path:
    """The verified Fashion-MNIST folder: ``data_dir``, ``$BNLAB_DATA_DIR``, the user
    cache, else a download into the cache (``bnlab data where`` prints the same)."""
    return Path(data_dir_from_env(data_dir, download=download))


def load_data_fashion_mnist(
    batch_size: int,
    resize: int | None = None,
    *,
    data_dir: str | os.PathLike[str] | None = None,
    device: str = "cpu",
    seed: int = 0,
    limit_train: int | None = None,
    limit_test: int | None = None,
) -> tuple[DeviceLoader, DeviceLoader]:
    """d2l's ``train_iter, test_iter = load_data_fashion_mnist(batch_size, resize)``.

    Finds the folder as the module says, then ``bnlab.data.load_data_fashion_mnist``:
    two ``DeviceLoader`` yielding float32 ``(B, 1, H, W)`` images in [0, 1] and int64
    labels, the training set reshuffled each epoch from ``(seed, epoch)``.
    """
    folder = find_data_dir(data_dir)
    return _load_data(
        batch_size,
        resize,
        data_dir=folder,
        device=device,
        seed=seed,
        limit_train=limit_train,
        limit_test=limit_test,
    )


def _out(out: str | os.PathLike[str] | None, prefix: str) -> Path:
    return Path(out) if out is not None else Path(tempfile.mkdtemp(prefix=f"bnlab-{prefix}-"))


def train(
    model: str = "lenet",
    norm: str = "bnlab",
    *,
    epochs: int = 10,
    batch_size: int = 256,
    lr: float = 1.0,
    momentum: float = 0.0,
    weight_decay: float = 0.0,
    lr_schedule: str = "constant",
    init: str = "xavier_uniform",
    precision: str = "32",
    seed: int = 0,
    device: str = "cpu",
    activation: str | None = None,
    model_kwargs: Mapping[str, Any] | None = None,
    norm_options: NormOptions | Mapping[str, Any] | None = None,
    resize: int | None = None,
    limit_train: int | None = None,
    limit_test: int | None = None,
    data_dir: str | os.PathLike[str] | None = None,
    out: str | os.PathLike[str] | None = None,
    progress: bool = True,
    target_acc: float | None = None,
) -> TrainResult:
    """Train one model on Fashion-MNIST, as ``bnlab train`` does, and return the result.

    Args:
        model, norm: names from ``bnlab.models.available()`` and ``available_norms()``.
        epochs, batch_size, lr, momentum, weight_decay, lr_schedule, init, precision,
            seed, device: the ``TrainConfig`` (d2l's recipe by default: SGD, lr 1.0).
        activation: ``"sigmoid"``, ``"relu"`` or ``"tanh"`` for lenet and mlp.
        model_kwargs: other options of the model (``hidden=[100]`` for mlp, ...).
        norm_options: ``NormOptions`` (or its keyword arguments): BN momentum and eps,
            renorm bounds and warm-up, ghost virtual batch size.
        resize: resize the images to this side (96 for d2l's ResNet-18).
        limit_train, limit_test: use the first N images of a split.
        data_dir: the data folder (see the module doc).
        out: the run folder (a new temporary one by default); it must not hold a run.
        progress: draw a progress bar.
        target_acc: stop after the first epoch whose test accuracy is at least this
            (``bnlab train --target-acc``); ``results.json`` then says when
            (``target``, also ``result.fit.target(target_acc)``).

    Returns:
        A ``TrainResult`` (history, final metrics, the trained model, the curves).

    Raises:
        ValueError, TypeError: a bad setting (the message names it); FileExistsError:
            ``out`` already holds a run.
    """
    kwargs = dict(model_kwargs or {})
    if activation is not None:
        kwargs["activation"] = activation
    options = (
        norm_options
        if isinstance(norm_options, NormOptions)
        else NormOptions(**dict(norm_options or {}))
    )
    config = TrainConfig(
        lr=lr,
        epochs=epochs,
        batch_size=batch_size,
        seed=seed,
        momentum=momentum,
        weight_decay=weight_decay,
        device=device,
        init=init,
        precision=precision,
        lr_schedule=lr_schedule,
    )
    folder = find_data_dir(data_dir)
    tensors = load_splits(folder, limit_train=limit_train, limit_test=limit_test)
    train_iter, test_iter = split_loaders(
        tensors, batch_size, seed=seed, device=device, resize=resize
    )
    torch.manual_seed(seed)  # construction-time init, as bnlab train
    net = models.create(model, norm=norm, **kwargs)
    options.apply(net, norm)
    warmup = options.warmup(net, len(train_iter) * epochs)

    run_config: dict[str, Any] = {
        "command": "train",
        "preset": None,
        "model": model,
        "norm": norm,
        "model_kwargs": kwargs,
        "train": config.to_dict(),
        "data": {
            "dataset": "fashion-mnist",
            "data_dir": str(folder),
            "limit_train": limit_train,
            "limit_test": limit_test,
            "resize": resize,
            "train_samples": len(tensors["train_labels"]),
            "test_samples": len(tensors["test_labels"]),
            "test_batch_size": batch_size,
        },
    }
    if options.to_dict():
        run_config["norm_options"] = options.to_dict()
    if target_acc is not None:
        if not 0.0 <= target_acc <= 1.0:
            raise ValueError(f"train: target_acc must be in [0, 1], got {target_acc}")
        run_config["target_acc"] = target_acc
    out_dir = _out(out, "train")
    run = RunDir(out_dir)
    run.ensure()
    existing = run.existing(("checkpoint.pt", "results.json"))
    if existing:
        raise FileExistsError(
            f"{out_dir} already holds a run ({', '.join(existing)}); choose another folder"
        )
    run.write_config(run_config)
    run.write_environment(run_environment(device))

    bar = Bar(progress)
    steps = len(train_iter)

    def on_step(info: StepInfo) -> None:
        if warmup is not None:
            warmup(info.step)
        if info.batch == 1:
            bar.start(steps, f"epoch {info.epoch}/{epochs}")
        bar.update(info.batch, info.loss)

    try:
        result = fit(
            net,
            train_iter,
            test_iter,
            config,
            run_dir=out_dir,
            on_step=on_step,
            on_start=warmup,
            stop_when=None if target_acc is None else reaches(target_acc),
        )
    finally:
        bar.close()
    net.eval()
    results = {**result.to_dict(), "config": run_config}
    if target_acc is not None:
        results["target"] = result.target(target_acc)
    run.write_results(results)
    curves = plot_training_curves(
        result.history,
        f"{model} + {norm} on Fashion-MNIST (batch {batch_size}, lr {lr:g})",
        out_dir / "curves.png",
    )
    return TrainResult(out=out_dir, figure_paths=[curves], config=run_config, fit=result, model=net)


def d2l(
    epochs: int = 10,
    *,
    seeds: int = 1,
    variants: Sequence[str] = tuple(VARIANTS),
    batch_size: int = 256,
    recalibrate_batches: int = 40,
    device: str = "cpu",
    limit_train: int | None = None,
    limit_test: int | None = None,
    data_dir: str | os.PathLike[str] | None = None,
    out: str | os.PathLike[str] | None = None,
    resume: bool = False,
    progress: bool = True,
) -> D2LResult:
    """The d2l batch-norm chapter's experiment, as ``bnlab d2l`` runs it.

    LeNet without BN (lr 0.9), with d2l's textbook BN, bnlab's and torch's (lr 1.0),
    ``epochs`` epochs of batch ``batch_size`` per seed (seeds 0..``seeds``-1). The whole
    chapter (10 epochs, 4 variants) takes about 7 minutes on 2 CPU cores; a small
    budget (``epochs=1, limit_train=6000``) a few seconds per variant.

    Returns:
        A ``D2LResult``: the summary (per-variant metrics, the book's numbers,
        verdicts), the curves; in a notebook it shows its table and figure.
    """
    config = D2LConfig(
        epochs=epochs,
        batch_size=batch_size,
        seeds=tuple(range(seeds)),
        variants=tuple(variants),
        recalibrate_batches=recalibrate_batches,
        device=device,
    )
    folder = find_data_dir(data_dir)
    data = load_splits(folder, limit_train=limit_train, limit_test=limit_test)
    out_dir = _out(out, "d2l")
    # The options as bnlab d2l's argparse names them: the report rebuilds the command.
    argv = {
        "command": "d2l",
        "out": str(out_dir),
        "data_dir": str(data_dir) if data_dir is not None else None,
        "epochs": epochs,
        "seeds": seeds,
        "variants": list(variants),
        "batch_size": batch_size,
        "recalibrate_batches": recalibrate_batches,
        "device": device,
        "threads": None,
        "limit_train": limit_train,
        "limit_test": limit_test,
        "resume": resume,
    }
    steps = math.ceil(len(data["train_labels"]) / batch_size) * epochs
    bar = Bar(progress)
    try:
        summary = run_d2l(
            data,
            config,
            out_dir,
            resume=resume,
            argv=argv,
            environment=run_environment(device),
            on_run_start=lambda variant, seed: bar.start(steps, f"{variant} seed {seed}"),
            on_step=lambda info: bar.update(info.step, info.loss),
        )
    finally:
        bar.close()
    figure = plot_d2l_curves(summary, out_dir / "d2l_curves.png")
    return D2LResult(
        out=out_dir,
        figure_paths=[figure],
        summary=summary,
        train_images=len(data["train_labels"]),
    )


def lab(
    name: str,
    *,
    quick: bool = False,
    seeds: int | None = None,
    settings: Mapping[str, Any] | None = None,
    device: str = "cpu",
    data_dir: str | os.PathLike[str] | None = None,
    out: str | os.PathLike[str] | None = None,
    resume: bool = False,
    progress: bool = True,
) -> LabResult:
    """Run the lab experiment ``name``, as ``bnlab lab NAME`` does.

    Args:
        name: one of ``bnlab lab --list`` (``"ics"``, ``"lr-sweep"``, ...).
        quick: the small configuration the tests use (seconds to a minute); its
            verdicts decide nothing and say so.
        seeds: the number of seeds (overrides the setting).
        settings: other settings by name (``bnlab lab NAME --help`` lists them).
        device, data_dir, out, resume, progress: as for ``train``.

    Returns:
        A ``LabResult``: ``results.json`` (tables, verdicts, raw numbers) and figures.

    Raises:
        ValueError: an unknown experiment or setting (the message lists them).
    """
    import bnlab.lab  # noqa: F401  (registers every experiment)

    spec = get_lab(name)
    overrides = {k: str(v) for k, v in (settings or {}).items()}
    if seeds is not None:
        overrides["seeds"] = str(seeds)
    config = config_from(spec, quick=quick, overrides=overrides)
    data = load_splits(find_data_dir(data_dir)) if spec.needs_data else None
    out_dir = _out(out, name)
    words = ["bnlab", "lab", name, "--out", str(out_dir)] + (["--quick"] if quick else [])
    for key, value in overrides.items():
        words += ["--set", f"{key}={value}"]
    bar = Bar(progress)
    try:
        results = run_lab(
            spec,
            config,
            out_dir,
            data=data,
            device=device,
            progress=bar,
            resume=resume,
            command=" ".join(words),
            environment=run_environment(device),
            quick=quick,
        )
    finally:
        bar.close()
    figures = [out_dir / f["file"] for f in results.get("figures", [])]
    return LabResult(out=out_dir, figure_paths=figures, results=results)
