"""python -m cxrlt COMMAND [ARGS] (also the `cxrlt` console script): one entry point for every command.

`python -m cxrlt.train ...` and the other `python -m cxrlt.COMMAND` forms keep working."""

from __future__ import annotations

import importlib
import sys

# command -> (module, what it does); each module has main(argv) -> exit status
COMMANDS = {
    "train": ("cxrlt.train.kfold", "train K folds (OOF predictions, resumable)"),
    "fuse": ("cxrlt.train.fuse", "learned study fusion (CheXFusion stage 2) over a run's frozen features"),
    "predict": ("cxrlt.predict.inference", "fold models x TTA over an image list"),
    "ensemble": ("cxrlt.ensemble.ensembler", "combine runs into a validated submission CSV + zip"),
    "export": ("cxrlt.ensemble.export", "one TensorFlow SavedModel of runs for serving (bytes in, probabilities out)"),
    "evaluate": ("cxrlt.evaluate.align", "score a prediction CSV against labels"),
    "check": ("cxrlt.data.check", "pre-flight check of every image a run will read"),
    "prepare": ("cxrlt.data.prepare", "pre-resized image files and TFRecord shards"),
    "runs": ("cxrlt.runtime.runs", "list runs with their scores"),
    "aggregate": ("cxrlt.predict.aggregate", "measure study aggregation on out-of-fold scores"),
    "submission": ("cxrlt.ensemble.submission", "check a submission CSV or zip"),
    "report": ("cxrlt.report.run_report", "offline HTML report of a run or a submission"),
    "explain": ("cxrlt.report.explain", "Grad-CAM over a run's fold models"),
    "ablate": ("cxrlt.tools.ablate", "ablation grids, each variant in its own process"),
    "bench": ("cxrlt.tools.bench", "input pipeline, step, prediction and memory benchmarks"),
    "augment": ("cxrlt.report.preview", "preview grid of augmented and mixed batches"),
    "synthetic": ("cxrlt.data.synthetic", "write the synthetic demo data set"),
    "weights": ("cxrlt.model.pretrained", "fetch a backbone's ImageNet weights for offline nodes, or convert a timm "
                                          "checkpoint (--from-timm)"),
    "data_service": ("cxrlt.data.service", "tf.data service dispatcher or worker (input.data_service)"),
}


def usage() -> str:
    width = max(map(len, COMMANDS))
    rows = "\n".join(f"  {name:<{width}}  {what}" for name, (_, what) in COMMANDS.items())
    return f"usage: python -m cxrlt COMMAND [ARGS]  (or: cxrlt COMMAND ...)\n\ncommands:\n{rows}\n"


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(usage(), end="")
        return 0
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"error: unknown command {name!r}\n\n{usage()}", file=sys.stderr, end="")
        return 2
    return importlib.import_module(COMMANDS[name][0]).main(rest)


if __name__ == "__main__":
    sys.exit(main())
