"""``torchslim factorize``: a one-stage recipe (the ``factorize`` step) run by the pipeline."""

from __future__ import annotations

import contextlib
import sys
from pathlib import Path
from typing import Annotated

import typer

from torchslim._cli_options import DeviceOption, ModelArgument, ThreadsOption


def factorize_command(
    model: ModelArgument,
    out: Annotated[Path, typer.Option(help="Artifact directory to write.")],
    method: Annotated[
        str, typer.Option(help="svd | whitened (data-aware, Linear) | tucker2 | cp (Conv2d).")
    ] = "svd",
    rank: Annotated[int | None, typer.Option(min=1, help="One rank for every layer.")] = None,
    energy: Annotated[
        float | None, typer.Option(help="Per layer: keep this fraction of spectral energy.")
    ] = None,
    target: Annotated[
        str | None,
        typer.Option(
            help="params=R, macs=R or latency=R: the fraction removed (latency: of the dense "
            "model's, at --batch-size); ranks allocated."
        ),
    ] = None,
    allocation: Annotated[
        str,
        typer.Option(
            help="How --target is split among layers: uniform (one energy level) | sensitivity "
            "(a per-layer scan of the output error on calibration batches)."
        ),
    ] = "uniform",
    ignore: Annotated[
        list[str] | None, typer.Option(help="Layer names or re:patterns left whole.")
    ] = None,
    check_speed: Annotated[
        bool, typer.Option(help="Keep a layer whole where its factorization is measured slower.")
    ] = True,
    batch_size: Annotated[
        int | None, typer.Option(help="The batch a latency target is estimated at (default 1).")
    ] = None,
    latency_source: Annotated[
        str | None,
        typer.Option(
            help="How a latency target estimates each layer: measured (timed, default) | "
            "predicted (the profiler's latency model of this machine)."
        ),
    ] = None,
    overwrite: Annotated[bool, typer.Option(help="Replace a torchslim artifact at --out.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
    device: DeviceOption = "cpu",
    threads: ThreadsOption = None,
) -> None:
    """Low-rank factorization of MODEL's Linear (SVD, whitened SVD) or Conv2d (Tucker-2) layers.

    Example: torchslim factorize fashion-resnet20 --method tucker2 --target macs=0.5 --out r20-lr
    (add --allocation sensitivity to give sensitive layers larger ranks; --target latency=0.3
    --batch-size 16 to remove 30 % of the dense model's latency at batch 16)
    """
    import yaml

    from torchslim._devices import check_device
    from torchslim._outdir import check_out
    from torchslim.commands._render import print_outcome
    from torchslim.pipeline import parse_recipe
    from torchslim.pipeline.runner import RunOptions, compress
    from torchslim.zoo.options import ModelOptions, resolve_model

    check_out(out, overwrite)
    check_device(device)
    stage = {"step": "factorize", "method": method, "rank": rank, "energy": energy,
             "target": target, "allocation": allocation, "ignore": list(ignore or []),
             "check_speed": check_speed, "batch_size": batch_size,
             "latency_source": latency_source}  # fmt: skip
    stage = {k: v for k, v in stage.items() if v is not None}
    recipe = parse_recipe(yaml.safe_dump({"version": 1, "stages": [stage]}), "torchslim factorize")
    entry = resolve_model(model, ModelOptions())
    run = RunOptions(device, threads, technique=f"factorize {method}")
    with contextlib.redirect_stdout(sys.stderr) if as_json else contextlib.nullcontext():
        outcome = compress(entry, recipe, out, run)
    print_outcome(outcome, as_json)
