"""``forgetkit`` command line: a thin shell over the Python API."""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

from .config import apply_overrides
from .errors import ForgetkitError


class RequestFailed(Exception):
    """A finished run in which at least one request missed its goal (exit status 3)."""


def _print_table(results: dict, wall: float) -> None:
    from .requests import REQUEST_KINDS

    print(REQUEST_KINDS.get(results.kind)().summary_lines(results, wall))


def cmd_forget(args) -> None:
    from .api import config_data, load_config
    from .engine.plan import plan_run
    from .requests import REQUEST_KINDS

    if not args.config and not args.classes:
        raise ForgetkitError(f"name what to {args.kind}: --classes A,B (one request; repeat --classes for more) or "
                             f"a protocol config with -c")
    if args.classes and not args.out:
        raise ForgetkitError("--classes needs --out: the folder to write the results and the edited model to")
    default_method = REQUEST_KINDS.get(args.kind).default_method
    sections: dict = {"kind": args.kind}
    if default_method and "method" not in config_data(args.config):  # a config's own method wins
        sections["method"] = {"name": default_method}
    if args.model:
        sections["model"] = args.model
    if args.data or args.root:
        sections["data"] = {"source": args.data or "image_folder", **({"root": args.root} if args.root else {})}
    if args.method:
        sections["method"] = {"name": args.method}  # the method's own defaults
    if args.classes:
        requests = [[name.strip() for name in group.split(",") if name.strip()] for group in args.classes]
        if not all(requests):
            raise ForgetkitError("--classes names no class; give names separated by commas, e.g. --classes Bag,Coat")
        sections["protocol"] = {"requests": requests}
    if args.out:
        sections["output_dir"] = args.out
    cfg = load_config(args.config, list(args.override), sections=sections)
    plan = plan_run(cfg, overwrite=args.overwrite, resume=args.resume)  # before torch: a mistake answers at once
    if plan.finished:
        print(f"{cfg.output_dir} already holds this finished run (--resume); nothing to do")

    from .engine.run import run_requests
    from .methods import METHODS

    start = time.monotonic()
    results = run_requests(cfg, progress=_progress(args), overwrite=args.overwrite, resume=args.resume)
    _print_table(results, time.monotonic() - start)
    print(f"\nresults, report.md and plots in {cfg.output_dir}/" + (
        f"; the edited model and its ledger in {plan.model_dir}/ (--model {cfg.output_dir} names it)"
        if cfg.save_model else ""))
    from .runtime import is_worker

    records = results.requests
    failed = [r for r in records if not r.passed]
    for r in records:
        exact = " (exact: the weights before the withdrawn request, bit for bit)" if r.verdict.get("exact") else ""
        print(f"{'PASS' if r.passed else 'FAIL'} request {r.index + 1} ({r.kind} {', '.join(r.classes)})"
              + (f": {'; '.join(r.verdict['failed'])}" if not r.passed else exact),
              file=sys.stdout if r.passed or is_worker() else sys.stderr)  # a worker's stdout is silent
    if failed and not args.allow_fail:
        hint = METHODS.get(results.method).fix_hint or REQUEST_KINDS.get(failed[0].kind).fix_hint
        raise RequestFailed(f"{len(failed)} of {len(results.requests)} requests missed their goal; {hint}; "
                            f"--allow-fail accepts the result")


def _progress(args) -> bool:
    """Progress bars only on a terminal, and never with -q."""
    return not args.quiet and sys.stderr.isatty()


def cmd_demo(args) -> None:
    for name in ("model", "classes", "data", "root", "method"):
        setattr(args, name, None)
    args.config, args.allow_fail, args.resume = args.demo_config, False, False
    args.kind = "forget"
    cmd_forget(args)


def cmd_bench(args) -> None:
    from .bench import load_bench_spec, report_only, run_bench

    methods = [m.strip() for m in args.methods.split(",")] if args.methods else None
    spec = load_bench_spec(args.config, methods, args.out, args.override)
    if args.report_only:
        report_only(spec)
    else:
        run_bench(spec, progress=_progress(args), resume=args.resume, overwrite=args.overwrite)
    print((Path(spec.output_dir) / "comparison.md").read_text())
    print(f"comparison.md, comparison.csv and comparison.png in {spec.output_dir}/")


def cmd_pretrain(args) -> None:
    from .api import load_config
    from .engine.config import PretrainConfig
    from .engine.plan import plan_pretrain

    sections = {k: getattr(args, k) for k in ("arch", "epochs", "out") if getattr(args, k) is not None}
    if args.data or args.root:
        sections["data"] = {"source": args.data or "image_folder", **({"root": args.root} if args.root else {})}
    cfg = load_config(args.config, list(args.override), cls=PretrainConfig, sections=sections)
    plan_pretrain(cfg, args.overwrite)  # before torch
    from .pretraining import pretrain

    _, info = pretrain(cfg, progress=_progress(args), overwrite=args.overwrite)
    print(f"test accuracy {info['test_accuracy']:.2f} % after {info['seconds']:.0f} s; saved to {info['out']}/")


def cmd_clip_pretrain(args) -> None:
    from .api import load_config
    from .clip.config import ClipPretrainConfig

    sections = {k: getattr(args, k) for k in ("epochs", "out") if getattr(args, k) is not None}
    cfg = load_config(args.config, list(args.override), cls=ClipPretrainConfig, sections=sections)
    from .clip.pretrain import pretrain_clip

    info = pretrain_clip(cfg, progress=_progress(args), overwrite=args.overwrite)
    accs = ", ".join(f"{k} {v:.2f} %" for k, v in info["zero_shot_test_accuracy"].items())
    print(f"zero-shot test accuracy: {accs}; {info['seconds']:.0f} s; saved to {info['out']}/")


def cmd_import_weights(args) -> None:
    from .data.config import DataConfig, check_data_config
    from .outputs import OutputLock, refuse_input_as_output, refuse_replacing

    weights, out = Path(args.weights), Path(args.out)
    if not weights.is_file():
        raise ForgetkitError(f"weights file not found: {weights}; give a .safetensors or .pth file (--weights)")
    if args.class_index_file and not Path(args.class_index_file).is_file():
        raise ForgetkitError(f"class index file not found: {args.class_index_file} (--class-index-file)")
    data = DataConfig(source="image_folder", root=args.data_root)
    check_data_config(data)
    refuse_input_as_output(out, [weights, Path(args.data_root)])
    refuse_replacing(out / "manifest.json", args.overwrite, "a checkpoint")
    overrides = apply_overrides({}, args.override)

    from .data import load_data
    from .models import load_external_weights, save_model

    classes = load_data(data).classes
    indices = None
    if args.class_index_file:
        names = [ln.strip() for ln in Path(args.class_index_file).read_text().splitlines() if ln.strip()]
        missing = [c for c in classes if c not in names]
        if missing:
            raise ForgetkitError(f"{args.class_index_file} lacks classes {missing[:5]}; it must list every class "
                                 f"folder name in the checkpoint head's output order (--class-index-file)")
        indices = [names.index(c) for c in classes]
    with OutputLock(out):
        model = load_external_weights(weights, args.arch, len(classes), class_indices=indices, **overrides)
        geometry = model.imported_geometry
        save_model(model, out, classes, imported_from=str(weights.resolve()), ledger=[], data=data.recorded(),
                   imported=geometry)  # forget --model needs no --data
    read = ", ".join(f"{k} {v:g}" for k, v in geometry["adopted"].items())
    print(f"saved {args.arch} with {len(classes)} classes to {args.out}/" + (
        f" (from the weights' shapes: {read})" if read else ""))


def cmd_ledger(args) -> None:
    from .ledger import read_ledger, replay_ledger
    from .models import fingerprint
    from .models.formats import read_manifest
    from .report import ledger_table

    read_manifest(args.model)  # a wrong path answers before torch
    ledger, manifest = read_ledger(args.model)
    print(ledger_table(ledger, manifest))
    if args.verify:
        model = replay_ledger(args.model)
        base = manifest.get("base", {}).get("fingerprint", "")
        print(f"\nverified: the {len(ledger)} edits replay from the base {base[:12]} to these weights "
              f"{fingerprint(model)[:12]}, every fingerprint on the way as recorded")


def cmd_verify(args) -> None:
    from .config import from_dict
    from .data.config import DataConfig
    from .engine.config import VerifyConfig
    from .engine.plan import plan_verify

    # every check that needs no torch first
    cfg = from_dict(VerifyConfig, apply_overrides({}, list(args.override)), "verify")
    data = (DataConfig(source=args.data or "image_folder", root=args.root) if args.data or args.root else None)
    classes = [n.strip() for n in args.classes.split(",") if n.strip()] if args.classes else None
    plan = plan_verify(args.model, args.out, cfg, classes, args.reference, args.base, data, args.seed, args.threads,
                       args.overwrite)
    from .report import verify_table
    from .verification import verdict_lines, verify_checkpoint

    results = verify_checkpoint(plan)
    print("\n".join(verify_table(results) + verdict_lines(results)))
    print(f"\nverify.json, verify.md and verify.png in {plan.out}/ (docs/verify.md says how to read them)")
    if not results["verdict"]["pass"]:
        raise RequestFailed(f"the forgotten classes can be recovered more than from a model that never learnt them: "
                            f"{results['verdict']['failed'][0]}")


def cmd_methods(args) -> None:
    from .methods import METHODS

    for name in METHODS:
        cls = METHODS.get(name)
        doc = (cls.__doc__ or "").strip()
        print(f"{name:10s} {','.join(sorted(cls.supports)):8s} {doc.splitlines()[0] if doc else ''}")


def cmd_models(args) -> None:
    from .models import PRESETS

    for name in PRESETS:
        print(f"{name:14s} {(PRESETS.get(name).__doc__ or '').strip().splitlines()[0]}")


def cmd_config(args) -> None:
    from .config import describe
    from .engine.config import RunConfig
    from .methods import METHOD_CONFIGS

    rows = describe(RunConfig)
    if args.method in METHOD_CONFIGS:
        rows += describe(METHOD_CONFIGS.get(args.method), "method.")
    elif args.method:
        chosen = [row for row in rows if row[0] == args.method or row[0].startswith(args.method + ".")]
        if not chosen:
            METHOD_CONFIGS.get(args.method)  # neither a method nor a section: the registry's error, with the closest
        rows = chosen
    for key, default, help_text in rows:
        print(f"{key:32s} {default:22s} {help_text}")


def build_parser() -> argparse.ArgumentParser:
    from . import __version__

    common = argparse.ArgumentParser(add_help=False)  # every command's logging flags
    common.add_argument("-q", "--quiet", action="store_true", help="no progress bars, only warnings and errors")
    common.add_argument("-v", "--verbose", action="store_true", help="also debug messages")
    parser = argparse.ArgumentParser(prog="forgetkit", description="Make pre-trained vision models forget classes, "
                                     "give them back and learn new ones, request after request.")
    parser.add_argument("--version", action="version", version=f"forgetkit {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    def command(name, help_text, **kwargs):
        return sub.add_parser(name, help=help_text, parents=[common], **kwargs)

    def overwrite_flag(p, what="results already in the output folder"):
        p.add_argument("--overwrite", action="store_true", help=f"replace {what} (refused without it)")

    def run_flags(p):
        p.add_argument("-o", "--override", action="append", default=[], metavar="KEY=VALUE",
                       help="config override, e.g. train.steps=200 (repeatable; forgetkit config lists the keys)")
        p.add_argument("--out", help="output folder (overrides output_dir): results, report, plots and the edited "
                                     "model in OUT/model")

    for name, config, help_text in (
            ("demo", "demo", "continual GS-LoRA forgetting on the embedded Fashion-MNIST model (about 2 minutes)"),
            ("clip-demo", "clip_demo", "zero-shot CLIP class forgetting (text space, no images) on the embedded "
                                       "Fashion-MNIST CLIP: forgetkit forget -c clip_demo")):
        p = command(name, help_text)
        run_flags(p)
        overwrite_flag(p, "an earlier demo in the output folder")
        p.set_defaults(func=cmd_demo, demo_config=config)

    def request_command(name, kind, help_text, aliases=(), config="", model="", data="", method="", goals="",
                        protocols=True):
        """A command that runs requests of one kind, named on the command line or from a protocol config."""
        p = command(name, help_text, aliases=list(aliases))
        if protocols:
            p.add_argument("-c", "--config", help=f"YAML file or packaged config name ({config}, ...)")
        p.add_argument("--model", required=not protocols, help=model)
        p.add_argument("--classes", action="append", required=not protocols, metavar="A,B",
                       help=f"classes to {kind} in one request (repeat for several requests, in order)")
        p.add_argument("--data", help=data)
        p.add_argument("--root", help="data root folder (an image folder: ROOT/train/<class>/*, ROOT/test/<class>/*)")
        p.add_argument("--method", help=method)
        p.add_argument("--resume", action="store_true", help="continue a run that was stopped, from its last "
                                                             "finished request (same config and --out)")
        overwrite_flag(p)
        p.add_argument("--allow-fail", action="store_true", help=f"exit 0 even if a request misses its goal ({goals})")
        run_flags(p)
        p.set_defaults(func=cmd_forget, kind=kind, **({} if protocols else {"config": None}))

    request_command(
        "forget", "forget", "forget classes from a model (a classifier or a CLIP): requests named on the command "
        "line, or a protocol from a YAML config", aliases=["clip-forget"], config="demo",
        model="forgetkit checkpoint or run folder to edit (default: the config's, else builtin:fmnist_vit)",
        data="data source (default: the data the model was trained on)",
        method="forgetting method (default gs_lora; forgetkit methods)",
        goals="eval.forget_threshold, eval.max_retain_drop")
    request_command(
        "restore", "restore", "give back classes forgotten earlier (a withdrawn request): the undo method removes "
        "the request that forgot them, exactly for the latest one", model="forgetkit checkpoint or run folder whose "
        "ledger forgot the classes", data="data source (default: the data the model was trained on)",
        method="restore method (default undo; withdraw for a LIRF deposit)",
        goals="eval.max_restore_gap, eval.max_retain_drop", protocols=False)
    request_command(
        "learn", "learn", "teach a model new classes without the old classes' images (LoRA-Sub-DRS by default): "
        "requests named on the command line, or a class-incremental protocol from a YAML config (-c cil)",
        config="cil", model="forgetkit checkpoint or run folder to teach; every class it knows is kept",
        data="data source holding the new classes (default: the data the model was trained on)",
        method="learning method (default lora_sub_drs; forgetkit methods)",
        goals="eval.min_learn_accuracy, eval.max_retain_drop")

    p = command("verify", "check that a model's forgotten classes cannot be cheaply recovered: membership "
                          "inference, feature probes, relearning, CKA (docs/verify.md)")
    p.add_argument("--model", required=True, help="forgetkit checkpoint or run folder to check")
    p.add_argument("--reference", help="optional: a model trained without the forgotten classes (the target row; "
                                       "make one with forgetkit pretrain -o data.classes=[...])")
    p.add_argument("--base", help="the model before forgetting (default: the base its manifest names)")
    p.add_argument("--classes", metavar="A,B", help="the classes to check (default: those its ledger forgot)")
    p.add_argument("--data", help="data source (default: the data the model was trained on)")
    p.add_argument("--root", help="data root folder")
    p.add_argument("--seed", type=int, default=0, help="seed of every draw")
    p.add_argument("--threads", type=int, default=0, help="CPU threads (0 = torch's default)")
    p.add_argument("--out", required=True, help="folder for verify.json, verify.md and verify.png")
    overwrite_flag(p, "a verification already in --out")
    p.add_argument("-o", "--override", action="append", default=[], metavar="KEY=VALUE",
                   help="verification setting, e.g. images_per_class=50 (forgetkit config eval.verify lists them)")
    p.set_defaults(func=cmd_verify)

    p = command("bench", "run several methods on one protocol and compare them")
    p.add_argument("-c", "--config", help="bench spec YAML (default: every method on the demo protocol)")
    p.add_argument("--methods", help="comma-separated subset of methods")
    p.add_argument("--report-only", action="store_true", help="only rebuild the comparison from finished runs")
    p.add_argument("--resume", action="store_true", help="keep finished methods, continue a stopped one from its "
                                                         "last finished request, run the rest")
    overwrite_flag(p, "every method's earlier results")
    run_flags(p)
    p.set_defaults(func=cmd_bench)

    def pretrain_flags(p, config_cls: str):
        p.add_argument("-c", "--config", help=f"YAML with {config_cls} fields")
        p.add_argument("--epochs", type=int)
        p.add_argument("--out", help="checkpoint folder to write")
        overwrite_flag(p, "a checkpoint already in --out")
        p.add_argument("-o", "--override", action="append", default=[], metavar="KEY=VALUE")

    p = command("pretrain", "train a ViT classifier and save a forgetkit checkpoint")
    pretrain_flags(p, "PretrainConfig")
    p.add_argument("--data", help="data source: fashion_mnist, mnist_5k, glyphs60, image_folder or synthetic")
    p.add_argument("--root", help="data root folder")
    p.add_argument("--arch", help="model preset (forgetkit models)")
    p.set_defaults(func=cmd_pretrain)

    p = command("clip-pretrain", "train the small CLIP of the embedded demo on captioned images")
    pretrain_flags(p, "ClipPretrainConfig")
    p.set_defaults(func=cmd_clip_pretrain)

    p = command("import-weights", "make a forgetkit checkpoint from timm, torchvision or Face Transformer ViT "
                                  "weights (the geometry is read from the weight shapes)")
    p.add_argument("--weights", required=True, help=".safetensors or .pth file (read with weights_only=True)")
    p.add_argument("--arch", default="vit_b16", help="the preset closest to the weights: vit_b16 (timm/torchvision, "
                                                     "other ViT sizes by -o), face_vit_p8s8 (the Face Transformer "
                                                     "GS-LoRA trains), or timm:NAME, any timm VisionTransformer by "
                                                     "name (e.g. timm:vit_small_patch16_224)")
    p.add_argument("-o", "--override", action="append", default=[], metavar="FIELD=VALUE",
                   help="change a preset field the weights do not show, e.g. num_heads=6 (a ViT-S) or depth=12")
    p.add_argument("--data-root", required=True, help="image-folder dataset whose classes the model will have")
    p.add_argument("--class-index-file", help="class names in the checkpoint head's order, one per line (for "
                                              "ImageNet100: imagenet_folder_names.txt)")
    p.add_argument("--out", required=True)
    overwrite_flag(p, "a checkpoint already in --out")
    p.set_defaults(func=cmd_import_weights)

    p = command("ledger", "show a checkpoint's ledger of edits; --verify replays it from the base")
    p.add_argument("model", help="forgetkit checkpoint or run folder")
    p.add_argument("--verify", action="store_true", help="rebuild the weights from the base checkpoint and the "
                                                         "saved edits, checking every fingerprint")
    p.set_defaults(func=cmd_ledger)

    command("methods", "list methods").set_defaults(func=cmd_methods)
    command("models", "list model presets").set_defaults(func=cmd_models)
    p = command("config", "list config keys, defaults and help")
    p.add_argument("method", nargs="?", help="also list this method's keys, or only a section's (eval.verify)")
    p.set_defaults(func=cmd_config)
    return parser


class _Stderr(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is when a message comes (a test may have replaced it since)."""

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value):
        pass


def setup_logging(quiet: bool, verbose: bool) -> None:
    """forgetkit's messages (``logging.getLogger("forgetkit")``) on standard error: info by default, warnings only
    with -q, debug with -v. A library caller keeps its own logging: only the CLI calls this."""
    logger = logging.getLogger("forgetkit")
    if not any(isinstance(h, _Stderr) for h in logger.handlers):
        handler = _Stderr()
        handler.setFormatter(logging.Formatter("%(levelname)s: %(message)s"))
        logger.addHandler(handler)
    logger.setLevel(logging.DEBUG if verbose else logging.WARNING if quiet else logging.INFO)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(args.quiet, args.verbose)
    try:
        args.func(args)
    except RequestFailed as err:  # the run is complete and saved; a request missed its goal
        from .runtime import is_worker

        if not is_worker():  # rank 0 says it once for every process
            print(f"error: {err}", file=sys.stderr)
        return 3
    except ForgetkitError as err:  # a user's mistake: one line, whatever the message held
        print(f"error: {' '.join(str(err).split())}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: a run continues from its last finished request with --resume", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
