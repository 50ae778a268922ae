"""``forgetkit`` command line: a thin shell over the Python API."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .config import apply_overrides
from .errors import ForgetkitError


class RequestFailed(Exception):
    """A finished run in which at least one request missed its goal (exit status 3)."""


def _print_table(results: dict) -> None:
    from .kinds import REQUEST_KINDS
    from .report import results_table

    if results["kind"] != "forget":  # other kinds print their report's first table
        print(REQUEST_KINDS.get(results["kind"])().report(results).split("\n\n## ")[0])
        return
    print(results_table([(results["method"], results["tasks"])]))
    s = results["summary"]
    print(f"\naverage cumulative H {s['h_cumulative_avg']:.2f}  H {s['h_mean_avg']:.2f}  Acc_f {s['acc_f_avg']:.2f}  "
          f"Acc_r {s['acc_r_avg']:.2f}  ({s['seconds_total']:.0f} s of training and evaluation)")


def cmd_forget(args) -> None:
    from .api import load_config
    from .engine import run_forgetting
    from .kinds import REQUEST_KINDS
    from .methods import METHODS

    if not args.config and not args.classes:
        raise ForgetkitError(f"name what to {args.kind}: --classes A,B (one request; repeat --classes for more) or "
                             f"a protocol config with -c")
    default_method = REQUEST_KINDS.get(args.kind).default_method
    overrides = [f"kind={args.kind}"] + ([f"method={{name: {default_method}}}"] if default_method else [])
    if args.model:
        overrides.append(f"model={args.model}")
    if args.data:
        overrides.append(f"data.source={args.data}")
    if args.root:
        overrides.append(f"data.root={args.root}")
    if args.method:
        overrides.append(f"method={json.dumps({'name': args.method})}")  # the method's own defaults
    if args.classes:
        # requests on a deployed checkpoint: --out is the edited checkpoint itself (weights, manifest and ledger,
        # beside its results and report)
        if not args.out:
            raise ForgetkitError("--classes needs --out: the folder of the edited checkpoint to write")
        requests = [[name.strip() for name in group.split(",") if name.strip()] for group in args.classes]
        overrides += [f"protocol.tasks={json.dumps(requests)}", f"model_dir={args.out}"]
    if args.out:
        overrides.append(f"output_dir={args.out}")
    cfg = load_config(args.config, overrides + list(args.override))
    results = run_forgetting(cfg, progress=not args.quiet, overwrite=args.overwrite, resume=args.resume)
    _print_table(results)
    print(f"\nresults, report.md and plots in {cfg.output_dir}/" + (
        f"; the edited model and its ledger in {cfg.model_dir or cfg.output_dir + '/model'}/" if cfg.save_model
        else ""))
    failed = [t for t in results["tasks"] if not t["verdict"]["pass"]]
    for t in results["tasks"]:
        print(f"{'PASS' if t['verdict']['pass'] else 'FAIL'} request {t['index'] + 1} "
              f"({t['kind']} {', '.join(t['classes'])})" + (f": {'; '.join(t['verdict']['failed'])}"
                                                       if not t["verdict"]["pass"] else ""),
              file=sys.stderr if not t["verdict"]["pass"] else sys.stdout)
    if failed and not args.allow_fail:
        hint = METHODS.get(results["method"]).fix_hint or REQUEST_KINDS.get(failed[0].get("kind", "forget")).fix_hint
        raise RequestFailed(f"{len(failed)} of {len(results['tasks'])} requests missed their goal; {hint}; "
                            f"--allow-fail accepts the result")


def cmd_demo(args) -> None:
    for name in ("model", "classes", "data", "root", "method"):
        setattr(args, name, None)
    args.config, args.overwrite, args.allow_fail, args.resume = args.demo_config, True, False, False
    args.kind = "forget"
    cmd_forget(args)


def cmd_bench(args) -> None:
    from .bench import load_bench_spec, report_only, run_bench

    methods = [m.strip() for m in args.methods.split(",")] if args.methods else None
    spec = load_bench_spec(args.config, methods, args.out, args.override)
    if args.report_only:
        report_only(spec)
    else:
        run_bench(spec, progress=not args.quiet, resume=args.resume)
    print((Path(spec.output_dir) / "comparison.md").read_text())
    print(f"comparison.md, comparison.csv and comparison.png in {spec.output_dir}/")


def cmd_pretrain(args) -> None:
    from .api import load_config
    from .pretraining import PretrainConfig, pretrain

    overrides = list(args.override) + [f"{k}={getattr(args, k)}" for k in ("arch", "epochs", "out")
                                       if getattr(args, k) is not None]
    if args.data:
        overrides.append(f"data.source={args.data}")
    if args.root:
        overrides.append(f"data.root={args.root}")
    cfg = load_config(args.config, overrides, cls=PretrainConfig)
    _, info = pretrain(cfg, progress=not args.quiet)
    print(f"test accuracy {info['test_accuracy']:.2f} % after {info['seconds']:.0f} s; saved to {info['out']}/")


def cmd_clip_pretrain(args) -> None:
    from .api import load_config
    from .clip import ClipPretrainConfig, pretrain_clip

    overrides = list(args.override) + [f"{k}={getattr(args, k)}" for k in ("epochs", "out")
                                       if getattr(args, k) is not None]
    cfg = load_config(args.config, overrides, cls=ClipPretrainConfig)
    info = pretrain_clip(cfg, progress=not args.quiet)
    accs = ", ".join(f"{k} {v:.2f} %" for k, v in info["zero_shot_test_accuracy"].items())
    print(f"zero-shot test accuracy: {accs}; {info['seconds']:.0f} s; saved to {info['out']}/")


def cmd_import_weights(args) -> None:
    from .data import DataConfig, load_data
    from .models import load_external_weights, save_model

    classes = load_data(DataConfig(source="image_folder", root=args.data_root)).classes
    indices = None
    if args.class_index_file:
        names = [ln.strip() for ln in Path(args.class_index_file).read_text().splitlines() if ln.strip()]
        missing = [c for c in classes if c not in names]
        if missing:
            raise ForgetkitError(f"{args.class_index_file} lacks classes {missing[:5]}; it must list every class "
                                 f"folder name in the checkpoint's output order")
        indices = [names.index(c) for c in classes]
    model = load_external_weights(args.weights, args.arch, len(classes), class_indices=indices,
                                  **apply_overrides({}, args.override))
    save_model(model, args.out, classes, imported_from=str(args.weights), ledger=[],
               data={"source": "image_folder", "root": str(args.data_root)})  # forget --model needs no --data
    print(f"saved {args.arch} with {len(classes)} classes to {args.out}/")


def cmd_ledger(args) -> None:
    from .ledger import read_ledger, replay_ledger
    from .models import fingerprint
    from .report import ledger_table

    ledger, manifest = read_ledger(args.model)
    print(ledger_table(ledger, manifest))
    if args.verify:
        model = replay_ledger(args.model)
        base = manifest.get("base", {}).get("fingerprint", "")
        print(f"\nverified: the {len(ledger)} edits replay from the base {base[:12]} to these weights "
              f"{fingerprint(model)[:12]}, every fingerprint on the way as recorded")


def cmd_verify(args) -> None:
    import torch

    from .config import from_dict
    from .data import DataConfig, load_data
    from .data.datasets import validation_holdout
    from .engine import load_checkpoint, model_data_config, resolve_model_path, setup_device, verification_models
    from .io import write_json, write_text
    from .kinds import forgotten_classes
    from .protocol import resolve_class_names
    from .report import plot_verify, verify_table
    from .verify import Verifier, VerifyConfig

    cfg = from_dict(VerifyConfig, apply_overrides({}, list(args.override)), "verify")
    device = setup_device("auto", args.threads)
    model, manifest = load_checkpoint(resolve_model_path(args.model))
    if manifest.get("classes") is None:
        raise ForgetkitError("verify checks classifiers (forgetkit checkpoints with classes), not zero-shot CLIPs")
    data_cfg = DataConfig(source=args.data, root=args.root) if args.data else model_data_config(manifest, args.model)
    classes = list(manifest["classes"])
    splits = load_data(data_cfg)
    missing = [name for name in classes if name not in splits.classes]
    if missing:
        raise ForgetkitError(f"the data lacks the model's class {missing[0]!r}; give the data it was trained on "
                             f"(--data, --root)")
    splits = splits.select(classes).with_preprocess(model.spec.preprocess)
    names = args.classes.split(",") if args.classes else sorted(forgotten_classes(manifest.get("ledger", [])),
                                                                key=classes.index)
    if not names:
        raise ForgetkitError(f"{args.model}'s ledger has forgotten no class; name the classes to check with --classes")
    forgotten = resolve_class_names(names, classes, "--classes")
    retained = [c for c in range(len(classes)) if c not in forgotten]
    pretrained, base_manifest, reference = verification_models(manifest, classes, device, args.base, args.reference)
    if pretrained is None:
        raise ForgetkitError(f"{args.model} names no base model; give the model before forgetting with --base")
    # members are the images the model was trained on: the pre-training's validation hold-out is not
    held_out = (base_manifest.get("pretrain") or {}).get("config", {}).get("val_per_class", 0)
    members = splits.train.subset(torch.nonzero(~torch.isin(
        torch.arange(len(splits.train)), validation_holdout(splits.train.targets, len(classes), held_out))).flatten())
    verifier = Verifier(cfg, members, splits.test, args.seed, device, pretrained, reference)
    results = verifier(model.to(device), forgotten, retained)
    results["classes"] = names
    out = Path(args.out)
    write_text(out / "verify.md", "\n".join([f"# Verification of {args.model}: {', '.join(names)}", ""]
                                             + verify_table(results)) + "\n")
    plot_verify(results, out / "verify.png")
    write_json(out / "verify.json", results)
    print("\n".join(verify_table(results)))
    print(f"\nverify.json, verify.md and verify.png in {out}/ (docs/verify.md says how to read them)")


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
    from .engine import RunConfig
    from .methods import METHODS

    rows = describe(RunConfig)
    if args.method:
        rows += describe(METHODS.get(args.method).config_cls, "method.")
    for key, default, help_text in rows:
        print(f"{key:32s} {default:22s} {help_text}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="forgetkit", description="Make pre-trained vision models forget classes.")
    sub = parser.add_subparsers(dest="command", required=True)

    def run_flags(p):
        p.add_argument("-o", "--override", action="append", default=[], metavar="KEY=VALUE",
                       help="config override, e.g. train.steps=200 (repeatable)")
        p.add_argument("--out", help="output folder (overrides output_dir)")
        p.add_argument("-q", "--quiet", action="store_true", help="no progress bars")

    p = sub.add_parser("demo", help="continual GS-LoRA forgetting on the embedded Fashion-MNIST model")
    run_flags(p)
    p.set_defaults(func=cmd_demo, demo_config="demo")

    def request_command(name, kind, help_text, aliases=(), config="", model="", classes="", data="", method="",
                        goals=""):
        """A command that runs requests of one kind, named on the command line or from a protocol config."""
        p = sub.add_parser(name, aliases=list(aliases), help=help_text)
        p.add_argument("-c", "--config", help=f"YAML file or packaged config name ({config}, ...)")
        p.add_argument("--model", help=model)
        p.add_argument("--classes", action="append", metavar="A,B",
                       help=f"classes to {kind} in one request (repeat for several requests, in order); --out is then "
                            f"the {classes} checkpoint")
        p.add_argument("--data", help=data)
        p.add_argument("--root", help="data root folder")
        p.add_argument("--method", help=method)
        p.add_argument("--resume", action="store_true", help="continue a run that was stopped, from its last "
                                                             "finished request (same config and --out)")
        p.add_argument("--overwrite", action="store_true", help="replace results already in the output folder")
        p.add_argument("--allow-fail", action="store_true", help=f"exit 0 even if a request misses its goal ({goals})")
        run_flags(p)
        p.set_defaults(func=cmd_forget, kind=kind)

    request_command(
        "forget", "forget", "forget classes from a model (a classifier or a CLIP): requests named on the command "
        "line, or a protocol from a YAML config", aliases=["clip-forget"], config="demo",
        model="forgetkit checkpoint to edit (default: the config's, else builtin:fmnist_vit)", classes="edited",
        data="data source (default: the data the model was trained on)",
        method="forgetting method (default gs_lora; forgetkit methods)",
        goals="eval.forget_threshold, eval.max_retain_drop")

    p = sub.add_parser("restore", help="give back classes forgotten earlier (a withdrawn request): the undo method "
                                       "removes the request that forgot them, exactly for the latest one")
    p.add_argument("--model", required=True, help="forgetkit checkpoint whose ledger forgot the classes")
    p.add_argument("--classes", action="append", required=True, metavar="A,B", help="classes to give back")
    p.add_argument("--out", required=True, help="the restored checkpoint to write")
    p.add_argument("--method", help="restore method (default undo)")
    p.add_argument("--data", help="data source (default: the data the model was trained on)")
    p.add_argument("--root", help="data root folder")
    p.add_argument("--allow-fail", action="store_true", help="exit 0 even if a restore misses its goal")
    p.add_argument("-o", "--override", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_forget, kind="restore", config=None, resume=False, overwrite=False)

    request_command(
        "learn", "learn", "teach a model new classes without the old classes' images (LoRA-Sub-DRS by default): "
        "requests named on the command line, or a class-incremental protocol from a YAML config (-c cil)",
        config="cil", model="forgetkit checkpoint to teach (a classifier, or a backbone pre-trained on other classes)",
        classes="grown", data="data source holding the new classes (default: the data the model was trained on)",
        method="learning method (default lora_sub_drs; forgetkit methods)",
        goals="eval.min_learn_accuracy, eval.max_retain_drop")

    p = sub.add_parser("verify", help="check that a model's forgotten classes cannot be cheaply recovered: "
                                      "membership inference, feature probes, relearning, CKA (docs/verify.md)")
    p.add_argument("--model", required=True, help="forgetkit checkpoint to check")
    p.add_argument("--reference", help="a model trained without the forgotten classes (the target row)")
    p.add_argument("--base", help="the model before forgetting (default: the base its manifest names)")
    p.add_argument("--classes", metavar="A,B", help="the classes to check (default: those its ledger forgot)")
    p.add_argument("--data", help="data source (default: the data the model was trained on)")
    p.add_argument("--root", help="data root folder")
    p.add_argument("--seed", type=int, default=0, help="seed of every draw")
    p.add_argument("--threads", type=int, default=0, help="CPU threads (0 = torch's default)")
    p.add_argument("--out", required=True, help="folder for verify.json, verify.md and verify.png")
    p.add_argument("-o", "--override", action="append", default=[], metavar="KEY=VALUE",
                   help="verification setting, e.g. images_per_class=50 (forgetkit config eval.verify lists them)")
    p.set_defaults(func=cmd_verify)

    p = sub.add_parser("bench", help="run several methods on one protocol and compare them")
    p.add_argument("-c", "--config", help="bench spec YAML (default: every method on the demo protocol)")
    p.add_argument("--methods", help="comma-separated subset of methods")
    p.add_argument("--report-only", action="store_true", help="only rebuild the comparison from finished runs")
    p.add_argument("--resume", action="store_true", help="keep finished methods, continue a stopped one from its "
                                                         "last finished request, run the rest")
    run_flags(p)
    p.set_defaults(func=cmd_bench)

    def pretrain_flags(p, config_cls: str):
        p.add_argument("-c", "--config", help=f"YAML with {config_cls} fields")
        p.add_argument("--epochs", type=int)
        p.add_argument("--out", help="checkpoint folder to write")
        p.add_argument("-o", "--override", action="append", default=[], metavar="KEY=VALUE")
        p.add_argument("-q", "--quiet", action="store_true")

    p = sub.add_parser("pretrain", help="train a ViT classifier and save a forgetkit checkpoint")
    pretrain_flags(p, "PretrainConfig")
    p.add_argument("--data", help="data source: fashion_mnist, image_folder or synthetic")
    p.add_argument("--root", help="data root folder")
    p.add_argument("--arch", help="model preset (forgetkit models)")
    p.set_defaults(func=cmd_pretrain)

    p = sub.add_parser("clip-demo", help="zero-shot CLIP class forgetting (text space, no images) on the embedded "
                                         "Fashion-MNIST CLIP: forgetkit forget -c clip_demo")
    run_flags(p)
    p.set_defaults(func=cmd_demo, demo_config="clip_demo")

    p = sub.add_parser("clip-pretrain", help="train the small CLIP of the embedded demo on captioned images")
    pretrain_flags(p, "ClipPretrainConfig")
    p.set_defaults(func=cmd_clip_pretrain)

    p = sub.add_parser("import-weights", help="make a forgetkit checkpoint from timm, torchvision or Face "
                                              "Transformer ViT weights")
    p.add_argument("--weights", required=True, help=".safetensors or .pth file (read with weights_only=True)")
    p.add_argument("--arch", default="vit_b16", help="model preset: vit_b16 (timm/torchvision) or face_vit_p8s8 "
                                                     "(the Face Transformer GS-LoRA trains)")
    p.add_argument("-o", "--override", action="append", default=[], metavar="FIELD=VALUE",
                   help="change a preset field, e.g. depth=12 (the papers' depth-12 face ablation)")
    p.add_argument("--data-root", required=True, help="image-folder dataset whose classes the model will have")
    p.add_argument("--class-index-file", help="class names in the checkpoint head's order, one per line (for "
                                              "ImageNet100: imagenet_folder_names.txt)")
    p.add_argument("--out", required=True)
    p.set_defaults(func=cmd_import_weights)

    p = sub.add_parser("ledger", help="show a checkpoint's ledger of edits; --verify replays it from the base")
    p.add_argument("model", help="forgetkit checkpoint folder")
    p.add_argument("--verify", action="store_true", help="rebuild the weights from the base checkpoint and the "
                                                         "saved edits, checking every fingerprint")
    p.set_defaults(func=cmd_ledger)

    sub.add_parser("methods", help="list forgetting methods").set_defaults(func=cmd_methods)
    sub.add_parser("models", help="list model presets").set_defaults(func=cmd_models)
    p = sub.add_parser("config", help="list config keys, defaults and help")
    p.add_argument("method", nargs="?", help="also list this method's keys")
    p.set_defaults(func=cmd_config)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except RequestFailed as err:  # the run is complete and saved; a request missed its goal
        print(f"error: {err}", file=sys.stderr)
        return 3
    except ForgetkitError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
