"""The ``aacn`` command line: ``train``, ``evaluate``, ``export``, ``reproduce``, ``report``, ``sweep``,
``attention-maps``, ``anchor``.

``python -m aacn ...`` and ``torchrun ... -m aacn train ...`` run the same code. Mistakes a user can make
(bad flags, missing data, a run directory in the way) print one line and exit with code 2; set
``AACN_DEBUG=1`` for the traceback. Ctrl-C saves a resumable checkpoint and exits with code 130 (SIGTERM: 143).
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import TYPE_CHECKING

from aacn import __version__
from aacn.errors import OptionError, Terminated, UserError

if TYPE_CHECKING:
    from aacn.config import RunConfig
# Everything else (torch included) is imported inside main(), where Ctrl-C during start-up is one line.


class _Parser(argparse.ArgumentParser):
    """argparse that reports a bad flag in one line (no usage dump) and exits 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message} (see '{self.prog} --help')\n")


def default_out(config: RunConfig) -> str:
    """``runs/<model>[-aa-<placement>]-<dataset>-seed<seed>``: where ``aacn train`` writes without ``--out``."""
    attention = config.attention
    tag = "" if attention == "none" else f"-aa-{attention if isinstance(attention, str) else 'custom'}"
    return os.path.join("runs", f"{config.model}{tag}-{config.dataset}-seed{config.seed}")


def _train(args: argparse.Namespace) -> int:
    from aacn.flags import config_from_args
    from aacn.train.loop import run

    if args.resume and args.overwrite:
        raise UserError("--resume and --overwrite contradict each other; pick one")
    config = config_from_args(args)
    config = config.replace(out=args.out or default_out(config))
    run(config, resume=args.resume, overwrite=args.overwrite)
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    from aacn.inference import evaluate_run

    r = evaluate_run(args.run_dir, dataset=args.dataset, tta=args.tta, data_dir=args.data_dir, device=args.device,
                     partial=args.partial)
    tta = f"; flip TTA top-1 {r['test_acc_tta']:.2f}%  top-5 {r['test_top5_tta']:.2f}%" if args.tta else ""
    print(f"{r['run']} on {r['dataset']} test: top-1 {r['test_acc']:.2f}%  top-5 {r['test_top5']:.2f}%  "
          f"loss {r['test_loss']:.4f}{tta}  ({r['weights']})")
    return 0


_LOAD_HINT = {
    "pt2": "import aacn.nn, torch; program = torch.export.load({path!r}); logits = program.module()(images)",
    "onnx": "import onnxruntime; s = onnxruntime.InferenceSession({path!r}); "
            "logits = s.run(None, {{s.get_inputs()[0].name: images.numpy()}})[0]",
}


def _export(args: argparse.Namespace) -> int:
    import torch

    from aacn.data.registry import dataset
    from aacn.export import check_format, export_model
    from aacn.files import check_output_file
    from aacn.inference import load_trained
    from aacn.train.rundir import RunDir

    if args.batch is not None and args.batch < 1:
        raise UserError(f"--batch must be a positive number of images, got {args.batch}; or leave it out for any")
    check_format(args.format)  # ONNX without its packages: refused before anything is loaded
    run = RunDir(args.run_dir)
    if not run.config_path.is_file():  # before --out's check, which would create the folder
        raise UserError(f"{run.path} is not a run directory (no config.json); pass a folder written by 'aacn train'")
    out = check_output_file(args.out or run.path / f"model.{args.format}", "--out")
    weights = load_trained(run.path, partial=args.partial)
    config, model = weights.config, weights.model
    data = dataset(config.dataset)  # the run's dataset: its image shape (C, H, W) and classes
    shape = data.image_shape
    example = torch.zeros(args.batch or 2, *shape)  # the values do not matter
    path = export_model(model, example, out, args.format, dynamic_batch=args.batch is None)
    batch = "any N" if args.batch is None else f"N = {args.batch} exactly"
    print(f"wrote {path}: the {config.model} of {run.path} ({weights.describe()}; eval mode) as {args.format}")
    print(f"input: float32 (N, {', '.join(map(str, shape))}), {batch}, images normalised as the run trained "
          f"(--normalize {config.normalize}, statistics of its training split); output: (N, "
          f"{data.num_classes}) logits")
    print(f"load: {_LOAD_HINT[args.format].format(path=str(path))}")
    if args.format == "pt2":
        print("trust: torch.export.load can run code from a crafted .pt2; load only files you trust (for weights "
              "from elsewhere, aacn.inference.load_model(RUN_DIR) reads them with weights_only=True)")
    return 0


_PARTIAL_HELP = ("use the newest checkpoint of an unfinished run (partial weights, said in the output); default: "
                 "the final model of a finished run only")


def build_parser() -> argparse.ArgumentParser:
    from aacn.data.registry import DATASETS
    from aacn.experiments import commands
    from aacn.export import FORMATS

    parser = _Parser(prog="aacn", description="Attention-augmented convolutional networks on CIFAR.")
    parser.add_argument("--version", action="version", version=f"aacn {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=_Parser)

    train = sub.add_parser("train", help="train one model (alone or under torchrun)",
                           description="Train one model; writes config.json, metrics.jsonl, checkpoints and "
                                       "results.json into --out.")
    commands.add_run_arguments(train)
    train.add_argument("--out", default=None, help="run directory (default runs/<model>[-aa-…]-<dataset>-seed<seed>)")
    train.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    train.add_argument("--overwrite", action="store_true", help="discard whatever --out holds and start over")
    train.set_defaults(func=_train)

    evaluate = sub.add_parser("evaluate", help="test accuracy of a trained run, as the run computed it",
                              description="Test loss, top-1 and top-5 accuracy of the model in a finished run's "
                                          "final checkpoint, built from the run's own config.json.")
    evaluate.add_argument("run_dir", metavar="RUN_DIR", help="a folder written by 'aacn train'")
    evaluate.add_argument("--dataset", choices=DATASETS, help="default: the run's")
    evaluate.add_argument("--tta", action="store_true", help="also with flip test-time augmentation")
    evaluate.add_argument("--data-dir", help="where the dataset lives (default: the run's --data-dir)")
    evaluate.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N | mps")
    evaluate.add_argument("--partial", action="store_true", help=_PARTIAL_HELP)
    evaluate.set_defaults(func=_evaluate)

    export = sub.add_parser("export", help="write a trained run's model as a deployable file (pt2 or onnx)",
                            description="Capture the model in a run's final checkpoint, built from the run's "
                                        "own config.json, in eval mode as one graph (torch.export) and write it "
                                        "as a .pt2 program or an ONNX model (needs pip install onnx onnxscript).")
    export.add_argument("run_dir", metavar="RUN_DIR", help="a folder written by 'aacn train'")
    export.add_argument("--format", default="pt2", choices=FORMATS,
                        help="pt2: a torch.export program; onnx: an ONNX model (default pt2)")
    export.add_argument("--out", help="the file to write (default RUN_DIR/model.pt2 or RUN_DIR/model.onnx)")
    export.add_argument("--batch", type=int, default=None, metavar="N",
                        help="accept batches of exactly N images (a static graph; default: any batch size)")
    export.add_argument("--partial", action="store_true", help=_PARTIAL_HELP)
    export.set_defaults(func=_export)
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
        from aacn.config import OPTIONS
        from aacn.flags import flag_of

        if isinstance(exc, OptionError) and exc.option in OPTIONS and message.startswith(exc.option + " "):
            message = flag_of(exc.option) + message[len(exc.option):]  # library errors name options; we say flags
        print(f"aacn {args.command}: error: {message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as exc:
        print("aacn: interrupted" + (" (SIGTERM)" if isinstance(exc, Terminated) else ""), file=sys.stderr)
        return 143 if isinstance(exc, Terminated) else 130


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
