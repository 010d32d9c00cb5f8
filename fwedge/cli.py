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
    "qat": ("fwedge.commands.qat", "Quantization-aware training: fine-tune with fake quantization, write the QDQ model."),
    "export": ("fwedge.commands.export", "Write a deployment bundle for a target (onnx, openvino, tflite, ncnn, C arches)."),
    "run": ("fwedge.commands.run", "Run a bundle on the host and measure its accuracy and fidelity."),
    "bench": ("fwedge.commands.bench", "Time bundles on random inputs on the host or a device: p50, p95, min, throughput."),
    "profile": ("fwedge.commands.profile", "Time each layer of bundles on a device in their own runtime: a table per bundle."),
    "diff": ("fwedge.commands.diff", "Name the first tensor where a bundle diverges from its reference model."),
    "farm": ("fwedge.commands.farm", "List devices and run bundles on the device farm."),
    "gate": ("fwedge.commands.gate", "Compare results with a baseline; exit 1 on a regression."),
    "report": ("fwedge.commands.report", "Write a self-contained HTML report and a Markdown summary."),
    "pipeline": ("fwedge.commands.pipeline", "Run a pipeline.toml: prune, distill, quantize, export, farm, gate, report."),
}


def _available(name: str) -> bool:
    return importlib.util.find_spec(COMMANDS[name][0]) is not None


def _set_log_level(ctx: click.Context, param: click.Parameter, value: int) -> None:
    """-v / -q given after the subcommand: they add to those given before it."""
    if not value or ctx.resilient_parsing:
        return
    root = ctx.find_root()
    state = root.meta.setdefault("fwedge.log", {"verbose": 0, "quiet": 0})
    state[param.name] += value
    configure_logging(state["verbose"], state["quiet"])


def _with_log_options(command: click.Command) -> click.Command:
    """Every subcommand (and a group's subcommands) takes -v/--verbose and -q/--quiet too, so
    they work wherever they are written (`fwedge export ... -v` as `fwedge -v export ...`), and
    ends its --help with examples (fwedge.commands.examples)."""
    from fwedge.commands.examples import epilog

    commands = command.commands.items() if isinstance(command, click.Group) else [("", command)]
    for sub, leaf in commands:
        leaf.epilog = leaf.epilog or epilog(f"{command.name} {sub}".strip())
        names = {opt for param in leaf.params for opt in getattr(param, "opts", [])}
        if "-v" in names or "-q" in names:
            continue
        leaf.params.append(click.Option(["-v", "--verbose"], count=True, expose_value=False, callback=_set_log_level,
                                        help="More log output (-v info, -vv debug)."))
        leaf.params.append(click.Option(["-q", "--quiet"], count=True, expose_value=False, callback=_set_log_level,
                                        help="Only errors in the log, and no progress bars."))
    return command


def configure_logging(verbose: int, quiet: int) -> None:
    """The log level from the -v and -q counts; -q also turns the progress bars off."""
    from fwedge import console

    level = logging.ERROR if quiet else logging.WARNING if verbose == 0 else \
        logging.INFO if verbose == 1 else logging.DEBUG
    root = logging.getLogger()
    if not root.handlers:
        logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
        _LOGGING["ours"] = True
    elif _LOGGING["ours"]:  # set up by an earlier call (-v after the subcommand); never another's handlers
        root.setLevel(level)
    console.QUIET = bool(quiet)


_LOGGING = {"ours": False}


class LazyGroup(click.Group):
    """A group that imports a subcommand's module only when that subcommand runs or shows help."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(name for name in COMMANDS if _available(name))

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name not in COMMANDS or not _available(name):
            return None
        module = importlib.import_module(COMMANDS[name][0])
        return _with_log_options(module.command)

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
@click.option("-q", "--quiet", count=True, help="Only errors in the log, and no progress bars.")
@click.pass_context
def cli(ctx: click.Context, verbose: int, quiet: int) -> None:
    """fwedge: compress trained ONNX models and ship them to edge devices.

    Prune, distill and quantize a model to INT8 with one set of scales; export ONNX, OpenVINO,
    LiteRT, NCNN and cross-compiled C bundles; validate them on host runtimes, QEMU boards and
    SSH boards; and gate CI on on-device accuracy and latency regressions.

    Exit codes: 0 success; 1 a gate regression (`fwedge gate`, `fwedge pipeline`); 2 unusable
    input, a usage error or a missing optional toolchain, with a one-line message; 3 `fwedge farm
    run` wrote its results but some runs failed; 130 interrupted.

    -v and -q may also follow the subcommand.
    """
    ctx.meta["fwedge.log"] = {"verbose": verbose, "quiet": quiet}
    configure_logging(verbose, quiet)


def main() -> None:
    """Console-script entry point."""
    try:
        cli(prog_name="fwedge")
    except KeyboardInterrupt:  # before a command runs (while click parses or imports it)
        click.echo("interrupted", err=True)
        sys.exit(EXIT_INTERRUPTED)


if __name__ == "__main__":
    sys.exit(main())
