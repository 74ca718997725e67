"""VoxelAutoRegressor: a 3D ResNet with FiLM conditioning and a whole-field context path.

API
---
``ModelConfig`` (dataclass; ``asdict(config)`` is what checkpoints store as "model_config")
    base_channels=128, depth=12, receptive_field_radius=3 (stem kernel 2r+1),
    block_kernel=3, convs_per_block=2, norm="channel"|"spatial", global_context=True,
    context_factor=4, context_channels=32, context_stages=3, global_dim=128,
    mask_features=True, channels_last=True, priors=True (+ channel counts from schema).
``VoxelAutoRegressor(config)``
    .receptive_field -> int: halo of the local path in cells (r + convs_per_block*depth*(k//2);
        27 for the defaults). For a FIXED context the output at a voxel depends only on inputs
        within this distance, so the full grid can be tiled with this overlap.
    .compute_context(context_x [B,19,Dc,Hc,Wc], params [B,27], context_active [B,1,Dc,Hc,Wc])
        -> context = (coarse_map [B,Cc,Dc,Hc,Wc], global_vector [B,G], coarse_mask [B,1,Dc,Hc,Wc]); None if
        global_context=False. context_x/context_active = network.coarsen(x_full, active_full, F)
        of the WHOLE field (the dataset's "context_x"/"context_active").
    .forward(x [B,19,D,H,W], params [B,27], active [B,1,D,H,W], context=None, origin=None,
             context_x=None, context_active=None) -> (delta_norm [B,2,D,H,W], scalars_norm [B,5])
        delta_norm is the normalized change of (P, T) (features.Normalizer.denormalize_delta),
        exactly 0 at inactive cells. origin [B,3] (long) = position of x's first cell in the
        coarse-aligned frame of the field the context was computed from (coarse cell c covers
        fine cells [cF, (c+1)F)); the tile origin in the full grid for un-augmented data.
        Context precedence: ``context`` (precomputed, batch 1 broadcasts over B) >
        ``context_x``/``context_active`` (computed here; use this form under DDP) > x itself
        (x is then taken to be the whole field and origin is 0).
        scalars_norm comes from the global vector only (field sums need the whole field);
        with global_context=False it comes from a masked mean of the local features.
``count_parameters(model) -> int``
``load_checkpoint(path, map_location="cpu") -> dict``  the one reader of checkpoint files: torch.load(weights_only=True)
``load_model(ckpt_path, map_location="cpu") -> (model, ckpt)``  load_checkpoint + checkpoint_config + the weights

Design
------
* Stem Conv3d(k=2r+1) then residual blocks of two 3^3 convolutions, each followed by
  norm -> FiLM -> SiLU. r=3, base 128, depth 12 gives ~12M parameters, the seed's
  "~10-15M" (7^3 convolutions everywhere would be ~70M).
* norm="channel": per-voxel LayerNorm over channels (computed in fp32), so a voxel's
  output never depends on far-away parts of the patch: training on patches and
  inference on the full grid agree. norm="spatial" (GroupNorm(1, C): statistics
  over the whole patch) is the seed's literal "LayerNorm over spatial dims", kept
  for comparison; it breaks that agreement.
* mask_features: features are zeroed at inactive cells after every layer, so an
  inactive cell acts like the zero padding outside the grid. Padding added by
  ``dataset.collate`` then changes nothing, and no information flows through rock
  that the simulator does not model.
* Physics priors (priors=True, when prep computed them: stats.json "priors"): the pressure
  step sets the change since t = 0 to g_P x the pressure prior at t + 1 (an input channel, a
  linear pressure model marched over the years in prep: physics/priors.py) plus the grid
  head's residual; the temperature step is g_T x the injection gap x the thermal prior's step
  (channels at t and t + 1), plus the residual only where prep computed no priors
  (temperature_residual). g_P, g_T: two learned global gains (start 1,
  within exp(+-LOG_GAIN_BOUND)) that calibrate a prior whose constants were generic, or turn
  down one that is wrong. Where prep computed no priors (a description without cell sizes or
  boundary) their channels are 0: the pressure head then predicts the change since t = 0 by
  itself, which keeps rollout errors from piling up. priors=False: the grid head alone predicts
  each step's change (the seed's model).
* Whole-field path (global_context=True): pressure diffuses kilometres per yearly
  step, so a local CNN cannot know the field-wide pressure level. A small CNN on
  the whole field pooled by F=4 (all input channels + active fraction) with strided
  stages (a small U-Net) gives a coarse map, added (trilinearly upsampled, cropped
  to the patch via origin) after the stem and before the grid head, and a global
  vector used with the params in every FiLM and by the scalar head.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import torch
import torch.nn as nn
import torch.nn.functional as F

from voxel_ode import schema
from voxel_ode.utils import UserError


# Sane bounds checked before anything is allocated (a hostile checkpoint could ask for 1 TB).
CONFIG_INT_BOUNDS = {
    "in_channels": (1, 1024), "n_params": (1, 1024), "out_channels": (1, 64), "n_scalars": (0, 64),
    "base_channels": (1, 2048), "depth": (0, 256), "receptive_field_radius": (0, 16), "block_kernel": (1, 15),
    "convs_per_block": (1, 8), "context_factor": (1, 64), "context_channels": (1, 2048),
    "context_stages": (0, 8), "global_dim": (1, 8192),
}


MAX_CONV_PARAMETERS = 2e9  # ~8 GB of fp32 weights: far above anything trained here


def check_config_bounds(config) -> None:
    for name, (lo, hi) in CONFIG_INT_BOUNDS.items():
        value = getattr(config, name)
        if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
            raise UserError(f"model config: {name}: {value!r} is not an integer in [{lo}, {hi}]")
    for name in ("global_context", "mask_features", "channels_last", "priors", "temperature_residual"):
        if not isinstance(getattr(config, name), bool):
            raise UserError(f"model config: {name}: {getattr(config, name)!r} is not true/false")
    # the residual blocks dominate: depth x convs x C^2 x k^3
    approx = config.depth * config.convs_per_block * config.base_channels ** 2 * config.block_kernel ** 3
    if approx > MAX_CONV_PARAMETERS:
        raise UserError(f"model config: about {approx:.3g} parameters (base_channels {config.base_channels}, "
                        f"depth {config.depth}) exceed the limit of {MAX_CONV_PARAMETERS:g}")


@dataclass
class ModelConfig:
    in_channels: int = schema.N_INPUT_CHANNELS
    n_params: int = schema.N_CONDITIONING  # normalized params + time feature
    out_channels: int = schema.N_DYNAMIC
    n_scalars: int = schema.N_SCALARS
    base_channels: int = 128
    depth: int = 12
    receptive_field_radius: int = 3  # stem kernel 2r+1
    block_kernel: int = 3
    convs_per_block: int = 2
    norm: str = "channel"  # "channel" (per-voxel LayerNorm) or "spatial" (GroupNorm(1, C))
    global_context: bool = True
    context_factor: int = 4
    context_channels: int = 32
    context_stages: int = 3
    global_dim: int = 128
    mask_features: bool = True
    channels_last: bool = True  # channels_last_3d memory format (faster 3D convs on CPU)
    # pressure / temperature steps built on the physics priors (module doc; where prep computed
    # none the prior channels are 0 and the pressure head predicts the change since t = 0 itself);
    # False: the grid head alone predicts each step's change (the seed's model)
    priors: bool = True
    # Whether the grid head adds a residual to the thermal prior's temperature step. train sets it
    # where prep computed no priors (the residual is then the temperature's only source). With
    # physics priors the step alone did better on held-out runs of both benchmarks (synth year-29 T
    # 0.058 trained without it vs 0.117 with it; open-darts 0.249 vs 0.269 switched off at
    # inference).
    temperature_residual: bool = False

    def __post_init__(self):
        check_config_bounds(self)  # before anything is allocated: a hostile checkpoint could ask for 1 TB
        if self.norm not in ("channel", "spatial"):
            raise UserError(f"model config: norm: {self.norm!r} is not 'channel' or 'spatial'")
        if self.block_kernel % 2 != 1 or self.receptive_field_radius < 0 or self.depth < 0:
            raise UserError("model config: block_kernel must be odd, receptive_field_radius and depth >= 0")

    @classmethod
    def from_dict(cls, d: dict) -> "ModelConfig":
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise UserError(f"model_config: unknown keys {sorted(unknown)} (a checkpoint of another voxel-ode "
                            "version: retrain it with this one)")
        return cls(**d)


# The priors' gains stay within exp(+-LOG_GAIN_BOUND) (smoothly: tanh), so a run unlike the
# training runs cannot drive a prior to an absurd scale.
LOG_GAIN_BOUND = 2.0


class ChannelLayerNorm(nn.Module):
    """LayerNorm over the channel axis of [B,C,D,H,W], per voxel, computed in fp32 (AMP-safe)."""

    def __init__(self, channels: int, eps: float = 1e-5):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))
        self.eps = eps

    def forward(self, x, weight=None, bias=None):
        """``weight``, ``bias``: in place of the learnt ones (a FiLM folded in, at inference)."""
        weight = self.weight if weight is None else weight
        bias = self.bias if bias is None else bias
        # movedim on a channels_last_3d tensor is a free, contiguous view
        if x.dtype == torch.bfloat16 and x.device.type == "cpu" and not torch.is_grad_enabled():
            # inference: the CPU kernel's bf16-in, bf16-out form (fp32 statistics) is ~3x faster than
            # a float copy; not in training, where it sums the weight gradients in bf16 (7 % off)
            with torch.autocast("cpu", enabled=False):
                return F.layer_norm(x.movedim(1, -1), x.shape[1:2], weight, bias, self.eps).movedim(-1, 1)
        y = F.layer_norm(x.float().movedim(1, -1), x.shape[1:2], weight.float(), bias.float(), self.eps)
        return y.movedim(-1, 1).to(x.dtype)


class SpatialNorm(nn.GroupNorm):
    """The seed's norm: statistics over all channels and the whole patch (GroupNorm(1, C)), in fp32."""

    def __init__(self, channels: int):
        super().__init__(1, channels)

    def forward(self, x):
        return F.group_norm(x.float(), 1, self.weight.float(), self.bias.float(), self.eps).to(x.dtype)


def make_norm(kind: str, channels: int) -> nn.Module:
    return ChannelLayerNorm(channels) if kind == "channel" else SpatialNorm(channels)


class FiLM(nn.Module):
    """Per-channel scale and shift from a conditioning vector; starts as the identity."""

    def __init__(self, cond_dim: int, channels: int):
        super().__init__()
        self.linear = nn.Linear(cond_dim, 2 * channels)
        nn.init.zeros_(self.linear.weight)
        nn.init.zeros_(self.linear.bias)

    def forward(self, h, cond):
        scale, shift = self.linear(cond).to(h.dtype)[:, :, None, None, None].chunk(2, dim=1)
        return h * (1 + scale) + shift


class ResBlock(nn.Module):
    """x + [conv k^3 -> norm -> FiLM -> SiLU] x n, features zeroed at inactive cells."""

    def __init__(self, channels: int, cond_dim: int, kernel: int, n_convs: int, norm: str):
        super().__init__()
        self.convs = nn.ModuleList(nn.Conv3d(channels, channels, kernel, padding=kernel // 2) for _ in range(n_convs))
        self.norms = nn.ModuleList(make_norm(norm, channels) for _ in range(n_convs))
        self.films = nn.ModuleList(FiLM(cond_dim, channels) for _ in range(n_convs))

    def forward(self, h, cond, mask):
        if not torch.is_grad_enabled() and cond.shape[0] == 1 and isinstance(self.norms[0], ChannelLayerNorm):
            return self._infer(h, cond, mask)
        y = h
        for conv, norm, film in zip(self.convs, self.norms, self.films):
            y = F.silu(film(norm(conv(y)), cond))
            if mask is not None:
                y = y * mask
        return h + y

    def _infer(self, h, cond, mask):
        """The same for one field at inference, in fewer passes over the grid: the FiLM's scale and
        shift folded into the norm's weight and bias, SiLU in place (bf16 rollouts ~15 % faster on a
        CPU, where these passes cost as much as the convolutions)."""
        y = h
        for conv, norm, film in zip(self.convs, self.norms, self.films):
            scale, shift = film.linear(cond).float()[0].chunk(2)
            y = F.silu(norm(conv(y), norm.weight * (1 + scale), norm.bias * (1 + scale) + shift), inplace=True)
            if mask is not None:
                y = y * mask
        return h + y


def _pad_to_even(t):
    pad = []
    for n in reversed(t.shape[-3:]):
        pad += [0, n % 2]
    return F.pad(t, pad) if any(pad) else t


class ContextNet(nn.Module):
    """Whole-field path: a small masked U-Net on the coarse field -> (coarse map, global vector)."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        c = cfg.context_channels
        self.level0 = nn.ModuleList(
            [nn.Conv3d(cfg.in_channels + 1, c, 3, padding=1)] + [nn.Conv3d(c, c, 3, padding=1) for _ in range(3)]
        )
        self.norm0 = nn.ModuleList(ChannelLayerNorm(c) for _ in range(4))
        chans = [c * 2 ** min(i, 2) for i in range(cfg.context_stages + 1)]
        # non-overlapping stride-2 convolutions after padding to even sizes: zero padding
        # added by collate at the far end then yields the same features (see tests)
        self.down = nn.ModuleList(nn.Conv3d(chans[i], chans[i + 1], 2, stride=2) for i in range(cfg.context_stages))
        self.down_norm = nn.ModuleList(ChannelLayerNorm(chans[i + 1]) for i in range(cfg.context_stages))
        self.up = nn.ModuleList(nn.Conv3d(chans[i + 1], chans[i], 1) for i in range(cfg.context_stages))
        self.global_mlp = nn.Sequential(
            nn.Linear(chans[-1] + cfg.n_params, cfg.global_dim), nn.SiLU(), nn.Linear(cfg.global_dim, cfg.global_dim)
        )
        self.film = FiLM(cfg.global_dim, c)
        self.out = nn.Conv3d(c, c, 1)

    def forward(self, context_x, params, context_active):
        mask = (context_active > 0).to(context_x.dtype)
        h = torch.cat([context_x, context_active.to(context_x.dtype)], dim=1) * mask
        for i, (conv, norm) in enumerate(zip(self.level0, self.norm0)):
            y = F.silu(norm(conv(h))) * mask
            h = y if i == 0 else h + y
        levels, masks = [h], [mask]
        for conv, norm in zip(self.down, self.down_norm):
            mask = F.max_pool3d(_pad_to_even(mask), 2)
            h = F.silu(norm(conv(_pad_to_even(h)))) * mask
            levels.append(h)
            masks.append(mask)
        pooled = (h * mask).sum(dim=(2, 3, 4)) / mask.sum(dim=(2, 3, 4)).clamp_min(1.0)
        g = self.global_mlp(torch.cat([pooled.float(), params.float()], dim=1))
        for i in reversed(range(len(self.up))):  # decoder: coarse-to-fine skip sums
            up = F.interpolate(self.up[i](h), scale_factor=2, mode="nearest")
            d, hh, w = levels[i].shape[-3:]
            h = (levels[i] + up[..., :d, :hh, :w]) * masks[i]
        coarse = self.out(F.silu(self.film(h, g))) * masks[0]
        return coarse, g, masks[0]


def crop_upsample(coarse: torch.Tensor, origin: torch.Tensor, size, factor: int) -> torch.Tensor:
    """Trilinear upsampling (align_corners=False, edge-clamped) of ``coarse`` by ``factor``,
    evaluated only on the fine cells [origin, origin + size) of each sample.

    Equal, value for value, to cropping ``F.interpolate(coarse, scale_factor=factor,
    mode="trilinear")``; for a patch it never builds the full-resolution map. Each sample
    upsamples only the coarse cells its crop reads (one more on each side, clipped to the
    field): fine cell i interpolates the coarse cells around (i + 0.5) / factor - 0.5, which lie
    within one cell of i // factor, and a block starting at a whole coarse cell has the same
    interpolation weights as the whole field (torch's one-pass kernel, ~5x faster than
    per-axis gathers on the full grid).
    """
    out = []
    for b in range(coarse.shape[0]):
        o = [int(v) for v in origin[b]]
        lo = [max(0, o[a] // factor - 1) for a in range(3)]
        hi = [min(m, (o[a] + n - 1) // factor + 2) for a, (n, m) in enumerate(zip(size, coarse.shape[-3:]))]
        block = coarse[b:b + 1, :, lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]]
        # a crop reaching past the coarse field's far end (padding) reads its clamped edge
        short = [max(0, o[a] + n - hi[a] * factor) for a, n in enumerate(size)]
        if any(short):
            block = F.pad(block, (0, -(-short[2] // factor), 0, -(-short[1] // factor), 0, -(-short[0] // factor)),
                          mode="replicate")
        fine = F.interpolate(block, scale_factor=factor, mode="trilinear", align_corners=False)
        s = [o[a] - lo[a] * factor for a in range(3)]
        out.append(fine[:, :, s[0]:s[0] + size[0], s[1]:s[1] + size[1], s[2]:s[2] + size[2]])
    return out[0] if len(out) == 1 else torch.cat(out)  # one sample: a view, in the block's memory format


def coarsen(x, active, factor: int = 4):
    """Masked average pooling of a field onto a grid ``factor`` times coarser.

    ``x`` [..., C, D, H, W] (torch), ``active`` [..., 1, D, H, W] (1 = active cell).
    The grid is zero-padded at the far end to a multiple of ``factor`` (padding
    counts as inactive), so coarse cell c always covers fine cells
    [c*factor, (c+1)*factor) along each axis. Returns ``(x_coarse, active_frac)``:
    the mean of ``x`` over the active cells of each block (0 where a block has
    none) and the fraction of active cells in the block. Used by the dataset and
    by the model, so both see exactly the same whole-field context.
    """
    lead = x.shape[:-4]
    c, d, h, w = x.shape[-4:]
    x = x.reshape(-1, c, d, h, w)
    active = active.reshape(-1, 1, d, h, w).to(x.dtype)
    pad = [(-n) % factor for n in (w, h, d)]  # F.pad order: last axis first
    if any(pad):
        x = F.pad(x, (0, pad[0], 0, pad[1], 0, pad[2]))
        active = F.pad(active, (0, pad[0], 0, pad[1], 0, pad[2]))
    weighted = F.avg_pool3d(x * active, factor)
    frac = F.avg_pool3d(active, factor)
    mean = torch.where(frac > 0, weighted / frac.clamp_min(1e-12), torch.zeros_like(weighted))
    return mean.reshape(*lead, c, *mean.shape[-3:]), frac.reshape(*lead, 1, *frac.shape[-3:])


class VoxelAutoRegressor(nn.Module):
    def __init__(self, config: ModelConfig | None = None):
        super().__init__()
        cfg = self.config = config or ModelConfig()
        c, r = cfg.base_channels, cfg.receptive_field_radius
        cond_dim = cfg.n_params + (cfg.global_dim if cfg.global_context else 0)
        self.stem = nn.Conv3d(cfg.in_channels, c, 2 * r + 1, padding=r)
        self.blocks = nn.ModuleList(
            ResBlock(c, cond_dim, cfg.block_kernel, cfg.convs_per_block, cfg.norm) for _ in range(cfg.depth)
        )
        self.out_norm = make_norm(cfg.norm, c)
        self.grid_head = nn.Conv3d(c, cfg.out_channels, 1)
        with torch.no_grad():  # start near "no change" (persistence)
            self.grid_head.weight.mul_(0.1)
            self.grid_head.bias.zero_()
        if cfg.global_context:
            self.context_net = ContextNet(cfg)
            self.context_in = nn.Conv3d(cfg.context_channels, c, 1)
            self.context_head = nn.Conv3d(cfg.context_channels, c, 1)
            scalar_in = cfg.global_dim + cfg.n_params
        else:
            scalar_in = c + cfg.n_params
        self.scalar_head = nn.Sequential(nn.Linear(scalar_in, 128), nn.SiLU(), nn.Linear(128, cfg.n_scalars))
        if cfg.priors:
            self.change_channel = schema.channel_index("PressureChange")
            self.pressure_prior_next = schema.channel_index(schema.PRESSURE_PRIOR_NAMES[0] + "Next")
            self.gap_channel = schema.channel_index(schema.INJECTION_GAP)
            self.thermal_now = schema.channel_index(schema.THERMAL_PRIOR_NAMES[0])
            self.thermal_next = schema.channel_index(schema.THERMAL_PRIOR_NAMES[0] + "Next")
            self.prior_log_gain = nn.Parameter(torch.zeros(2))  # pressure, temperature

    @property
    def receptive_field(self) -> int:
        cfg = self.config
        return cfg.receptive_field_radius + cfg.depth * cfg.convs_per_block * (cfg.block_kernel // 2)

    @property
    def context_factor(self) -> int:
        return self.config.context_factor

    def compute_context(self, context_x, params, context_active):
        if not self.config.global_context:
            return None
        return self.context_net(context_x, params, context_active)

    def _format(self, t):
        return t.contiguous(memory_format=torch.channels_last_3d) if self.config.channels_last else t

    def forward(self, x, params, active, context=None, origin=None, context_x=None, context_active=None):
        cfg = self.config
        batch = x.shape[0]
        mask = (active > 0.5).to(x.dtype) if cfg.mask_features else None
        ctx_fine = g = None
        if cfg.global_context:
            if context is None:
                if context_x is None:  # x is the whole field
                    context_x, context_active = coarsen(x, active, cfg.context_factor)
                    origin = None
                context = self.compute_context(context_x, params, context_active)
            coarse, g, coarse_mask = context
            if coarse.shape[0] != batch:  # one field's context shared by a batch of its tiles
                coarse, g = coarse.expand(batch, *coarse.shape[1:]), g.expand(batch, -1)
                coarse_mask = coarse_mask.expand(batch, *coarse_mask.shape[1:])
            origin = torch.zeros(3, dtype=torch.long) if origin is None else torch.as_tensor(origin).cpu()
            origin = origin.reshape(-1, 3).expand(batch, 3)  # one origin may serve the whole batch
            # masked (normalized) trilinear upsampling: inactive coarse cells, including any
            # padding, never leak into their neighbours, so padding changes nothing
            # channels-last before the upsampling: torch's trilinear kernel is ~7x faster on it (CPU)
            up = crop_upsample(self._format(torch.cat([coarse, coarse_mask], 1)), origin, x.shape[-3:],
                               cfg.context_factor)
            weight = up[:, -1:]
            ctx_fine = up[:, :-1] / weight.clamp_min(1e-6) * (weight > 1e-6)
            ctx_fine = self._format(ctx_fine)
            cond = torch.cat([params.to(g.dtype), g], dim=1)
        else:
            cond = params

        h = self.stem(self._format(x))
        if ctx_fine is not None:
            h = h + self.context_in(ctx_fine)
        if mask is not None:
            h = h * mask
        for block in self.blocks:
            h = block(h, cond, mask)
        h = F.silu(self.out_norm(h))
        if ctx_fine is not None:
            h = h + self.context_head(ctx_fine)
        delta = self.grid_head(h)
        if cfg.priors:
            delta = self.apply_priors(delta, x)
        delta = delta * (active > 0.5).to(delta.dtype)  # inactive cells never change

        if cfg.global_context:
            scalars = self.scalar_head(torch.cat([g.float(), params.float()], dim=1))
        else:  # the seed's pooled head: ill-posed on patches that contain no well
            m = (active > 0.5).to(h.dtype)
            pooled = (h * m).sum(dim=(2, 3, 4)) / m.sum(dim=(2, 3, 4)).clamp_min(1.0)
            scalars = self.scalar_head(torch.cat([pooled.float(), params.float()], dim=1))
        return delta.contiguous(), scalars

    def prior_steps(self, x) -> tuple[torch.Tensor, torch.Tensor]:
        """([B, 1, D, H, W] x 2) what the priors alone set, in target units before the asinh:
        the pressure's change since t = 0 at t + 1 minus the change so far, g_P (p(t + 1) - (P - P0)) / s_P,
        and the temperature step g_T gap (theta(t + 1) - theta(t)) / s_T.

        The PressureChange, PressurePriorNext and InjectionTemperatureGap channels hold
        asinh(value / s) with the target's scale s (features.Normalizer), so sinh gives them back
        in target units; the thermal prior channels hold the share theta. fp32: sinh overflows fp16."""
        gain = torch.exp(LOG_GAIN_BOUND * torch.tanh(self.prior_log_gain.float() / LOG_GAIN_BOUND))
        channel = lambda c: x[:, c:c + 1].float()  # noqa: E731
        pressure = gain[0] * torch.sinh(channel(self.pressure_prior_next)) - torch.sinh(channel(self.change_channel))
        theta_step = channel(self.thermal_next) - channel(self.thermal_now)
        temperature = gain[1] * torch.sinh(channel(self.gap_channel)) * theta_step
        return pressure, temperature

    def apply_priors(self, delta, x):
        """Each output channel c = asinh(prior step + sinh(grid head c)): the priors plus the residual.
        Setting the pressure's change since t = 0 (not adding a step) keeps rollout errors from
        piling up: the cones form within the first year and the prior carries the drift."""
        steps = dict(zip(("Pressure", "Temperature"), self.prior_steps(x)))
        prior = torch.cat([steps[name] for name in schema.OUTPUT_CHANNELS], dim=1)
        residual = torch.sinh(delta.float().clamp(-30.0, 30.0))
        if not self.config.temperature_residual:
            keep = torch.tensor([name != "Temperature" for name in schema.OUTPUT_CHANNELS], device=delta.device)
            residual = residual * keep.view(1, -1, 1, 1, 1).to(residual.dtype)
        return torch.asinh(prior + residual).to(delta.dtype)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


