"""MTN: modality transfer network, an unpaired 3D CycleGAN (SPEC module 1).

    G_c: MRI -> CT      G_m: CT -> MRI      (same architecture, ResNet generator in 3D)
        c7s1-F -- d(2F) -- d(4F) -- R(4F) x n -- u(2F) -- u(F) -- c7s1-1 -- tanh
        c7s1-F: 7x7x7 conv + InstanceNorm + ReLU; d: 3x3x3 stride-2 conv; R: residual block;
        u: 3x3x3 stride-2 transposed conv (``gen_upsample=resize``: x2 nearest + 3x3x3 conv);
        output in the normalised intensity range [-1, 1]
        ``gen_residual`` (beyond the paper): G(x) = x + c7s1-1(...), linear and zero-initialised
    D_c, D_m: 3D PatchGAN
        C(F, 4, s2) -- LeakyReLU -- [C(2^i F, 4, s2) -- IN -- LeakyReLU] x (L-1)
        -- C(2^L F, 4, s1) -- IN -- LeakyReLU -- C(1, 4, s1)  -> real/fake map (logits)
        ``disc_norm=False`` (beyond the paper): no IN in D

Loss (SPEC): L = L_GAN(G_c, D_c) + L_GAN(G_m, D_m) + lambda * L_cycle + w_id * L_identity,
L_cycle = |G_m(G_c(m)) - m|_1 + |G_c(G_m(c)) - c|_1, L_identity = |G_c(c) - c|_1 + |G_m(m) - m|_1
(``cm_trancaf.losses``). Channels-last ``(B, D, H, W, 1)``; D/H/W divisible by 2**downsamplings.
"""
from __future__ import annotations

import keras
import numpy as np
from keras import layers

from ..config import CycleGANConfig
from .blocks import ConvNormAct, ResidualBlock, instance_norm

__all__ = ["Generator", "Discriminator", "ImagePool", "build_mtn"]


class Generator(keras.Model):
    def __init__(self, cfg: CycleGANConfig, **kwargs):
        super().__init__(**kwargs)
        f, d = cfg.gen_filters, cfg.gen_downsamplings
        self.stem = ConvNormAct(f, 7, activation="relu")
        self.down = [ConvNormAct(f * 2 ** (i + 1), 3, strides=2, activation="relu")
                     for i in range(d)]
        self.res = [ResidualBlock(f * 2 ** d) for _ in range(cfg.gen_res_blocks)]
        if cfg.gen_upsample == "transpose":
            self.up = [layers.Conv3DTranspose(f * 2 ** i, 3, strides=2, padding="same",
                                              use_bias=False) for i in reversed(range(d))]
        elif cfg.gen_upsample == "resize":      # nearest x2 then conv: no checkerboard (Odena 2016)
            self.up = [keras.Sequential([layers.UpSampling3D(2), layers.Conv3D(
                f * 2 ** i, 3, padding="same", use_bias=False)]) for i in reversed(range(d))]
        else:
            raise ValueError(f"mtn.gen_upsample must be transpose|resize, got {cfg.gen_upsample!r}")
        self.up_norm = [instance_norm() for _ in range(d)]
        if cfg.gen_residual:                   # G(x) = x + R(x), R = 0 at initialisation
            self.out = layers.Conv3D(1, 7, padding="same", kernel_initializer="zeros",
                                     dtype="float32")
        else:
            self.out = layers.Conv3D(1, 7, padding="same", activation="tanh", dtype="float32")
        self.residual = cfg.gen_residual

    def call(self, x, training=False):
        source = x                                             # (B, D, H, W, 1)
        x = self.stem(x, training=training)                    # (B, D, H, W, F)
        for block in self.down:
            x = block(x, training=training)                    # (B, D/2^i, .., 2^i F)
        for block in self.res:
            x = block(x, training=training)
        for up, norm in zip(self.up, self.up_norm):
            x = keras.ops.relu(norm(up(x), training=training))
        if self.residual:                                      # (B, D, H, W, 1), about [-1, 1]
            return keras.ops.cast(source, "float32") + self.out(x)
        return self.out(x)                                     # (B, D, H, W, 1) in [-1, 1]


class Discriminator(keras.Model):
    def __init__(self, cfg: CycleGANConfig, **kwargs):
        super().__init__(**kwargs)
        f, n = cfg.disc_filters, cfg.disc_layers
        self.blocks = [ConvNormAct(f, 4, strides=2, activation="leaky_relu", norm=False)]
        norm = cfg.disc_norm                                   # IN (CycleGAN) or none
        self.blocks += [ConvNormAct(f * 2 ** i, 4, strides=2, activation="leaky_relu", norm=norm)
                        for i in range(1, n)]
        self.blocks += [ConvNormAct(f * 2 ** n, 4, strides=1, activation="leaky_relu", norm=norm)]
        self.out = layers.Conv3D(1, 4, padding="same", dtype="float32")

    def call(self, x, training=False):
        for block in self.blocks:
            x = block(x, training=training)
        return self.out(x)                                     # (B, D/2^L, .., 1) logits


class ImagePool:
    """History of generated volumes (Shrivastava et al.; CycleGAN's pool of 50): with probability
    0.5 a new fake is swapped for a stored one, so D sees older generator outputs too.

    The history lives in NumPy; ``store()`` copies it into ``variables`` (checkpointed with the
    networks) and ``load()`` back, so a resumed run continues with the same pool. The random
    choices are drawn from ``(seed, number of calls)``: no hidden RNG state."""

    def __init__(self, size: int, shape=(), seed: int = 0):
        self.size, self.seed = size, seed
        self.items = np.zeros((max(size, 1), *shape, 1), np.float32)
        self.count, self.calls = 0, 0
        self.buffer = keras.Variable(self.items, trainable=False, name="pool")
        self.state = keras.Variable(np.zeros(2, np.int64), trainable=False, name="pool_state")

    @property
    def variables(self) -> list:
        return [self.buffer, self.state]

    def store(self) -> None:
        self.buffer.assign(self.items)
        self.state.assign(np.array([self.count, self.calls], np.int64))

    def load(self) -> None:
        self.items = np.array(self.buffer.numpy(), np.float32)
        self.count, self.calls = (int(v) for v in self.state.numpy())

    def query(self, batch: np.ndarray) -> np.ndarray:
        if self.size <= 0:
            return batch
        rng = np.random.default_rng([self.seed, self.calls])
        self.calls += 1
        out = []
        for x in batch:
            if self.count < self.size:
                self.items[self.count] = x
                self.count += 1
                out.append(x)
            elif rng.random() < 0.5:
                i = int(rng.integers(self.size))
                out.append(self.items[i].copy())
                self.items[i] = x
            else:
                out.append(x)
        return np.stack(out)


def build_mtn(cfg: CycleGANConfig) -> dict:
    """``{"G_c", "G_m", "D_c", "D_m"}``, built on a patch of ``cfg.patch_size``."""
    if any(s % 2 ** cfg.gen_downsamplings for s in cfg.patch_size):
        raise ValueError(f"patch_size {cfg.patch_size} must be divisible by "
                         f"2**gen_downsamplings = {2 ** cfg.gen_downsamplings}")
    nets = {"G_c": Generator(cfg, name="G_c"), "G_m": Generator(cfg, name="G_m"),
            "D_c": Discriminator(cfg, name="D_c"), "D_m": Discriminator(cfg, name="D_m")}
    x = keras.ops.zeros((1, *cfg.patch_size, 1))
    for net in nets.values():
        net(x)
    return nets
