"""`fwedge distill --teacher T.onnx --student S.onnx --data DATA -o OUT`."""
from __future__ import annotations

import click

from fwedge.commands.options import data_option, emit_json, json_option, preprocess_option, text_console

# The training options distill and qat share (DistillOptions fields), as click parameter names.
TRAINING_PARAMETERS = ("labels", "epochs", "temperature", "alpha", "lr", "weight_decay", "batch_size", "limit",
                       "seed", "features", "feature_weight", "flip", "shift", "threads", "checkpoint_dir", "resume")


def _parse_pair(text: str) -> tuple[str, str]:
    student, _, teacher = text.partition("=")
    if not student or not teacher:
        raise click.BadParameter(f"expected STUDENT_TENSOR=TEACHER_TENSOR, got {text!r}")
    return student, teacher


def training_options(epochs: int, lr: float, bn: bool = True):
    """The training options of distill and qat (their defaults of --epochs and --lr differ;
    qat has no --bn: its model has its BatchNormalization folded)."""
    options = [
        click.option("--labels/--no-labels", default=True, show_default=True,
                     help="Add cross-entropy on the data's hard labels (when it has labels)."),
        click.option("--epochs", type=int, default=epochs, show_default=True),
        click.option("--temperature", type=float, default=4.0, show_default=True, help="Soft-target temperature T."),
        click.option("--alpha", type=float, default=0.5, show_default=True,
                     help="Weight of the hard-label loss; the soft-target loss gets 1 - alpha."),
        click.option("--lr", type=float, default=lr, show_default=True, help="Peak Adam learning rate (cosine decay)."),
        click.option("--weight-decay", type=float, default=0.0, show_default=True),
        click.option("--batch-size", type=int, default=128, show_default=True, help="Training batch size."),
        click.option("--limit", type=int, help="Train on a seeded random subset of this many samples."),
        click.option("--seed", type=int, default=0, show_default=True, help="Seed of the training order and subset."),
        *([click.option("--bn", "bn_mode", type=click.Choice(["train", "frozen"]), default="train", show_default=True,
                        help="BatchNormalization: batch statistics while training (running stats updated) or "
                             "frozen.")] if bn else []),
        click.option("--feature", "features", multiple=True, metavar="S=T",
                     callback=lambda c, p, v: [_parse_pair(t) for t in v],
                     help="Feature-map MSE between student tensor S and teacher tensor T (same shape). Repeatable."),
        click.option("--feature-weight", type=float, default=1.0, show_default=True),
        click.option("--flip/--no-flip", default=False, show_default=True,
                     help="Random horizontal flips of the training images (NCHW), teacher and student alike."),
        click.option("--shift", type=int, default=0, show_default=True,
                     help="Random shifts of the training images by up to this many pixels (zero fill); 0 = off."),
        click.option("--val-data", help="Labelled data to report accuracy on after each epoch (e.g. fashion-mnist:test)."),
        click.option("--val-limit", type=int, help="A seeded subset of the validation data."),
        click.option("--threads", type=int, help="torch threads (results are reproducible for a fixed count)."),
        click.option("--checkpoint", "checkpoint_dir", type=click.Path(file_okay=False),
                     help="Write a checkpoint here after every epoch."),
        click.option("--resume", is_flag=True, help="Continue from the checkpoint in --checkpoint."),
    ]

    def decorate(function):
        for option in reversed(options):
            function = option(function)
        return function

    return decorate


def distill_options(params: dict, bn_mode: str = "train"):
    """DistillOptions from the training options' click parameters (TRAINING_PARAMETERS)."""
    from fwedge.passes.distill import DistillOptions

    values = {name: params[name] for name in TRAINING_PARAMETERS}
    values["use_labels"] = values.pop("labels")
    values["feature_pairs"] = tuple(values.pop("features"))
    return DistillOptions(bn_mode=bn_mode, **values)


def epoch_printer(json_out):
    """A function that prints one EpochStats line (to standard error under --json -)."""

    def show(stats) -> None:
        parts = [f"epoch {stats.epoch}/{stats.epochs}", f"loss {stats.loss:.4f}"]
        if stats.train_accuracy is not None:
            parts.append(f"train acc {100 * stats.train_accuracy:.2f}%")
        if stats.val_accuracy is not None:
            parts.append(f"val acc {100 * stats.val_accuracy:.2f}%")
        parts.append("(from checkpoint)" if stats.resumed else f"{stats.seconds:.1f}s")
        text_console(json_out).print("  ".join(parts))

    return show


@click.command("distill")
@click.option("--teacher", type=click.Path(dir_okay=False),
              help="Teacher ONNX model (run by onnxruntime). Without it: fine-tuning on hard labels.")
@click.option("--student", required=True, type=click.Path(dir_okay=False), help="Student ONNX model to train.")
@data_option(required=True, help_text="Training data: fashion-mnist:train, image folder, .npz, IDX.")
@training_options(epochs=5, lr=1e-3)
@preprocess_option()
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False), help="Trained student path.")
@json_option("the epoch history")
def command(teacher, student, data, val_data, val_limit, bn_mode, preprocess, output, json_out, **training) -> None:
    """Train STUDENT's weights against TEACHER (Hinton knowledge distillation) and write OUT.

    Loss: alpha * CE(labels) + (1 - alpha) * T^2 * KL(teacher/T || student/T) + feature MSE.
    The student's ONNX graph runs with torch ops and its trained weights are written back into
    the same graph, so node and tensor names are kept. Needs torch: pip install 'fwedge[distill]'.
    """
    from dataclasses import asdict

    from fwedge import ir
    from fwedge.console import progress, stdout
    from fwedge.data import open_dataset
    from fwedge.passes.distill import distill

    dataset = open_dataset(data)
    options = distill_options(training, bn_mode)
    student_model = ir.load(student)
    teacher_model = ir.load(teacher) if teacher else None
    val_dataset = open_dataset(val_data) if val_data else None
    samples = options.limit or dataset.num_samples

    with progress(samples * options.epochs, "distilling" if teacher else "fine-tuning") as advance:
        result = distill(student_model, teacher_model, dataset, options, preprocess=preprocess,
                         val_dataset=val_dataset, val_limit=val_limit, on_epoch=epoch_printer(json_out),
                         on_batch=advance)
    ir.save(result.model, output)
    if emit_json(json_out, [asdict(stats) for stats in result.history]):
        return
    stdout.print(f"{output}: trained {result.samples} samples x {options.epochs} epochs"
                 + (f" (resumed after epoch {result.resumed_from_epoch})" if result.resumed_from_epoch else ""))
