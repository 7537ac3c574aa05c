"""`rtpose bench` report: markdown tables (one per section) and an optional matplotlib figure.

matplotlib is not a dependency of rtpose: without it the PNG is skipped and the report says so.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

SECTION_TITLES = {
    "pose": "Pose model alone (inference only; ms per item = per person)",
    "detector": "Detector alone (inference only, letterboxed input)",
    "pipeline": "Whole top-down pipeline, per image",
    "topdown": "TopDown.predict_batch (the public hot path), per image, stage-timed",
    "topdown-wall": "TopDown.predict_batch on a decoded image, wall time per call (no stage syncs)",
    "topdown-eager": "TopDown.predict_batch without CUDA-graph stages (op by op), per image, stage-timed",
}


def _ms(stage: dict[str, float] | None) -> str:
    if not stage:
        return "–"
    return f"{stage['p50']:.2f} / {stage['p99']:.2f}"


def _number(value: float | None, digits: int = 2) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def section_table(rows: list[dict[str, Any]], section: str) -> list[str]:
    pipeline = section.startswith(("pipeline", "topdown"))
    stage_names = ["decode", "pre", "infer", "post"] if pipeline else ["infer"]
    head = ["backend", "precision", "device", "batch" if not pipeline else "persons"]
    head += [f"{s} p50 / p99 ms" for s in stage_names]
    head += [
        "total p50 ms",
        "total p99 ms",
        "images/s",
        {"pose": "ms / person", "pipeline": "ms / image"}.get(section, "ms / image"),
        "runs",
    ]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * 3 + "---:|" * (len(head) - 3)]
    for row in rows:
        size = row["persons"] if pipeline else row["batch"]
        cells = [row["backend"], row["precision"], row["device"], "–" if size is None else str(size)]
        if row["skipped"]:
            cells += ["skipped: " + row["skipped"]] + [""] * (len(head) - 5)
        else:
            cells += [_ms(row["stages"].get(s)) for s in stage_names]
            cells += [_number(row["total_p50_ms"]), _number(row["total_p99_ms"])]
            cells += [_number(row["items_per_s"], 1), _number(row["ms_per_item"], 3), str(row["runs"])]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def markdown(report: dict[str, Any]) -> str:
    env, config = report["environment"], report["config"]
    device = env.get("gpu", f"CPU {env['cpu']} ({env['cpu_count']} cores)")
    lines = [
        f"# rtpose bench — {device}",
        "",
        f"date {report['date']}; torch {env['torch']}, onnxruntime {env['onnxruntime']}; "
        f"torch threads {env['torch_threads']}, ORT intra-op threads {env['ort_threads'] or 'default'}; "
        f"load average at the end {env['load_average']}; {report['seconds']} s in all",
        "",
    ]
    for name, model in report["models"].items():
        lines.append(f"- {name} ({model['task']}, {model['input_size'][0]}x{model['input_size'][1]}): "
                     f"weights {model['weights']}")  # fmt: skip
    if report.get("pipeline_image"):
        lines.append(f"- pipeline image: {report['pipeline_image']}")
    lines.append(f"- latencies are p50 / p99 over `runs` timed calls after {config['warmup']} warm-up calls")
    for section, title in SECTION_TITLES.items():
        rows = [r for r in report["rows"] if r["section"] == section]
        if not rows:
            continue
        model = rows[0]["model"]
        lines += ["", f"## {title}: {model}", "", *section_table(rows, section)]
    if "plot" in report:
        lines += ["", f"plot: {report['plot']}"]
    return "\n".join(lines) + "\n"


def throughput_panel(ax: Any, series: dict[str, list[tuple[int, float]]], title: str) -> None:
    """Images/s against batch on log-log axes, one line per label of `series` ((batch, images/s) points)."""
    for label, points in series.items():
        xs, ys = zip(*sorted(points), strict=True)
        ax.plot(xs, ys, marker="o", label=label)
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("batch")
    ax.set_ylabel("images / s")
    ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)


def plot(report: dict[str, Any], path: Path) -> bool:
    """Throughput per batch (pose, detector) and stage bars (pipeline); False without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    measured = [r for r in report["rows"] if not r["skipped"]]
    fig, axes = plt.subplots(1, 3, figsize=(17, 4.5))
    for ax, section in zip(axes[:2], ("pose", "detector"), strict=True):
        series: dict[str, list[tuple[int, float]]] = {}
        for r in (r for r in measured if r["section"] == section):
            series.setdefault(r["backend"], []).append((r["batch"], r["items_per_s"]))
        throughput_panel(ax, series, section)
        if series:
            ax.legend(fontsize=8)
    pipeline = [r for r in measured if r["section"] == "pipeline"]
    ax = axes[2]
    bottoms = [0.0] * len(pipeline)
    for stage in report["stages"]:
        values = [r["stages"].get(stage, {}).get("p50", 0.0) for r in pipeline]
        ax.bar([r["backend"] for r in pipeline], values, bottom=bottoms, label=stage)
        bottoms = [b + v for b, v in zip(bottoms, values, strict=True)]
    ax.set_ylabel("ms per image (p50)")
    ax.set_title("pipeline stages")
    ax.legend(fontsize=8)
    ax.tick_params(axis="x", rotation=30)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True
