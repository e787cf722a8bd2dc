"""Calibration data: every source (npz, npy, image folder, iterable of feed dicts), limit,
split, dtype casts, image preprocessing against hand computations, lazy and bounded
reading, and one clear OnnxPruneError line for every kind of bad input."""
from __future__ import annotations

import itertools
import sys

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from helpers import GraphBuilder
from onnxprune.calibration import CalibrationSet, Preprocess, load_calibration, model_inputs
from onnxprune.errors import OnnxPruneError

Image = pytest.importorskip("PIL.Image")


# -- models ------------------------------------------------------------------------------
def image_model(shape=("N", 3, 4, 4)):
    """One image input into a 5-way head; a last dimension of 1 or 3 (and not the second)
    means NHWC."""
    nhwc = shape[-1] in (1, 3) and shape[1] not in (1, 3)
    b = GraphBuilder()
    x = b.input("x", list(shape))
    pooled = b.op("Flatten", [b.op("ReduceMean", [x], axes=[1, 2] if nhwc else [2, 3], keepdims=1)])
    return b.model([b.gemm(pooled, shape[-1] if nhwc else shape[1], 5)])


def two_input_model():
    b = GraphBuilder()
    return b.model([b.op("Add", [b.input("a", ["N", 3]), b.input("b", ["N", 3])])])


def rng_arrays(n, shape=(3, 4, 4), seed=0):
    return np.random.default_rng(seed).standard_normal((n, *shape)).astype(np.float32)


def batches_of(cs: CalibrationSet, bs: int, **kw):
    return list(cs.batches(bs, **kw))


def collect(cs: CalibrationSet, name="x", bs=4):
    return np.concatenate([f[name] for f in cs.batches(bs)])


def error(fn, *args, **kwargs) -> str:
    with pytest.raises(OnnxPruneError) as e:
        fn(*args, **kwargs)
    message = str(e.value)
    assert "\n" not in message and "Traceback" not in message, message
    return message


# -- what the model takes ----------------------------------------------------------------
def test_model_inputs_from_proto_path_and_model(tmp_path):
    m = image_model()
    path = tmp_path / "m.onnx"
    onnx.save(m, path)
    assert model_inputs(m) == {"x": (None, 3, 4, 4)}
    assert model_inputs(path) == {"x": (None, 3, 4, 4)}
    from onnxprune.load import load
    assert model_inputs(load(m)) == {"x": (1, 3, 4, 4)}  # load fixes a dynamic batch to 1


# -- npz ---------------------------------------------------------------------------------
def test_npz_batches_hold_every_sample_in_order(tmp_path):
    x = rng_arrays(10)
    np.savez(tmp_path / "d.npz", x=x, labels=np.arange(10) % 5)
    cs = load_calibration(tmp_path / "d.npz", image_model())
    assert cs.n_samples == len(cs) == 10 and cs.input_names == ["x"]
    assert [len(f["x"]) for f in cs.batches(4)] == [4, 4, 2]
    np.testing.assert_array_equal(collect(cs), x)
    np.testing.assert_array_equal(cs.labels, np.arange(10) % 5)
    assert cs.labels.dtype == np.int64
    assert cs.sample_shapes == {"x": (3, 4, 4)}
    d = cs.describe()
    assert (d["kind"], d["samples"], d["labels"], d["inputs"]["x"]["sample_shape"]) == ("npz", 10, True, [3, 4, 4])


def test_npz_of_a_two_input_model_and_no_labels(tmp_path):
    a, b = rng_arrays(6, (3,)), rng_arrays(6, (3,), seed=1)
    np.savez(tmp_path / "d.npz", a=a, b=b)
    cs = load_calibration(tmp_path / "d.npz", two_input_model())
    assert cs.labels is None
    (feeds,) = batches_of(cs, 8)
    np.testing.assert_array_equal(feeds["a"], a)
    np.testing.assert_array_equal(feeds["b"], b)


def test_input_names_as_a_list_or_a_shape_mapping(tmp_path):
    np.savez(tmp_path / "d.npz", x=rng_arrays(3, (7,)))
    assert len(load_calibration(tmp_path / "d.npz", ["x"])) == 3  # no shapes: nothing to check
    assert len(load_calibration(tmp_path / "d.npz", {"x": ["batch", 7]})) == 3
    assert "the model takes [?, 8]" in error(load_calibration, tmp_path / "d.npz", {"x": ["batch", 8]})


def test_limit_keeps_the_first_samples(tmp_path):
    x = rng_arrays(10)
    np.savez(tmp_path / "d.npz", x=x, labels=np.arange(10))
    cs = load_calibration(tmp_path / "d.npz", image_model(), limit=3)
    assert len(cs) == 3
    np.testing.assert_array_equal(collect(cs), x[:3])
    np.testing.assert_array_equal(cs.labels, [0, 1, 2])
    assert len(load_calibration(tmp_path / "d.npz", image_model(), limit=50)) == 10


def test_limit_skips_validation_of_samples_it_drops(tmp_path):
    x = rng_arrays(5)
    x[4, 0, 0, 0] = np.nan
    np.savez(tmp_path / "d.npz", x=x)
    assert len(load_calibration(tmp_path / "d.npz", image_model(), limit=4)) == 4
    assert "NaN" in error(load_calibration, tmp_path / "d.npz", image_model())


def test_dtype_cast_for_float16_and_per_input(tmp_path):
    np.savez(tmp_path / "d.npz", a=rng_arrays(4, (3,)), b=np.arange(12, dtype=np.int32).reshape(4, 3))
    cs = load_calibration(tmp_path / "d.npz", two_input_model())
    (half,) = batches_of(cs, 4, dtype=np.float16)
    assert half["a"].dtype == np.float16 and half["b"].dtype == np.float16
    (mixed,) = batches_of(cs, 4, dtype={"a": np.float16})
    assert mixed["a"].dtype == np.float16 and mixed["b"].dtype == np.int32
    (stored,) = batches_of(cs, 4)
    np.testing.assert_allclose(half["a"].astype(np.float32), stored["a"], rtol=1e-3)


# -- npy ---------------------------------------------------------------------------------
def test_npy_is_memory_mapped_and_batches_are_views_of_at_most_batch_size(tmp_path):
    x = rng_arrays(2000)
    np.save(tmp_path / "d.npy", x)
    cs = load_calibration(tmp_path / "d.npy", image_model())
    assert len(cs) == 2000
    sizes = []
    for feeds in cs.batches(64):
        assert isinstance(feeds["x"], np.memmap)  # read from the file only when used
        sizes.append(len(feeds["x"]))
    assert max(sizes) == 64 and sum(sizes) == 2000
    np.testing.assert_array_equal(collect(cs, bs=300), x)


def test_npz_batches_are_views_and_subsets_copy_at_most_a_batch(tmp_path):
    x = rng_arrays(200)
    np.savez(tmp_path / "d.npz", x=x)
    cs = load_calibration(tmp_path / "d.npz", image_model())
    first, second = itertools.islice(cs.batches(16), 2)
    assert first["x"].base is not None and second["x"].base is first["x"].base  # slices of one array
    calib, held = cs.split(0.5, seed=0)
    sizes = [len(f["x"]) for f in held.batches(16)]
    assert max(sizes) == 16 and sum(sizes) == 100


# -- image folders -----------------------------------------------------------------------
def save_image(path, array, mode=None):
    Image.fromarray(np.asarray(array, dtype=np.uint8), mode).save(path)


def pixels(seed=0, shape=(4, 4, 3)):
    return np.random.default_rng(seed).integers(0, 256, shape).astype(np.uint8)


MEAN, STD = np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225])
SPEC = "mean=0.485,0.456,0.406;std=0.229,0.224,0.225;scale=255"


def test_png_folder_arithmetic_matches_a_hand_computation(tmp_path):
    imgs = [pixels(k) for k in range(3)]
    for k, im in enumerate(imgs):
        save_image(tmp_path / f"img{k}.png", im)
    cs = load_calibration(tmp_path, image_model(), preprocess=SPEC)
    got = collect(cs, bs=2)
    assert got.dtype == np.float32 and got.shape == (3, 3, 4, 4)  # NCHW, size from the model
    for k, im in enumerate(imgs):  # no resize here (4x4 already): the arithmetic alone
        want = ((im / 255.0 - MEAN) / STD).transpose(2, 0, 1)
        np.testing.assert_allclose(got[k], want, rtol=1e-5, atol=1e-5)
    assert cs.labels is None and cs.describe()["preprocess"].startswith("size=4,4;channels=RGB")


def test_images_are_sorted_by_name_and_other_files_ignored(tmp_path):
    for name, value in (("b.png", 20), ("a.bmp", 10), ("c.JPG", 30)):
        save_image(tmp_path / name, np.full((4, 4, 3), value))
    (tmp_path / "notes.txt").write_text("not an image")
    (tmp_path / ".hidden.png").write_bytes(b"ignored")
    got = collect(load_calibration(tmp_path, image_model(), preprocess="scale=1"))
    assert len(got) == 3
    np.testing.assert_allclose(got[:, 0, 0, 0], [10, 20, 30], atol=2)  # JPEG is lossy


def test_nhwc_layout_from_the_model_and_given_explicitly(tmp_path):
    im = pixels(1)
    save_image(tmp_path / "i.png", im)
    want = (im / 255.0 - MEAN) / STD  # H, W, C: no transpose
    from_model = collect(load_calibration(tmp_path, image_model(("N", 4, 4, 3)), preprocess=SPEC))
    given = collect(load_calibration(tmp_path, ["x"], preprocess=SPEC + ";layout=NHWC;size=4,4"))
    for got in (from_model, given):
        assert got.shape == (1, 4, 4, 3)
        np.testing.assert_allclose(got[0], want, rtol=1e-5, atol=1e-5)
    # an NCHW model given layout=NHWC: the channel axis would hold 4, not 3
    assert "takes 4 channel(s) in NHWC layout" in error(load_calibration, tmp_path, image_model(),
                                                        preprocess=SPEC + ";layout=NHWC")


def test_resize_is_bilinear_to_the_models_size(tmp_path):
    save_image(tmp_path / "a_flat.png", np.full((9, 7, 3), 200))  # H=9, W=7
    save_image(tmp_path / "b_edge.png", np.stack([np.array([[0, 255]] * 2)] * 3, axis=-1))  # H=2, W=2
    got = collect(load_calibration(tmp_path, image_model(("N", 3, 2, 4)), preprocess="scale=1"))
    assert got.shape == (2, 3, 2, 4)
    np.testing.assert_allclose(got[0], 200)  # a flat image stays flat
    # widening [0, 255] to 4 pixels: centres at 0.25, 0.75, 1.25, 1.75 of the input, edges clamped
    np.testing.assert_allclose(got[1], np.broadcast_to([0, 63.75, 191.25, 255], (3, 2, 4)), atol=0.5)


def test_grayscale_from_the_model_and_bgr(tmp_path):
    gray = np.arange(16, dtype=np.uint8).reshape(4, 4) * 10
    save_image(tmp_path / "g.png", gray, "L")
    got = collect(load_calibration(tmp_path, image_model(("N", 1, 4, 4)), preprocess="mean=0.5;std=0.25"))
    assert got.shape == (1, 1, 4, 4)
    np.testing.assert_allclose(got[0, 0], (gray / 255 - 0.5) / 0.25, rtol=1e-5, atol=1e-5)
    rgb = tmp_path / "rgb"
    rgb.mkdir()
    im = pixels(3)
    save_image(rgb / "i.png", im)
    got = collect(load_calibration(rgb, image_model(), preprocess="channels=BGR;scale=1"))
    np.testing.assert_array_equal(got[0], im[:, :, ::-1].transpose(2, 0, 1))


def test_image_folder_is_read_lazily_per_batch(tmp_path, monkeypatch):
    for k in range(6):
        save_image(tmp_path / f"{k}.png", pixels(k))
    cs = load_calibration(tmp_path, image_model())
    decoded = []
    apply = Preprocess.apply
    monkeypatch.setattr(Preprocess, "apply", lambda self, image: decoded.append(1) or apply(self, image))
    batches = cs.batches(2)
    assert decoded == []
    first = next(batches)
    assert len(first["x"]) == 2 and len(decoded) == 2
    next(batches)
    assert len(decoded) == 4


def test_image_limit_and_split(tmp_path):
    for k in range(5):
        save_image(tmp_path / f"{k}.png", np.full((4, 4, 3), 10 * k))
    cs = load_calibration(tmp_path, image_model(), limit=4, preprocess="scale=1")
    assert len(cs) == 4
    calib, held = cs.split(0.5, seed=3)
    values = sorted(collect(calib)[:, 0, 0, 0].tolist() + collect(held)[:, 0, 0, 0].tolist())
    assert values == [0, 10, 20, 30]


# -- iterables of feed dicts -------------------------------------------------------------
def test_iterable_of_batches(tmp_path):
    x = rng_arrays(7)
    feeds = [{"x": x[:3], "labels": [0, 1, 2]}, {"x": x[3:], "labels": [3, 4, 0, 1]}]
    cs = load_calibration(feeds, image_model())
    assert len(cs) == 7
    np.testing.assert_array_equal(collect(cs, bs=5), x)
    np.testing.assert_array_equal(cs.labels, [0, 1, 2, 3, 4, 0, 1])
    assert cs.describe()["kind"] == "iterable"


def test_endless_generator_with_limit_stops_reading():
    read = []

    def endless():
        for k in itertools.count():
            read.append(k)
            yield {"x": np.full((2, 3, 4, 4), k, dtype=np.float32)}

    cs = load_calibration(endless(), image_model(), limit=5)
    assert len(cs) == 5 and len(read) == 3
    np.testing.assert_array_equal(collect(cs)[:, 0, 0, 0], [0, 0, 1, 1, 2])


# -- split -------------------------------------------------------------------------------
def test_split_is_disjoint_complete_and_deterministic(tmp_path):
    x = np.arange(100, dtype=np.float32).reshape(100, 1)
    np.savez(tmp_path / "d.npz", x=x, labels=np.arange(100))
    cs = load_calibration(tmp_path / "d.npz", ["x"])
    calib, held = cs.split(0.2, seed=7)
    assert (len(calib), len(held)) == (80, 20)
    c, h = collect(calib).ravel(), collect(held).ravel()
    assert not set(c) & set(h) and sorted(set(c) | set(h)) == list(range(100))
    np.testing.assert_array_equal(held.labels, h.astype(int))  # labels follow their samples
    again = cs.split(0.2, seed=7)[1]
    np.testing.assert_array_equal(collect(again), collect(held))
    other = cs.split(0.2, seed=8)[1]
    assert set(collect(other).ravel()) != set(h)
    assert calib.overlap(held) == 0 and held.overlap(again) == 20
    # another load of the same file is the same source; another file is not
    assert load_calibration(tmp_path / "d.npz", ["x"]).overlap(held) == 20
    np.savez(tmp_path / "e.npz", x=x)
    assert load_calibration(tmp_path / "e.npz", ["x"]).overlap(held) == 0
    assert len(cs.head(5)) == 5


def test_split_keeps_at_least_one_sample_each_side(tmp_path):
    np.savez(tmp_path / "d.npz", x=np.zeros((3, 2)))
    cs = load_calibration(tmp_path / "d.npz", ["x"])
    assert [len(s) for s in cs.split(0.01)] == [2, 1]
    assert [len(s) for s in cs.split(0.99)] == [1, 2]


# -- preprocessing spec ------------------------------------------------------------------
def test_spec_round_trip():
    p = Preprocess.parse("size=224,200; mean=0.485,0.456,0.406 ;std=0.229,0.224,0.225;layout=nhwc;"
                         "scale=255;channels=rgb")
    assert p == Preprocess((224, 200), "RGB", 255.0, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225), "NHWC")
    assert Preprocess.parse(p.to_spec()) == p
    assert Preprocess.parse("") == Preprocess()


@pytest.mark.parametrize("spec, message", [
    ("size=224", "size needs two positive integers H,W, got '224'"),
    ("size=0,4", "size needs two positive integers"),
    ("sizes=2,2", "unknown key 'sizes'"),
    ("layout=NCWH", "layout must be one of NCHW|NHWC"),
    ("channels=CMYK", "channels must be one of RGB|BGR|L"),
    ("mean=a,b", "'a,b' is not a comma-separated list of numbers"),
    ("scale", "'scale' is not key=value"),
    ("scale=1,2", "scale needs one number"),
    ("scale=0", "scale must be a positive number"),
    ("std=0.5,0,1", "std non-zero"),
])
def test_bad_spec(spec, message):
    assert message in error(Preprocess.parse, spec)


def test_a_preprocess_built_in_python_is_checked_too():
    assert "size needs two positive integers" in error(Preprocess, size=(224,))
    assert "channels must be RGB, BGR or L" in error(Preprocess, channels="rgb")
    assert "std non-zero" in error(Preprocess, std=(0.0,))


# -- bad input: one clear line each ------------------------------------------------------
def test_bad_files(tmp_path):
    m = image_model()
    assert error(load_calibration, tmp_path / "nope.npz", m) == f"calibration data not found: {tmp_path / 'nope.npz'}"
    (tmp_path / "empty.npz").write_bytes(b"")
    assert "calibration file is empty" in error(load_calibration, tmp_path / "empty.npz", m)
    (tmp_path / "junk.npz").write_bytes(b"\x00garbage" * 50)
    assert error(load_calibration, tmp_path / "junk.npz", m).startswith(
        f"cannot read calibration file {tmp_path / 'junk.npz'}")
    (tmp_path / "junk.npy").write_bytes(b"\x93NUMPY junk")
    assert "cannot read calibration file" in error(load_calibration, tmp_path / "junk.npy", m)
    (tmp_path / "d.txt").write_text("1 2 3")
    assert "must be an .npz, an .npy or a folder of images" in error(load_calibration, tmp_path / "d.txt", m)
    np.save(tmp_path / "renamed.npy", rng_arrays(2))
    (tmp_path / "renamed.npy").rename(tmp_path / "renamed.npz")
    assert "is not an .npz archive" in error(load_calibration, tmp_path / "renamed.npz", m)


def test_damaged_npz_member(tmp_path):
    path = tmp_path / "d.npz"
    np.savez(path, x=rng_arrays(4))
    data = bytearray(path.read_bytes())
    data[200:260] = b"\xff" * 60  # inside the member's bytes: CRC or header fails on read
    path.write_bytes(bytes(data))
    assert "cannot read calibration file" in error(load_calibration, path, image_model())


def test_npz_keys_must_be_the_model_inputs(tmp_path):
    np.savez(tmp_path / "d.npz", a=rng_arrays(2, (3,)))
    msg = error(load_calibration, tmp_path / "d.npz", two_input_model())
    assert "no array for input(s) ['b']" in msg and "the model's inputs are ['a', 'b']" in msg
    np.savez(tmp_path / "e.npz", x=rng_arrays(2), extra=np.zeros(2))
    msg = error(load_calibration, tmp_path / "e.npz", image_model())
    assert "unknown key(s) ['extra']" in msg and "labels go under 'labels'" in msg
    np.savez(tmp_path / "f.npz", x=rng_arrays(2), y=np.zeros(2))  # labels under another key
    assert len(load_calibration(tmp_path / "f.npz", image_model(), labels_key="y").labels) == 2


def test_sample_counts_dtypes_values_and_shapes(tmp_path):
    cases = {
        "counts": (dict(a=rng_arrays(3, (3,)), b=rng_arrays(4, (3,))), "inputs have different numbers of samples"),
        "strings": (dict(a=np.array([["x"] * 3] * 2), b=rng_arrays(2, (3,))), "has dtype <U1"),
        "complex": (dict(a=np.ones((2, 3), np.complex64), b=rng_arrays(2, (3,))), "must be numeric"),
        "nan": (dict(a=np.array([[0, np.inf, 0]], np.float32), b=rng_arrays(1, (3,))), "NaN or infinite"),
        "shape": (dict(a=rng_arrays(2, (4,)), b=rng_arrays(2, (4,))), "samples of input 'a' have shape (4,)"),
        "rank": (dict(a=rng_arrays(2, (3, 1)), b=rng_arrays(2, (3, 1))), "rank 3"),
        "empty": (dict(a=np.zeros((0, 3)), b=np.zeros((0, 3))), "holds no samples"),
    }
    for name, (arrays, message) in cases.items():
        path = tmp_path / f"{name}.npz"
        np.savez(path, **arrays)
        assert message in error(load_calibration, path, two_input_model()), name


def test_pickled_objects_are_refused(tmp_path):
    path = tmp_path / "obj.npz"
    np.savez(path, x=np.array([{"a": 1}, None], dtype=object))
    assert "Python objects (pickled), which are never loaded" in error(load_calibration, path, ["x"])


def test_bad_labels(tmp_path):
    for name, labels, message in (("short", np.arange(3), "3 labels ('labels') for 4 samples"),
                                  ("negative", np.array([0, -1, 2, 3]), "non-negative integer classes"),
                                  ("fractional", np.array([0, 0.5, 1, 2]), "non-negative integer classes"),
                                  ("onehot", np.eye(4, dtype=np.int64), "one integer class per sample")):
        np.savez(tmp_path / f"{name}.npz", x=rng_arrays(4), labels=labels)
        assert message in error(load_calibration, tmp_path / f"{name}.npz", image_model()), name
    np.savez(tmp_path / "whole.npz", x=rng_arrays(4), labels=np.array([0.0, 1.0, 2.0, 3.0]))
    assert load_calibration(tmp_path / "whole.npz", image_model()).labels.dtype == np.int64


def test_npy_for_several_inputs(tmp_path):
    np.save(tmp_path / "d.npy", rng_arrays(2, (3,)))
    assert "an .npy file feeds a single input" in error(load_calibration, tmp_path / "d.npy", two_input_model())


def test_bad_image_folders(tmp_path):
    m = image_model()
    empty = tmp_path / "empty"
    empty.mkdir()
    assert error(load_calibration, empty, m) == f"no images (PNG, JPEG, BMP) in {empty}"
    (empty / "readme.txt").write_text("no images")
    assert "no images" in error(load_calibration, empty, m)
    bad = tmp_path / "bad"
    bad.mkdir()
    save_image(bad / "a.png", pixels())
    (bad / "b.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 40)
    assert error(load_calibration, bad, m).startswith(f"cannot read image {bad / 'b.png'}")
    good = tmp_path / "good"
    good.mkdir()
    save_image(good / "a.png", pixels())
    assert "a folder of images feeds a single input" in error(load_calibration, good, two_input_model())
    assert "needs a rank-4 image input" in error(load_calibration, good, {"x": [None, 48]})
    assert "give it with --calib-preprocess size=H,W" in error(load_calibration, good, image_model(("N", 3, "H", "W")))
    assert "give it with --calib-preprocess size=H,W" in error(load_calibration, good, ["x"])
    assert "takes 3 channel(s) in NCHW layout" in error(load_calibration, good, m, preprocess="channels=L")
    assert "mean has 2 values for 3 channel(s)" in error(load_calibration, good, m, preprocess="mean=0.1,0.2")
    assert "size=8,8 does not fit the model's input 'x' of shape [?, 3, 4, 4]" in error(
        load_calibration, good, m, preprocess="size=8,8")
    # with dynamic H and W, the size comes from the spec
    assert collect(load_calibration(good, image_model(("N", 3, "H", "W")), preprocess="size=6,5")).shape == (1, 3, 6, 5)


def test_truncated_image_fails_when_loading(tmp_path):
    save_image(tmp_path / "a.png", pixels(0, (32, 32, 3)))
    data = (tmp_path / "a.png").read_bytes()
    (tmp_path / "a.png").write_bytes(data[:len(data) // 2])
    assert "cannot read image" in error(load_calibration, tmp_path, image_model())


def test_missing_pillow_says_how_to_install_it(tmp_path, monkeypatch):
    save_image(tmp_path / "a.png", pixels())
    monkeypatch.setitem(sys.modules, "PIL", None)  # import PIL now raises ImportError
    monkeypatch.setitem(sys.modules, "PIL.Image", None)
    assert error(load_calibration, tmp_path, image_model()) == (
        "reading a folder of images needs Pillow, which is not installed: pip install pillow")


def test_preprocess_only_for_images(tmp_path):
    np.savez(tmp_path / "d.npz", x=rng_arrays(2))
    assert "--calib-preprocess applies to a folder of images" in error(
        load_calibration, tmp_path / "d.npz", image_model(), preprocess="scale=1")


def test_a_dict_of_arrays_is_one_batch():
    arrays = rng_arrays(5)
    cs = load_calibration({"x": arrays, "labels": np.arange(5)}, image_model())
    assert len(cs) == 5
    assert np.array_equal(np.concatenate([b["x"] for b in batches_of(cs, 2)]), arrays)
    assert np.shares_memory(batches_of(cs, 5)[0]["x"], arrays)   # used in place, never copied
    assert "calibration batch 0: no array for input(s) ['x']" in error(load_calibration, {"y": arrays},
                                                                        image_model())


def test_bad_iterables():
    m = image_model()
    assert "yielded no batches" in error(load_calibration, [], m)
    assert "calibration batch 0 is a ndarray, not a dict" in error(load_calibration, [rng_arrays(2)], m)
    assert "iterable of such dicts (batches), got int" in error(load_calibration, 42, m)
    assert "calibration batch 1: no array for input(s) ['x']" in error(
        load_calibration, [{"x": rng_arrays(1)}, {"y": rng_arrays(1)}], m)
    assert "'x' is a scalar" in error(load_calibration, [{"x": 1.0}], ["x"])
    ragged = [{"x": np.zeros((1, 2))}, {"x": np.zeros((1, 3))}]
    assert "different sample shapes" in error(load_calibration, ragged, ["x"])
    assert "some calibration batches have labels" in error(
        load_calibration, [{"x": rng_arrays(1), "labels": [0]}, {"x": rng_arrays(1)}], m)


def test_bad_limits_batch_sizes_and_split_fractions(tmp_path):
    np.savez(tmp_path / "d.npz", x=np.zeros((1, 2)))
    for limit in (0, -3, 2.5):
        message = error(load_calibration, tmp_path / "d.npz", ["x"], limit=limit)
        assert message == f"--calib-limit must be a positive integer, got {limit!r}"
    cs = load_calibration(tmp_path / "d.npz", ["x"])
    assert "batch size must be a positive integer" in error(lambda: next(cs.batches(0)))
    assert "cannot split 1 sample(s)" in error(cs.split, 0.5)
    assert "held-out fraction must be in (0, 1), got 1.0" in error(cs.split, 1.0)


def test_a_model_that_cannot_be_read(tmp_path):
    (tmp_path / "m.onnx").write_bytes(b"junk")
    np.savez(tmp_path / "d.npz", x=np.zeros((1, 2)))
    assert error(load_calibration, tmp_path / "d.npz", tmp_path / "m.onnx").startswith(
        f"cannot read model {tmp_path / 'm.onnx'}")


def test_a_model_without_inputs():
    value = helper.make_tensor("v", TensorProto.FLOAT, [1], [1.0])
    g = helper.make_graph([helper.make_node("Constant", [], ["y"], value=value)], "g", [],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])])
    assert error(load_calibration, [], helper.make_model(g)) == "the model has no inputs to calibrate"
