"""The `ktk` command line: parses arguments and calls one library function per command.

Heavy libraries (TensorFlow, Keras, keras-tuner, matplotlib) are imported only inside the commands that
need them, so `ktk --help`, `ktk validate` and `ktk compare` start fast. A :class:`UserError` anywhere
becomes one message on stderr and exit status 2.
"""

from __future__ import annotations

import argparse
import re
import sys
import warnings
from typing import Any, Callable, List, Optional, Sequence

from toolkit.errors import DataWarning, UserError, did_you_mean
from toolkit.hardware.cluster import ClusterError
from toolkit.quiet import quiet_tensorflow

EXIT_USER_ERROR = 2


class _Parser(argparse.ArgumentParser):
    """argparse with ktk's exit status and a "did you mean" for mistyped commands and choices."""

    def error(self, message: str) -> None:
        match = re.search(r"invalid choice: '([^']*)' \(choose from (.*)\)", message)
        if match:
            choices = [c.strip().strip("'") for c in match.group(2).split(",")]
            guess = did_you_mean(match.group(1), choices)
            if guess:
                message += f". Did you mean '{guess}'?"
        self.print_usage(sys.stderr)
        self.exit(EXIT_USER_ERROR, f"ktk: error: {message}\n")


def _path(expected: str):
    """An argparse type for a path argument: an empty string is refused (it is no path; '.' is written '.')."""
    def path(text: str) -> str:
        if not text:
            raise argparse.ArgumentTypeError(f"expected {expected}; received ''.")
        return text

    path.__name__ = "path"
    return path


CONFIG_PATH = _path("a YAML config file")
OUT_DIR = _path("a folder")
RESULTS_PATH = _path("a run or sweep directory, or a folder holding them")


def _add_set(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config value by dot path, e.g. --set training.optimizer.learning_rate=0.01 "
        "or --set model.hidden=[64,32] (repeatable; values are read as YAML)",
    )


def _add_tracking(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--tensorboard", action="store_true",
                        help="write TensorBoard event files into the run (or sweep) directory's tensorboard/ "
                        "(tracking.tensorboard)")
    parser.add_argument("--mlflow", nargs="?", const=True, default=None, metavar="URI",
                        help="record in an MLflow tracking store (tracking.mlflow): the config's, else "
                        "sqlite:///mlflow.db, or URI (sqlite:///file.db, a folder, http://host:5000)")


def _add_verbose(parser: argparse.ArgumentParser, help: str = "show TensorFlow's start-up and C++ log lines") -> None:
    parser.add_argument("-v", "--verbose", action="store_true", help=help)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="ktk",
        description="Keras experiment toolkit: run, tune, compare and diagnose Keras experiments "
        "described in YAML.",
    )
    from toolkit import __version__

    parser.add_argument("--version", action="version", version=f"ktk {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    commands.required = True

    p = commands.add_parser("run", help="train and evaluate one config into a run directory")
    p.add_argument("config", metavar="CONFIG", type=CONFIG_PATH, nargs="?",
                   help="YAML config file (optional with --resume RUN_DIR: the run's own config)")
    p.add_argument("--out", metavar="DIR", type=OUT_DIR, help="run directory (default: runs/<name>/<timestamp>)")
    p.add_argument("--resume", metavar="RUN_DIR", nargs="?", const=True, type=_path("a run directory"),
                   help="continue an interrupted run from its last finished epoch: CONFIG --out RUN_DIR --resume, "
                        "or --resume RUN_DIR")
    _add_set(p)
    p.add_argument("-q", "--quiet", action="store_true", help="no per-epoch progress")
    _add_tracking(p)
    _add_verbose(p)
    p.add_argument("--role", choices=["chief", "worker"],
                   help="training.distribute: multi_worker: this process's role (the chief writes the run directory)")
    p.add_argument("--cluster", metavar="HOST:PORT,...",
                   help="with --role: every process's address, the chief's first (the same list for all)")
    p.add_argument("--index", type=int, metavar="I", help="with --role worker: this process's position in --cluster")
    p.add_argument("--cluster-timeout", type=float, metavar="SECONDS",
                   help="with a cluster: give up when the other processes have not all started by then (default 300)")

    p = commands.add_parser("validate", help="check a config and that its data loads, without training")
    p.add_argument("config", metavar="CONFIG", type=CONFIG_PATH, help="YAML config file")
    _add_set(p)
    p.add_argument(
        "--deep",
        action="store_true",
        help="also build the model and optimizer with Keras (checks layer, initializer and optimizer "
        "names; imports TensorFlow, so it takes a few seconds)",
    )
    _add_verbose(p, help="with --deep: show TensorFlow's start-up and C++ log lines")

    p = commands.add_parser("tune", help="run the config's search: section as a keras-tuner sweep")
    p.add_argument("config", metavar="CONFIG", type=CONFIG_PATH, help="YAML config file with a search: section")
    p.add_argument("--out", metavar="DIR", type=OUT_DIR, help="sweep directory (default: sweeps/<name>)")
    p.add_argument("--overwrite", action="store_true", help="delete the sweep directory and start over")
    _add_set(p)
    _add_tracking(p)
    _add_verbose(p, help="show Keras' per-epoch progress, and TensorFlow's start-up and C++ log lines")
    p.add_argument("--workers", type=int, default=None, metavar="N",
                   help="run N worker processes on this machine (chief/worker on loopback); with NVIDIA GPUs, "
                        "each sees one GPU (round-robin) and allocates GPU memory as it needs it")
    p.add_argument("--gpus", metavar="LIST",
                   help="the GPUs the workers run on, as nvidia-smi -L numbers them, e.g. 0,1 (default: all; "
                        "without --workers, one worker each); refused on a machine without GPUs")
    p.add_argument("--per-gpu", type=int, default=None, metavar="K",
                   help="K workers on each GPU, for small trials (without --workers: K times the GPUs; with "
                        "it: at most that many); refused on a machine without GPUs")
    p.add_argument("--role", choices=["chief", "worker"], help="multi-machine mode: this process's role")
    p.add_argument("--listen", metavar="HOST:PORT",
                   help="with --role chief: address to serve the oracle on (default: 127.0.0.1, a free port; "
                        "the channel has no authentication: trusted networks only)")
    p.add_argument("--chief", metavar="HOST:PORT", help="with --role worker: the chief's address")
    p.add_argument("--worker-id", metavar="ID", help="with --role worker: a stable id for this worker")
    p.add_argument("--chief-timeout", type=float, default=None, metavar="SECONDS",
                   help="with --role worker: give up when the chief cannot be reached for this long "
                        "(default 120)")

    p = commands.add_parser("compare", help="tables of runs and sweep trials: what differed, how it scored")
    p.add_argument("paths", nargs="+", metavar="PATH", type=RESULTS_PATH,
                   help="run or sweep directories, or folders holding them")
    p.add_argument("--format", default="table", choices=["table", "markdown", "csv", "json", "html"])
    p.add_argument("--output", metavar="FILE", type=_path("a file"), help="write to FILE instead of the terminal")
    p.add_argument("--sort", metavar="COL",
                   help="sort by this column; prefix '-' for descending (--sort -validation.loss)")
    p.add_argument("--top", type=int, metavar="N", help="keep the first N rows after sorting")
    p.add_argument("--all-params", action="store_true", help="show every config key, not only those that differ")
    p.add_argument("--filter", dest="filters", action="append", default=[], metavar="EXPR",
                   help="keep rows matching e.g. 'model.dropout>0.1' (repeatable)")
    p.add_argument("--plot", metavar="DIR", type=OUT_DIR, help="also write plots (PNG) into DIR")

    p = commands.add_parser("plot", help="learning curves and per-hyperparameter plots as PNG files")
    p.add_argument("paths", nargs="+", metavar="PATH", type=RESULTS_PATH)
    p.add_argument("--out", required=True, metavar="DIR", type=OUT_DIR, help="folder for the PNG files")

    p = commands.add_parser("report", help="an HTML and Markdown report of a sweep (or folder of runs)")
    p.add_argument("path", metavar="SWEEP_OR_DIR", type=_path("a sweep directory or a folder of runs"))
    p.add_argument("--out", metavar="DIR", type=OUT_DIR,
                   help="where to write report.html and report.md (default: PATH/report)")

    p = commands.add_parser("diagnose", help="bias/variance and gradient-flow diagnosis of a run")
    p.add_argument("run_dir", metavar="RUN_DIR", type=_path("a run directory written by ktk run"))
    p.add_argument("--baseline-error", type=float, metavar="E",
                   help="Bayes/human-level error to measure avoidable bias against (default: config or 0)")
    p.add_argument("--format", default="text", choices=["text", "json"])
    p.add_argument("--tolerance", type=float, metavar="T",
                   help="gap above which bias/variance counts as high (default 0.03 of classification error; "
                   "for regression 0.2 times the error it is measured from)")

    p = commands.add_parser("gradcheck", help="compare backprop gradients with finite differences")
    p.add_argument("config", metavar="CONFIG", type=CONFIG_PATH)
    p.add_argument("--samples", type=int, default=8, metavar="N", help="examples in the batch (default 8)")
    p.add_argument("--max-params", type=int, metavar="N",
                   help="compare at most N parameters in all, a sample of every weight tensor drawn with the "
                   "config's seed (default 1000, fewer for a model of over 200,000 parameters, down to 100: each "
                   "comparison evaluates the whole model twice)")
    p.add_argument("--all", dest="all_params", action="store_true",
                   help="compare every parameter (slow for a big model: a progress line shows the time left)")
    p.add_argument("--max-per-layer", type=int, metavar="N",
                   help="also compare at most N parameters per layer (default: no limit per layer)")
    p.add_argument("--format", default="text", choices=["text", "json"])
    _add_set(p)
    _add_verbose(p)

    p = commands.add_parser("experiment", help="run a ready-made experiment suite and compare its runs")
    p.add_argument("suite", metavar="SUITE", type=_path("a folder of configs, e.g. experiments/initialization"),
                   help="a folder of configs, e.g. experiments/initialization")
    p.add_argument("--out", metavar="DIR", type=OUT_DIR,
                   help="where the runs go, one folder per config (default: runs/experiments/<suite>/<time>)")
    p.add_argument("--only", action="append", metavar="NAME", help="run only this config of the suite (repeatable)")
    _add_set(p)
    _add_tracking(p)
    p.add_argument("-q", "--quiet", action="store_true", help="no per-epoch progress")
    _add_verbose(p)

    p = commands.add_parser("sync", help="upload run and sweep directories made earlier to an MLflow store")
    p.add_argument("paths", nargs="+", metavar="RUN_OR_SWEEP", type=RESULTS_PATH,
                   help="run or sweep directories, or folders holding them")
    p.add_argument("--mlflow", required=True, metavar="URI", type=_path("an MLflow tracking URI"),
                   help="the MLflow tracking store (sqlite:///mlflow.db, a folder, http://host:5000)")
    p.add_argument("--experiment", metavar="NAME", help="the MLflow experiment (default: each config's name)")
    p.add_argument("--no-model", action="store_true", help="do not upload model.keras")

    p = commands.add_parser("predict", help="predictions of a run's model for the rows of a CSV, parquet or npz file "
                            "(images: image files or folders)")
    p.add_argument("run_dir", metavar="RUN_DIR", type=_path("a run or sweep directory"),
                   help="a run directory (or a sweep directory: its best/ run)")
    p.add_argument("input", metavar="INPUT", nargs="+", type=_path("a CSV, parquet or npz file"),
                   help="a .csv, .parquet or .npz file with the model's feature columns; for a run trained on "
                   "images, image files and folders of them")
    p.add_argument("--output", metavar="FILE", type=_path("a file"),
                   help="write to FILE, a new file (default: standard output)")
    p.add_argument("--format", choices=["csv", "json", "parquet"],
                   help="output format (default: by --output's suffix, else csv)")
    p.add_argument("--batch-size", type=int, default=1024, metavar="N", help="rows per model call (default 1024)")
    p.add_argument("--evaluate", action="store_true",
                   help="also print the loss and metrics against the input's target column (on stderr)")
    _add_verbose(p)

    p = commands.add_parser("export", help="export a run's model, preprocessing included, for serving")
    p.add_argument("run_dir", metavar="RUN_DIR", type=_path("a run or sweep directory"),
                   help="a run directory (or a sweep directory: its best/ run)")
    p.add_argument("--format", required=True, choices=["saved_model", "litert", "onnx"])
    p.add_argument("--out", required=True, metavar="PATH", type=_path("a new path"),
                   help="where to write it (must not exist)")
    _add_verbose(p)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(_join_descending_sort(argv) if argv[:1] == ["compare"] else argv)
    handler = globals()[f"_cmd_{args.command}"]
    quiet_tensorflow(verbose=getattr(args, "verbose", False))  # imports nothing: commands that never train stay fast
    try:
        with warnings.catch_warnings():  # the library's DataWarnings as ktk lines; others as Python shows them
            warnings.showwarning = _data_warnings_as_ktk_lines(warnings.showwarning)
            return int(handler(args) or 0)
    except ClusterError as error:  # another process of a multi_worker run failed: not this user's mistake
        print(f"ktk: error: {error}", file=sys.stderr)
        return 1
    except UserError as error:
        config_file = getattr(args, "config", None)
        if config_file and not (error.where or "").startswith(("--", "TF_CONFIG")):  # (not keys of the config)
            loaded = getattr(args, "loaded_config", None)  # a key a base file (extends:) set is that file's
            error.at(file=loaded.file_of(error.where) if loaded is not None else config_file)
        print(f"ktk: error: {error}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print("ktk: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # output piped into `head` and closed early: not an error
        sys.stderr.close()
        return 0


def _join_descending_sort(argv: List[str]) -> List[str]:
    """`--sort -validation.accuracy` as `--sort=-validation.accuracy` (argparse reads '-x' as an option)."""
    out = []
    for arg in argv:
        if out and out[-1] == "--sort" and arg.startswith("-") and len(arg) > 1 and not arg.startswith("--"):
            out[-1] = f"--sort={arg}"
        else:
            out.append(arg)
    return out


def _overrides(args: argparse.Namespace) -> List[str]:
    """``--set`` and the tracking switches (--tensorboard, --mlflow [URI]) as overrides."""
    if not hasattr(args, "tensorboard"):
        return args.overrides
    from toolkit.tracking import apply_switches

    return apply_switches(args.overrides, args.tensorboard, args.mlflow)


def _load(args: argparse.Namespace):
    from toolkit.config import load_config

    args.loaded_config = load_config(args.config, overrides=_overrides(args))
    return args.loaded_config


def _cmd_run(args: argparse.Namespace) -> int:
    import os

    from toolkit.hardware.cluster import cluster_from_flags
    from toolkit.runs import run
    from toolkit.summary import format_run_summary
    from toolkit.training import progress_verbosity

    cluster = cluster_from_flags(args.role, args.cluster, args.index, args.cluster_timeout, environ=os.environ)
    out, resume = args.out, args.resume is not None
    if isinstance(args.resume, str):
        if out is not None and out != args.resume:
            raise UserError("the run directory is given twice", where="--resume",
                            expected="--resume RUN_DIR, or CONFIG --out RUN_DIR --resume",
                            received=f"--resume {args.resume} --out {out}")
        out = args.resume
    if args.config is not None:
        config = _load(args)
    elif not resume:
        raise UserError("the config file is missing", where="CONFIG",
                        expected="ktk run CONFIG, or ktk run --resume RUN_DIR to continue a run")
    else:
        from toolkit.resume import load_run_config

        if args.overrides:
            raise UserError("a run resumes with its own config", where="--set",
                            expected="no --set with --resume RUN_DIR", received=args.overrides[0])
        config = load_run_config(out)
    result = run(config, out_dir=out, verbose=progress_verbosity(not args.quiet), resume=resume, cluster=cluster)
    if result.run_dir is None:  # a worker of a multi_worker run
        print(f"{config.name}: trained as a worker, {result.metrics['epochs_run']} epochs; the chief wrote the run "
              "directory")
    else:
        print(format_run_summary(result))
    return 0


def _cmd_validate(args: argparse.Namespace) -> int:
    from toolkit.runs import validate

    config = _load(args)
    print(validate(config, deep=args.deep))
    return 0


def _cmd_tune(args: argparse.Namespace) -> int:
    from toolkit.sweeps import format_sweep_summary

    config = _load(args)
    distributed = (args.workers, args.role, args.listen, args.chief, args.worker_id, args.chief_timeout,
                   args.gpus, args.per_gpu)
    if any(option is not None for option in distributed):
        from toolkit.distributed import tune_distributed

        result = tune_distributed(config, out_dir=args.out, workers=args.workers, role=args.role,
                                  listen=args.listen, chief=args.chief, worker_id=args.worker_id,
                                  overwrite=args.overwrite, verbose=args.verbose,
                                  chief_timeout=args.chief_timeout, gpus=args.gpus, per_gpu=args.per_gpu,
                                  progress=lambda line: print(line, flush=True))
    else:
        from toolkit.sweeps import tune

        result = tune(config, out_dir=args.out, overwrite=args.overwrite, verbose=args.verbose,
                      progress=lambda line: print(line, flush=True))
    print(format_sweep_summary(result))
    return 0


def _cmd_compare(args: argparse.Namespace) -> int:
    import shutil

    from toolkit.analysis.compare import compare, render, result_dirs
    from toolkit.results import check_output_path, check_outside, check_path_given, save_output

    check_path_given(args.output, "--output", "a file path")
    check_path_given(args.plot, "--plot", "a folder path")
    if args.output is not None or args.plot is not None:  # before the work, not after
        inputs = result_dirs(args.paths)
        if args.output is not None:
            check_output_path(args.output, where="--output")
            check_outside(args.output, inputs, "--output")
        if args.plot is not None:
            check_outside(args.plot, inputs, "--plot")
    table = compare(args.paths, all_params=args.all_params, sort=args.sort, top=args.top, filters=args.filters)
    _warn(table.attrs.get("warnings", []))
    if table.empty:
        print("ktk: no rows match the filters", file=sys.stderr)
    to_terminal = args.format == "table" and args.output is None and sys.stdout.isatty()
    text = render(table, args.format, width=shutil.get_terminal_size().columns if to_terminal else None)
    plots = None
    if args.plot is not None:
        from toolkit.analysis.plots import plan_table_plots

        plots = plan_table_plots(table, args.plot, where="--plot")  # checked before anything is written
    if args.output is not None:
        save_output(args.output, text, where="--output")
        print(f"wrote {args.output} ({len(table)} rows)", file=sys.stderr)
    else:
        sys.stdout.write(text)
    if plots is not None:
        drawn = plots.write()
        _warn(drawn.warnings)
        print(f"wrote {len(drawn.files)} plots into {args.plot}", file=sys.stderr)
    return 0


def _cmd_plot(args: argparse.Namespace) -> int:
    from toolkit.analysis.plots import plot
    from toolkit.results import check_path_given

    check_path_given(args.out, "--out", "a folder path")
    plots = plot(args.paths, args.out, where="--out")
    _warn(plots.warnings)
    for path in plots.files:
        print(path)
    return 0


def _cmd_report(args: argparse.Namespace) -> int:
    from toolkit.analysis.report import report

    result = report(args.path, out_dir=args.out)
    _warn(result.warnings)
    print(f"wrote {result.html}\nwrote {result.markdown}")
    return 0


def _data_warnings_as_ktk_lines(show_others: Callable[..., None]) -> Callable[..., None]:
    def show(message: Any, category: Any, *where: Any, **options: Any) -> None:
        if issubclass(category, DataWarning):
            _warn([str(message)])
        else:
            show_others(message, category, *where, **options)

    return show


def _warn(lines: Sequence[str]) -> None:
    from toolkit.tables import terminal_text

    for warning in lines:  # one line each, whatever a path or message holds (newlines, escape sequences)
        print(f"ktk: warning: {terminal_text(warning)}", file=sys.stderr)


def _cmd_diagnose(args: argparse.Namespace) -> int:
    import json

    from toolkit.lessons.diagnosis import diagnose, format_diagnosis

    result = diagnose(args.run_dir, baseline_error=args.baseline_error, tolerance=args.tolerance)
    print(json.dumps(result.to_dict(), indent=2) if args.format == "json" else format_diagnosis(result))
    return 0


def _cmd_gradcheck(args: argparse.Namespace) -> int:
    import json

    from toolkit.lessons.gradcheck import format_gradcheck, gradient_check

    if args.all_params:
        given = [flag for flag, value in (("--max-params", args.max_params), ("--max-per-layer", args.max_per_layer))
                 if value is not None]
        if given:
            raise UserError("--all compares every parameter", where="--all", expected=f"--all without {given[0]}",
                            received=given[0])
    max_params = None if args.all_params else "auto" if args.max_params is None else args.max_params
    result = gradient_check(_load(args), samples=args.samples, max_parameters_per_layer=args.max_per_layer,
                            max_parameters=max_params, progress=lambda line: print(line, file=sys.stderr, flush=True))
    print(json.dumps(result.to_dict(), indent=2) if args.format == "json" else format_gradcheck(result))
    return 1 if result.status == "fail" else 0


def _cmd_experiment(args: argparse.Namespace) -> int:
    from toolkit.lessons.experiments import format_lesson_rows, lesson_rows, run_suite

    result = run_suite(args.suite, out_dir=args.out, overrides=_overrides(args), verbose=0 if args.quiet else 2,
                       only=args.only, progress=print)
    from toolkit.analysis.compare import compare, render

    print(render(compare(result.paths), "table"))
    print()
    finished = result.finished_runs()
    if finished:
        names = [f"{p.parent.name}/best" if p.name == "best" else p.name for p in finished]
        print(format_lesson_rows(lesson_rows(finished, names)))
    print(f"\nruns in {result.out_dir}: ktk compare {result.out_dir}; ktk diagnose {result.out_dir}/<run>")
    return 0


def _cmd_sync(args: argparse.Namespace) -> int:
    from toolkit.tracking.sync import sync

    result = sync(args.paths, args.mlflow, experiment=args.experiment, log_model=not args.no_model, progress=print)
    _warn(result.warnings)
    print(f"{len(result.uploaded)} run directories uploaded, {len(result.skipped)} already there"
          + (f", {len(result.sweeps)} sweeps synced" if result.sweeps else "") + f" ({args.mlflow})")
    return 0


def _cmd_predict(args: argparse.Namespace) -> int:
    from toolkit.deploy.predict import predict_file

    predict_file(args.run_dir, args.input, output=args.output, fmt=args.format, batch_size=args.batch_size,
                 evaluate=args.evaluate)
    return 0


def _cmd_export(args: argparse.Namespace) -> int:
    from toolkit.deploy.export import export_run

    path = export_run(args.run_dir, args.format, args.out)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
