"""One CLI vocabulary: sample-count names, --json FILE, and the README's command table, pinned for every command."""
from __future__ import annotations

import json
import re
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from fwedge.cli import cli

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "fashion_mnist" / "cnn_small.onnx"

# --num-samples: samples used for calibration. --limit: samples a command reads from its --data;
# --eval-limit / --val-limit: from --eval-data / --val-data.
SAMPLE_COUNTS = {
    "analyze": {"--limit"}, "calibrate": {"--num-samples"}, "quantize": {"--num-samples", "--eval-limit"},
    "eval": {"--limit"}, "run": {"--limit"}, "diff": {"--limit"}, "farm run": {"--limit"},
    "distill": {"--limit", "--val-limit"}, "qat": {"--num-samples", "--limit", "--val-limit"},
}
# Commands whose -o output is itself the JSON (a QuantTable, farm results) or HTML file have no --json.
WITHOUT_JSON = {"calibrate", "farm run", "report"}
# --input-shape wherever a model is read (run, diff and farm run: the reference's, checked against
# the bundle's input). distill trains torch modules whose shapes follow the data, and has none.
INPUT_SHAPE = {"analyze", "calibrate", "quantize", "export", "inspect", "eval", "run", "diff", "farm run", "qat"}
RENAMED = [("analyze", ["a.onnx", "b.onnx"], "--num-samples", "--limit"),
           ("quantize", ["a.onnx", "-o", "b.onnx"], "--eval-samples", "--eval-limit")]


def _commands() -> dict[str, click.Command]:
    ctx = click.Context(cli)
    found = {}

    def walk(group: click.Group, prefix: str) -> None:
        for name in group.list_commands(ctx):
            command = group.get_command(ctx, name)
            full = f"{prefix} {name}".strip()
            if isinstance(command, click.Group):
                walk(command, full)
            else:
                found[full] = command

    walk(cli, "")
    return found


def _options(command: click.Command, hidden: bool = False) -> dict[str, click.Option]:
    return {name: param for param in command.params if isinstance(param, click.Option)
            and (hidden or not param.hidden) for name in param.opts + param.secondary_opts}


def test_sample_count_options_have_one_name_per_meaning():
    commands = _commands()
    seen = {}
    for name, command in commands.items():
        counts = {opt for opt in _options(command) if re.search(r"samples|limit", opt)}
        if counts:
            seen[name] = counts
    assert seen == SAMPLE_COUNTS


@pytest.mark.parametrize("name", sorted(set(_commands()) - WITHOUT_JSON))
def test_json_means_a_file_everywhere(name):
    """--json FILE in every command that reports something; '-' is standard output."""
    option = _options(_commands()[name]).get("--json")
    assert option is not None, f"fwedge {name} has no --json FILE"
    assert not option.is_flag and option.metavar == "FILE"
    assert isinstance(option.type, click.Path) and option.type.allow_dash and not option.type.dir_okay
    assert "'-'" in option.help


def test_input_shape_and_preprocess_mean_one_thing_everywhere():
    """--input-shape NAME=D0,D1,... (repeatable, one parser) and --preprocess JSON on every
    command that reads --data (and on export, which records it)."""
    commands = _commands()
    assert {name for name, command in commands.items() if "--input-shape" in _options(command)} == INPUT_SHAPE
    for name in INPUT_SHAPE:
        option = _options(commands[name])["--input-shape"]
        assert option.multiple and option.metavar == "NAME=D0,D1,..." and option.name == "input_shapes", name
    with_data = {name for name, command in commands.items() if "--data" in _options(command)}
    assert {name for name, command in commands.items() if "--preprocess" in _options(command)} == with_data | {"export"}
    for args in (["x=1,3,a"], ["x"], ["x=0,3"], ["x=1,3", "x=1,4"]):
        result = CliRunner().invoke(cli, ["inspect", str(EXAMPLE), *[f"--input-shape={a}" for a in args]])
        assert result.exit_code == 2 and "--input-shape" in result.output, (args, result.output)


def test_output_is_the_file_a_command_writes_and_output_name_a_model_output():
    commands = _commands()
    for name, command in commands.items():
        option = _options(command).get("--output")
        if option is not None:
            assert isinstance(option.type, click.Path) and "-o" in option.opts, f"fwedge {name} --output is not a file"
    assert {name for name, command in commands.items() if "--output-name" in _options(command)} == {
        "eval", "run", "farm run"}


def test_commands_without_json_are_the_listed_ones():
    assert {name for name, command in _commands().items() if "--json" not in _options(command)} == WITHOUT_JSON


def test_json_dash_prints_only_json_and_a_file_keeps_the_text(tmp_path):
    alone = CliRunner().invoke(cli, ["inspect", str(EXAMPLE), "--json", "-"])
    assert alone.exit_code == 0, alone.output
    assert json.loads(alone.output)["parameters"] > 0
    written = CliRunner().invoke(cli, ["inspect", str(EXAMPLE), "--json", str(tmp_path / "s.json")])
    assert written.exit_code == 0 and "learnable parameters" in written.output
    assert json.loads((tmp_path / "s.json").read_text())["path"] == str(EXAMPLE)
    bare = CliRunner().invoke(cli, ["inspect", str(EXAMPLE), "--json"])
    assert bare.exit_code == 2 and "--json" in bare.output


@pytest.mark.parametrize("command, arguments, old, new", RENAMED)
def test_old_sample_spellings_are_hidden_aliases(command, arguments, old, new):
    options = _options(_commands()[command], hidden=True)
    assert options[old].hidden and not options[new].hidden
    assert old not in CliRunner().invoke(cli, [command, "--help"]).output
    both = CliRunner().invoke(cli, [command, *arguments, "--data", "d", old, "3", new, "3"])
    assert both.exit_code == 2 and f"not both {new} and {old}" in both.output


def test_analyze_old_spelling_still_works(tmp_path):
    """--num-samples sets analyze's --limit, with a note, for one release."""
    from fwedge.quantization import quantize

    data = tmp_path / "d.npz"
    import numpy as np

    rng = np.random.default_rng(0)
    np.savez(data, x=rng.random((40, 1, 28, 28), dtype=np.float32), y=rng.integers(0, 10, 40))
    qdq = tmp_path / "q.onnx"
    import onnx

    onnx.save(quantize(str(EXAMPLE), str(data), "minmax", 16).model, qdq)
    result = CliRunner().invoke(cli, ["analyze", str(EXAMPLE), str(qdq), "--data", str(data), "--num-samples", "7",
                                      "--json", str(tmp_path / "a.json")])
    assert result.exit_code == 0, result.output
    assert "note: --num-samples is now called --limit" in result.output
    assert json.loads((tmp_path / "a.json").read_text())["samples"] == 7


def test_readme_command_table_matches_help():
    """Every command has a row in README's table, and every option a row shows is one of its --help."""
    readme = (ROOT / "README.md").read_text()
    table = readme[readme.index("## Commands"):]
    table = table[:table.index("\n\n", table.index("|---"))]
    rows = re.findall(r"^\| `fwedge ([a-z]+(?: (?:list|run))?)\b([^`]*)` \|", table, re.M)
    commands = _commands()
    assert {name for name, _ in rows} == set(commands)
    for name, usage in rows:
        options = _options(commands[name])
        shown = set(re.findall(r"(?<![\w-])(--?[a-z][a-z0-9-]*)", usage))
        unknown = sorted(opt for opt in shown if opt not in options)
        assert not unknown, f"README shows fwedge {name} {unknown}, which its --help does not list"


def test_pipeline_keys_follow_the_cli_names():
    """[analyze] limit and [quantize] eval_limit, as the CLI says; the old keys still read, not both."""
    from fwedge.errors import PipelineError
    from fwedge.pipeline_config import AnalyzeSettings, QuantizeSettings, parse_section

    assert parse_section(AnalyzeSettings, {"limit": 9}, "[analyze]").limit == 9
    assert parse_section(AnalyzeSettings, {"num_samples": 9}, "[analyze]").limit == 9
    assert parse_section(QuantizeSettings, {"eval_samples": 7}, "[quantize]").eval_limit == 7
    with pytest.raises(PipelineError, match=r"\[quantize\]: give eval_limit, not both eval_limit and eval_samples"):
        parse_section(QuantizeSettings, {"eval_samples": 7, "eval_limit": 8}, "[quantize]")


@pytest.mark.parametrize("argv, info", [
    (["inspect", str(EXAMPLE), "-v"], True),
    (["-v", "inspect", str(EXAMPLE)], True),
    (["-v", "inspect", str(EXAMPLE), "-q"], False),
    (["inspect", str(EXAMPLE)], False),
])
def test_verbose_and_quiet_work_after_the_subcommand(argv, info):
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-m", "fwedge", *argv], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert ("INFO fwedge." in done.stderr) == info, done.stderr


def test_every_command_takes_verbose_and_quiet():
    for name, command in _commands().items():
        assert {"-v", "-q"} <= set(_options(command)), name


def test_a_second_device_after_a_space_is_named_as_such(tmp_path):
    """`--devices host qemu-aarch64` would read qemu-aarch64 as a bundle; the error says what to write."""
    result = CliRunner().invoke(cli, ["farm", "run", str(tmp_path), "--devices", "host", "host", "--data", "d",
                                      "-o", str(tmp_path / "r.json")])
    assert result.exit_code == 2
    assert "'host' is a device name, not a bundle folder" in result.output and "--devices a,host" in result.output


@pytest.mark.parametrize("name", sorted(_commands()))
def test_every_help_ends_with_examples_that_parse(name):
    """Two or three examples per command in --help, each a command line its own parser accepts."""
    import shlex

    from fwedge.commands.examples import EXAMPLES

    command = _commands()[name]
    examples = EXAMPLES[name]
    assert 2 <= len(examples) <= 3
    shown = CliRunner().invoke(cli, [*name.split(), "--help"]).output
    prefix = ["fwedge", *name.split()]
    for example in examples:
        assert example in shown, f"fwedge {name} --help does not show: {example}"
        argv = shlex.split(example)
        assert argv[:len(prefix)] == prefix, example
        with command.make_context(name, argv[len(prefix):]) as ctx:  # parses and checks; runs nothing
            assert ctx.params is not None


def test_tables_keep_whole_names_when_stdout_is_not_a_terminal(tmp_path):
    """A CI log gets whole tensor names, not rich's 80-column fallback with ellipses."""
    import os
    import subprocess
    import sys

    import numpy as np
    import onnx

    from fwedge.quantization import quantize

    model = ROOT / "examples" / "fashion_mnist" / "mobilenet_v2_tiny.onnx"
    data = tmp_path / "d.npz"
    np.savez(data, x=np.random.default_rng(0).random((16, 1, 28, 28), dtype=np.float32))
    onnx.save(quantize(str(model), str(data), "minmax", 16).model, tmp_path / "q.onnx")
    env = {key: value for key, value in os.environ.items() if key != "COLUMNS"}
    done = subprocess.run([sys.executable, "-m", "fwedge", "analyze", str(model), str(tmp_path / "q.onnx"),
                           "--data", str(data), "--limit", "8", "--top", "40"],
                          capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0, done.stderr
    assert "…" not in done.stdout
    assert re.search(r"/features/features\.\d+/block/block\.\d+/\w+_output_0 ", done.stdout)


@pytest.mark.parametrize("model, expected", [
    ("build/model.int8.onnx", "model-aarch64-int8"), ("m.QDQ.onnx", "m-aarch64-int8"),
    ("cnn_small.onnx", "cnn_small-aarch64-int8"), (".int8.onnx", ".int8-aarch64-int8"),
])
def test_bundle_names_do_not_repeat_the_precision(model, expected):
    from fwedge.export import bundle_name

    assert bundle_name(model, "aarch64", "int8") == expected


# What each pipeline section leaves out of its command's options, and why: the pipeline supplies
# it (models, data, files, the stage before), or it only shapes what is printed. export's int8
# and fp16: the pipeline exports the int8 model its quantize stage wrote.
SUPPLIED = {
    "quantize": {"model", "data", "eval_data", "output", "table", "save_table", "json_out"},
    "analyze": {"float_model", "qdq_model", "data", "input_shapes", "top", "json_out"},
    "export": {"model", "output", "int8", "fp16", "no_build", "reference", "json_out"},
    "farm run": {"bundles", "data", "reference", "input_shapes", "output", "inventory"},
    "gate": {"results_path", "update_baseline", "allow_missing_baseline", "json_out"},
    "prune": {"model", "output", "json_out"},
}
# CLI destination -> section key where they are spelled differently.
SPELLED = {"input_shapes": "input_shape", "per_tensor": "per_channel", "device_names": "devices",
           "global_scope": "scope", "macs_fraction": "macs", "keep_float": "keep_float"}


@pytest.mark.parametrize("command, section", [("quantize", "QuantizeSettings"), ("analyze", "AnalyzeSettings"),
                                              ("export", "ExportSettings"), ("farm run", "FarmSettings"),
                                              ("gate", "GateSettings"), ("prune", "PruneSettings")])
def test_every_option_of_a_stage_command_has_its_pipeline_key(command, section):
    """README: every option of a stage's CLI command can be set in its section."""
    import dataclasses

    from fwedge import pipeline_config

    keys = {field.name for field in dataclasses.fields(getattr(pipeline_config, section))}
    options = {param.name for param in _commands()[command].params
               if isinstance(param, click.Option) and not param.hidden and param.name not in ("verbose", "quiet")}
    missing = sorted(SPELLED.get(name, name) for name in options - SUPPLIED[command]
                     if SPELLED.get(name, name) not in keys)
    assert not missing, f"[{section}] has no key for fwedge {command} {missing}"
