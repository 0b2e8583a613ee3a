"""The ``aacn`` command line: ``train``, ``reproduce``, ``report``, ``sweep``, ``attention-maps``.

``python -m aacn ...`` and ``torchrun ... -m aacn train ...`` run the same code. Mistakes a user can make
(bad flags, missing data, a run directory in the way) print one line and exit with code 2; set
``AACN_DEBUG=1`` for the traceback. Ctrl-C saves a resumable checkpoint and exits with code 130.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

from aacn.config import AMP_MODES, COMPILE_MODES, DATASETS, RunConfig
from aacn.errors import UserError


class _Parser(argparse.ArgumentParser):
    """argparse that reports a bad flag in one line (no usage dump) and exits 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message} (see '{self.prog} --help')\n")


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {value}")
    return value


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text}")
    return value


def _fraction(text: str) -> float:
    value = _positive_float(text)
    if value > 1:
        raise argparse.ArgumentTypeError(f"must be a fraction in (0, 1], got {text}")
    return value


# Model flags -> create_model keyword (flags left unset are not passed, so each model keeps its defaults).
_MODEL_FLAGS = ("base_width", "stem", "dropout", "attention", "relative", "num_heads", "kappa", "upsilon",
                "min_key_depth_per_head", "attention_impl")


def add_train_arguments(parser: argparse.ArgumentParser) -> None:
    """Every flag of ``aacn train`` that describes a run (shared with ``aacn sweep``)."""
    run = parser.add_argument_group("run")
    run.add_argument("--model", default="resnet34", help="resnet34 or wrn-D-K, e.g. wrn-28-10 (default resnet34)")
    run.add_argument("--dataset", default="cifar10", choices=DATASETS)
    run.add_argument("--epochs", type=_positive_int, default=10)
    run.add_argument("--batch-size", type=_positive_int, default=128, help="global batch size (default 128)")
    run.add_argument("--recipe", default="paper-sgd",
                     help="paper-sgd | seed-adam | wrn-sgd | fast (default paper-sgd)")
    run.add_argument("--lr", type=_positive_float, help="base learning rate (default: the recipe's)")
    run.add_argument("--weight-decay", type=float, help="default: the recipe's")
    run.add_argument("--label-smoothing", type=float, help="default: the recipe's")
    run.add_argument("--no-augment", dest="augment", action="store_false", help="no flip/pad/crop")
    run.add_argument("--normalize", default="standard", choices=("standard", "seed"),
                     help="standard: per-channel mean/std; seed: /255 minus the per-pixel mean (the replication's)")
    run.add_argument("--subset", type=_positive_int, help="train on the first N training images only")
    run.add_argument("--val-size", type=int, default=5000, help="held-out validation images (default 5000)")
    run.add_argument("--split-seed", type=int, default=0)
    run.add_argument("--seed", type=int, default=0)
    run.add_argument("--data-dir", help="where CIFAR lives or is downloaded (default $AACN_DATA, else a cache)")
    run.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N | mps")
    run.add_argument("--amp", default="auto", choices=AMP_MODES, help="mixed precision (auto: bf16 on CUDA)")
    run.add_argument("--channels-last", dest="channels_last", action="store_true", default=None,
                     help="default: on for CUDA")
    run.add_argument("--no-channels-last", dest="channels_last", action="store_false")
    run.add_argument("--compile", action="store_true", help="torch.compile the model")
    run.add_argument("--compile-mode", default="default", choices=COMPILE_MODES,
                     help="torch.compile mode with --compile (reduce-overhead: CUDA graphs; default default)")
    run.add_argument("--tta", action="store_true",
                     help="also report test accuracy with flip test-time augmentation (test_acc_tta)")
    run.add_argument("--sync-bn", action="store_true", help="SyncBatchNorm under torchrun")
    run.add_argument("--eval-batch-size", type=_positive_int, default=500)
    run.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")

    model = parser.add_argument_group("model")
    model.add_argument("--base-width", type=_positive_int, help="narrow/widen the network (ResNet 64, WRN 16)")
    model.add_argument("--stem", choices=("cifar", "imagenet"), help="ResNet stem (default cifar)")
    model.add_argument("--dropout", type=float, help="WRN dropout between the convs of a block")
    model.add_argument("--attention", help="none | seed | paper | comma-separated block names")
    model.add_argument("--no-relative", dest="relative", action="store_false", default=None,
                       help="attention without relative position embeddings")
    model.add_argument("--num-heads", type=_positive_int, help="Nh (default 8)")
    model.add_argument("--kappa", type=_fraction, help="dk / F_out (default 0.2)")
    model.add_argument("--upsilon", type=_fraction, help="dv / F_out (default 0.1)")
    model.add_argument("--min-key-depth-per-head", type=_positive_int, help="default 20")
    model.add_argument("--attention-impl", help="auto | reference | sdpa | chunked | triton (CUDA) (default auto)")


def config_from_args(args: argparse.Namespace) -> RunConfig:
    """The RunConfig that ``aacn train`` flags describe (``--out`` defaults to runs/<model>-<dataset>-...)."""
    model_kwargs: dict[str, Any] = {}
    for name in _MODEL_FLAGS:
        value = getattr(args, name, None)
        if value is not None:
            model_kwargs[name] = value
    attention = model_kwargs.get("attention")
    if attention is not None and "," in attention:
        model_kwargs["attention"] = [b.strip() for b in attention.split(",") if b.strip()]
    out = getattr(args, "out", None) or default_out(args.model, args.dataset, model_kwargs, args.seed)
    return RunConfig(
        model=args.model, dataset=args.dataset, epochs=args.epochs, batch_size=args.batch_size,
        recipe=args.recipe, lr=args.lr, weight_decay=args.weight_decay, label_smoothing=args.label_smoothing,
        augment=args.augment, normalize=args.normalize, subset=args.subset, val_size=args.val_size,
        split_seed=args.split_seed, seed=args.seed, data_dir=args.data_dir, out=out, device=args.device,
        amp=args.amp, channels_last=args.channels_last, compile=args.compile, compile_mode=args.compile_mode,
        tta=args.tta, sync_bn=args.sync_bn,
        eval_batch_size=args.eval_batch_size, progress=args.progress, model_kwargs=model_kwargs,
    ).validate()


def default_out(model: str, dataset: str, model_kwargs: dict[str, Any], seed: int) -> str:
    attention = model_kwargs.get("attention", "none")
    tag = "" if attention in (None, "none") else f"-aa-{attention if isinstance(attention, str) else 'custom'}"
    return os.path.join("runs", f"{model}{tag}-{dataset}-seed{seed}")


def _train(args: argparse.Namespace) -> int:
    from aacn.train import run

    config = config_from_args(args)
    if args.resume and args.overwrite:
        raise UserError("--resume and --overwrite contradict each other; pick one")
    run(config, resume=args.resume, overwrite=args.overwrite)
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    from aacn.inference import evaluate_run

    r = evaluate_run(args.run_dir, dataset=args.dataset, tta=args.tta, data_dir=args.data_dir, device=args.device)
    tta = f"; flip TTA top-1 {r['test_acc_tta']:.2f}%  top-5 {r['test_top5_tta']:.2f}%" if args.tta else ""
    print(f"{r['run']} on {r['dataset']} test: top-1 {r['test_acc']:.2f}%  top-5 {r['test_top5']:.2f}%  "
          f"loss {r['test_loss']:.4f}{tta}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    from aacn import __version__

    parser = _Parser(prog="aacn", description="Attention-augmented convolutional networks on CIFAR.")
    parser.add_argument("--version", action="version", version=f"aacn {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=_Parser)

    train = sub.add_parser("train", help="train one model (alone or under torchrun)",
                           description="Train one model; writes config.json, metrics.jsonl, checkpoints and "
                                       "results.json into --out.")
    add_train_arguments(train)
    train.add_argument("--out", help="run directory (default runs/<model>[-aa-…]-<dataset>-seed<seed>)")
    train.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    train.add_argument("--overwrite", action="store_true", help="discard whatever --out holds and start over")
    train.set_defaults(func=_train)

    evaluate = sub.add_parser("evaluate", help="test accuracy of a trained run, as the run computed it",
                              description="Test loss, top-1 and top-5 accuracy of the model in a run's newest "
                                          "checkpoint, built from the run's own config.json.")
    evaluate.add_argument("run_dir", metavar="RUN_DIR", help="a folder written by 'aacn train'")
    evaluate.add_argument("--dataset", choices=DATASETS, help="default: the run's")
    evaluate.add_argument("--tta", action="store_true", help="also with flip test-time augmentation")
    evaluate.add_argument("--data-dir", help="where CIFAR lives (default: the run's --data-dir)")
    evaluate.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N | mps")
    evaluate.set_defaults(func=_evaluate)

    from aacn.experiments import commands

    commands.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    try:
        parser = build_parser()  # imports torch: Ctrl-C here is common, and gets one line too
        args = parser.parse_args(argv)
    except KeyboardInterrupt:
        print("aacn: interrupted", file=sys.stderr)
        return 130
    try:
        return int(args.func(args) or 0)
    except (UserError, ValueError) as exc:
        if os.environ.get("AACN_DEBUG"):
            raise
        if getattr(exc, "all_ranks", False) and os.environ.get("RANK", "0") != "0":
            return 2  # the same error on every rank: rank 0 says it once
        message = " ".join(str(exc).split())
        print(f"aacn {args.command}: error: {message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("aacn: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
