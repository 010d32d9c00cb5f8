"""The fwedge command line: a click group whose subcommands are imported only when used."""
from __future__ import annotations

import importlib
import importlib.util
import logging
import sys

import click

from fwedge import __version__
from fwedge.errors import FwEdgeError, missing_dependency

# Exit codes: 0 success; 1 a failed gate (regression); 2 unusable input, usage or a missing
# toolchain; 3 `farm run` finished but some runs failed (their error results are in the file);
# 130 interrupted (Ctrl-C).
EXIT_GATE_FAILED = 1
EXIT_USAGE = 2
EXIT_RUNS_FAILED = 3
EXIT_INTERRUPTED = 130


def _one_line(exc: Exception) -> str:
    """An error message on one line (a CI log greps for it; a stray newline splits it)."""
    return " | ".join(line.strip() for line in str(exc).splitlines() if line.strip()) or type(exc).__name__

# name -> (module, short help). The short help lives here so that `fwedge --help` imports no
# command module, and through them no heavy toolchain (openvino, ai_edge_litert, ncnn, torch).
# A command whose module is not installed is not listed.
COMMANDS: dict[str, tuple[str, str]] = {
    "inspect": ("fwedge.commands.inspect", "Show inputs, ops, parameters, MACs and target support of a model."),
    "eval": ("fwedge.commands.evaluate", "Measure top-1 accuracy and fidelity of an ONNX model in onnxruntime."),
    "calibrate": ("fwedge.commands.calibrate", "Collect activation statistics and write a QuantTable (kl, percentile, minmax, mse)."),
    "quantize": ("fwedge.commands.quantize", "Calibrate and write an INT8 QDQ ONNX model, optionally within an accuracy budget."),
    "analyze": ("fwedge.commands.analyze", "Per-layer SQNR and cosine of a QDQ model against its float model, worst first."),
    "prune": ("fwedge.commands.prune", "Structured channel pruning or unstructured magnitude pruning."),
    "distill": ("fwedge.commands.distill", "Train a student ONNX model against a teacher (knowledge distillation)."),
    "export": ("fwedge.commands.export", "Write a deployment bundle for a target (onnx, openvino, tflite, ncnn, C arches)."),
    "run": ("fwedge.commands.run", "Run a bundle on the host and measure its accuracy and fidelity."),
    "diff": ("fwedge.commands.diff", "Name the first tensor where a bundle diverges from its reference model."),
    "farm": ("fwedge.commands.farm", "List devices and run bundles on the device farm."),
    "gate": ("fwedge.commands.gate", "Compare results with a baseline; exit 1 on a regression."),
    "report": ("fwedge.commands.report", "Write a self-contained HTML report and a Markdown summary."),
    "pipeline": ("fwedge.commands.pipeline", "Run a pipeline.toml: prune, distill, quantize, export, farm, gate, report."),
}


def _available(name: str) -> bool:
    return importlib.util.find_spec(COMMANDS[name][0]) is not None


class LazyGroup(click.Group):
    """A group that imports a subcommand's module only when that subcommand runs or shows help."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(name for name in COMMANDS if _available(name))

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name not in COMMANDS or not _available(name):
            return None
        module = importlib.import_module(COMMANDS[name][0])
        return module.command

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        rows = [(name, COMMANDS[name][1]) for name in self.list_commands(ctx)]
        with formatter.section("Commands"):
            formatter.write_dl(rows)

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except FwEdgeError as exc:
            click.echo(f"error: {_one_line(exc)}", err=True)
            ctx.exit(EXIT_USAGE)
        except ModuleNotFoundError as exc:
            missing = missing_dependency(exc)
            if missing is None:
                raise  # not an optional toolchain: a broken installation keeps its traceback
            click.echo(f"error: {missing}", err=True)
            ctx.exit(EXIT_USAGE)
        except KeyboardInterrupt:
            # click would turn this into "Aborted!" with exit 1, the code of a failed gate.
            click.echo("interrupted", err=True)
            ctx.exit(EXIT_INTERRUPTED)


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="fwedge")
@click.option("-v", "--verbose", count=True, help="More log output (-v info, -vv debug).")
def cli(verbose: int) -> None:
    """fwedge: compress trained ONNX models and ship them to edge devices.

    Prune, distill and quantize a model to INT8 with one set of scales; export ONNX, OpenVINO,
    LiteRT, NCNN and cross-compiled C bundles; validate them on host runtimes, QEMU boards and
    SSH boards; and gate CI on on-device accuracy and latency regressions.

    Exit codes: 0 success; 1 a gate regression (`fwedge gate`, `fwedge pipeline`); 2 unusable
    input, a usage error or a missing optional toolchain, with a one-line message; 3 `fwedge farm
    run` wrote its results but some runs failed; 130 interrupted.
    """
    level = logging.WARNING if verbose == 0 else logging.INFO if verbose == 1 else logging.DEBUG
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")


def main() -> None:
    """Console-script entry point."""
    try:
        cli(prog_name="fwedge")
    except KeyboardInterrupt:  # before a command runs (while click parses or imports it)
        click.echo("interrupted", err=True)
        sys.exit(EXIT_INTERRUPTED)


if __name__ == "__main__":
    sys.exit(main())
