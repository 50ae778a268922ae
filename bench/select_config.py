"""Choose hyper-parameters on the validation split over a whole continual protocol, never on the test set.

Runs a forgetting config for every combination of the ``--grid`` values, evaluating on ``val_per_class`` held-out
training images per class that no method trains on, and prints per task H, Acc_r, Acc_f, Acc_o, Acc_m (missing
classes, when there are any), the number of blocks whose LoRA ends near zero and the issue-2 quality checks that
fail (``gs_lora_quality.py``), plus the average H. Writes ``selection.md`` in ``--out``.

    .venv/bin/python bench/select_config.py --grid method.alpha=30,60                  # the demo's α
    .venv/bin/python bench/select_config.py --dataset glyphs60 --seeds 0,1,2 --grid train.steps=200,400
    .venv/bin/python bench/select_config.py --config fmnist_fewshot --grid method.beta=[0.2],[1.0] [-o key=value ...]

``--dataset NAME`` points the config at one of the datasets of ``bench/datasets.yaml`` (its model, data, protocol
shape and validation hold-out); several seeds give a row per seed and a mean.
"""

from __future__ import annotations

import argparse
import itertools

from benchdata import dataset_overrides, deep_overrides, deep_row, novel_gap
from gs_lora_quality import ISSUE_10_CHECKS, check

import forgetkit as fk
from forgetkit.io import write_text
from forgetkit.methods.configs import resolved_method_config
from forgetkit.report import fmt, request_label


def parse_grid(items: list[str]) -> list[list[str]]:
    """``key=v1,v2`` items -> every combination, as override lists (lists in values: ``[0.2,0.4]`` stays whole)."""
    axes = []
    for item in items:
        key, _, values = item.partition("=")
        parts, depth, current = [], 0, ""
        for ch in values:
            depth += ch == "[" or ch == "{"
            depth -= ch == "]" or ch == "}"
            if ch == "," and depth == 0:
                parts.append(current)
                current = ""
            else:
                current += ch
        parts.append(current)
        axes.append([f"{key}={v}" for v in parts])
    return [list(combo) for combo in itertools.product(*axes)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="demo", help="packaged config name or YAML path")
    parser.add_argument("--grid", action="append", default=[], help="key=v1,v2,... (repeat for a product)")
    parser.add_argument("--out", default="runs/select")
    parser.add_argument("-o", "--override", action="append", default=[], help="fixed key=value for every run")
    parser.add_argument("--dataset", help="a dataset of bench/datasets.yaml (default: the config's own data)")
    parser.add_argument("--seeds", default="0", help="comma-separated run seeds")
    parser.add_argument("--deep", action="store_true", help="verify every request against the dataset's references "
                        "(bench/references.py) and add the deep checks: probe, k-NN and prototype attack minus the "
                        "reference's, relearn steps beside the reference's, rebound minus the reference's")
    args = parser.parse_args()
    deep = deep_overrides(args.dataset) if args.deep else []
    seeds = [int(s) for s in args.seeds.split(",")]
    lines = [f"# {args.config} on {args.dataset or 'its own data'}: validation split, whole continual protocol", "",
             "Fixed overrides: " + (" ".join(args.override) or "none"), "",
             "| setting | seed | task | H | cumulative H | Acc_r (pre) | Acc_f | Acc_o | Acc_m | blocks near 0 | "
             "failed checks |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    summary = ["", "| setting | mean avg H | mean avg cumulative H | failed checks (of all seeds) |",
               "|---|---|---|---|"]
    deep_lines = ["", "Deep checks after each request (points above the reference; relearn steps model / reference):",
                  "(never-seen: the largest of the three checks above the same checks on never-seen classes, "
                  "when the runs set eval.verify.novel)", "",
                  "| setting | seed | task | probe F | k-NN F | prototype F | relearn steps | rebound | never-seen | "
                  "deep verdict |", "|---|---|---|---|---|---|---|---|---|---|"]
    for i, combo in enumerate(parse_grid(args.grid) if args.grid else [[]]):
        name = " ".join(combo) or "as configured"
        h, h_cum, failures = [], [], []
        for seed in seeds:
            cfg = fk.load_config(args.config, dataset_overrides(args.dataset, "val") + ["save_model=false"]
                                 + deep + args.override + combo
                                 + [f"seed={seed}", f"output_dir={args.out}/run-{i}-{seed}"])
            results = fk.run_requests(cfg, progress=False, overwrite=True)
            checks = check(results, resolved_method_config(cfg.method).get("alpha", 0.0))
            for t, row in zip(results.requests, checks):
                a = t.after
                zeroed = f"{t.stats['groups_zeroed']}/{t.stats['num_groups']}" if "groups_zeroed" in t.stats else "–"
                failed = [k for k, ok in row["checks"].items() if not ok and k in ISSUE_10_CHECKS]
                failures += [f"{k} ({request_label(t)}, seed {seed})" for k in failed]
                lines.append(f"| {name} | {seed} | {request_label(t)} | {fmt(t.h_mean)} | {fmt(t.h_cumulative)} | "
                             f"{fmt(a['acc_r'])} ({fmt(t.pretrained['acc_r'])}) | {fmt(a['acc_f'])} | "
                             f"{fmt(a['acc_o'])} | {fmt(a.get('acc_m'))} | {zeroed} | {', '.join(failed) or '–'} |")
                d = deep_row(t)
                if d is not None:
                    deep_failed, novel = t.verdict["deep_failed"], novel_gap(t)
                    deep_lines.append(
                        f"| {name} | {seed} | {request_label(t)} | {d['probe']:+.1f} | {d['knn']:+.1f} | "
                        f"{d['proto']:+.1f} | {d['relearn'][0] if d['relearn'][0] is not None else '> cap'} / "
                        f"{d['relearn'][1] if d['relearn'][1] is not None else '> cap'} | {d['rebound']:+.1f} | "
                        f"{'–' if novel is None else f'{novel:+.1f}'} | "
                        f"{'pass' if not deep_failed else f'{len(deep_failed)} missed'} |")
            h.append(results.summary["h_mean_avg"])
            h_cum.append(results.summary["h_cumulative_avg"])
            print("\n".join(lines[-len(results.requests):]), flush=True)
        summary.append(f"| {name} | {fmt(sum(h) / len(h))} | {fmt(sum(h_cum) / len(h_cum))} | "
                       f"{len(failures)}{': ' + '; '.join(failures) if failures else ''} |")
        print(summary[-1], flush=True)
        write_text(f"{args.out}/selection.md", "\n".join(lines + summary + (deep_lines if args.deep else [])) + "\n")
    if args.deep:
        print("\n".join(deep_lines))


if __name__ == "__main__":
    main()
