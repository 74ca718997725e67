"""VoxelAutoRegressor: a 3D ResNet with FiLM conditioning and a whole-field context path.

API
---
``ModelConfig`` (dataclass; ``asdict(config)`` is what checkpoints store as "model_config")
    base_channels=128, depth=12, receptive_field_radius=3 (stem kernel 2r+1),
    block_kernel=3, convs_per_block=2, norm="channel"|"spatial", global_context=True,
    context_factor=4, context_channels=32, context_stages=3, global_dim=128,
    mask_features=True, channels_last=True, response_mix=True, pressure_prior=True, front_mix=True,
    temperature_residual=None (= False with the front mix, True without; see the field's comment)
    (+ channel counts from schema).
``VoxelAutoRegressor(config)``
    .receptive_field -> int: halo of the local path in cells (r + convs_per_block*depth*(k//2);
        27 for the defaults). For a FIXED context the output at a voxel depends only on inputs
        within this distance, so the full grid can be tiled with this overlap.
    .compute_context(context_x [B,14,Dc,Hc,Wc], params [B,27], context_active [B,1,Dc,Hc,Wc])
        -> context = (coarse_map [B,Cc,Dc,Hc,Wc], global_vector [B,G], coarse_mask [B,1,Dc,Hc,Wc]); None if
        global_context=False. context_x/context_active = utils.coarsen(x_full, active_full, F)
        of the WHOLE field (the dataset's "context_x"/"context_active").
    .forward(x [B,14,D,H,W], params [B,27], active [B,1,D,H,W], context=None, origin=None,
             context_x=None, context_active=None) -> (delta_norm [B,2,D,H,W], scalars_norm [B,5])
        delta_norm is the normalized change of (P, T) (dataset.Normalizer.denormalize_delta),
        exactly 0 at inactive cells. origin [B,3] (long) = position of x's first cell in the
        coarse-aligned frame of the field the context was computed from (coarse cell c covers
        fine cells [cF, (c+1)F)); the tile origin in the full grid for un-augmented data.
        Context precedence: ``context`` (precomputed, batch 1 broadcasts over B) >
        ``context_x``/``context_active`` (computed here; use this form under DDP) > x itself
        (x is then taken to be the whole field and origin is 0).
        scalars_norm comes from the global vector only (field sums need the whole field);
        with global_context=False it comes from a masked mean of the local features.
``count_parameters(model) -> int``
``load_model(ckpt_path, map_location="cpu") -> (model, ckpt)``  torch.load(weights_only=True)

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
* Response mix (response_mix=True): each step sets the pressure change since t = 0 to a
  mix of the five well-response channels (one-year linear pressure responses over the
  whole field with lateral support from open to closed, computed in prep:
  well_response.py) plus the grid head's residual; the mix interpolates between two
  neighbouring responses, with the point and a gain from the params and time through a
  small MLP. Needs asinh change targets (the channels share the pressure target's scale).
  The pressure path then does not start at persistence (it starts between the 10 % and 1 % responses).
* Pressure prior (pressure_prior=True, default): the step sets the pressure change since
  t = 0 to the pressure prior at t + 1 (an input channel; a linear pressure model marched
  over the years in prep with the thermal prior's cold water and the run's own support and
  compressibility: well_response.pressure_prior) plus the residual, with no fitted weights;
  the response mix's head then only gives the front mix its point on the support scale.
* Front mix (front_mix=True): each step moves the temperature by the injection gap
  (InjectionTemperatureGap) times the step of the thermal prior (a linear heat-transport
  solve on three flow fields, computed in prep, given at t and t + 1 as input channels),
  interpolated between neighbouring flow fields with a gain, both from the params and
  time (front_step); the grid head's residual on top only with temperature_residual=True.
* Whole-field path (global_context=True): pressure diffuses kilometres per yearly
  step, so a local CNN cannot know the field-wide pressure level. A small CNN on
  the whole field pooled by F=4 (all input channels + active fraction) with strided
  stages (a small U-Net) gives a coarse map, added (trilinearly upsampled, cropped
  to the patch via origin) after the stem and before the grid head, and a global
  vector used with the params in every FiLM and by the scalar head.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from voxel_ode import schema
from voxel_ode.utils import UserError, coarsen


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
    response_mix: bool = True  # pressure change = learned mix of the well-response channels + residual
    # Pressure change since t = 0 set to the pressure prior at t + 1 (an input channel: a linear
    # pressure model marched over the years in prep, well_response.pressure_prior) + residual,
    # instead of the learned response mix; the response head then only places the run on the
    # support scale for the front mix. Year 29 on the fidelity benchmark: docs/benchmarks.md,
    # "Pressure prior".
    pressure_prior: bool = True
    front_mix: bool = True  # temperature change = learned mix of the thermal prior's step x gap
    # Whether the grid head adds a residual to the front mix's temperature step. Default (None):
    # no with the front mix, the temperature change is the thermal prior's step alone. Trained
    # on this CPU's budget, the residual added error on every set of unseen runs measured (year 29:
    # 0.111 vs 0.091 on 40 runs, 0.087 vs 0.071 on the fidelity test runs; docs/benchmarks.md,
    # `fidelity13`), also with 200 training runs. True keeps it (for long GPU training on data
    # whose temperature the prior misses; compare on held-out runs). Without the front mix the
    # grid head is the temperature's only source, so None -> True there.
    temperature_residual: bool | None = None
    # how the mix heads' outputs map to (point, gain, cold share); 2 = linear point, bounded gain
    # and cold share (see _support_point, LOG_GAIN_BOUND). Checkpoints without it used a sigmoid
    # point: load_model refuses them.
    mix_heads_version: int = 2

    def __post_init__(self):
        if self.norm not in ("channel", "spatial"):
            raise UserError(f"model config: norm: {self.norm!r} is not 'channel' or 'spatial'")
        if self.block_kernel % 2 != 1 or self.receptive_field_radius < 0 or self.depth < 0:
            raise UserError("model config: block_kernel must be odd, receptive_field_radius and depth >= 0")
        if self.temperature_residual is None:
            self.temperature_residual = not self.front_mix
        if not self.temperature_residual and not self.front_mix:
            raise UserError("model config: temperature_residual=False needs front_mix (the temperature would never change)")
        if self.mix_heads_version != 2:
            raise UserError(f"model config: mix_heads_version {self.mix_heads_version} is not 2 (the only one built)")

    @classmethod
    def from_dict(cls, d: dict) -> "ModelConfig":
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise UserError(f"model_config: unknown keys {sorted(unknown)} (checkpoint from a newer version?)")
        # checkpoints written before a key existed: the residual, no pressure prior
        return cls(**{"temperature_residual": True, "pressure_prior": False, **d})


# Initial point of the thermal mix along its flow fields (0 = open, 1 = 1 % support, 2 = closed)
# when it has its own (with the response mix it shares the pressure mix's point), between two
# vertices for the reason given at MIX_INIT; gain 1 = the whole injection gap.
FRONT_INIT = 0.5
# Initial point of the pressure mix along the support strengths (0 = open ... 4 = closed). Not
# a whole number: at a vertex of the interpolation its gradient is 0 on both sides, and a head
# started at exactly the 1 % response (u = 2) never moved off it (demo: year-29 error 0.58).
MIX_INIT = 1.5
# Initial share of the cold water's extra pressure (it grows from ~0 in year 1 as the plume does).
COLD_INIT = 0.25
# Bounds of the mix heads' outputs, so that a head meeting params unlike its ~40 training runs'
# cannot extrapolate to an absurd mix: gain within exp(+-LOG_GAIN_BOUND), cold share within
# [0, COLD_MAX]. In a standalone fit of the pressure head (docs/benchmarks.md, "Mix heads") an
# unbounded cold share gave one test run 50 times its true change.
LOG_GAIN_BOUND = 2.0
COLD_MAX = 3.0


class ChannelLayerNorm(nn.Module):
    """LayerNorm over the channel axis of [B,C,D,H,W], per voxel, computed in fp32 (AMP-safe)."""

    def __init__(self, channels: int, eps: float = 1e-5):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))
        self.eps = eps

    def forward(self, x):
        # movedim on a channels_last_3d tensor is a free, contiguous view
        y = F.layer_norm(x.float().movedim(1, -1), x.shape[1:2], self.weight.float(), self.bias.float(), self.eps)
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
        y = h
        for conv, norm, film in zip(self.convs, self.norms, self.films):
            y = F.silu(film(norm(conv(y)), cond))
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
    mode="trilinear")``; for a patch it never builds the full-resolution map.
    """
    if not torch.as_tensor(origin).any() and all(n > (m - 1) * factor for n, m in zip(size, coarse.shape[-3:])):
        # the whole field (full-grid rollout, whole-grid training): torch's one-pass kernel is
        # ~7x faster than the per-axis gathers below; the map it builds is at most factor - 1
        # cells per axis larger than the result
        full = F.interpolate(coarse, scale_factor=factor, mode="trilinear", align_corners=False)
        return full[..., : size[0], : size[1], : size[2]]
    padded = F.pad(coarse, (1, 1, 1, 1, 1, 1), mode="replicate")  # = edge clamping
    out = []
    for b in range(coarse.shape[0]):
        v = padded[b]
        for axis, n in enumerate(size):
            fine = torch.arange(n, device=coarse.device, dtype=torch.float64) + float(origin[b, axis])
            u = (fine + 0.5) / factor - 0.5
            lo = torch.floor(u)
            w = (u - lo).to(v.dtype)
            limit = v.shape[1 + axis] - 1
            i0 = (lo.long() + 1).clamp(0, limit)
            i1 = (lo.long() + 2).clamp(0, limit)
            shape = [1, 1, 1]
            shape[axis] = n
            a, c = v.index_select(1 + axis, i0), v.index_select(1 + axis, i1)
            v = a + (c - a) * w.reshape(1, *shape)
        out.append(v)
    return torch.stack(out)


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
        if cfg.response_mix:
            self.response_channels = [schema.channel_index(n) for n in schema.RESPONSE_NAMES]
            self.cold_channels = [schema.channel_index(n) for n in schema.COLD_RESPONSE_NAMES]
            # -> (position along the support strengths, log gain, share of the cold water's extra
            # pressure), from the params and time only
            self.response_head = nn.Sequential(nn.Linear(cfg.n_params, 64), nn.SiLU(), nn.Linear(64, 3))
            with torch.no_grad():  # start between the 10 % and 1 % responses at gain 1 (see MIX_INIT)
                self.response_head[-1].weight.zero_()
                self.response_head[-1].bias.copy_(mix_head_bias(MIX_INIT, 1.0, COLD_INIT))
        if cfg.response_mix or cfg.pressure_prior:
            self.change_channel = schema.channel_index("PressureChange")
            self.pressure_prior_next = schema.channel_index(schema.PRESSURE_PRIOR_NAMES[0] + "Next")
        if cfg.front_mix:
            self.gap_channel = schema.channel_index(schema.INJECTION_GAP)
            self.prior_now = [schema.channel_index(n) for n in schema.THERMAL_PRIOR_NAMES]
            self.prior_next = [schema.channel_index(n + "Next") for n in schema.THERMAL_PRIOR_NAMES]
            # -> (position along the thermal prior's flow fields, log gain), from the params and time only
            self.front_head = nn.Sequential(nn.Linear(cfg.n_params, 64), nn.SiLU(), nn.Linear(64, 2))
            with torch.no_grad():
                self.front_head[-1].weight.zero_()
                self.front_head[-1].bias.copy_(mix_head_bias(FRONT_INIT, 1.0))

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
            up = crop_upsample(torch.cat([coarse, coarse_mask], 1), origin, x.shape[-3:], cfg.context_factor)
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
        if cfg.response_mix or cfg.pressure_prior:
            delta = self._mix_responses(delta, x, params)
        if cfg.front_mix:
            delta = _add_to_target(delta, schema.OUTPUT_CHANNELS.index("Temperature"), self.front_step(x, params),
                                   residual=cfg.temperature_residual)
        delta = delta * (active > 0.5).to(delta.dtype)  # inactive cells never change

        if cfg.global_context:
            scalars = self.scalar_head(torch.cat([g.float(), params.float()], dim=1))
        else:  # the seed's pooled head: ill-posed on patches that contain no well
            m = (active > 0.5).to(h.dtype)
            pooled = (h * m).sum(dim=(2, 3, 4)) / m.sum(dim=(2, 3, 4)).clamp_min(1.0)
            scalars = self.scalar_head(torch.cat([pooled.float(), params.float()], dim=1))
        return delta.contiguous(), scalars

    def _mix_responses(self, delta, x, params):
        """Pressure target = asinh((sum_k a_k r_k + c sum_k h_k d_k) / s_P - (P - P0) / s_P + sinh(grid head)).

        The response channels hold asinh(r_k / s_P), r_k the one-year responses from open
        to closed sides (schema.RESPONSE_NAMES), and the PressureChange channel
        asinh((P - P0) / s_P), with the pressure target's scale s_P (dataset.Normalizer), so
        sinh gives pressure changes back in target units. The step moves the pressure change
        since t = 0 to the mix plus the grid head's residual: the cones form within the first
        year, so a run needs about the same mix at every step and rollout errors do not pile
        up step after step.

        The mix is a point u in [0, K - 1] along the support strengths (the head's output,
        clipped: _support_point) and a gain g in exp(+-LOG_GAIN_BOUND):
        a_k = g * max(0, 1 - |u - k|) (linear interpolation between the two neighbouring
        responses), both from the params and time only (response_head; the params' columns of
        its first layer are L1-penalised in training, train.mix_l1_penalty). Why so constrained:
        a free mix of the three responses with weights from params + the whole-field vector
        fitted training runs well but not new ones (year-29 error 0.28 on training runs, 0.37 on test runs of the
        fidelity benchmark): the best free weights cancel (e.g. -1.9 open + 2.8 weak) and 40
        runs cannot pin 26 parameters' effect on them. An interpolation is never further from
        the truth than the family of responses, and the penalty lets the head pick the few
        parameters that matter (docs/benchmarks.md, "Pressure mix").

        d_k: how much more pressure response k needs with water as cold as the thermal prior's
        last year (well_response.cold_response_change), interpolated with the same h_k = a_k / g
        and scaled by a third number c in [0, COLD_MAX] from the head (near 0 in the first
        year; it grows with the plume, which is why the time feature is never penalised): the
        one-year responses at the initial temperature miss the pressure the cold, more viscous
        water adds over the years. fp32: sinh overflows fp16.

        With pressure_prior the change since t = 0 is set to the pressure prior at t + 1 instead
        (an input channel in the same asinh(x / s_P) units; dataset.Normalizer.normalize_priors).
        """
        p = schema.OUTPUT_CHANNELS.index("Pressure")
        change = torch.sinh(x[:, self.change_channel:self.change_channel + 1].float())  # [B, 1, D, H, W]
        if self.config.pressure_prior:
            base = torch.sinh(x[:, self.pressure_prior_next:self.pressure_prior_next + 1].float())
        else:
            base = self.response_mix(x, params)
        return _add_to_target(delta, p, base - change)

    def response_mix(self, x, params) -> torch.Tensor:
        """[B, 1, D, H, W] the mix alone: (sum_k a_k r_k + c sum_k h_k d_k) / s_P (the change since
        t = 0 it sets, before the residual), from the response channels r_k, the cold-water
        channels d_k (schema.COLD_RESPONSE_NAMES) of x and the conditioning params."""
        weights = self.pressure_mix_weights(params)  # [B, 2K]
        channels = torch.sinh(x[:, self.response_channels + self.cold_channels].float())  # [B, 2K, D, H, W]
        return torch.einsum("br,brdhw->bdhw", weights, channels).unsqueeze(1)

    def pressure_mix_weights(self, params) -> torch.Tensor:
        """[B, 2K] weights of the response channels (a_k = g h_k), then of the cold-water
        channels (c h_k), in schema.RESPONSE_NAMES + schema.COLD_RESPONSE_NAMES order."""
        hat, log_gain, cold = self._pressure_mix(params)
        return torch.cat([hat * _gain(log_gain), hat * cold[:, None]], dim=1)

    def response_weights(self, params) -> torch.Tensor:
        """[B, K] mix weights a_k = g h_k of the response channels (see _mix_responses)."""
        hat, log_gain, _ = self._pressure_mix(params)
        return hat * _gain(log_gain)

    def _pressure_mix(self, params):
        """One pass of the response head: (h [B, K], log gain [B], cold share c [B])."""
        position, log_gain, cold = self.response_head(params.float()).unbind(dim=1)
        k = len(self.response_channels)
        return _hat(_support_point(position, k), k), log_gain, COLD_MAX * torch.sigmoid(cold)

    def front_weights(self, params) -> torch.Tensor:
        """[B, 3] weights of the thermal prior's open / 1 % / closed flow fields (see front_step).

        With the response mix the point on the support scale is the pressure mix's: both
        follow the same lateral support, and the thermal prior's flow fields are the
        pressure scale's points 0, 2 and 4 (schema.THERMAL_PRIOR_RESPONSES). A point of its
        own, learned from the temperature loss alone, stayed where it started: in the
        fidelity model (fidelity6) it was 0.48 for every test run (the best per run: 0.10-1.05),
        while the pressure mix's point, halved, gave the prior alone a year-29 error of 0.078
        instead of 0.114 (docs/benchmarks.md, "Thermal prior")."""
        position, log_gain = self.front_head(params.float()).unbind(dim=1)
        k = len(self.prior_now)
        if self.config.response_mix:
            n_support = len(self.response_channels)
            pressure_position = self.response_head(params.float())[:, 0]
            u = _support_point(pressure_position, n_support) * (k - 1) / (n_support - 1)
        else:
            u = _support_point(position, k)
        return _hat(u, k) * _gain(log_gain)

    def front_step(self, x, params) -> torch.Tensor:
        """[B, 1, D, H, W] the temperature step the thermal prior sets, in target units before the asinh:
        g * gap / s_T * sum_k a_k (theta_k(t + 1) - theta_k(t)).

        theta_k: the thermal prior channels (well_response.thermal_prior: the share of the
        injection gap a linear heat-transport model on the open, 1 % and closed flow fields
        gives each cell after t years), at t and t + 1; gap: InjectionTemperatureGap, whose
        channel holds asinh(gap / s_T). a_k: an interpolation between two neighbouring flow
        fields times a gain (front_head, params and time only, like the pressure mix). The
        grid head adds the residual (the flow's change as the plume cools, buoyancy, what the
        linear model's generic rock misses). Fitted per run this prior leaves 0.06 of the
        year-29 temperature change on the fidelity test runs; the sigmoid front around
        ThermalArrival it replaces left 0.46 (docs/benchmarks.md, "Thermal prior"). fp32.
        """
        weights = self.front_weights(params)  # [B, K]
        step = x[:, self.prior_next].float() - x[:, self.prior_now].float()  # [B, K, D, H, W]
        gap = torch.sinh(x[:, self.gap_channel].float())
        return (torch.einsum("bk,bkdhw->bdhw", weights, step) * gap).unsqueeze(1)


def _support_point(position, k: int) -> torch.Tensor:
    """[B] point u in [0, k - 1] on a scale of k support cases: the head's output, clipped.

    Linear, not a sigmoid: the point follows a log-scaled param about linearly (the support
    scale is logarithmic), and a sigmoid needs ever larger first-layer weights towards the
    ends, which the L1 penalty shrinks: the fidelity model with a sigmoid (fidelity8) put the
    test runs whose best points were 0.10 and 3.10 at 0.47 and 2.51."""
    return position.clamp(0.0, k - 1.0)


def _hat(u, k: int) -> torch.Tensor:
    """[B] point u -> [B, k] weights max(0, 1 - |u - j|), j = 0..k-1: a linear interpolation
    between the two neighbours of u."""
    return torch.relu(1.0 - (u[:, None] - torch.arange(k, device=u.device, dtype=u.dtype)).abs())


def _gain(log_gain) -> torch.Tensor:
    """[B] head output -> [B, 1] gain, within exp(+-LOG_GAIN_BOUND) (smoothly: tanh)."""
    return torch.exp(LOG_GAIN_BOUND * torch.tanh(log_gain / LOG_GAIN_BOUND))[:, None]


def params_l1(head: nn.Sequential) -> torch.Tensor:
    """Sum of |weights| of a mix head's first layer over the 26 params columns; the time
    feature's column (the last) is left free (train.mix_l1_penalty says why)."""
    return head[0].weight[:, :-1].abs().sum()


def mix_head_bias(point: float, gain: float, cold: float | None = None) -> torch.Tensor:
    """The last-layer bias that makes a mix head (with zero last-layer weights) output this
    point, gain (and cold share, for the pressure head): the inverse of _support_point,
    _gain and the cold share's COLD_MAX * sigmoid."""
    out = [point, LOG_GAIN_BOUND * math.atanh(math.log(gain) / LOG_GAIN_BOUND)]
    if cold is not None:
        out.append(math.log(cold / (COLD_MAX - cold)))
    return torch.tensor(out)


def _add_to_target(delta, channel, prior, residual: bool = True):
    """delta with channel c = asinh(prior + sinh(head_c)): a physics prior (in target units
    before the asinh, [B, 1, D, H, W]) plus the grid head's residual (asinh(prior) alone with
    residual=False). fp32: sinh overflows fp16."""
    target = prior
    if residual:
        target = target + torch.sinh(delta[:, channel:channel + 1].float().clamp(-30.0, 30.0))
    mixed = torch.asinh(target).to(delta.dtype)
    return torch.cat([delta[:, :channel], mixed, delta[:, channel + 1:]], dim=1)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def load_model(ckpt_path, map_location="cpu"):
    """Rebuild a model from a checkpoint (no code from the file is executed)."""
    path = Path(ckpt_path)
    if not path.is_file():
        raise UserError(f"{path}: checkpoint: file not found")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:  # corrupt file or one holding arbitrary objects
        raise UserError(f"{path}: checkpoint: cannot load safely ({str(err).splitlines()[0]})") from None
    if "model" not in ckpt or "model_config" not in ckpt:
        raise UserError(f"{path}: checkpoint: missing 'model' or 'model_config'")
    stored = dict(ckpt["model_config"])
    if "mix_heads_version" not in stored and (stored.get("response_mix") or stored.get("front_mix")):
        raise UserError(f"{path}: checkpoint: its mix heads are of an older voxel-ode (sigmoid point, "
                        "unbounded gain), retrain it")
    config = ModelConfig.from_dict(stored)
    if (config.in_channels, config.n_params) != (schema.N_INPUT_CHANNELS, schema.N_CONDITIONING):
        raise UserError(f"{path}: checkpoint: model takes {config.in_channels} input channels and "
                        f"{config.n_params} conditioning values, this version builds {schema.N_INPUT_CHANNELS} "
                        f"and {schema.N_CONDITIONING}: it was made by an older voxel-ode, retrain it")
    model = VoxelAutoRegressor(config)
    state = {k.removeprefix("module.").removeprefix("_orig_mod."): v for k, v in ckpt["model"].items()}
    model.load_state_dict(state)
    model.eval()
    return model, ckpt


def config_dict(model: VoxelAutoRegressor) -> dict:
    """What a checkpoint stores under "model_config"."""
    return asdict(model.config)
