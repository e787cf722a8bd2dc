"""PP-OCRv4 recognition: character accuracy after pruning, with and without recovery from
calibration data (docs/methods.md §5).

    python benchmarks/ocr_recovery.py [--targets 0.95 0.9 0.8 0.7] [--criteria l1 bgsc-raw]
        [--recover none stats lsq stats,lsq] [--round-to default 1] [--calib 256] [--out benchmarks/results]
        [--append] [--name ocr_recovery] [--scope local|global] [--allocator rank|sensitivity|...]

The library's defaults with data (what `onnxprune in out --target-macs T --calib lines.npz`
does): `--criteria default --recover auto` (criterion auto, recovery auto, every other option
at its default).

Without arguments it runs the whole grid (2 criteria x 4 targets x 4 recoveries). Each
'stats' or 'lsq' pass re-runs both models over the calibration set once per chunk of
layers (about 4e12 MACs per pass, passes/reconstruct.py and onnxprune/layer_data.py), so on
2 busy cores one pass takes 8-9 minutes and the whole grid hours. --append adds the runs of
one invocation to the existing JSON (same data, checked by a fingerprint), so the grid can
be filled piece by piece; the Markdown lists every invocation.

Model: ch_PP-OCRv4_rec_infer.onnx shipped in rapidocr_onnxruntime (nothing is downloaded).

Evaluation (the same as benchmarks/ocr_accuracy.py, whose code is imported): its 60 text
lines (LINES; CJK_LINES too if a CJK font is on the machine), rendered with its font at its
size (FONT_SIZE), recognised by rapidocr's own TextRecognizer (its resize/normalise/pad,
batch 6, CTC greedy decode) pointed at each model file. Character accuracy =
1 - Σ Levenshtein(pred, ref) / Σ len(ref).

Fidelity (report.fidelity and report.fidelity_unrecovered): the same 60 lines, preprocessed
by TextRecognizer.resize_norm_img for one 48 x 320 input (lines wider than 320/48 are
squeezed to 320 px, as TextRecognizer would squeeze them in a batch of that width), passed
as eval_data; top-1 agreement = the fraction of (line, time step) positions whose argmax
over the 6625 classes matches the original's (40 steps per line at width 320).

Calibration: CALIB_N (256) lines that share nothing with the evaluation set but the
alphabet: strings built from CALIB_WORDS (no word of LINES) plus random numbers, prices,
dates, codes and mixed-case words; fonts: every font file found under /usr/share/fonts
except the evaluation font, plus Pillow's bundled default font; sizes CALIB_SIZES (never
FONT_SIZE); random horizontal offsets of 2-14 px, vertical jitter of up to 3 px, text grey
level 0-60 on background 215-255. Each is preprocessed exactly as TextRecognizer does for a
batch of width 320 (resize_norm_img(img, 320 / 48) of a TextRecognizer instance):
[3, 48, 320] in [-1, 1]. Strings whose rendered width at 48 px height would exceed 320 px
are redrawn, so no calibration line is squeezed.

Pruning: onnxprune.plan(path, criterion=C, target_macs=T, input_shapes={"x": (1, 3, 48, 320)},
round_to=R) once per (criterion, target, round_to); then, per recovery method M,
onnxprune.prune(path, plan=plan, input_shapes=..., calibration=<CalibrationSet of the 256
lines>, eval_data=<CalibrationSet of the 60 evaluation lines>, recover=M). C: l1 (library
defaults: local scope) and bgsc with ranking="raw" (global). R: the library default
(16 on AVX-512 CPUs, 8 otherwise) and, with --round-to ... 1, also 1.

Recorded per run: achieved MAC and parameter fractions (report.after / report.before at
width 320), character accuracy and exact lines, fidelity (top-1 agreement, mean relative
error, mean cosine) without and with recovery, recovery wall time (report.timings["recover"]),
the peak resident memory of the process during the prune call above the resident memory
before it (sampled every 20 ms from /proc/self/statm), the recovery notes, and the
parameters the pruned graph actually reads (report.after["params"] also counts the
initializers that recovery replaced and left in the model unread; both are kept).
Writes benchmarks/results/ocr_recovery.{json,md}.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import sys
import tempfile
import threading
import time
import traceback

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))

import numpy as np  # noqa: E402
import onnx  # noqa: E402
import onnxruntime as ort  # noqa: E402
import PIL  # noqa: E402
from PIL import Image, ImageDraw, ImageFont  # noqa: E402

import ocr_accuracy as base  # noqa: E402  (evaluation lines, rendering, recognition, accuracy)
import onnxprune  # noqa: E402
from onnxprune.calibration import load_calibration  # noqa: E402

COMMAND = "python benchmarks/ocr_recovery.py"
MODEL = base.MODEL
INPUT_SHAPES = {"x": (1, 3, 48, 320)}
TARGETS = [0.95, 0.9, 0.8, 0.7]
CRITERIA = {"l1": {"criterion": "l1"}, "bgsc-raw": {"criterion": "bgsc", "ranking": "raw"},
            "activation": {"criterion": "activation"},   # reads the calibration lines
            "bn-variance": {"criterion": "bn-variance"},
            "default": {}}   # the library's defaults with data (criterion auto); run it with --recover auto
DATA_CRITERIA = ("activation", "default")
# "default" is what a user gets from `--calib lines.npz` alone: no evaluation lines reach the
# library, which holds out a fifth of the calibration lines itself, for its fidelity report and
# for auto recovery's choice; the character accuracy is still measured on the evaluation lines.
CALIBRATION_ONLY = ("default",)
RECOVERIES = ["none", "stats", "lsq", "stats,lsq"]
CALIB_N = 256
CALIB_SIZES = [24, 26, 28, 30, 34, 36]
CALIB_SEED = 1234
WIDTH = 320

# Words for calibration strings; any that occurs in the evaluation lines is dropped below.
CALIB_WORDS = """
apricot harbour violet quarry lantern meadow copper saddle ribbon falcon orchard marble
pepper candle walnut ticket silver window garden market station museum bridge castle
library theatre hospital airport harvest winter summer autumn spring river mountain forest
valley island desert ocean village county street avenue square parking north south east west
receipt balance deposit invoice voucher discount refund payment account transfer customer
supplier warehouse delivery shipment package battery charger cable adapter keyboard monitor
printer scanner camera lens tripod bottle basket pillow blanket curtain carpet mirror
lamp chair table desk shelf drawer cabinet kitchen bathroom bedroom garage balcony roof
orange banana cherry grape lemon mango melon peach pear plum tomato potato onion garlic
carrot cabbage spinach butter cheese yogurt cream sugar flour salt rice pasta noodles
soup salad sandwich pizza burger coffee cake cookie chocolate juice water lemonade
doctor nurse teacher driver pilot farmer baker tailor painter writer singer dancer
Amsterdam Madrid Vienna Prague Lisbon Dublin Oslo Helsinki Warsaw Athens Rome Zurich
Boston Chicago Denver Seattle Toronto Sydney Melbourne Osaka Seoul Delhi Cairo Lima
Quantum Vector Matrix Tensor Kernel Buffer Socket Thread Process Module Package Bundle
alpha beta gamma delta epsilon sigma omega zero one two three four five six seven eight nine
""".split()
CALIB_PUNCT = [".", ",", ":", "-", "/", "#", "%", "+", "(", ")", "&", "'", "!", "?", "@", "*", "="]


def calibration_fonts(eval_font_path):
    """(label, loader(size)) for every font file but the evaluation one, plus Pillow's default."""
    fonts = []
    for folder, _dirs, files in sorted(os.walk("/usr/share/fonts")):
        for f in sorted(files):
            path = os.path.join(folder, f)
            if f.lower().endswith((".ttf", ".otf")) and os.path.realpath(path) != os.path.realpath(eval_font_path or ""):
                if "Math" in f:     # symbol coverage only
                    continue
                fonts.append((path, (lambda p: lambda size: ImageFont.truetype(p, size))(path)))
    fonts.append(("PIL load_default", lambda size: ImageFont.load_default(size=size)))
    return fonts


def calibration_string(rng, words) -> str:
    kind = rng.integers(0, 8)
    w = lambda: words[rng.integers(len(words))]  # noqa: E731
    if kind == 0:
        return f"{w()} {w()}"
    if kind == 1:
        return f"{w().capitalize()} {rng.integers(1, 999)}"
    if kind == 2:
        return f"{rng.integers(1, 99)}.{rng.integers(0, 99):02d} {w().upper()}"
    if kind == 3:
        return f"{rng.integers(1, 28):02d}/{rng.integers(1, 12):02d}/{rng.integers(1970, 2030)}"
    if kind == 4:
        letters = "ABCDEFGHJKLMNPQRSTUVWXYZ"
        return (f"{letters[rng.integers(24)]}{letters[rng.integers(24)]}-{rng.integers(100, 99999)}"
                f"{CALIB_PUNCT[rng.integers(len(CALIB_PUNCT))]}")
    if kind == 5:
        return f"{w()}{CALIB_PUNCT[rng.integers(len(CALIB_PUNCT))]} {w()}"
    if kind == 6:
        return " ".join(str(rng.integers(0, 10 ** rng.integers(1, 5))) for _ in range(rng.integers(2, 4)))
    return f"{w().title()} {w()} {rng.integers(2, 60)}"


def render_calibration(text, font, rng) -> np.ndarray:
    """Grey-ish text on a light background, 48 px high, with offsets; BGR uint8."""
    left, top, right, bottom = font.getbbox(text)
    pad_l = int(rng.integers(2, 15))
    width = int(right - left) + pad_l + int(rng.integers(2, 15))
    bg = int(rng.integers(215, 256))
    fg = int(rng.integers(0, 61))
    img = Image.new("RGB", (max(width, 16), 48), (bg, bg, bg))
    draw = ImageDraw.Draw(img)
    y = (48 - (bottom - top)) / 2 - top + float(rng.integers(-3, 4))
    draw.text((pad_l - left, y), text, fill=(fg, fg, fg), font=font)
    return np.ascontiguousarray(np.asarray(img)[:, :, ::-1])


def build_calibration(eval_lines, eval_font_path, recognizer, n=CALIB_N):
    rng = np.random.default_rng(CALIB_SEED)
    eval_words = {t.lower().strip(".,:%#") for line in eval_lines for t in line.split()}
    words = [x for x in CALIB_WORDS if x.lower() not in eval_words]
    fonts = calibration_fonts(eval_font_path)
    texts, meta, arrays = [], [], []
    eval_set = set(eval_lines)
    while len(arrays) < n:
        text = calibration_string(rng, words)
        if text in eval_set:
            continue
        k = int(rng.integers(len(fonts)))
        size = int(rng.choice(CALIB_SIZES))
        img = render_calibration(text, fonts[k][1](size), rng)
        if img.shape[1] / img.shape[0] > WIDTH / 48:
            continue    # would be squeezed: draw another
        arrays.append(recognizer.resize_norm_img(img, WIDTH / 48))
        texts.append(text)
        meta.append((fonts[k][0], size))
    x = np.stack(arrays).astype(np.float32)
    return x, texts, meta, [f[0] for f in fonts], len(CALIB_WORDS) - len(words)


def evaluation_lines():
    """(lines, their BGR images, the evaluation font's path, a TextRecognizer on MODEL):
    exactly ocr_accuracy.py's evaluation set (CJK lines too when a CJK font is installed)."""
    font_path = base.find_font(base.FONT_CANDIDATES)
    font = ImageFont.truetype(font_path, base.FONT_SIZE) if font_path else ImageFont.load_default(size=base.FONT_SIZE)
    cjk_path = base.find_font(base.CJK_FONT_CANDIDATES)
    lines = list(base.LINES)
    images = [base.render(t, font) for t in lines]
    if cjk_path:
        cjk_font = ImageFont.truetype(cjk_path, base.FONT_SIZE)
        images += [base.render(t, cjk_font) for t in base.CJK_LINES]
        lines += base.CJK_LINES
    recognizer = base.TextRecognizer({"model_path": MODEL, "use_cuda": False, "use_dml": False,
                                      "rec_img_shape": [3, 48, WIDTH], "rec_batch_num": 6,
                                      "intra_op_num_threads": -1, "inter_op_num_threads": -1})
    return lines, images, font_path, recognizer


class PeakRSS:
    """Peak resident memory of this process while the block runs, sampled every 20 ms."""

    def __enter__(self):
        self.page = os.sysconf("SC_PAGE_SIZE")
        self.start = self.peak = self._rss()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)
        self._thread.start()
        return self

    def _rss(self):
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * self.page

    def _poll(self):
        while not self._stop.wait(0.02):
            self.peak = max(self.peak, self._rss())

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self._rss())
        self.delta_mb = (self.peak - self.start) / 2 ** 20


def live_params(proto) -> int:
    """Float parameters of the initializers some node reads (report.after["params"] also counts
    initializers that recovery replaced and left behind unread)."""
    used = {i for n in proto.graph.node for i in n.input}
    return sum(int(np.prod(t.dims)) for t in proto.graph.initializer
               if t.name in used and t.data_type in FLOAT_TYPES)


def dead_initializers(proto) -> dict:
    used = {i for n in proto.graph.node for i in n.input}
    dead = [t for t in proto.graph.initializer if t.name not in used]
    return {"count": len(dead), "elements": sum(int(np.prod(t.dims)) for t in dead)}


FLOAT_TYPES = (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.DOUBLE, onnx.TensorProto.BFLOAT16)


def fid(f):
    if f is None:
        return None
    o = f.outputs[0]
    return {"top1_agreement": o.top1_agreement, "mean_rel_error": o.mean_rel_error, "mean_cosine": o.mean_cosine,
            "samples": o.samples, "positions": o.top1_total}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--targets", type=float, nargs="+", default=TARGETS)
    ap.add_argument("--criteria", nargs="+", default=list(CRITERIA), choices=list(CRITERIA))
    ap.add_argument("--recover", nargs="+", default=RECOVERIES)
    ap.add_argument("--round-to", nargs="+", default=["default"],
                    help="'default' (the library's) and/or integers")
    ap.add_argument("--calib", type=int, default=CALIB_N)
    ap.add_argument("--scope", choices=["local", "global"], default=None, help="default: the criterion's")
    ap.add_argument("--allocator", default=None, help="default: the library's (auto with calibration data, else "
                    "rank); or rank, sensitivity, density, synexp, ...")
    ap.add_argument("--out", default=os.path.join(ROOT, "benchmarks", "results"))
    ap.add_argument("--name", default="ocr_recovery")
    ap.add_argument("--append", action="store_true",
                    help="add this invocation's runs to an existing JSON of the same name (same model, "
                         "evaluation and calibration data, checked by fingerprint); a run with the same "
                         "(criterion, target, round_to, recovery, calibration size) is replaced")
    args = ap.parse_args()
    t0 = time.perf_counter()

    lines, images, font_path, recognizer = evaluation_lines()
    n_chars = sum(len(t) for t in lines)
    calib_x, calib_texts, calib_meta, calib_fonts, dropped_words = build_calibration(lines, font_path, recognizer,
                                                                                         args.calib)
    eval_x = np.stack([recognizer.resize_norm_img(img, WIDTH / 48) for img in images]).astype(np.float32)
    squeezed = sum(img.shape[1] / img.shape[0] > WIDTH / 48 for img in images)
    spec = {"x": (None, 3, 48, WIDTH)}
    fingerprint = hashlib.sha256(calib_x.tobytes() + eval_x.tobytes()).hexdigest()[:16]
    calib = load_calibration([{"x": calib_x[i:i + 32]} for i in range(0, len(calib_x), 32)], spec)
    held = load_calibration([{"x": eval_x}], spec)
    print(f"calibration: {len(calib)} lines, {len(calib_fonts)} fonts; evaluation: {len(lines)} lines "
          f"({n_chars} chars, {squeezed} squeezed for fidelity)", flush=True)

    original = onnx.load(MODEL)
    metadata = list(original.metadata_props)
    base_preds = base.recognise(MODEL, images)
    base_acc = base.char_accuracy(base_preds, lines)
    base_exact = sum(p == r for p, r in zip(base_preds, lines))
    # CTC: class 0 is the blank; the share of blank steps is what an all-blank model agrees on
    out0 = ort.InferenceSession(MODEL, providers=["CPUExecutionProvider"]).run(None, {"x": eval_x})[0]
    blank_fraction = float((out0.argmax(-1) == 0).mean())
    print(f"original: char accuracy {base_acc:.4f}, exact lines {base_exact}/{len(lines)}", flush=True)

    runs = []
    with tempfile.TemporaryDirectory() as tmpdir:
        for rt in args.round_to:
            round_to = None if rt == "default" else int(rt)
            for crit in args.criteria:
                for target in args.targets:
                    entry0 = {"criterion": crit, "target_macs": target, "round_to_arg": rt, "scope": args.scope,
                              "allocator": args.allocator}
                    try:
                        data = {"calibration": calib, "eval_data": None if crit in CALIBRATION_ONLY else held} \
                            if crit in DATA_CRITERIA else {}
                        plan, info = onnxprune.plan(MODEL, target_macs=target, input_shapes=INPUT_SHAPES,
                                                    round_to=round_to, scope=args.scope, allocator=args.allocator,
                                                    **CRITERIA[crit], **data)
                        entry0["round_to"] = info.options.get("round_to")
                        entry0["plan_s"] = info.timings.get("total")
                        entry0["allocator_chosen"] = info.options.get("allocator")
                        entry0["coupled_chosen"] = info.options.get("coupled")
                        entry0["plan_notes"] = [n for n in info.notes if n.startswith("--allocator auto")]
                    except Exception as e:
                        runs.append({**entry0, "error": f"{type(e).__name__}: {e}"})
                        print(f"  {crit} T={target} r={rt}: plan failed: {e}", flush=True)
                        continue
                    for method in args.recover:
                        entry = {**entry0, "recover": method, "calib_n": len(calib),
                                 "when": time.strftime("%Y-%m-%d %H:%M:%S")}
                        try:
                            with PeakRSS() as mem:
                                slim, report = onnxprune.prune(MODEL, plan=plan, input_shapes=INPUT_SHAPES,
                                                               calibration=calib, recover=method,
                                                               eval_data=None if crit in CALIBRATION_ONLY else held)
                            entry["macs_frac"] = report.after["macs"] / report.before["macs"]
                            entry["params_frac_report"] = report.after["params"] / report.before["params"]
                            entry["params_frac"] = live_params(slim) / report.before["params"]
                            entry["dead_initializers"] = dead_initializers(slim)
                            entry["recover_s"] = report.timings.get("recover")
                            entry["evaluate_s"] = report.timings.get("evaluate")
                            entry["prune_total_s"] = report.timings.get("total")
                            entry["peak_rss_delta_mb"] = round(mem.delta_mb, 1)
                            entry["fidelity"] = fid(report.fidelity)
                            entry["fidelity_unrecovered"] = fid(report.fidelity_unrecovered)
                            entry["recovery_notes"] = [n for n in report.recovery.get("notes", [])
                                                       if not n.startswith("fidelity:")]
                            acc, preds, _ = base.evaluate_proto(slim, images, lines, metadata, tmpdir, "pruned")
                            entry["char_acc"] = acc
                            entry["exact_lines"] = sum(p == r for p, r in zip(preds, lines))
                            entry["sample_preds"] = preds[:6]
                        except Exception as e:  # recorded, not hidden
                            entry["error"] = f"{type(e).__name__}: {e}"
                            entry["traceback_tail"] = traceback.format_exc().strip().splitlines()[-4:]
                        runs.append(entry)
                        if "char_acc" in entry:
                            f = entry["fidelity"]
                            status = (f"macs {entry['macs_frac']:.3f} acc {entry['char_acc']:.4f} "
                                      f"top1 {f['top1_agreement']:.3f} recover {entry['recover_s']:.1f}s "
                                      f"+{entry['peak_rss_delta_mb']:.0f}MB")
                        else:
                            status = entry["error"]
                        print(f"  {crit:8s} T={target} r={entry.get('round_to')} {method:9s}: {status}  "
                              f"[{time.perf_counter() - t0:.0f}s]", flush=True)

    elapsed = time.perf_counter() - t0
    command = (COMMAND + " " + " ".join(sys.argv[1:])).strip()
    json_path = os.path.join(args.out, args.name + ".json")
    invocations = [{"command": command, "elapsed_s": round(elapsed, 1), "runs": len(runs),
                    "finished": time.strftime("%Y-%m-%d %H:%M:%S"), "load_average": os.getloadavg()}]
    if args.append and os.path.exists(json_path):
        with open(json_path) as f:
            old = json.load(f)
        if old.get("fingerprint") != fingerprint or old["original"]["char_acc"] != base_acc:
            raise SystemExit(f"{json_path} was made with other data or another model: not appending")
        key = lambda r: (r["criterion"], r["target_macs"], r["round_to_arg"], r.get("recover"), r.get("calib_n"))  # noqa: E731
        new_keys = {key(r) for r in runs}
        runs = [r for r in old["runs"] if key(r) not in new_keys] + runs
        invocations = old["invocations"] + invocations
    result = {
        "command": command, "invocations": invocations, "fingerprint": fingerprint,
        "model": os.path.relpath(MODEL, base.PKG),
        "onnxruntime": ort.__version__, "onnx": onnx.__version__, "pillow": PIL.__version__,
        "numpy": np.__version__, "python": platform.python_version(), "machine": platform.machine(),
        "cpus": os.cpu_count(), "input_shapes": {k: list(v) for k, v in INPUT_SHAPES.items()},
        "evaluation": {"font": font_path or f"PIL load_default(size={base.FONT_SIZE})", "font_size": base.FONT_SIZE,
                       "cjk_font": base.find_font(base.CJK_FONT_CANDIDATES), "n_lines": len(lines), "n_chars": n_chars,
                       "squeezed_for_fidelity": int(squeezed)},
        "calibration": {"n": len(calib), "seed": CALIB_SEED, "fonts": calib_fonts, "sizes": CALIB_SIZES,
                        "words_dropped_as_in_eval": dropped_words,
                        "font_use": {f: sum(m[0] == f for m in calib_meta) for f in calib_fonts},
                        "examples": calib_texts[:20],
                        "shared_with_eval": sorted(set(calib_texts) & set(lines))},
        "original": {"char_acc": base_acc, "exact_lines": base_exact,
                     "blank_fraction_of_top1_at_width_320": blank_fraction},
        "runs": runs, "elapsed_s": round(sum(i["elapsed_s"] for i in invocations), 1),
    }
    os.makedirs(args.out, exist_ok=True)
    with open(json_path, "w") as f:
        json.dump(result, f, indent=1, ensure_ascii=False)
    text = markdown(result, base_acc, base_exact, lines, n_chars)
    with open(os.path.join(args.out, args.name + ".md"), "w") as f:
        f.write(text)
    print()
    print(text)


def markdown(result, base_acc, base_exact, lines, n_chars) -> str:
    cal = result["calibration"]
    md = [
        "# PP-OCRv4 recognition: pruning with recovery from calibration data",
        "",
        f"Regenerate ({result['cpus']} CPUs; load average at the end of each in brackets):",
        "",
    ]
    md += [f"    {i['command']}    # {i['elapsed_s']:.0f} s, {i['runs']} runs [{i['load_average'][0]:.1f}]"
           for i in result["invocations"]]
    md += [
        "",
        f"Evaluation: benchmarks/ocr_accuracy.py's {len(lines)} lines ({n_chars} characters), font "
        f"`{result['evaluation']['font']}` at {result['evaluation']['font_size']} px, recognised by rapidocr's "
        "TextRecognizer. Calibration: "
        f"{cal['n']} other lines (other words and strings; fonts: "
        + ", ".join(f"`{os.path.basename(f)}`" for f in cal["fonts"])
        + f"; sizes {cal['sizes']} px; offsets and grey levels varied), preprocessed as TextRecognizer "
        "does to [3, 48, 320]. Fidelity: top-1 agreement over (line, time step) positions of the "
        "evaluation lines at width 320.",
        "",
        f"**Unpruned: character accuracy {base_acc:.4f}** ({base_exact}/{len(lines)} lines exact).",
        "",
        "| criterion | round_to | target | MACs kept | params kept | recovery | calib | char acc | Δ vs unpruned (pt) "
        "| top-1 agree (before) | rel. error | recover s | peak MB |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    order = {m: k for k, m in enumerate(RECOVERIES)}
    runs = sorted(result["runs"], key=lambda r: (str(r.get("round_to", r["round_to_arg"])), r["criterion"],
                                                 -r["target_macs"], order.get(r.get("recover"), 9),
                                                 r.get("calib_n", 0)))
    for r in runs:
        if "char_acc" not in r:
            md.append(f"| {r['criterion']} | {r.get('round_to', r['round_to_arg'])} | {r['target_macs']} | - | - | "
                      f"{r.get('recover', '-')} | {r.get('calib_n', '')} | failed: `{r['error'][:70]}` | | | | | |")
            continue
        f = r["fidelity"]
        md.append(f"| {r['criterion']} | {r['round_to']} | {r['target_macs']} | {r['macs_frac']:.3f} | "
                  f"{r['params_frac']:.3f} | {r['recover']} | {r.get('calib_n', '')} | {r['char_acc']:.4f} | "
                  f"{100 * (r['char_acc'] - base_acc):+.1f} | {f['top1_agreement']:.3f}"
                  + (f" ({r['fidelity_unrecovered']['top1_agreement']:.3f})" if r.get("fidelity_unrecovered") else "")
                  + f" | "
                  f"{f['mean_rel_error']:.3f} | {r['recover_s']:.1f} | {r['peak_rss_delta_mb']:.0f} |")
    md += ["",
           "Δ: character accuracy minus the unpruned model's, in percentage points. top-1 agree / rel. "
           "error: report.fidelity on the evaluation lines (for criterion 'default': on the fifth of the "
           "calibration lines the library holds out itself, since no evaluation lines are passed to it); "
           "in brackets report.fidelity_unrecovered, the same plan before recovery. The original's top-1 class is the CTC blank on "
           f"{result['original'].get('blank_fraction_of_top1_at_width_320', float('nan')):.3f} of those "
           "positions, so a model that outputs only blanks scores about that much. params kept: float parameters of the initializers the pruned graph "
           "reads, over the original's (report.after['params'] also counts the weights recovery replaced "
           "and left in the file unread; both are in the JSON). recover s: report.timings['recover'] "
           "(the recovery passes, calibration data already in memory). peak MB: the process's peak "
           "resident memory during the whole prune call (load, rewrite, recovery, fidelity) above "
           "its resident memory before the call. Accuracy can be negative (more edits than "
           "reference characters).", ""]
    return "\n".join(md)


if __name__ == "__main__":
    main()
