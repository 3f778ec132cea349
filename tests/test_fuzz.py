"""hypothesis fuzzing of the two surfaces users type or hand us: config overrides and image files.
The property: a clean UsageError (one line, exit 2 at the CLI) or a valid result, never any
other exception."""

import io
import os
import random
import string

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from vaecli.cli import run as cli_run
from vaecli.config import GROUPS, load_config
from vaecli.data.images import read_image
from vaecli.errors import UsageError

# Derandomized by default, so CI is reproducible; VAECLI_FUZZ_EXAMPLES=2000 explores fresh cases.
EXAMPLES = int(os.environ.get("VAECLI_FUZZ_EXAMPLES", "0"))
FUZZ = settings(max_examples=EXAMPLES or 150, derandomize=not EXAMPLES, deadline=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture])

KEYS = ["beta", "seed", "kl.free_bits", "kl.schedule", "kl.warmup_steps", "model.latent_dim", "model.hidden",
        "model.activation", "model.conditional", "trainer.epochs", "trainer.batch_size", "trainer.lr",
        "trainer.device", "trainer.precision", "trainer.compile", "trainer.channels_last",
        "trainer.max_bad_steps", "trainer.checkpoint_every_steps", "likelihood.sigma", "prior.components",
        "objective.k", "dataset.limit", "dataset.image_size", "trainer.epoch", "model", "foo.bar", "+x", "~beta",
        *GROUPS]
VALUES = st.one_of(
    st.integers(-10**6, 10**6).map(str),
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.sampled_from(["${beta}", "${seed}", "${oops}", "${trainer.lr}", "true", "false", "null", "[]", "[1,2]", "[a", "{}", "mlp", "conv", "shapes", "nan", "inf",
                     "-inf", "'quoted'", "${beta}", "${oops}", "", " ", "1e400", "0x10", "fp8", "bf16"]),
    st.text(string.printable, max_size=12),
)
OVERRIDE = st.one_of(
    st.tuples(st.sampled_from(KEYS), VALUES).map(lambda kv: f"{kv[0]}={kv[1]}"),
    st.text(string.printable, max_size=20),  # anything at all
)


@FUZZ
@given(st.lists(OVERRIDE, max_size=4))
def test_any_overrides_compose_or_are_a_usage_error(overrides):
    try:
        composed = load_config(overrides)
    except UsageError as e:
        assert str(e)  # the CLI prints it on one line (next test)
        return
    cfg = composed.cfg
    assert cfg.beta >= 0 and cfg.trainer.epochs >= 1 and cfg.model.latent_dim >= 1 and cfg.trainer.lr > 0


@settings(FUZZ, max_examples=EXAMPLES or 40)
@given(overrides=st.lists(OVERRIDE, min_size=1, max_size=3))
def test_any_overrides_at_the_cli_give_exit_0_or_2_and_at_most_one_line(overrides, capsys):
    code = cli_run(["train", *overrides, "--print-config"])
    out, err = capsys.readouterr()
    assert code in (0, 2), (overrides, code, err)
    if code == 2:
        assert len([line for line in err.splitlines() if line.strip()]) == 1, err
    else:
        assert ("dataset:" in out or out.startswith("Usage:")) and not err.strip()  # config, or -h


MODES = ["1", "L", "LA", "P", "RGB", "RGBA", "I", "I;16", "F", "CMYK", "YCbCr"]


@st.composite
def image_files(draw):
    """Bytes of a real image in a random mode, size and format, or random bytes."""
    kind = draw(st.sampled_from(["png", "jpeg", "bytes", "cut"]))
    if kind == "bytes":
        return draw(st.binary(max_size=256)), None
    mode = draw(st.sampled_from(MODES))
    size = (draw(st.integers(1, 70)), draw(st.integers(1, 70)))
    seed = draw(st.integers(0, 255))
    pixels = random.Random(seed).randbytes(size[0] * size[1] * 3)  # deterministic for hypothesis
    im = Image.frombytes("RGB", size, pixels).convert(mode if mode != "I;16" else "I")
    if mode == "I;16":
        im = im.convert("I;16")
    buffer = io.BytesIO()
    fmt = "JPEG" if kind == "jpeg" else "PNG"
    try:
        im.save(buffer, fmt)
    except (OSError, KeyError, ValueError):  # this format cannot store this mode: save as PNG
        buffer = io.BytesIO()
        im.convert("RGB").save(buffer, "PNG")
    blob = buffer.getvalue()
    if kind == "cut":
        blob = blob[: draw(st.integers(0, max(0, len(blob) - 1)))]
        return blob, None
    return blob, size


@FUZZ
@pytest.mark.parametrize("channels", [1, 3])
@given(case=image_files())
def test_any_image_file_reads_as_the_model_shape_or_is_a_usage_error(tmp_path, channels, case):
    blob, size = case
    path = tmp_path / "input.png"
    path.write_bytes(blob)
    try:
        x, note = read_image(path, channels, (28, 28))
    except UsageError as e:
        assert size is None, f"a valid image was refused: {e}"  # only broken files may fail
        assert str(e) and "\n" not in str(e)
        return
    assert tuple(x.shape) == (channels, 28, 28)
    assert float(x.min()) >= 0.0 and float(x.max()) <= 1.0
    if size is not None and size != (28, 28):
        assert note and "converted" in note
