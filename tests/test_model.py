"""BridgeNet as a whole: outputs and domains, gradient truncation, zero init, seams, switches, save/load.

All models are the real transformers DINOv2 classes, randomly initialised (`tiny` preset
unless a test says otherwise) on small panoramas, so every test runs in about a second.
"""

from __future__ import annotations

import dataclasses
import json
import re

import pytest
import torch

from model import BridgeNet, BridgeNetConfig
from trainer.checkpoint import load_model, save_model

MAIN = ("depth", "semantic", "normals")


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny tensors: handing them between threads costs more than it saves, and far more when
    the 2-core machine is busy with other work."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def tiny(**overrides) -> BridgeNetConfig:
    return BridgeNetConfig.from_preset("tiny", **overrides)


def build(config: BridgeNetConfig, seed: int = 0) -> BridgeNet:
    torch.manual_seed(seed)
    return BridgeNet(config)


def randomise_zero_init(model: BridgeNet, seed: int = 1) -> None:
    """Give every all-zero parameter random values, as training would: a freshly built model
    has zero-initialised residual, FiLM, adapter and injection layers, through which no
    information (and no gradient beyond them) flows yet."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in model.parameters():
            if not param.any():
                param.copy_(0.1 * torch.randn(param.shape, generator=generator))


def images(batch: int, height: int, seed: int = 0) -> torch.Tensor:
    return torch.rand(batch, 3, height, 2 * height, generator=torch.Generator().manual_seed(seed))


def param_shapes(config: BridgeNetConfig) -> dict[str, tuple[int, ...]]:
    """Parameter names and shapes, built on the meta device (no memory, no init cost)."""
    with torch.device("meta"):
        model = BridgeNet(config)
    return {name: tuple(p.shape) for name, p in model.named_parameters()}


# --- Outputs and their domains ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("preset", "height"),
    [("tiny", 28), ("tiny", 56), ("tiny", 30), ("small", 28)],
    ids=["tiny-28x56", "tiny-56x112", "tiny-30x60-resized", "small-28x56"],
)
def test_outputs_have_full_resolution_shapes_and_domains(preset, height):
    config = BridgeNetConfig.from_preset(preset)
    model = build(config)
    randomise_zero_init(model)
    with torch.no_grad():
        out = model(images(2, height))
    H, W = height, 2 * height
    h = model.encoder_size(height)[0] // config.patch_size
    assert set(out) == {*MAIN, "aux"}
    assert out["depth"].shape == (2, 1, H, W)
    assert out["semantic"].shape == (2, 150, H, W)
    assert out["normals"].shape == (2, 3, H, W)
    maps = [*(out[t] for t in MAIN), *out["aux"].values()]
    assert all(t.dtype == torch.float32 and torch.isfinite(t).all() for t in maps)
    assert out["depth"].min() > 0
    norms = torch.linalg.vector_norm(out["normals"], dim=1)
    torch.testing.assert_close(norms, torch.ones_like(norms), rtol=0, atol=1e-5)
    # The semantic logits are not a constant map: the decoder reads the input.
    assert out["semantic"].std() > 0

    aux = out["aux"]
    expected_aux = {"gradient": 1, "edge_distance": 1, "points": 3}
    assert {k: v.shape for k, v in aux.items() if not k.startswith("coarse_")} == {
        k: (2, c, H, W) for k, c in expected_aux.items()
    }
    assert aux["gradient"].min() >= 0 and aux["edge_distance"].min() >= 0
    channels = {"depth": 1, "semantic": 150, "normals": 3, **expected_aux}
    assert {k: v.shape for k, v in aux.items() if k.startswith("coarse_")} == {
        f"coarse_{k}": (2, c, h, 2 * h) for k, c in channels.items()
    }
    coarse_norms = torch.linalg.vector_norm(aux["coarse_normals"], dim=1)
    torch.testing.assert_close(coarse_norms, torch.ones_like(coarse_norms), rtol=0, atol=1e-5)
    assert aux["coarse_depth"].min() > 0


def test_task_subset_outputs_only_its_tasks():
    config = tiny(tasks=("semantic",), num_classes=7, dual_groups=False, gradient_truncation=False)
    with torch.no_grad():
        out = build(config)(images(1, 28))
    assert set(out) == {"semantic", "aux"}
    assert out["semantic"].shape == (1, 7, 28, 56)
    # No variant task: no point map; the invariant auxiliary maps ride on the semantic decoder.
    coarse = {"coarse_semantic", "coarse_gradient", "coarse_edge_distance"}
    assert set(out["aux"]) == {"gradient", "edge_distance", *coarse}


def test_plain_config_has_no_aux_outputs():
    with torch.no_grad():
        out = build(tiny().baseline())(images(1, 28))
    assert set(out) == {*MAIN, "aux"} and out["aux"] == {}


@pytest.mark.parametrize(
    ("shape", "dtype", "error", "message"),
    [
        ((1, 3, 28, 28), torch.float32, ValueError, "W = 2H"),
        ((1, 3, 28, 57), torch.float32, ValueError, "W = 2H"),
        ((1, 1, 28, 56), torch.float32, ValueError, r"\(B,3,H,W\)"),
        ((3, 28, 56), torch.float32, ValueError, r"\(B,3,H,W\)"),
        ((1, 3, 28, 56), torch.uint8, TypeError, "floating point"),
    ],
)
def test_bad_images_raise_clear_errors(shape, dtype, error, message):
    model = build(tiny())
    with pytest.raises(error, match=message):
        model(torch.zeros(shape, dtype=dtype))


# --- Gradient truncation ----------------------------------------------------------------------


def weighted_loss(out: dict, task: str) -> torch.Tensor:
    """A loss with a gradient everywhere (a plain mean of unit normals would be constant)."""
    weights = torch.randn(out[task].shape, generator=torch.Generator().manual_seed(3))
    return (out[task] * weights).sum()


def grad_norm(model: BridgeNet, prefix: str) -> float:
    grads = [p.grad for name, p in model.named_parameters() if name.startswith(prefix)]
    assert grads, f"no parameters under {prefix}"
    return sum(float(g.abs().sum()) for g in grads if g is not None)


@pytest.mark.parametrize(
    ("loss_tasks", "other"),
    [(("normals",), "invariant"), (("depth", "semantic"), "variant")],
    ids=["variant-loss", "invariant-loss"],
)
def test_gradient_truncation_blocks_cross_group_gradients(loss_tasks, other):
    """The other group's stacks, reductions, aggregation block and task heads reach a loss on
    this group's outputs only through this group's bridge, which reads the other group's task
    features: detached with truncation (zero gradient), attached without (nonzero)."""
    feeding = [
        f"neck.grouping.{other}.",
        f"neck.bridges.{other}.reduce.",
        f"neck.bridges.{other}.aggregate.",
        *(f"neck.bridges.{other}.heads.{t}." for t in tiny().group_tasks()[other]),
    ]
    # The rest of the other group never feeds this group's outputs, truncated or not.
    never = [f"neck.bridges.{other}.attention.", f"neck.bridges.{other}.adapters.", f"neck.bridges.{other}.inject."]
    never += [f"decoders.{t}." for t in MAIN if t not in loss_tasks]
    x = images(1, 28)
    norms = {}
    for truncation in (True, False):
        model = build(tiny(gradient_truncation=truncation))
        randomise_zero_init(model)
        out = model(x)
        sum(weighted_loss(out, t) for t in loss_tasks).backward()
        norms[truncation] = {prefix: grad_norm(model, prefix) for prefix in feeding + never}
        # This group and the shared encoder do learn from the loss.
        assert grad_norm(model, "encoder.") > 0
        assert grad_norm(model, f"decoders.{loss_tasks[0]}.") > 0
    assert all(norms[True][prefix] == 0 for prefix in feeding + never), norms[True]
    assert all(norms[False][prefix] > 0 for prefix in feeding), norms[False]
    assert all(norms[False][prefix] == 0 for prefix in never), norms[False]


# --- Zero initialisation ----------------------------------------------------------------------


def test_untrained_neck_passes_the_encoder_features_through():
    """At init every decoder reads exactly the encoder's features, and switching the grouping
    and the bridge off (same encoder and decoder weights) leaves every output bit-identical."""
    config = tiny()
    model = build(config)
    x = images(2, 28)
    with torch.no_grad():
        levels = model.encode(x)
        inputs, coarse = model.neck(levels)
        assert set(inputs) == set(MAIN)
        assert set(coarse) == {*MAIN, "gradient", "edge_distance", "points"}
        for task in MAIN:
            assert all(torch.equal(z, level) for z, level in zip(inputs[task], levels, strict=True)), task

        off = dataclasses.replace(
            config,
            use_grouping=False,
            use_bridge=False,
            dual_groups=False,
            gradient_truncation=False,
            geometry_modulation=False,
            erp_mixer=False,
        )
        plain = BridgeNet(off)
        full_state = model.state_dict()
        plain.load_state_dict({name: full_state[name] for name in plain.state_dict()}, strict=True)
        full_out, plain_out = model(x), plain(x)
        for task in MAIN:
            assert torch.equal(full_out[task], plain_out[task]), task
        assert set(plain_out["aux"]) == {"gradient", "edge_distance", "points"}
        for name, value in plain_out["aux"].items():
            assert torch.equal(full_out["aux"][name], value), name

        # The comparison can fail: once the zero-initialised layers are trained, it does.
        randomise_zero_init(model)
        assert not torch.allclose(model(x)["depth"], plain_out["depth"])


# --- Seams ------------------------------------------------------------------------------------


def relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max())


@pytest.mark.parametrize("height", [56, 60], ids=["56x112", "60x120-resized"])
def test_circular_padding_makes_invariant_outputs_roll_equivariant(height):
    """Roll a panorama by half a turn (W/2 columns), predict, roll back, compare with the
    prediction of the original, for circular and for zero padding (same weights).

    What is measured: the panoramic blocks' and decoders' padding and resampling at the
    +-180 degree seam. Two other parts of the network are not roll-equivariant by design and
    are neutralised so that they do not mask it: DINOv2's absolute position embeddings (set to
    zero here, which leaves a ViT equivariant to whole-patch shifts) and the geometry FiLM,
    which reads absolute longitude (modulation off). The zero-initialised layers are
    randomised so that the grouping stacks, the bridge and the injections all act. At 60x120
    the encoder input is resized to 56x112, so the circular resizes are covered too.
    """
    x = images(1, height)
    x_rolled = torch.roll(x, height, dims=-1)
    errors = {}
    for padding in ("circular", "zeros"):
        model = build(tiny(padding=padding, geometry_modulation=False))
        randomise_zero_init(model)
        with torch.no_grad():
            model.encoder.backbone.embeddings.position_embeddings.zero_()
            out, out_rolled = model(x), model(x_rolled)
        errors[padding] = {
            task: relative_error(torch.roll(out_rolled[task], -height, dims=-1), out[task])
            for task in ("depth", "semantic")
        }
    for task in ("depth", "semantic"):
        assert errors["circular"][task] < 1e-5, errors
        assert errors["zeros"][task] > 1e-3, errors
        assert errors["zeros"][task] > 1000 * errors["circular"][task], errors


# --- Switches and the parameter set -----------------------------------------------------------


def _under(names, *prefixes: str) -> set[str]:
    return {n for n in names if n.startswith(prefixes)}


TASK_PARTS = ("heads", "adapters")
AUX_HEADS = (
    "neck.bridges.invariant.heads.gradient.",
    "neck.bridges.invariant.heads.edge_distance.",
    "neck.bridges.variant.heads.points.",
    "decoders.depth.heads.gradient.",
    "decoders.depth.heads.edge_distance.",
    "decoders.normals.heads.points.",
)


@pytest.mark.parametrize(
    ("overrides", "base_overrides", "removed", "added"),
    [
        ({"gradient_truncation": False}, {}, lambda n: set(), lambda n: set()),
        ({"padding": "zeros"}, {}, lambda n: set(), lambda n: set()),
        ({"use_grouping": False}, {}, lambda n: _under(n, "neck.grouping."), lambda n: set()),
        (
            {"use_bridge": False},
            {"gradient_truncation": False},
            lambda n: _under(n, "neck.bridges."),
            lambda n: set(),
        ),
        ({"geometry_modulation": False}, {}, lambda n: {x for x in n if ".film." in x}, lambda n: set()),
        ({"erp_mixer": False}, {}, lambda n: {x for x in n if ".mixer.wide." in x}, lambda n: set()),
        ({"aux_tasks": False}, {}, lambda n: _under(n, *AUX_HEADS), lambda n: set()),
        (
            {"tasks": ("depth", "normals")},
            {},
            lambda n: _under(n, "decoders.semantic.", *(f"neck.bridges.invariant.{p}.semantic." for p in TASK_PARTS)),
            lambda n: set(),
        ),
        (
            # The invariant auxiliary heads move to the first invariant main task's decoder.
            {"tasks": ("semantic", "normals")},
            {},
            lambda n: _under(n, "decoders.depth.", *(f"neck.bridges.invariant.{p}.depth." for p in TASK_PARTS)),
            lambda n: {
                x.replace("decoders.depth.", "decoders.semantic.")
                for x in _under(n, "decoders.depth.heads.gradient.", "decoders.depth.heads.edge_distance.")
            },
        ),
    ],
    ids=[
        "truncation",
        "padding",
        "grouping",
        "bridge",
        "geometry_modulation",
        "erp_mixer",
        "aux_tasks",
        "tasks-no-semantic",
        "tasks-no-depth",
    ],
)
def test_each_switch_changes_the_parameters_as_documented(overrides, base_overrides, removed, added):
    """Flipping one switch removes/adds exactly the parameters the config docstring lists."""
    base = param_shapes(tiny(**base_overrides))
    switched = param_shapes(tiny(**base_overrides, **overrides))
    assert set(base) - set(switched) == removed(base)
    assert set(switched) - set(base) == added(base)
    assert all(base[n] == switched[n] for n in set(base) & set(switched)), "shared parameters changed shape"


def test_geometry_modulation_lives_only_in_the_variant_group():
    films = {n for n in param_shapes(tiny()) if ".film." in n}
    assert films and films == _under(films, "neck.grouping.variant.", "neck.bridges.variant.aggregate.")


def _is_task_part(name: str) -> bool:
    """Bridge heads and adapters exist once per task; everything else in the neck once per group."""
    return name.startswith("neck.bridges.") and name.split(".")[3] in TASK_PARTS


def _as_shared(name: str) -> str:
    return re.sub(r"^(neck\.\w+)\.(invariant|variant)\.", r"\1.shared.", name)


def test_dual_groups_duplicate_the_group_parts_and_split_the_task_parts():
    dual = param_shapes(tiny(gradient_truncation=False))
    single = param_shapes(tiny(dual_groups=False, gradient_truncation=False))
    assert {n for n in dual if not n.startswith("neck.")} == {n for n in single if not n.startswith("neck.")}
    # Task parts: the same set, split between the two bridges.
    assert {_as_shared(n) for n in dual if _is_task_part(n)} == {n for n in single if _is_task_part(n)}
    # Group parts: once per group; the shared copy is modulated like the variant one.
    single_group = {n for n in single if n.startswith("neck.") and not _is_task_part(n)}
    variant_group = {n for n in dual if n.startswith("neck.") and not _is_task_part(n) and ".variant." in n}
    invariant_group = {n for n in dual if n.startswith("neck.") and not _is_task_part(n) and ".invariant." in n}
    assert {_as_shared(n) for n in variant_group} == single_group
    assert {_as_shared(n) for n in invariant_group} == {n for n in single_group if ".film." not in n}


# --- Save and load ----------------------------------------------------------------------------


def test_saved_model_loads_back_to_identical_outputs(tmp_path):
    config = tiny(num_classes=11)
    model = build(config).eval()
    randomise_zero_init(model)
    x = images(2, 28)
    with torch.no_grad():
        before = model(x)
    save_model(model, tmp_path / "ckpt", step=1234)
    loaded, step = load_model(tmp_path / "ckpt")
    assert step == 1234 and loaded.config == config
    with torch.no_grad():
        after = loaded.eval()(x)
    for task in MAIN:
        assert torch.equal(before[task], after[task]), task
    assert before["aux"].keys() == after["aux"].keys()
    assert all(torch.equal(before["aux"][k], after["aux"][k]) for k in before["aux"])


def test_loading_is_strict_and_errors_are_clear(tmp_path):
    save_model(build(tiny()), tmp_path)
    payload = json.loads((tmp_path / "config.json").read_text())
    payload["config"]["aux_tasks"] = False  # another architecture than the weights
    (tmp_path / "config.json").write_text(json.dumps(payload))
    with pytest.raises(RuntimeError, match="Unexpected key"):
        load_model(tmp_path)
    with pytest.raises(FileNotFoundError, match=r"model\.safetensors"):
        load_model(tmp_path / "missing")


def test_bf16_autocast_runs_forward_and_backward():
    """The trainer's CUDA precision (bf16 autocast), checked on the CPU: every block accepts
    mixed float32 / bf16 operands, and outputs stay close to the float32 ones."""
    torch.manual_seed(0)
    model = BridgeNet(BridgeNetConfig.from_preset("tiny"))
    images = torch.rand(2, 3, 28, 56)
    reference = model(images)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(images)
    loss = sum(out[t].float().mean() for t in ("depth", "semantic", "normals"))
    loss.backward()
    head = model.decoders["depth"].heads["depth"]
    assert all(p.grad is not None for p in head.parameters())
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
    for task in ("depth", "normals"):
        error = (out[task].float() - reference[task]).abs().max() / reference[task].abs().max()
        assert error < 0.05, (task, float(error))
