"""Scale and speed options: a mirrored strategy on 2 logical CPUs gives one device's losses and
weights for the same global batch; 2 local workers (MultiWorkerMirroredStrategy) agree on the
weights; bfloat16 and XLA stay close to float32; a float16 run scales its loss."""
import json
import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf

from cm_trancaf.config import apply_overrides, get_preset
from cm_trancaf.models.maunet import build_maunet
from cm_trancaf.checkpoint import restore
from cm_trancaf.inference import precision_policy
from cm_trancaf.train.scale import make_optimizer, make_step

CLI = [sys.executable, "-m", "cm_trancaf.cli"]


def _weights(run: Path) -> list:
    cfg = get_preset("tiny")
    model = build_maunet(cfg.maunet, 8, cfg.data.roi_size)
    restore(run, "last", model=model)
    return model.get_weights()


def _losses(run: Path) -> np.ndarray:
    lines = (run / "log.csv").read_text().splitlines()[1:]
    return np.array([float(l.split(",")[1]) for l in lines])


MIRRORED = textwrap.dedent("""
    import sys, keras, numpy as np, tensorflow as tf
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    from pathlib import Path
    from cm_trancaf.config import apply_overrides, get_preset
    from cm_trancaf.models.maunet import build_maunet
    import cm_trancaf.train.seg as seg
    # plain SGD: the update is linear in the gradient, so the two runs' weights differ only by the
    # round-off of summing the replicas' gradients (Adam's 1/sqrt(v) would amplify it without bound
    # in near-zero gradients, and Adam is blind to a wrong 1/R gradient scale)
    seg._adam = lambda lr: keras.optimizers.SGD(lr)
    root, out = Path(sys.argv[1]), Path(sys.argv[2])
    for strategy in ("default", "mirrored"):
        cfg = apply_overrides(get_preset("tiny"), [f"run.strategy={strategy}", "train.steps=1",
                              "train.batch_size=4", "run.log_every=1", "train.val_every=100",
                              "train.lr=0.5"])
        seg.train_segmentation(cfg, root, out / strategy, stages=("maunet",))
    keras.utils.set_random_seed(cfg.run.seed)          # the initial weights of both runs
    init = build_maunet(cfg.maunet, 8, cfg.data.roi_size).get_weights()
    np.savez(out / "init.npz", *init)
    from cm_trancaf.train.scale import get_strategy
    print("replicas", get_strategy("mirrored").num_replicas_in_sync)
""")


def test_mirrored_on_two_cpus_matches_one_device(tiny_phantom, tmp_path):
    r = subprocess.run([sys.executable, "-c", MIRRORED, str(tiny_phantom), str(tmp_path)],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "replicas 2" in r.stdout                       # really two replicas, one batch each half
    one, two = tmp_path / "default" / "maunet", tmp_path / "mirrored" / "maunet"
    np.testing.assert_allclose(_losses(two), _losses(one), rtol=1e-4, atol=1e-5)
    assert len(_losses(one)) == 1
    init = list(np.load(tmp_path / "init.npz").values())
    # One SGD step: w1 = w0 - lr * g. Mirrored sums two half-batch gradients, each scaled by 1/R,
    # where one device sums the whole batch: the same terms in another order, so the
    # displacements agree to float32 round-off (measured: 5e-5 of each tensor's largest
    # displacement at worst; 1e-3 leaves a 20x margin). A wrong 1/R scale would change every
    # displacement by a factor of 2. (Over several steps the training dynamics amplify the
    # round-off, to 4e-3 after 4 steps, so only the first step has a bound from the arithmetic.)
    moved = 0
    for w0, a, b in zip(init, _weights(one), _weights(two)):
        step = np.abs(a - w0).max()
        np.testing.assert_allclose(b - w0, a - w0, rtol=0, atol=1e-3 * step + 1e-9)
        moved += step > 1e-4
    assert moved > len(init) // 2                         # the comparison is not of idle weights


def _free_ports(n):
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def test_two_local_workers_train_and_agree(tiny_phantom, tmp_path):
    ports = _free_ports(2)
    cluster = {"worker": [f"127.0.0.1:{p}" for p in ports]}
    procs = []
    for i in range(2):
        env = {**os.environ, "TF_CONFIG": json.dumps({"cluster": cluster,
                                                      "task": {"type": "worker", "index": i}})}
        procs.append(subprocess.Popen(
            CLI + ["train-seg", "--data", str(tiny_phantom), "--stage", "maunet", "--preset", "tiny",
                   "--strategy", "multiworker", "--out", str(tmp_path / f"w{i}"),
                   "--set", "train.steps=3", "--set", "train.val_every=100"],
            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True))
    errs = [p.communicate(timeout=600)[1] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [e[-2000:] for e in errs]
    w0, w1 = _weights(tmp_path / "w0" / "maunet"), _weights(tmp_path / "w1" / "maunet")
    fresh = build_maunet(get_preset("tiny").maunet, 8, get_preset("tiny").data.roi_size)
    for a, b in zip(w0, w1):
        np.testing.assert_array_equal(a, b)               # synchronous: identical on both workers
    assert any(not np.allclose(a, f) for a, f in zip(w0, fresh.get_weights()))


@pytest.mark.parametrize("precision,jit,tol", [("mixed_bfloat16", False, 0.05),
                                               ("float32", True, 1e-4)])
def test_bfloat16_and_xla_steps_stay_close_to_float32(precision, jit, tol):
    cfg = get_preset("tiny")
    x = np.random.default_rng(0).normal(size=(2, *cfg.data.roi_size, 1)).astype("float32")
    y = keras.ops.one_hot(np.random.default_rng(1).integers(0, 8, (2, *cfg.data.roi_size)), 8)

    def one_step(policy, jit_compile):
        keras.utils.set_random_seed(0)
        strategy = tf.distribute.get_strategy()
        with precision_policy(policy):
            model = build_maunet(cfg.maunet, 8, cfg.data.roi_size)
            opt = make_optimizer(keras.optimizers.Adam(1e-3), policy)
            opt.build(model.trainable_variables)
        from cm_trancaf.losses import dice_focal

        def loss_fn(x, y):
            loss = dice_focal(y, model(x, training=True))
            return loss, {"loss": loss}
        step = make_step(strategy, loss_fn, model.trainable_variables, opt, jit_compile)
        logs = [float(step(x, y)["loss"]) for _ in range(3)]
        return logs, np.asarray(model(x))

    ref_logs, ref_probs = one_step("float32", False)
    logs, probs = one_step(precision, jit)
    np.testing.assert_allclose(logs, ref_logs, atol=tol)
    assert probs.dtype == np.float32                       # softmax stays float32
    # after 3 Adam steps (lr 1e-3; Adam magnifies rounding in near-zero gradients, so the single
    # worst voxel is not a stable statistic) the outputs agree on average and in the argmax
    assert np.abs(probs - ref_probs).mean() < 0.01
    assert (probs.argmax(-1) == ref_probs.argmax(-1)).mean() > 0.95
    assert logs[-1] < logs[0]                              # and it learns


def _kernel_gradient_np(x: np.ndarray, dy: np.ndarray, ks: int = 3) -> np.ndarray:
    """Float64 reference: d(sum(conv3d_same(x, K) * dy)) / dK, (ks, ks, ks, C_in, C_out)."""
    p, (_, d, h, w, _) = ks // 2, x.shape
    xp = np.pad(x, ((0, 0), (p, p), (p, p), (p, p), (0, 0)))
    return np.stack([np.einsum("ndhwi,ndhwo->io", xp[:, a:a + d, b:b + h, c:c + w], dy)
                     for a in range(ks) for b in range(ks) for c in range(ks)]
                    ).reshape(ks, ks, ks, x.shape[-1], dy.shape[-1])


def test_bfloat16_training_is_refused_where_the_conv_kernel_gradient_is_wrong(tiny_phantom,
                                                                               tmp_path):
    from cm_trancaf.inference import BF16_PROBE_SHAPE, bf16_conv_gradient_ok
    from cm_trancaf.train.seg import train_segmentation
    from cm_trancaf.utils import UserError
    # the probe's verdict against an independent float64 reference (TensorFlow 2.21's CPU kernel
    # is ~100 % off or NaN at this depth of 2; bfloat16 rounding alone gives ~0.4 %)
    rng = np.random.default_rng(7)
    errors = []
    for _ in range(3):
        x, dy = rng.normal(size=BF16_PROBE_SHAPE), rng.normal(size=BF16_PROBE_SHAPE)
        k = tf.constant(0.05 * rng.normal(size=(3, 3, 3, 8, 8)), tf.bfloat16)
        with tf.GradientTape() as tape:
            tape.watch(k)
            y = tf.nn.conv3d(tf.constant(x, tf.bfloat16), k, [1] * 5, "SAME")
        got = tf.cast(tape.gradient(y, k, output_gradients=tf.constant(dy, tf.bfloat16)),
                      tf.float64).numpy()
        ref = _kernel_gradient_np(x, dy)
        errors.append(np.abs(got - ref).max() / np.abs(ref).max())
    right = all(np.isfinite(e) and e < 0.05 for e in errors)
    assert bf16_conv_gradient_ok() == right, errors
    # where it is wrong, a bfloat16 training stops with a clear error before writing anything
    cfg = apply_overrides(get_preset("tiny"), ["run.precision=mixed_bfloat16"])
    run_dir = tmp_path / "run"
    if right:
        summary = train_segmentation(cfg, tiny_phantom, run_dir, stages=("localizer",))
        assert summary["localizer"]["steps"] == cfg.train_localizer.steps
    else:
        with pytest.raises(UserError, match="mixed_bfloat16.*float32"):
            train_segmentation(cfg, tiny_phantom, run_dir, stages=("localizer",))
        assert not run_dir.exists()


def test_float16_without_float16_kernels_is_a_clear_error_before_anything_is_written(
        tiny_phantom, seg_run, tmp_path):
    from cm_trancaf.inference import Cascade, float16_kernels_exist
    from cm_trancaf.train.seg import train_segmentation
    from cm_trancaf.utils import UserError
    if tf.config.list_physical_devices("GPU"):
        pytest.skip("a GPU has float16 kernels: nothing to refuse")
    assert not float16_kernels_exist()        # TensorFlow's CPU Conv3D / MaxPool3D: no float16
    cfg = apply_overrides(get_preset("tiny"), ["run.precision=mixed_float16"])
    with pytest.raises(UserError, match="mixed_float16 needs a GPU"):
        train_segmentation(cfg, tiny_phantom, tmp_path / "run", stages=("localizer",))
    assert not (tmp_path / "run").exists()    # was: a TF traceback after config.json was written
    with pytest.raises(UserError, match="mixed_float16 needs a GPU"):
        Cascade.load(seg_run, precision="mixed_float16")
    Cascade.load(seg_run, precision="mixed_bfloat16")   # prediction in bfloat16 stays allowed


def test_float16_uses_loss_scaling_and_keeps_float32_weights():
    # float16 kernels (Conv3D, MaxPool3D) exist on GPU only: a small model shows the mechanics
    with precision_policy("mixed_float16"):
        model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3),
                                  keras.layers.Dense(1, dtype="float32")])
        opt = make_optimizer(keras.optimizers.Adam(1e-2), "mixed_float16")
        opt.build(model.trainable_variables)
    assert isinstance(opt, keras.optimizers.LossScaleOptimizer)
    assert model.layers[0].compute_dtype == "float16"
    assert all(w.dtype == "float32" for w in model.trainable_weights)
    assert keras.config.dtype_policy().name == "float32"   # the global policy is restored
    x = np.ones((8, 4), np.float32)

    def loss_fn(x):
        loss = keras.ops.mean(keras.ops.square(model(x) - 1.0))
        return loss, {"loss": loss}
    step = make_step(tf.distribute.get_strategy(), loss_fn, model.trainable_variables, opt)
    losses = [float(step(x)["loss"]) for _ in range(20)]
    assert losses[-1] < losses[0] and all(np.isfinite(losses))
    with pytest.raises(Exception, match="precision"):
        with precision_policy("float8"):
            pass


@pytest.mark.skipif(os.uname().machine not in ("x86_64", "AMD64"),
                    reason="TensorFlow's oneDNN switch is about its x86 CPU packages")
def test_importing_the_package_turns_on_onednn_convolutions_unless_the_user_says_no():
    """TensorFlow leaves its oneDNN kernels off on x86 CPUs without AVX512_VNNI (its own Conv3D
    there trained the `cpu` MAUNet 4-5x slower): importing cm_trancaf first turns them on, and a
    user's TF_ENABLE_ONEDNN_OPTS=0 is kept. oneDNN's verbose log shows which kernel ran."""
    code = textwrap.dedent("""
        import cm_trancaf, tensorflow as tf
        x = tf.random.normal((1, 8, 8, 8, 4))
        tf.nn.conv3d(x, tf.random.normal((3, 3, 3, 4, 4)), [1] * 5, "SAME").numpy()
    """)
    env = {k: v for k, v in os.environ.items() if k != "TF_ENABLE_ONEDNN_OPTS"}
    runs = {}
    for choice in (None, "0"):
        extra = {} if choice is None else {"TF_ENABLE_ONEDNN_OPTS": choice}
        r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                           timeout=300, env={**env, **extra, "ONEDNN_VERBOSE": "1"})
        assert r.returncode == 0, r.stderr[-2000:]
        runs[choice] = r.stdout
    assert "exec,cpu,convolution" in runs[None]
    assert "exec,cpu,convolution" not in runs["0"]
