"""How a sweep (onnxprune/sweep.py) is shown: a table for the terminal and one PNG with
fidelity above and latency (or cost) below, both against the target, so that the knee
where fidelity starts to fall is visible next to what each step buys."""
from __future__ import annotations

import io
import os

from .errors import OnnxPruneError

_KIND = {"macs": "MACs", "params": "parameters"}


# -- table ---------------------------------------------------------------------------------
def table(result) -> str:
    """One line for the original, one per target; columns without a value anywhere
    (fidelity without data, accuracy without labels, latency without bench) are left out."""
    before, acc0, lat0 = result.before, result.accuracy_original, result.original_latency
    columns = [  # header, the original's cell, a target's cell (None: no value)
        ("target", "original", lambda r: f"{r.target:g}"),
        ("MACs", _count(before["macs"]), lambda r: _count(r.macs)),
        ("MAC frac", "1.000", lambda r: f"{r.macs_fraction:.3f}"),
        ("params", _count(before["params"]), lambda r: _count(r.params)),
        ("param frac", "1.000", lambda r: f"{r.params_fraction:.3f}"),
        ("rel.err", "", lambda r: _get(r.fidelity, "mean_rel_error", _rel)),
        ("cosine", "", lambda r: _get(r.fidelity, "mean_cosine", "{:.4f}".format)),
        ("top-1", "", lambda r: _get(r.fidelity, "top1_agreement", "{:.1%}".format)),
        ("accuracy", "" if acc0 is None else f"{acc0:.1%}", lambda r: _get(r.fidelity, "accuracy", "{:.1%}".format)),
        ("acc. no rec.", "", lambda r: _get(r.fidelity_unrecovered, "accuracy", "{:.1%}".format)),
        ("top-1 no rec.", "", lambda r: None if _get(r.fidelity_unrecovered, "accuracy") is not None
         else _get(r.fidelity_unrecovered, "top1_agreement", "{:.1%}".format)),
        ("latency ms", "" if lat0 is None else f"{lat0.median_ms:.3f}",
         lambda r: None if r.latency is None else f"{r.latency.median_ms:.3f}"),
        ("speedup", "" if lat0 is None else "1.00x", lambda r: None if r.latency is None else f"{r.latency.speedup:.2f}x"),
        ("prune s", "", lambda r: f"{r.prune_s:.1f}"),
    ]
    kept = [(h, o, [f(r) for r in result.rows]) for h, o, f in columns]
    kept = [(h, o, cells) for h, o, cells in kept if any(c is not None for c in cells)]
    lines = [[h for h, _, _ in kept], [o for _, o, _ in kept]]
    lines += [[cells[k] or "-" for _, _, cells in kept] for k in range(len(result.rows))]
    widths = [max(len(line[i]) for line in lines) for i in range(len(kept))]
    body = ["  ".join(c.rjust(w) for c, w in zip(line, widths)) for line in lines]
    return "\n".join(_heading(result) + [body[0], "-" * len(body[0])] + body[1:] + _footnotes(result, kept))


def _heading(result) -> list[str]:
    o = result.options
    head = [f"{result.model}: each target is the fraction of the {_KIND[result.metric]} to keep; "
            f"criterion {o.get('criterion')}, round-to {o.get('round_to')}; "
            f"recovery {', '.join(result.recovery) or 'none'}"]
    if result.evaluation:
        e = result.evaluation
        head.append(f"fidelity on {e['samples']} held-out sample(s) of {os.path.basename(e['source'])}"
                    + (" with labels" if e.get("labels") else ""))
    if result.bench:
        b = result.bench
        head.append(f"latency: onnxruntime {b['provider']}, {b['threads']} thread(s), batch {b['batch']}, "
                    f"median of {b['runs']} alternating runs")
    return head


def _footnotes(result, kept) -> list[str]:
    shown = {h for h, _, _ in kept}
    notes = []
    if shown & {"rel.err", "cosine"}:
        notes.append("rel.err, cosine: mean over samples (worst output); top-1: agreement with the original")
    if shown & {"acc. no rec.", "top-1 no rec."}:
        notes.append("no rec.: the same prune before recovery")
    return notes + [f"note: {n}" for n in result.notes]


def _get(summary, key, fmt=None):
    value = None if summary is None else summary.get(key)
    return value if value is None or fmt is None else fmt(value)


def _rel(x: float) -> str:
    return f"{x:.2%}" if x >= 1e-3 else f"{x:.1e}"


def _count(n: int) -> str:
    for scale, unit in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if n >= scale:
            return f"{n / scale:.2f}{unit}"
    return str(n)


# -- plot ----------------------------------------------------------------------------------
def require_matplotlib() -> None:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise OnnxPruneError("--plot needs matplotlib, which is not installed "
                             "(pip install 'onnxprune[plot]')") from None


def plot_png(result) -> bytes:
    """The sweep as one PNG: fidelity (accuracy with labels, else top-1 agreement, else
    cosine) with and without recovery on top; below, the measured speedup next to the MAC
    reduction with bench, else the achieved MAC and parameter fractions."""
    require_matplotlib()
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    quality = _quality(result)
    n = 2 if quality else 1
    fig = Figure(figsize=(7, 0.8 + 3.2 * n), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(n, 1, sharex=True, squeeze=False)[:, 0]
    x = [r.target for r in result.rows]
    if quality:
        _draw_quality(axes[0], x, *quality)
    _draw_cost(axes[-1], x, result)
    axes[-1].set_xlabel(f"target: fraction of the {_KIND[result.metric]} kept")
    axes[-1].invert_xaxis()  # more pruning to the right
    axes[-1].set_xticks(x)
    fig.suptitle(f"{result.model}: pruned at {len(x)} targets", fontsize=11)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    return buf.getvalue()


def _quality(result):
    """(label, with recovery, without recovery or None, original's value or None, percent?)."""
    for key, label, percent in (("accuracy", "accuracy", True), ("top1_agreement", "top-1 agreement", True),
                                ("mean_cosine", "cosine similarity", False)):
        values = [_get(r.fidelity, key) for r in result.rows]
        if any(v is not None for v in values):
            before = [_get(r.fidelity_unrecovered, key) for r in result.rows]
            original = result.accuracy_original if key == "accuracy" else None
            return (label, values, before if any(v is not None for v in before) else None, original, percent,
                    ", ".join(result.recovery))
    return None


def _draw_quality(ax, x, label, values, before, original, percent, methods) -> None:
    nan = float("nan")
    ax.plot(x, [nan if v is None else v for v in values], "o-", color="C0",
            label=f"with recovery ({methods})" if before is not None else "pruned")
    if before is not None:
        ax.plot(x, [nan if v is None else v for v in before], "s--", color="C3", label="without recovery")
    if original is not None:
        ax.axhline(original, color="grey", linestyle=":", label=f"original ({original:.1%})")
    for xi, v in zip(x, values):
        if v is not None:
            ax.annotate(f"{v:.1%}" if percent else f"{v:.4f}", (xi, v), textcoords="offset points",
                        xytext=(0, 6), ha="center", fontsize=8)
    ax.set_ylabel(label)
    ax.grid(alpha=0.3)
    ax.margins(x=0.08, y=0.12)
    ax.legend(fontsize=8, loc="best")


def _draw_cost(ax, x, result) -> None:
    rows = result.rows
    if result.original_latency is not None:
        ax.plot(x, [r.latency.speedup for r in rows], "o-", color="C2", label="measured speedup (latency)")
        ax.plot(x, [1 / r.macs_fraction for r in rows], "^--", color="C7", label="MAC reduction (1 / MAC fraction)")
        ax.axhline(1.0, color="grey", linestyle=":")
        for xi, r in zip(x, rows):
            ax.annotate(f"{r.latency.median_ms:.3g} ms", (xi, r.latency.speedup), textcoords="offset points",
                        xytext=(0, 6), ha="center", fontsize=8)
        ax.set_ylabel("× faster than the original")
    else:
        ax.plot(x, [r.macs_fraction for r in rows], "o-", color="C2", label="MACs kept")
        ax.plot(x, [r.params_fraction for r in rows], "^--", color="C1", label="parameters kept")
        ax.plot(x, x, ":", color="grey", label="target")
        ax.set_ylabel("fraction of the original")
    ax.grid(alpha=0.3)
    ax.margins(x=0.08, y=0.12)
    ax.legend(fontsize=8, loc="best")
