"""Model shapes, ranges, invariants and pinned parameter counts (tiny configs, 32^3)."""
import dataclasses

import keras
import numpy as np
import pytest

from cm_trancaf.config import get_preset
from cm_trancaf.models.localizer import build_localizer, heatmap_peak
from cm_trancaf.models.maunet import AttentionGate, PositionAttention, build_maunet, roi_zscore
from cm_trancaf.models.mtn import ImagePool, build_mtn
from cm_trancaf.models.scn import build_scn

CFG = get_preset("tiny")
PINNED = {  # parameter counts with 8 classes (regression pins: change them with the architecture)
    "tiny": {"maunet": 91196, "scn": 3916, "localizer": 20121, "G_c": 25353, "G_m": 25353,
             "D_c": 11573, "D_m": 11573},
    "paper": {"maunet": 1449740, "scn": 1078448, "localizer": 318945, "G_c": 5887041,
              "G_m": 5887041, "D_c": 2771873, "D_m": 2771873},
}
X = np.random.default_rng(0).normal(size=(2, 32, 32, 32, 1)).astype("float32")


def test_maunet_shapes_and_attention_range():
    net = build_maunet(CFG.maunet, 8, (32, 32, 32))
    probs, alphas = net(X, return_attention=True)
    assert probs.shape == (2, 32, 32, 32, 8) and keras.backend.standardize_dtype(probs.dtype) == "float32"
    np.testing.assert_allclose(np.asarray(probs).sum(-1), 1.0, atol=1e-5)
    assert [a.shape[1] for a in alphas] == [32, 16, 8] and all(a.shape[-1] == 1 for a in alphas)
    for a in alphas:
        a = np.asarray(a)
        assert a.min() >= 0 and a.max() <= 1


def test_anisotropic_first_pooling_keeps_the_slices_of_level_one():
    """``first_pool=(1, 2, 2)`` (nnU-Net's choice on a 2 x 2 x 6 mm grid): level 1 keeps every
    slice, the later levels halve all three axes, the output has the input's shape; the same
    weights as 2 x 2 x 2 except the last up-convolution's kernel (1 x 2 x 2 instead of 2 x 2 x 2);
    an ROI the pooling cannot divide is a clear error."""
    cfg = dataclasses.replace(CFG.maunet, first_pool=(1, 2, 2))
    x = X[:, :8]                                                     # (2, 8, 32, 32, 1)
    net = build_maunet(cfg, 8, (8, 32, 32))
    probs, alphas = net(x, return_attention=True)
    assert probs.shape == (2, 8, 32, 32, 8)
    assert [tuple(a.shape[1:4]) for a in alphas] == [(8, 32, 32), (8, 16, 16), (4, 8, 8)]
    iso = build_maunet(CFG.maunet, 8, (8, 32, 32))
    up0 = CFG.maunet.base_filters * 2 * CFG.maunet.base_filters     # in x out channels of up0
    assert iso.count_params() - net.count_params() == up0 * (8 - 4)
    with pytest.raises(ValueError, match=r"divisible by \(4, 8, 8\)"):
        build_maunet(cfg, 8, (6, 32, 32))


def test_roi_zscore_ignores_padding_and_makes_the_maunet_contrast_invariant():
    """``input_norm``: the ROI's voxels above -1 get mean 0 and std 1 (numpy reference), padding
    at -1 does not enter the statistics and becomes the darkest value; a MAUNet with it gives the
    same probabilities for an ROI and for the same ROI with its contrast and brightness changed
    (padding kept), and adds no weights; without it the output changes."""
    rng = np.random.default_rng(0)
    x = rng.uniform(-0.9, 1.0, (2, 8, 16, 16, 1)).astype(np.float32)
    x[0, :3] = -1.0                                                  # 3 padded slices
    z = np.asarray(roi_zscore(x))
    for b in range(2):
        inside = x[b] > -1
        ref = (x[b] - x[b][inside].mean()) / x[b][inside].std()
        ref = np.where(inside, ref, ref[inside].min())                # padding: the darkest value
        np.testing.assert_allclose(z[b], ref, atol=1e-4)
    y = np.where(x > -1, 0.5 * x + 0.3, -1.0).astype(np.float32)     # another contrast, same pad
    cfg = dataclasses.replace(CFG.maunet, input_norm=True)
    net = build_maunet(cfg, 4, (8, 16, 16))
    np.testing.assert_allclose(np.asarray(net(y)), np.asarray(net(x)), atol=1e-4)
    plain = build_maunet(CFG.maunet, 4, (8, 16, 16))
    assert plain.count_params() == net.count_params()
    assert np.abs(np.asarray(plain(y)) - np.asarray(plain(x))).max() > 1e-3


def test_deep_supervision_heads_are_one_per_level_and_change_nothing_else():
    """``deep_supervision=2``: probabilities of decoder levels 0, 1, 2 at 32^3, 16^3, 8^3, each a
    distribution; the finest equals the plain call's output; the only extra weights are two
    1x1x1 heads (16 and 8 input channels at base 4); 3 levels is one too many."""
    cfg = dataclasses.replace(CFG.maunet, deep_supervision=2)
    net = build_maunet(cfg, 8, (32, 32, 32))
    outs = net(X, return_deep=True)
    assert [tuple(o.shape) for o in outs] == [(2, s, s, s, 8) for s in (32, 16, 8)]
    for o in outs:
        np.testing.assert_allclose(np.asarray(o).sum(-1), 1.0, atol=1e-5)
    np.testing.assert_allclose(np.asarray(outs[0]), np.asarray(net(X)), atol=1e-6)
    f = CFG.maunet.base_filters
    heads = sum((f * 2 ** level + 1) * 8 for level in (1, 2))    # kernel + bias, 8 classes
    assert net.count_params() - build_maunet(CFG.maunet, 8, (32, 32, 32)).count_params() == heads
    with pytest.raises(ValueError, match="deep_supervision"):
        build_maunet(dataclasses.replace(CFG.maunet, deep_supervision=3), 8, (32, 32, 32))


def test_ablation_switches_change_the_architecture():
    counts = {}
    for ag in (True, False):
        for pab in (True, False):
            cfg = dataclasses.replace(CFG.maunet, attention_gates=ag, pab=pab)
            counts[(ag, pab)] = build_maunet(cfg, 8, (32, 32, 32)).count_params()
    assert len(set(counts.values())) == 4
    assert counts[(True, True)] == 91196  # pinned: an architecture change shows up here
    # the plain U-Net baseline: no shortcut projections in the encoder (1x1x1 conv + norm each)
    plain = dataclasses.replace(CFG.maunet, residual=False, attention_gates=False, pab=False)
    assert build_maunet(plain, 8, (32, 32, 32)).count_params() < counts[(False, False)]


def test_plain_block_has_no_shortcut():
    from cm_trancaf.models.blocks import ResidualBlock
    x = np.zeros((1, 4, 4, 4, 3), "float32")
    res, plain = ResidualBlock(5), ResidualBlock(5, residual=False)
    res(x), plain(x)
    assert res.project is not None and plain.project is None
    # with identical convolution weights and a width-preserving input, the outputs differ by the
    # shortcut: act(y + x) vs act(y)
    a, b = ResidualBlock(3), ResidualBlock(3, residual=False)
    x = np.random.default_rng(0).normal(size=(1, 4, 4, 4, 3)).astype("float32")
    a(x), b(x)
    b.set_weights(a.get_weights())
    y = np.asarray(b(x))
    expected = np.asarray(keras.activations.leaky_relu(
        np.asarray(a.conv2(a.conv1(x))) + x))
    np.testing.assert_allclose(np.asarray(a(x)), expected, atol=1e-5)
    assert np.abs(y - np.asarray(a(x))).max() > 1e-3


def test_pab_is_identity_when_gamma_is_zero_and_not_otherwise():
    pab = PositionAttention()
    x = np.random.default_rng(1).normal(size=(2, 4, 4, 4, 16)).astype("float32")
    np.testing.assert_allclose(np.asarray(pab(x)), x, atol=1e-6)
    pab.gamma.assign(0.5)
    assert np.abs(np.asarray(pab(x)) - x).max() > 1e-3


def test_attention_gate_against_oktays_formula_in_numpy():
    """alpha = sigmoid(psi^T relu(W_x^T x + W_g^T g + b_g) + b_psi) per voxel (Oktay et al. 2018,
    eq. 1-2, 1x1x1 convolutions as matrix products), output alpha * x; computed here from the
    gate's own weights, independently of Keras."""
    rng = np.random.default_rng(2)
    ag = AttentionGate(4)
    x = rng.normal(size=(2, 4, 4, 4, 6)).astype("float32")
    g = rng.normal(size=(2, 4, 4, 4, 5)).astype("float32")
    ag(x, g)
    ag.phi.bias.assign(rng.normal(size=4).astype("float32"))     # non-zero biases: tested too
    ag.psi.bias.assign(rng.normal(size=1).astype("float32"))
    w_x = np.asarray(ag.theta.kernel)[0, 0, 0]                     # (6, 4)
    w_g, b_g = np.asarray(ag.phi.kernel)[0, 0, 0], np.asarray(ag.phi.bias)
    w_psi, b_psi = np.asarray(ag.psi.kernel)[0, 0, 0], np.asarray(ag.psi.bias)
    q = np.maximum(x @ w_x + g @ w_g + b_g, 0.0)
    alpha = 1.0 / (1.0 + np.exp(-(q @ w_psi + b_psi)))            # (2, 4, 4, 4, 1)
    gated, got_alpha = ag(x, g)
    np.testing.assert_allclose(np.asarray(got_alpha), alpha, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(np.asarray(gated), alpha * x, rtol=1e-5, atol=1e-6)
    assert alpha.std() > 0.01                                      # not a constant gate


def test_scn_outputs_a_distribution_and_its_parts():
    scn = build_scn(CFG.scn, 8, (32, 32, 32))
    p = keras.ops.softmax(np.random.default_rng(3).normal(size=(2, 32, 32, 32, 8)).astype("float32"))
    pred, local, spatial = scn(p, X, return_parts=True)
    assert pred.shape == local.shape == spatial.shape == (2, 32, 32, 32, 8)
    np.testing.assert_allclose(np.asarray(pred).sum(-1), 1.0, atol=1e-5)
    assert np.asarray(spatial).min() >= -1 and np.asarray(spatial).max() <= 1
    with_image = build_scn(dataclasses.replace(CFG.scn, use_image=True), 8, (32, 32, 32))
    assert with_image.count_params() > scn.count_params()


def _fit(model, x, target, steps, lr, distance):
    """Adam steps of ``mean(distance(model(x) - target))``; the losses, first to last."""
    import tensorflow as tf
    opt = keras.optimizers.Adam(lr)
    losses = []
    for _ in range(steps):
        with tf.GradientTape() as tape:
            loss = keras.ops.mean(distance(model(x, training=True) - target))
        opt.apply_gradients(zip(tape.gradient(loss, model.trainable_variables), model.trainable_variables))
        losses.append(float(loss))
    return losses


def test_residual_scn_starts_as_its_input_and_learns_a_correction():
    """``scn.residual``: a fresh SCN returns MAUNet's probabilities p (floored at residual_floor,
    renormalised), with the plain SCN's parameter count; its zero spatial head still gets
    gradients, so steps towards a target with one class favoured lower the loss and leave p."""
    cfg = dataclasses.replace(CFG.scn, residual=True)
    scn = build_scn(cfg, 4, (16, 16, 16))
    logits = np.random.default_rng(5).normal(size=(1, 16, 16, 16, 4)).astype("float32")
    p = np.asarray(keras.ops.softmax(logits))
    floored = np.maximum(p, cfg.residual_floor)
    np.testing.assert_allclose(np.asarray(scn(p)), floored / floored.sum(-1, keepdims=True),
                               rtol=1e-5, atol=1e-6)
    assert scn.count_params() == build_scn(CFG.scn, 4, (16, 16, 16)).count_params()
    target = np.asarray(keras.ops.softmax(logits + np.array([2.0, 0, 0, 0], np.float32)))
    losses = _fit(scn, p, target, 30, 1e-2, keras.ops.square)  # class 0 favoured everywhere
    assert losses[-1] < 0.5 * losses[0]
    assert np.abs(np.asarray(scn(p)) - p).mean() > 0.01


@pytest.mark.parametrize("preset", ["tiny", "paper"])
def test_pinned_parameter_counts_of_every_network(preset):
    """An architecture change (a layer, a width, a kernel) shows up here for each network."""
    cfg = get_preset(preset)
    counts = {"maunet": build_maunet(cfg.maunet, 8, cfg.data.roi_size).count_params(),
              "scn": build_scn(cfg.scn, 8, cfg.data.roi_size).count_params(),
              "localizer": build_localizer(cfg.localizer).count_params(),
              **{k: v.count_params() for k, v in build_mtn(cfg.mtn).items()}}
    assert counts == PINNED[preset]


def test_localizer_and_peak():
    net = build_localizer(CFG.localizer)
    assert net(np.zeros((1, *CFG.localizer.size, 1), "float32")).shape == (1, 16, 16, 16, 1)
    hm = np.zeros((16, 16, 16))
    hm[5, 6, 7], hm[5, 6, 8] = 1.0, 1.0
    np.testing.assert_allclose(heatmap_peak(hm), [5, 6, 7.5])


def test_mtn_shapes_and_ranges():
    nets = build_mtn(CFG.mtn)
    x = X[:, :16, :16, :16]
    for g in ("G_c", "G_m"):
        y = np.asarray(nets[g](x))
        assert y.shape == x.shape and y.min() >= -1 and y.max() <= 1
    for d in ("D_c", "D_m"):
        assert nets[d](x).shape == (2, 4, 4, 4, 1)  # 2 stride-2 layers: a patch map
    with pytest.raises(ValueError):
        build_mtn(dataclasses.replace(CFG.mtn, patch_size=(15, 16, 16)))


def test_mtn_resize_upsampling_has_no_checkerboard():
    """``gen_upsample=resize`` (nearest x2 + conv): same shapes and range as the transposed conv.
    On a constant feature map its up-layer gives a constant interior, where the stride-2
    transposed conv leaves its period-2 (checkerboard) pattern."""
    x = np.full((1, 16, 16, 16, 1), 0.3, np.float32)
    for mode, flat in (("resize", True), ("transpose", False)):
        g = build_mtn(dataclasses.replace(CFG.mtn, gen_upsample=mode))["G_c"]
        y = np.asarray(g(x))
        assert y.shape == x.shape and y.min() >= -1 and y.max() <= 1
        feats = np.ones((1, 4, 4, 4, g.res[0].filters), np.float32)    # bottleneck width
        up = np.asarray(g.up[0](feats))[0, 2:6, 2:6, 2:6]
        assert (np.ptp(up, axis=(0, 1, 2)).max() < 1e-5) == flat, mode
    with pytest.raises(ValueError, match="gen_upsample"):
        build_mtn(dataclasses.replace(CFG.mtn, gen_upsample="bilinear"))


def test_mtn_residual_generator_starts_as_the_identity_and_learns():
    """``gen_residual``: a freshly built G is exactly the identity (x + 0), with the plain G's
    parameter count; its zero-initialised last layer still gets gradients, so a few steps towards
    a changed target lower the loss and move G away from the identity."""
    cfg = dataclasses.replace(CFG.mtn, gen_residual=True)
    g = build_mtn(cfg)["G_c"]
    x = X[:1, :16, :16, :16]
    np.testing.assert_array_equal(np.asarray(g(x)), x)
    assert g.count_params() == PINNED["tiny"]["G_c"]
    target = x - 0.3                                       # a darker image
    # 40 steps at 3e-3: loss ratio 0.08-0.12 over 8 inits (20 at 1e-2 oscillated: 0.24-0.78)
    losses = _fit(g, x, target, 40, 3e-3, keras.ops.abs)
    assert losses[-1] < 0.5 * losses[0]
    assert np.abs(np.asarray(g(x)) - x).mean() > 0.05


def test_image_pool_returns_past_fakes_and_round_trips_its_state():
    pool = ImagePool(3, (2, 2, 2), seed=0)
    fake = lambda i: np.full((1, 2, 2, 2, 1), float(i), np.float32)
    seen = [pool.query(fake(i)) for i in range(20)]
    assert any(s[0, 0, 0, 0, 0] != i for i, s in enumerate(seen))   # some old ones come back
    assert all(s.shape == (1, 2, 2, 2, 1) for s in seen)
    # store() -> a fresh pool load()s the same state and then answers exactly like the original
    pool.store()
    other = ImagePool(3, (2, 2, 2), seed=0)
    for a, b in zip(other.variables, pool.variables):
        a.assign(b.numpy())
    other.load()
    for i in range(20, 40):
        np.testing.assert_array_equal(pool.query(fake(i)), other.query(fake(i)))
    assert ImagePool(0).query(np.ones((2, 2))).shape == (2, 2)


def test_paper_unet_is_a_plain_unet_parameter_for_parameter():
    """`paper_unet` (Table 1's baseline) against a U-Net written out by hand with plain Keras
    layers: double 3x3x3 conv + instance norm per level, no shortcut anywhere."""
    import keras
    from keras import layers
    cfg = get_preset("paper_unet").maunet
    f = [cfg.base_filters * 2 ** l for l in range(cfg.levels)]

    def double(x, n):
        for _ in range(2):
            x = layers.Conv3D(n, 3, padding="same", use_bias=False)(x)
            x = layers.GroupNormalization(groups=-1)(x)
            x = layers.LeakyReLU()(x)
        return x
    inp = keras.Input((32, 32, 32, 1))
    x, skips = inp, []
    for l in range(cfg.levels):
        x = double(x, f[l])
        if l < cfg.levels - 1:
            skips.append(x)
            x = layers.MaxPooling3D(2)(x)
    for l in reversed(range(cfg.levels - 1)):
        x = layers.Conv3DTranspose(f[l], 2, strides=2)(x)
        x = double(layers.Concatenate()([x, skips[l]]), f[l])
    out = layers.Conv3D(8, 1)(x)
    reference = keras.Model(inp, out).count_params()
    assert build_maunet(cfg, 8, (32, 32, 32)).count_params() == reference
