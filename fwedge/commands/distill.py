"""`fwedge distill --teacher T.onnx --student S.onnx --data DATA -o OUT`."""
from __future__ import annotations

import click

from fwedge.commands.options import data_option, emit_json, json_option, preprocess_option, text_console


def _parse_pair(text: str) -> tuple[str, str]:
    student, _, teacher = text.partition("=")
    if not student or not teacher:
        raise click.BadParameter(f"expected STUDENT_TENSOR=TEACHER_TENSOR, got {text!r}")
    return student, teacher


@click.command("distill")
@click.option("--teacher", type=click.Path(dir_okay=False),
              help="Teacher ONNX model (run by onnxruntime). Without it: fine-tuning on hard labels.")
@click.option("--student", required=True, type=click.Path(dir_okay=False), help="Student ONNX model to train.")
@data_option(required=True, help_text="Training data: fashion-mnist:train, image folder, .npz, IDX.")
@click.option("--labels/--no-labels", default=True, show_default=True,
              help="Add cross-entropy on the data's hard labels (when it has labels).")
@click.option("--epochs", type=int, default=5, show_default=True)
@click.option("--temperature", type=float, default=4.0, show_default=True, help="Soft-target temperature T.")
@click.option("--alpha", type=float, default=0.5, show_default=True,
              help="Weight of the hard-label loss; the soft-target loss gets 1 - alpha.")
@click.option("--lr", type=float, default=1e-3, show_default=True, help="Peak Adam learning rate (cosine decay).")
@click.option("--weight-decay", type=float, default=0.0, show_default=True)
@click.option("--batch-size", type=int, default=128, show_default=True)
@click.option("--limit", type=int, help="Train on a seeded random subset of this many samples.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--bn", "bn_mode", type=click.Choice(["train", "frozen"]), default="train", show_default=True,
              help="BatchNormalization: batch statistics while training (running stats updated) or frozen.")
@click.option("--feature", "features", multiple=True, metavar="S=T", callback=lambda c, p, v: [_parse_pair(t) for t in v],
              help="Feature-map MSE between student tensor S and teacher tensor T (same shape). Repeatable.")
@click.option("--feature-weight", type=float, default=1.0, show_default=True)
@click.option("--flip/--no-flip", default=False, show_default=True,
              help="Random horizontal flips of the training images (NCHW), teacher and student alike.")
@click.option("--shift", type=int, default=0, show_default=True,
              help="Random shifts of the training images by up to this many pixels (zero fill); 0 = off.")
@click.option("--val-data", help="Labelled data to report accuracy on after each epoch (e.g. fashion-mnist:test).")
@click.option("--val-limit", type=int, help="A seeded subset of the validation data.")
@click.option("--threads", type=int, help="torch threads (results are reproducible for a fixed count).")
@click.option("--checkpoint", "checkpoint_dir", type=click.Path(file_okay=False),
              help="Write a checkpoint here after every epoch.")
@click.option("--resume", is_flag=True, help="Continue from the checkpoint in --checkpoint.")
@preprocess_option()
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False), help="Trained student path.")
@json_option("the epoch history")
def command(teacher, student, data, labels, epochs, temperature, alpha, lr, weight_decay, batch_size, limit,
            seed, bn_mode, features, feature_weight, flip, shift, val_data, val_limit, threads, checkpoint_dir, resume,
            preprocess, output, json_out) -> None:
    """Train STUDENT's weights against TEACHER (Hinton knowledge distillation) and write OUT.

    Loss: alpha * CE(labels) + (1 - alpha) * T^2 * KL(teacher/T || student/T) + feature MSE.
    The student's ONNX graph runs with torch ops and its trained weights are written back into
    the same graph, so node and tensor names are kept. Needs torch: pip install 'fwedge[distill]'.
    """
    from dataclasses import asdict

    from fwedge import ir
    from fwedge.console import progress, stdout
    from fwedge.data import open_dataset
    from fwedge.passes.distill import DistillOptions, distill

    dataset = open_dataset(data)
    options = DistillOptions(
        epochs=epochs, temperature=temperature, alpha=alpha, use_labels=labels, lr=lr,
        weight_decay=weight_decay, batch_size=batch_size, limit=limit, seed=seed, bn_mode=bn_mode,
        feature_pairs=tuple(features), feature_weight=feature_weight, flip=flip, shift=shift, threads=threads,
        checkpoint_dir=checkpoint_dir, resume=resume,
    )
    student_model = ir.load(student)
    teacher_model = ir.load(teacher) if teacher else None
    val_dataset = open_dataset(val_data) if val_data else None
    samples = limit or dataset.num_samples

    def show(stats) -> None:
        parts = [f"epoch {stats.epoch}/{stats.epochs}", f"loss {stats.loss:.4f}"]
        if stats.train_accuracy is not None:
            parts.append(f"train acc {100 * stats.train_accuracy:.2f}%")
        if stats.val_accuracy is not None:
            parts.append(f"val acc {100 * stats.val_accuracy:.2f}%")
        parts.append("(from checkpoint)" if stats.resumed else f"{stats.seconds:.1f}s")
        text_console(json_out).print("  ".join(parts))

    with progress(samples * epochs, "distilling" if teacher else "fine-tuning") as advance:
        result = distill(student_model, teacher_model, dataset, options, preprocess=preprocess,
                         val_dataset=val_dataset, val_limit=val_limit, on_epoch=show, on_batch=advance)
    ir.save(result.model, output)
    if emit_json(json_out, [asdict(stats) for stats in result.history]):
        return
    stdout.print(f"{output}: trained {result.samples} samples x {epochs} epochs"
                 + (f" (resumed after epoch {result.resumed_from_epoch})" if result.resumed_from_epoch else ""))
