"""The command line that reproduces a result, rebuilt from what its folder recorded.

``bnlab d2l`` saves its parsed arguments (``config.json["argv"]``, argparse dest names);
``bnlab train`` saves its settings (model, norm, ``model_kwargs``, ``train``, ``data``,
``norm_options``); benchmarks save
their script name and argv. Lab experiments record their command themselves.
"""

from __future__ import annotations

import shlex
from collections.abc import Iterable, Mapping
from typing import Any

__all__ = ["argv_from_options", "bench_command", "d2l_command", "train_command"]

# ``config.json["norm_options"]`` keys whose flag is not the key with dashes.
_NORM_OPTION_FLAGS = {"momentum": "--bn-momentum", "eps": "--bn-eps"}
# Arguments that describe the invocation, not a setting to pass again.
_NOT_OPTIONS = frozenset({"command", "func", "parser", "resume", "overwrite", "no_progress"})


def argv_from_options(options: Mapping[str, Any], *, skip: Iterable[str] = ()) -> list[str]:
    """``--flag value`` pairs from argparse dests: True gives a bare flag, False and None
    give nothing, a list gives its values after one flag."""
    skipped = _NOT_OPTIONS | set(skip)
    argv: list[str] = []
    for key, value in options.items():
        if key in skipped or value is None or value is False:
            continue
        flag = "--" + key.replace("_", "-")
        if value is True:
            argv.append(flag)
        elif isinstance(value, list | tuple):
            argv += [flag, *(str(v) for v in value)]
        else:
            argv += [flag, str(value)]
    return argv


def d2l_command(config: Mapping[str, Any]) -> str | None:
    """``bnlab d2l ...`` from a d2l ``config.json`` (None without its ``argv``)."""
    options = config.get("argv")
    if not isinstance(options, dict):
        return None
    return shlex.join(["bnlab", "d2l", *argv_from_options(options)])


def train_command(config: Mapping[str, Any], out: str) -> str | None:
    """``bnlab train ...`` from a train ``config.json``; ``out`` is the results folder.

    Options at their defaults are written too, so the line does not depend on the
    defaults of a later bnlab. None when the config lacks model, norm or settings.
    """
    train = config.get("train")
    if not isinstance(train, dict) or "model" not in config or "norm" not in config:
        return None
    argv = ["bnlab", "train"]
    if config.get("preset"):
        # The preset also brings its model options; every other setting is explicit.
        argv += ["--preset", str(config["preset"])]
    argv += ["--model", str(config["model"]), "--norm", str(config["norm"])]
    kwargs = config.get("model_kwargs") or {}
    if config["model"] == "mlp" and "hidden" in kwargs:
        argv += ["--hidden", ",".join(str(h) for h in kwargs["hidden"])]
    if config["model"] == "mlp" and "norm_position" in kwargs:
        argv += ["--norm-position", str(kwargs["norm_position"])]
    if "activation" in kwargs:
        argv += ["--activation", str(kwargs["activation"])]
    argv += argv_from_options(train)
    norm_options = config.get("norm_options") or {}
    for key, value in norm_options.items():
        if value is not None:
            argv += [_NORM_OPTION_FLAGS.get(key, "--" + key.replace("_", "-")), str(value)]
    data = config.get("data") or {}
    argv += argv_from_options(
        {key: data.get(key) for key in ("resize", "limit_train", "limit_test")}
    )
    spread = config.get("distributed")
    if isinstance(spread, dict) and spread.get("world_size", 1) > 1:
        # The run's processes: the same settings over world_size processes.
        argv += ["--nproc", str(spread["world_size"])]
        if spread.get("sync_bn"):
            argv.append("--sync-bn")
    argv += ["--out", out]
    return shlex.join(argv)


def bench_command(config: Mapping[str, Any], script: str) -> str:
    """``python benchmarks/SCRIPT ...``: the saved ``argv`` list, or else the saved
    options (argparse dests) turned back into flags."""
    script = str(config.get("script") or script)
    argv = config.get("argv")
    args = [str(a) for a in argv] if isinstance(argv, list) else argv_from_options(config)
    return shlex.join(["python", f"benchmarks/{script}", *args])
